"""Segmentation: planted types recovered, k selection on hand-made arrays, bad input, exports."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import adjusted_rand_score, silhouette_samples

import reportgen
from reportgen.config import RfmSection, SegmentationSection
from reportgen.errors import ConfigError, InputDataError
from reportgen.grid import load_segment_map
from reportgen.rfm import EXCLUDED_NON_POSITIVE, RfmTable, finish_rfm
from reportgen.segment import (
    KEvidence,
    best_k,
    choose_k,
    draw_samples,
    find_knee,
    fit_quality,
    fit_transform,
    measure_stability,
    segment_columns,
    segment_customers,
    segmentation_summary,
    silhouette_values,
)

AS_OF = dt.date(2024, 12, 31)
KS = list(range(2, 11))
# Planted types: (share, median recency days, median orders, median spend in pounds).
TYPES = {
    "champions": (0.10, 4, 18, 6000.0),
    "loyal": (0.20, 25, 6, 1500.0),
    "recent_one_off": (0.20, 12, 1, 120.0),
    "lapsed": (0.35, 220, 1, 150.0),
    "at_risk": (0.15, 150, 7, 2500.0),
}


def _rfm(recency, frequency, monetary_minor, tenure=None, segment_map="builtin") -> RfmTable:
    """An RfmTable through the real scoring and grid, from per-customer values."""
    n = len(recency)
    tenure = recency if tenure is None else tenure
    aggregates = pl.DataFrame(
        {
            "customer_id": [f"c{i:05d}" for i in range(n)],
            "frequency": [int(f) for f in frequency],
            "monetary_minor": [int(m) for m in monetary_minor],
            "gross_minor": [max(int(m), 0) for m in monetary_minor],
            "returned_value_minor": [max(-int(m), 0) for m in monetary_minor],
            "last_order": [AS_OF - dt.timedelta(days=int(r)) for r in recency],
            "first_order": [AS_OF - dt.timedelta(days=int(t)) for t in tenure],
            "_in_period": [True] * n,
            "_as_of": [AS_OF] * n,
        }
    )
    return finish_rfm(aggregates, RfmSection(), load_segment_map(segment_map), 2, None)


def _planted(n: int, seed: int, sigma: float = 0.4) -> tuple[RfmTable, pl.DataFrame]:
    """Customers of the planted TYPES, log-normal around each type's medians."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(len(TYPES), size=n, p=[t[0] for t in TYPES.values()])
    med = np.array([t[1:] for t in TYPES.values()])[kind]
    noise = rng.normal(0, sigma, size=(n, 3))
    recency = np.round(np.exp(np.log(med[:, 0] + 1) + noise[:, 0]) - 1).clip(0, 365)
    orders = np.maximum(1, np.round(np.exp(np.log(med[:, 1]) + noise[:, 1])))
    spend = np.round(np.exp(np.log(med[:, 2] * 100) + noise[:, 2]))
    tenure = recency + rng.integers(0, 300, n)
    rfm = _rfm(recency, orders, spend, tenure)
    return rfm, pl.DataFrame({"customer_id": rfm.frame["customer_id"], "planted": kind})


def _ari(seg, planted: pl.DataFrame) -> float:
    joined = seg.assignments.join(planted, on="customer_id")
    return adjusted_rand_score(joined["planted"], joined["label"])


@pytest.fixture(scope="module")
def planted():
    """3,000 customers of five planted types, and their auto segmentation."""
    rfm, labels = _planted(3000, seed=1)
    return rfm, labels, segment_customers(rfm, SegmentationSection(), {}, 42)


# ---------------------------------------------------------------------------------------------
# Planted types


def test_planted_types_are_recovered_with_k_chosen_by_the_knee(planted):
    """The knee finds the 5 planted types and the segments match them (ARI >= 0.9)."""
    _, labels, seg = planted
    assert seg.k == 5 and seg.choice.rule == "knee"
    assert _ari(seg, labels) >= 0.9


