"""Algorithms beyond K-Means: planted structure recovered, noise kept as Unclustered, soft
membership, sample-and-extend, determinism, the segment.py hook and its exports, config errors."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import adjusted_rand_score

from reportgen import ConfigError, config_from_dict
from reportgen.algorithms import (
    NOISE,
    UNCLUSTERED,
    _cap,
    _compact,
    _extend_hdbscan,
    bootstrap_ari,
    cluster,
    grid_names,
    membership_frame,
    segment_names,
)
from reportgen.config import ALGORITHMS, RfmSection, SegmentationSection
from reportgen.export import export_table
from reportgen.grid import load_segment_map
from reportgen.rfm import RfmTable, finish_rfm
from reportgen.segment import segment_columns, segment_customers, segmentation_summary

AS_OF = dt.date(2024, 12, 31)
CENTERS = np.array([[-3.0, -3.0, 0.0], [3.0, -3.0, 0.0], [0.0, 3.0, -2.0], [0.0, 0.0, 4.0]])
SIZES = (300, 250, 200, 150)
OUTLIERS = 30


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four well-separated Gaussian blobs (sd 0.5) and 30 uniform outliers (truth -1)."""
    rng = np.random.default_rng(seed)
    points = [rng.normal(c, 0.5, size=(n, 3)) for c, n in zip(CENTERS, SIZES, strict=True)]
    points.append(rng.uniform(-8, 8, size=(OUTLIERS, 3)))
    truth = np.r_[np.repeat(np.arange(4), SIZES), np.full(OUTLIERS, -1)]
    return np.vstack(points), truth


@pytest.fixture(scope="module")
def blobs():
    return _blobs()


def _cfg(**options) -> SegmentationSection:
    return SegmentationSection(algorithm_options=options)


def _inlier_ari(labels: np.ndarray, truth: np.ndarray) -> float:
    inliers = truth != -1
    return adjusted_rand_score(truth[inliers], labels[inliers])


# ---------------------------------------------------------------------------------------------
# Planted structure


@pytest.mark.parametrize("method", ["kmeans", "agglomerative", "spectral", "gmm"])
def test_partitioning_methods_recover_the_blobs(blobs, method):
    """k-based methods and the mixture find the four blobs (outliers aside): ARI >= 0.95."""
    coords, truth = blobs
    result = cluster(method, coords, _cfg(), 4, seed=42)
    assert result.unclustered == 0
    assert _inlier_ari(result.labels, truth) >= 0.95


def test_gmm_chooses_k_by_bic_within_the_k_limits(blobs):
    """BIC per admissible k is the evidence; the k taken has the lowest BIC among them."""
    coords, _ = blobs
    result = cluster("gmm", coords, _cfg(), 4, seed=42)
    rows = result.evidence["bic_by_k"]
    assert [r["k"] for r in rows] == [3, 4, 5, 6, 7, 8]  # min_k..max_k
    best = min((r for r in rows if r["admissible"]), key=lambda r: r["bic"])
    assert result.k == result.parameters["k"] == best["k"]
    assert result.k in (4, 5)  # the four blobs, plus at most one component for the outliers


@pytest.mark.parametrize("method", ["dbscan", "hdbscan"])
def test_density_methods_recover_the_blobs_and_leave_outliers_unclustered(blobs, method):
    """Four groups found by the stated heuristics; most outliers, few blob customers Unclustered."""
    coords, truth = blobs
    result = cluster(method, coords, _cfg(), 4, seed=42)
    assert result.k == 4
    assert _inlier_ari(result.labels, truth) >= 0.95
    outliers = truth == -1
    assert (result.labels[outliers] == NOISE).sum() >= 0.7 * OUTLIERS
    assert (result.labels[~outliers] == NOISE).sum() <= 0.01 * (~outliers).sum()
    assert result.unclustered == (result.labels == NOISE).sum()


@pytest.mark.parametrize("method", ["dbscan", "hdbscan", "agglomerative", "spectral"])
def test_sampled_methods_extend_to_everyone(blobs, method):
    """Fitted on 300 of 930 customers, the extension keeps the blobs (ARI >= 0.95)."""
    coords, truth = blobs
    result = cluster(method, coords, _cfg(sample_size=300), 4, seed=42)
    assert result.fitted_on == 300 and len(result.labels) == len(coords)
    assert _inlier_ari(result.labels, truth) >= 0.95