def test_planted_types_get_the_names_their_profile_suggests(planted):
    """Each planted type's majority segment carries a fitting grid name, all distinct."""
    _, labels, seg = planted
    joined = seg.assignments.join(labels, on="customer_id")
    majority = dict(
        joined.group_by("planted").agg(pl.col("segment").mode().first()).sort("planted").iter_rows()
    )
    names = [majority[i] for i in range(len(TYPES))]
    assert names[0] == "Champions" and names[1] == "Loyal Customers"
    assert names[3] in ("Hibernating", "Lost") and len(set(names)) == 5


def test_the_planting_is_not_trivially_separable(planted):
    """Without log1p, or with the silhouette rule, the same data are not recovered as well."""
    rfm, labels, seg = planted
    raw = segment_customers(rfm, SegmentationSection(k=5, log1p=False), {}, 42)
    assert _ari(raw, labels) < 0.9  # the bar the default transform clears
    assert seg.choice.best["silhouette"] != 5  # the knee rule matters here
    assert "disagree" in seg.choice.disagreement


# ---------------------------------------------------------------------------------------------
# The sample data


@pytest.fixture(scope="module")
def sample(shipped_config_path):
    """The shipped config's report, segmented twice."""
    config = reportgen.load_config(shipped_config_path)
    report = reportgen.compute_report(config)
    runs = [
        segment_customers(report.rfm, config.segmentation, config.playbook, config.seed)
        for _ in range(2)
    ]
    return report, runs


def test_sample_data_segmentation_is_deterministic(sample):
    """Two runs: same k, criteria per k, names, labels and summary."""
    _, (a, b) = sample
    assert a.k == b.k == 5
    assert a.evidence == b.evidence
    assert a.names == b.names
    assert a.assignments.equals(b.assignments)
    assert json.dumps(segmentation_summary(a)) == json.dumps(segmentation_summary(b))


def test_sample_data_choice_and_names(sample):
    """The knee at k=5 (silhouette prefers k=3) and five distinct grid names."""
    _, (seg, _) = sample
    assert seg.choice.best == {
        "knee": 5,
        "silhouette": 3,
        "calinski_harabasz": 3,
        "davies_bouldin": 7,
    }
    assert seg.names == ("Champions", "Loyal Customers", "Potential Loyalist", "At Risk", "Lost")
    silhouettes = [round(e.silhouette, 2) for e in seg.evidence]
    assert silhouettes == [0.43, 0.34, 0.34, 0.32, 0.31, 0.31, 0.30, 0.28, 0.28]
    assert seg.fit_quality == "moderate" and seg.stability.stable


def test_sample_data_every_customer_has_a_segment_and_revenue_reconciles(sample):
    """Every RFM customer is in the export; segment revenues sum to the revenue kept."""
    report, (seg, _) = sample
    columns = segment_columns(seg, report.rfm)
    assert columns["customer_id"].to_list() == report.rfm.frame["customer_id"].to_list()
    assert columns["segment"].null_count() == 0
    total = sum(p.revenue_minor for p in seg.profiles) + sum(g.revenue_minor for g in seg.excluded)
    assert total == report.audit.revenue_kept_minor
    assert sum(p.customers for p in seg.profiles) == seg.customers == report.rfm.scored.height


def test_sample_data_summary_is_json_without_nan(sample):
    """The summary serialises strictly and carries the revenue total of the audit."""
    report, (seg, _) = sample
    summary = segmentation_summary(seg)
    json.dumps(summary, allow_nan=False)
    assert summary["revenue_total"] == report.audit.revenue_kept_minor / 100
    assert [r["rank"] for r in summary["recommendations"]] == [1, 2, 3, 4, 5]
    assert len(summary["k_selection"]["per_k"]) == 9 and summary["warnings"] == []


# ---------------------------------------------------------------------------------------------
# k selection on hand-made arrays

ELBOW = [1000.0, 500.0, 200.0, 180.0, 165.0, 155.0, 148.0, 143.0, 140.0]  # knee at k=4
SIL = [0.60, 0.40, 0.35, 0.45, 0.30, 0.30, 0.20, 0.20, 0.20]
CH = [100.0, 300.0, 250.0, 200.0, 190.0, 180.0, 170.0, 160.0, 150.0]
DB = [0.9, 0.8, 0.7, 0.6, 0.9, 1.0, 1.0, 1.0, 1.0]