def test_mixture_and_bootstrap_use_the_fit_sample(blobs):
    """With fit_sample_size 200 of 930: the mixture is fitted on 200, every customer is scored."""
    coords, truth = blobs
    cfg = SegmentationSection(fit_sample_size=200, silhouette_sample_size=100, stability_seeds=2)
    result = cluster("gmm", coords, cfg, 4, seed=42)
    assert len(result.labels) == len(coords) and result.membership.shape[0] == len(coords)
    assert _inlier_ari(result.labels, truth) >= 0.95
    _, ari = bootstrap_ari(result, coords, cfg, 42)
    assert min(ari) >= 0.9


def test_heuristics_are_stated_with_their_values(blobs):
    """min_samples = 2 x dimensions; min_cluster_size = 2% of customers; eps from the knee."""
    coords, _ = blobs
    hdb = cluster("hdbscan", coords, _cfg(), 4, seed=42)
    assert hdb.parameters == {"min_cluster_size": 19, "min_samples": 6}  # ceil(0.02 x 930)
    assert "min_cluster_size=19 (min_segment_share 2% of the 930 customers" in hdb.note
    db = cluster("dbscan", coords, _cfg(), 4, seed=42)
    assert db.parameters["min_samples"] == 6 and "knee of the sorted distances" in db.note
    fixed = cluster("dbscan", coords, _cfg(eps=0.9, min_samples=4), 4, seed=42)
    assert fixed.parameters == {"eps": 0.9, "min_samples": 4}


def test_same_seed_gives_the_same_labels(blobs):
    """Every method twice with one seed: identical labels and bootstrap stability."""
    coords, _ = blobs
    cfg = _cfg(sample_size=400)
    for method in ALGORITHMS:
        a, b = (cluster(method, coords, cfg, 4, seed=7) for _ in range(2))
        assert np.array_equal(a.labels, b.labels), method
        assert bootstrap_ari(a, coords, cfg, 7) == bootstrap_ari(b, coords, cfg, 7), method


def test_bootstrap_stability_is_high_on_clear_blobs(blobs):
    """Refits on bootstrap samples agree with the full fit: ARI >= 0.9 each time."""
    coords, _ = blobs
    result = cluster("agglomerative", coords, _cfg(), 4, seed=42)
    seeds, ari = bootstrap_ari(result, coords, SegmentationSection(stability_seeds=3), 42)
    assert len(seeds) == len(ari) == 3 and min(ari) >= 0.9


def test_gmm_membership_rows_sum_to_one(blobs):
    """Soft membership: one column per cluster, every row sums to 1, argmax = the label."""
    coords, _ = blobs
    result = cluster("gmm", coords, _cfg(), 4, seed=42)
    assert result.membership.shape == (len(coords), result.k)
    np.testing.assert_allclose(result.membership.sum(axis=1), 1.0, atol=1e-9)
    assert np.array_equal(result.membership.argmax(axis=1), result.labels)


# ---------------------------------------------------------------------------------------------
# Label helpers (exact values)


def test_compact_numbers_clusters_in_order_and_keeps_noise():
    labels, _ = _compact(np.array([5, -1, 2, 5, 9]), None)
    assert labels.tolist() == [1, -1, 0, 1, 2]


def test_cap_merges_the_smallest_clusters_into_the_nearest_kept_one():
    """Three clusters, two names: the smallest (label 2, x=9) joins its nearest (label 1, x=10)."""
    coords = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [9.0]])
    labels = np.array([0, 0, 0, 1, 1, 2])
    capped, merged = _cap(labels, coords, 2)
    assert merged == 1 and capped.tolist() == [0, 0, 0, 1, 1, 1]
    assert _cap(labels, coords, 3) == (labels, 0)


def test_hdbscan_extension_follows_density():
    """A customer inside a group's spread joins it; one far away stays Unclustered."""
    sample = np.array([[0.0], [1.0], [2.0], [3.0], [20.0]])
    labels = np.array([0, 0, 0, 0, NOISE])
    rest = np.array([[1.5], [10.0], [19.0]])
    assert _extend_hdbscan(sample, labels, rest, min_samples=2).tolist() == [0, NOISE, NOISE]


def test_membership_columns_follow_the_segment_order():
    """Model label 0 became segment 1 and label 1 segment 0: columns are swapped and named."""
    frame = membership_frame(
        pl.Series(["a", "b"]),
        np.array([[0.9, 0.1], [0.2, 0.8]]),
        np.array([1, 0]),
        ["Champions", "Can't Lose Them"],
    )
    assert frame.columns == ["customer_id", "membership_champions", "membership_cant_lose_them"]
    assert frame.row(0) == ("a", 0.1, 0.9)


# ---------------------------------------------------------------------------------------------
# Through segment.py: the report acts on the chosen algorithm


# Planted RFM types: (share, median recency days, median orders, median spend in pounds).
TYPES = {
    "champions": (0.2, 3, 20, 8000.0),
    "loyal": (0.3, 30, 6, 1500.0),
    "new": (0.2, 8, 1, 80.0),
    "lapsed": (0.3, 250, 2, 300.0),
}


def _rfm(recency, frequency, monetary_minor) -> RfmTable:
    """An RfmTable through the real scoring and grid, from per-customer values."""
    n = len(recency)
    aggregates = pl.DataFrame(
        {
            "customer_id": [f"c{i:05d}" for i in range(n)],
            "frequency": [int(f) for f in frequency],
            "monetary_minor": [int(m) for m in monetary_minor],
            "gross_minor": [int(m) for m in monetary_minor],
            "returned_value_minor": [0] * n,
            "last_order": [AS_OF - dt.timedelta(days=int(r)) for r in recency],
            "first_order": [AS_OF - dt.timedelta(days=int(r) + 30) for r in recency],
            "_in_period": [True] * n,
            "_as_of": [AS_OF] * n,
        }
    )
    return finish_rfm(aggregates, RfmSection(), load_segment_map("builtin"), 2, None)


def _planted(n: int, seed: int, outliers: int = 0) -> tuple[RfmTable, np.ndarray]:
    """Customers of the planted TYPES (log-normal, sd 0.12), then `outliers` scattered ones."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(len(TYPES), size=n, p=[t[0] for t in TYPES.values()])
    med = np.array([t[1:] for t in TYPES.values()])[kind]
    z = rng.normal(0, 0.12, size=(n, 3))
    recency = np.round(np.exp(np.log(med[:, 0] + 1) + z[:, 0]) - 1).clip(0, 365)
    orders = np.maximum(1, np.round(np.exp(np.log(med[:, 1]) + z[:, 1])))
    spend = np.round(np.exp(np.log(med[:, 2] * 100) + z[:, 2]))
    recency = np.r_[recency, rng.integers(0, 365, outliers)]
    orders = np.r_[orders, rng.integers(1, 60, outliers)]
    spend = np.r_[spend, np.round(np.exp(rng.uniform(np.log(500), np.log(5e6), outliers)))]
    return _rfm(recency, orders, spend), np.r_[kind, np.full(outliers, -1)]


@pytest.fixture(scope="module")
def planted():
    return _planted(1200, seed=1, outliers=40)


def _labels(seg) -> np.ndarray:
    return seg.assignments["label"].to_numpy()


@pytest.mark.parametrize("algorithm", ["agglomerative", "gmm"])
def test_chosen_algorithm_gives_the_report_segments(planted, algorithm):
    """The report's segments are the chosen algorithm's: types recovered, named, acted on."""
    rfm, kind = planted
    seg = segment_customers(rfm, SegmentationSection(algorithm=algorithm), {}, 42)
    assert seg.algorithm == algorithm and _inlier_ari(_labels(seg), kind) >= 0.95
    assert len(set(seg.names)) == len(seg.names) == len(seg.profiles) == len(seg.actions)
    summary = segmentation_summary(seg)
    assert summary["method"]["algorithm_name"] == algorithm
    assert summary["method"]["algorithm_note"] == seg.algorithm_note != ""
    assert "bootstrap" in seg.stability.note


def test_hdbscan_noise_is_an_unclustered_segment_reported_and_exported(planted):
    """HDBSCAN's noise: the Unclustered segment (last), with a profile, an action and exports."""
    rfm, kind = planted
    seg = segment_customers(rfm, SegmentationSection(algorithm="hdbscan"), {}, 42)
    assert seg.names[-1] == UNCLUSTERED and seg.choice.rule == "density"
    unclustered = next(p for p in seg.profiles if p.name == UNCLUSTERED)
    noise = seg.assignments.filter(pl.col("segment") == UNCLUSTERED).height
    assert unclustered.customers == noise > 0
    assert f"{noise:,} customers" in seg.choice.reason and UNCLUSTERED in seg.choice.reason
    assert UNCLUSTERED in [a.segment for a in seg.actions]
    table = export_table(rfm, segment_columns(seg, rfm), [])
    assert table.filter(pl.col("segment") == UNCLUSTERED).height == noise
    outliers = seg.assignments["segment"].to_numpy()[kind == -1]
    assert (outliers == UNCLUSTERED).mean() >= 0.5  # the scattered customers are the noise