def _window(low=3, high=8, drop=()):
    return [low <= k <= high and k not in drop for k in KS]


def test_knee_rule_takes_the_knee_within_min_k_max_k():
    """The knee of the elbow curve over 3..8 is k=4."""
    choice = choose_k(KS, ELBOW, SIL, CH, DB, _window(), "knee", 3, 8)
    assert choice.k == 4 and choice.rule == "knee"
    assert choice.reason.startswith("k=4 is the knee of the inertia curve over k=3..8")


def test_knee_not_admissible_falls_back_to_the_best_silhouette():
    """A knee whose smallest segment is too small: the best admissible silhouette (k=5)."""
    choice = choose_k(KS, ELBOW, SIL, CH, DB, _window(drop=(4,)), "knee", 3, 8)
    assert choice.k == 5
    assert "has its knee at k=4, which is not admissible" in choice.reason
    assert choice.best["knee"] is None


def test_no_knee_falls_back_to_the_best_silhouette():
    """A straight inertia line has no knee: the best admissible silhouette wins."""
    line = [100.0 - 10 * i for i in range(9)]
    assert find_knee(KS, line) is None
    choice = choose_k(KS, line, SIL, CH, DB, _window(), "knee", 3, 8)
    assert choice.k == 5
    assert "has no knee" in choice.reason and "(0.450)" in choice.reason
    assert "(the inertia curve has no admissible knee). The knee rule picked k=5." in (
        choice.disagreement
    )


def test_ties_go_to_the_smaller_k():
    """Equal silhouettes at k=6 and k=7: k=6; equal Davies-Bouldin at 5 and 4: k=4."""
    sil = [0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.1, 0.1, 0.1]
    assert best_k(KS, sil, _window(), maximize=True) == 6
    assert best_k(KS, [1.0, 1.0, 0.5, 0.5, 0.9, 1.0, 1.0, 1.0, 1.0], _window(), False) == 4
    line = [100.0 - 10 * i for i in range(9)]
    assert choose_k(KS, line, sil, CH, DB, _window(), "knee", 3, 8).k == 6


def test_other_rules_pick_their_extremum_among_admissible_k():
    """silhouette max (k=2 is outside min_k), Calinski-Harabasz max, Davies-Bouldin min."""
    window = _window()
    assert choose_k(KS, ELBOW, SIL, CH, DB, window, "silhouette", 3, 8).k == 5
    assert choose_k(KS, ELBOW, SIL, CH, DB, window, "calinski_harabasz", 3, 8).k == 3
    assert choose_k(KS, ELBOW, SIL, CH, DB, window, "davies_bouldin", 3, 8).k == 5