def test_gmm_chosen_exports_soft_membership(planted):
    """segments.csv/parquet gain membership_<segment> columns whose rows sum to 1."""
    rfm, _ = planted
    seg = segment_customers(rfm, SegmentationSection(algorithm="gmm"), {}, 42)
    table = export_table(rfm, segment_columns(seg, rfm), [])
    soft = [c for c in table.columns if c.startswith("membership_")]
    assert soft == [
        f"membership_{n.lower().replace(' ', '_').replace(chr(39), '')}" for n in seg.names
    ]
    sums = table.select(pl.sum_horizontal(soft)).to_series()
    assert sums.is_between(1 - 1e-5, 1 + 1e-5).all()
    best = table.select(pl.concat_list(soft).list.arg_max()).to_series().to_list()
    assert [seg.names[i] for i in best] == table["segment"].to_list()


def test_kmeans_default_is_unchanged(planted):
    """algorithm: kmeans (the default) takes no other path: no membership, no note."""
    rfm, _ = planted
    seg = segment_customers(rfm, SegmentationSection(), {}, 42)
    assert seg.algorithm == "kmeans" and seg.membership is None and seg.algorithm_note == ""
    assert segment_columns(seg, rfm).columns == ["customer_id", "segment", "outlier"]


def test_segment_names_keep_noise_unclustered(planted):
    """Every method's clusters take grid names; noise stays Unclustered."""
    rfm, kind = planted
    cfg = SegmentationSection()
    from reportgen.segment import feature_matrix, fit_transform

    raw = feature_matrix(rfm.scored, cfg.features, 2)
    coords = fit_transform(raw, cfg)[0].apply(raw)
    labels = np.where(kind == -1, NOISE, kind)
    names = segment_names(labels, coords, rfm.scored["rfm_grid_segment"], grid_names(rfm.scored))
    assert set(names[kind == -1]) == {UNCLUSTERED}
    assert len(set(names[kind != -1])) == 4


def test_all_noise_for_the_chosen_algorithm_is_a_config_error(planted):
    """A radius so small that nobody is a core customer: the message names the keys to change."""
    rfm, _ = planted
    cfg = SegmentationSection(
        algorithm="dbscan", algorithm_options={"eps": 1e-6, "min_samples": 50}
    )
    with pytest.raises(
        ConfigError, match=r"segmentation.algorithm dbscan: every customer is noise"
    ):
        segment_customers(rfm, cfg, {}, 42)


# ---------------------------------------------------------------------------------------------
# Configuration


def test_options_are_off_by_default():
    cfg = config_from_dict({"input": {"path": "x.csv"}})
    assert cfg.segmentation.algorithm == "kmeans" and cfg.segmentation.compare == []
    assert cfg.representation.features == "rfm" and cfg.representation.cluster_on == "rfm"
    assert cfg.representation.embedding.enabled is False


@pytest.mark.parametrize(
    ("section", "line"),
    [
        (
            {"segmentation": {"algorithm": "kmean"}},
            (
                "segmentation.algorithm: Input should be 'kmeans', 'gmm', 'dbscan', 'hdbscan', "
                "'agglomerative' or 'spectral' (got 'kmean')"
            ),
        ),
        (
            {"segmentation": {"compare": ["gmm", "hdbscan", "gmm"]}},
            "segmentation.compare: lists gmm more than once",
        ),
        (
            {"segmentation": {"algorithm_options": {"eps": 0}}},
            (
                "segmentation.algorithm_options.eps: Input should be 'auto' (got 0); "
                "or Input should be greater than 0"
            ),
        ),
        (
            {"segmentation": {"algorithm_options": {"min_cluster_size": 1}}},
            (
                "segmentation.algorithm_options.min_cluster_size: Input should be 'auto' (got 1); "
                "or "
                "Input should be greater than or equal to 2 (got 1)"
            ),
        ),
        (
            {"representation": {"cluster_on": "embedding"}},
            "representation.cluster_on: embedding needs representation.embedding.enabled: true",
        ),
        (
            {"representation": {"cluster_on": "extended"}},
            "representation.cluster_on: extended needs representation.features: extended",
        ),
        (
            {"representation": {"share_columns": ["Region"]}},
            (
                "representation.share_columns: ['Region'] are not in input.attributes ['Country']; "
                "add "
                "them there (spend shares are read per transaction)"
            ),
        ),
    ],
)
def test_bad_options_name_their_key(section, line):
    data = {"input": {"path": "x.csv", "attributes": ["Country"]}, **section}
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    assert f"  {line}\n" in str(caught.value)