def test_disagreement_is_said_plainly():
    """Each criterion's k is named, then the rule and its pick."""
    choice = choose_k(KS, ELBOW, SIL, CH, DB, _window(), "knee", 3, 8)
    assert choice.disagreement == (
        "The criteria disagree: the knee of the inertia curve points to k=4; the highest "
        "silhouette points to k=5; the highest Calinski-Harabasz points to k=3; the lowest "
        "Davies-Bouldin points to k=5. The knee rule picked k=4."
    )
    sil = [0.9, 0.2, 0.5, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
    ch = [900.0, 2.0, 5.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    db = [0.1, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    agree = choose_k(KS, ELBOW, sil, ch, db, _window(), "knee", 3, 8)
    assert agree.disagreement == (
        "The criteria agree: the knee of the inertia curve, the highest silhouette, the highest "
        "Calinski-Harabasz, the lowest Davies-Bouldin all point to k=4."
    )


def test_choose_k_refuses_when_nothing_is_admissible():
    """No admissible k is a caller error."""
    with pytest.raises(ValueError, match="no admissible k"):
        choose_k(KS, ELBOW, SIL, CH, DB, [False] * 9, "knee", 3, 8)


# ---------------------------------------------------------------------------------------------
# Metrics and transform


def test_shared_silhouette_matches_scikit_learn():
    """Per-sample silhouettes equal scikit-learn's, with singleton and missing labels."""
    rng = np.random.default_rng(3)
    coords = rng.normal(size=(700, 3))
    singleton = rng.integers(0, 5, 700)
    singleton[7] = 5
    missing = np.where(singleton == 2, 4, singleton)  # label 2 unused
    labelings = [rng.integers(0, 3, 700), singleton, missing]
    for ours, labels in zip(silhouette_values(coords, labelings), labelings, strict=True):
        np.testing.assert_allclose(ours, silhouette_samples(coords, labels), atol=1e-12)


def test_fit_quality_words():
    """Below 0.25 weak, 0.25-0.5 moderate, above 0.5 clear."""
    assert [fit_quality(s) for s in (0.2499, 0.25, 0.5, 0.5001, None)] == [
        "weak",
        "moderate",
        "moderate",
        "clear",
        "unknown",
    ]


@pytest.mark.parametrize(
    ("scaling", "center", "scale"),
    [
        ("standard", 2.25, math.sqrt(83 / 16)),  # mean; population standard deviation
        ("robust", 1.5, 2.25),  # median; interquartile range 3.0 - 0.75
        ("minmax", 0.0, 6.0),
        ("none", 0.0, 1.0),
    ],
)
def test_scalers(scaling, center, scale):
    """Each scaling stores (center, scale) so that coordinates = (x - center) / scale."""
    raw = np.array([[0.0], [1.0], [2.0], [6.0]])
    transform, _ = fit_transform(
        raw, SegmentationSection(features=["frequency"], log1p=False, scaling=scaling)
    )
    assert transform.center == pytest.approx((center,)) and transform.scale == pytest.approx(
        (scale,)
    )
    np.testing.assert_allclose(transform.invert(transform.apply(raw)), raw)


def test_quantile_capping_flags_outliers_and_keeps_true_values():
    """Customers beyond the caps are flagged; the RFM table itself is untouched."""
    recency = list(range(100))
    orders = [1 + i % 5 for i in range(100)]
    spend = [1000 + 10 * i for i in range(99)] + [10_000_000]
    rfm = _rfm(recency, orders, spend)
    cfg = SegmentationSection(k=3, outliers={"method": "quantile_cap", "upper_quantile": 0.95})
    seg = segment_customers(rfm, cfg, {}, 42)
    flagged = set(seg.assignments.filter("outlier")["customer_id"])
    assert flagged == {f"c{i:05d}" for i in range(95, 100)}  # top 5% in recency and spend
    assert seg.transform.caps[2][1] == pytest.approx(np.quantile(np.array(spend) / 100, 0.95))
    assert rfm.frame["monetary_minor"].max() == 10_000_000
    exported = segment_columns(seg, rfm).filter(pl.col("outlier"))["customer_id"]
    assert set(exported) == flagged


def test_samples_are_seeded_and_bounded():
    """500,000 customers: 50,000 sampled for the sweep, a 10,000 subset for silhouette."""
    cfg = SegmentationSection()
    fit_idx, sil_idx = draw_samples(500_000, cfg, 42)
    assert len(fit_idx) == 50_000 and len(sil_idx) == 10_000
    assert np.isin(sil_idx, fit_idx).all() and (np.diff(fit_idx) > 0).all()
    again = draw_samples(500_000, cfg, 42)
    assert np.array_equal(again[0], fit_idx) and np.array_equal(again[1], sil_idx)


def test_stability_warns_below_threshold():
    """Structureless data: refits disagree, the note says so."""
    from sklearn.cluster import KMeans

    coords = np.random.default_rng(0).uniform(size=(500, 6))
    cfg = SegmentationSection(n_init=1)
    own = KMeans(8, n_init=1, random_state=42).fit(coords).labels_
    result = measure_stability(coords, own, 8, cfg, 42)
    assert result.mean < 0.8 and not result.stable
    assert "below 0.8" in result.note and len(result.ari) == 5


# ---------------------------------------------------------------------------------------------
# Warnings and excluded customers


def test_data_sufficiency_warnings():
    """Few customers, short history, few repeat buyers and small segments are all reported."""
    rng = np.random.default_rng(5)
    recency = rng.integers(0, 90, 300)
    orders = np.where(np.arange(300) < 20, 2, 1)  # 6.7% repeat buyers
    spend = rng.integers(1_000, 100_000, 300)
    seg = segment_customers(_rfm(recency, orders, spend), SegmentationSection(k=8), {}, 42)
    codes = [w.code for w in seg.warnings]
    assert codes[:3] == ["few_customers", "short_history", "few_repeat_buyers"]
    assert "small_segments" in codes
    assert "Only 300 customers" in seg.warnings[0].message
    assert f"only {recency.max()} days" in seg.warnings[1].message
    assert "Only 6.7% of customers" in seg.warnings[2].message


def test_excluded_customers_keep_their_reason_and_revenue(planted):
    """Non-positive spenders are 'Excluded: non-positive spend' and their revenue is counted."""
    base, _, _ = planted
    frame = base.frame
    recency, orders = frame["recency_days"].to_list(), frame["frequency"].to_list()
    spend = frame["monetary_minor"].to_list()
    spend[0], spend[1] = -2_500, 0
    rfm = _rfm(recency, orders, spend, frame["tenure_days"].to_list())
    seg = segment_customers(rfm, SegmentationSection(k=5), {}, 42)
    columns = segment_columns(seg, rfm)
    assert columns["segment"][:2].to_list() == [EXCLUDED_NON_POSITIVE] * 2
    assert columns["outlier"][:2].to_list() == [False, False]
    assert [(g.reason, g.customers, g.revenue_minor) for g in seg.excluded] == [
        (EXCLUDED_NON_POSITIVE, 2, -2_500)
    ]
    total = sum(p.revenue_minor for p in seg.profiles) - 2_500
    assert total == sum(spend)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_fewer_customers_than_k():
    """3 customers, k=4: InputDataError (exit 4) naming both counts."""
    rfm = _rfm([1, 50, 200], [1, 3, 9], [1_000, 5_000, 90_000])
    with pytest.raises(InputDataError) as err:
        segment_customers(rfm, SegmentationSection(k=4), {}, 42)
    assert str(err.value) == (
        "only 3 customers can be segmented (positive spend), fewer than k=4; lower segmentation.k"
    )
    assert err.value.exit_code == 4


def test_one_customer_is_counted_in_the_singular():
    rfm = _rfm([1], [1], [1_000])
    with pytest.raises(InputDataError, match="only 1 customer can be segmented"):
        segment_customers(rfm, SegmentationSection(k=2), {}, 42)


def test_fewer_customers_than_the_k_range():
    """Auto k: the largest k of k_range is what must fit."""
    rfm = _rfm(range(6), [1, 2, 3, 4, 5, 6], [100, 200, 300, 400, 500, 600])
    with pytest.raises(
        InputDataError,
        match=r"only 6 customers .* fewer than the largest k in "
        r"segmentation.k_range \(10\); lower segmentation.k_range",
    ):
        segment_customers(rfm, SegmentationSection(), {}, 42)


def test_fewer_distinct_points_than_k():
    """20 customers in 2 distinct feature combinations cannot make 3 segments."""
    rfm = _rfm([5] * 10 + [90] * 10, [1] * 10 + [4] * 10, [2_000] * 10 + [9_000] * 10)
    with pytest.raises(InputDataError) as err:
        segment_customers(rfm, SegmentationSection(k=3), {}, 42)
    assert str(err.value) == (
        "the 20 customers have only 2 distinct combinations of recency_days, frequency, "
        "monetary, fewer than k=3; lower segmentation.k to at most 2, or add features to "
        "segmentation.features"
    )


def test_constant_feature():
    """Everyone bought once: frequency is named and the fix is to drop it."""
    rfm = _rfm(range(40), [1] * 40, [1_000 + 7 * i for i in range(40)])
    with pytest.raises(InputDataError) as err:
        segment_customers(rfm, SegmentationSection(k=3), {}, 42)
    assert str(err.value) == (
        "feature 'frequency' has the same value (1) for all 40 customers, so it cannot separate "
        "segments; remove it from segmentation.features"
    )


def test_feature_made_constant_by_capping():
    """Capping that flattens a feature says so."""
    rfm = _rfm(range(40), [1] * 39 + [5], [1_000 + 7 * i for i in range(40)])
    cfg = SegmentationSection(k=3, outliers={"method": "quantile_cap", "upper_quantile": 0.9})
    with pytest.raises(
        InputDataError,
        match=r"'frequency' has the same value \(1\) for all 40 "
        r"customers after quantile capping \(segmentation.outliers\)",
    ):
        segment_customers(rfm, cfg, {}, 42)


def test_no_admissible_k_names_the_limit(planted):
    """A min_segment_share no k meets: ConfigError (exit 3) saying which limit and what to do."""
    rfm, _, seg = planted
    with pytest.raises(ConfigError) as err:
        segment_customers(rfm, SegmentationSection(min_segment_share=0.25), {}, 42)
    shares = ", ".join(f"k={e.k}: {e.smallest_share:.1%}" for e in seg.evidence[1:7])
    best = math.floor(max(e.smallest_share for e in seg.evidence[1:7]) * 1000) / 10
    assert str(err.value) == (
        "no k between segmentation.min_k (3) and segmentation.max_k (8) is admissible: the "
        "smallest segment holds less than segmentation.min_segment_share (25.0%) of the "
        f"customers ({shares}). To fix: lower segmentation.min_segment_share to at most "
        f"{best:.1f}%, or lower segmentation.min_k (fewer segments are bigger)"
    )
    assert err.value.exit_code == 3


def test_tiny_segments_suggest_taming_outliers(sample):
    """Raw spend on the sample data: segments of a few extreme customers, and the hint."""
    report, _ = sample
    with pytest.raises(
        ConfigError,
        match=r"k=3: 0.6%.* or tame the extreme customers who make "
        r"up such tiny segments with segmentation.log1p: true",
    ):
        segment_customers(report.rfm, SegmentationSection(log1p=False), {}, 42)


def test_impossible_share_is_refused_with_the_config():
    """A share that min_k segments cannot all hold is a config error before any work."""
    data = {"input": {"path": "tx.csv"}, "segmentation": {"min_segment_share": 0.4}}
    with pytest.raises(
        ConfigError,
        match=r"segmentation: min_segment_share \(40%\) times the "
        r"smallest k allowed \(3\) exceeds 100%: no k can give every segment "
        r"that share; lower min_segment_share below 33%",
    ):
        reportgen.config_from_dict(data)


def test_more_segments_than_names():
    """A two-name segment map cannot name three segments."""
    two = {"Early": ["[12]**"], "Late": ["[345]**"]}
    rng = np.random.default_rng(2)
    rfm = _rfm(
        rng.integers(0, 300, 200),
        rng.integers(1, 9, 200),
        rng.integers(100, 9_000, 200),
        segment_map=two,
    )
    with pytest.raises(
        ConfigError,
        match=r"segmentation.k is 3, but segments take their names "
        r"from the RFM grid, which gives only 2 names",
    ):
        segment_customers(rfm, SegmentationSection(k=3), {}, 42)
    with pytest.raises(
        ConfigError,
        match=r"k=3, 4, 5, 6, 7, 8 would need more than the 2 names "
        r"the RFM grid gives these customers. To fix: set segmentation.min_k and "
        r"max_k to at most 2",
    ):
        segment_customers(rfm, SegmentationSection(), {}, 42)
    seg = segment_customers(rfm, SegmentationSection(k=2), {}, 42)
    assert sorted(seg.names) == ["Early", "Late"]
    assert seg.actions[0].play.objective.startswith("No default for this segment name")


def test_evidence_records_why_a_k_is_not_admissible(sample):
    """k outside min_k..max_k is marked with the reason."""
    _, (seg, _) = sample
    first = seg.evidence[0]
    assert isinstance(first, KEvidence) and first.k == 2 and not first.admissible
    assert first.not_admissible_because == "outside min_k..max_k (3..8)"
