"""The fairness audit: effect sizes, small groups, and a planted bias found (and not invented)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

import reportgen
from reportgen.cli import cli
from reportgen.config import FairnessSection
from reportgen.errors import ConfigError
from reportgen.fairness import (
    MISSING,
    OTHER,
    ChiSquare,
    audit_fairness,
    cramers_v,
    customer_at_stake,
    discount_segments,
    group_customers,
    is_flagged,
)
from reportgen.playbook import resolve_playbook
from reportgen.sample import (
    DEMOGRAPHICS,
    PLANTED_BIAS,
    SampleSpec,
    planted_demographics,
    write_sample,
)

THRESHOLD = FairnessSection().cramers_v_threshold
COLUMNS = {"customer_id": "CustomerID", "order_id": "InvoiceNo", "order_date": "InvoiceDate",
           "amount": None, "quantity": "Quantity", "unit_price": "UnitPrice",
           "product_id": "StockCode"}  # fmt: skip
ATTRIBUTES = list(DEMOGRAPHICS)  # AgeBand, Gender, Region
_, BIASED_COLUMN, BIASED_GROUP = PLANTED_BIAS


def sample_config(folder: Path, bias: float, **fairness: object) -> reportgen.Config:
    """The synthetic sample with demographic columns (seed 7), the audit on, k fixed at 4."""
    name = f"sample_{bias}.parquet"
    if not (folder / name).exists():
        spec = SampleSpec(rows=30_000, customers=1_500, seed=7, demographics=True,
                          planted_bias=bias)  # fmt: skip
        write_sample(spec, folder / name)
    return reportgen.config_from_dict(
        {"input": {"path": name, "columns": COLUMNS, "attributes": ATTRIBUTES},
         "segmentation": {"k": 4, "stability_seeds": 2},
         "fairness": {"enabled": True, **fairness}}, folder)  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fairness")


@pytest.fixture(scope="module")
def unbiased(folder: Path) -> reportgen.Report:
    return reportgen.compute_report(sample_config(folder, 0.0))


@pytest.fixture(scope="module")
def biased(folder: Path) -> reportgen.Report:
    return reportgen.compute_report(sample_config(folder, 0.7))


def _by_name(report: reportgen.Report):
    return {a.attribute: a for a in report.fairness.attributes}


# ---------------------------------------------------------------------------------------------
# Statistics


def test_cramers_v_matches_the_hand_computed_bias_corrected_value():
    """[[30, 10], [10, 30]]: chi2 = 20, phi2 = 0.25 - 1/79, V = sqrt(that / (1 - 1/79))."""
    test = cramers_v(np.array([[30, 10], [10, 30]]))
    assert test.chi2 == pytest.approx(20.0)
    assert test.dof == 1
    assert test.cramers_v == pytest.approx(math.sqrt((0.25 - 1 / 79) / (1 - 1 / 79)))
    assert test.low_expected_share == 0.0


def test_cramers_v_is_zero_for_independence_and_one_for_a_perfect_split():
    assert cramers_v(np.array([[10, 20, 30], [20, 40, 60]])).cramers_v == 0.0
    assert cramers_v(np.array([[50, 0], [0, 50]])).cramers_v == pytest.approx(1.0)


def test_empty_rows_and_columns_are_dropped_and_a_single_group_is_not_tested():
    assert cramers_v(np.array([[30, 0, 10], [10, 0, 30], [0, 0, 0]])).cramers_v == pytest.approx(
        cramers_v(np.array([[30, 10], [10, 30]])).cramers_v
    )
    assert cramers_v(np.array([[5], [7]])) == ChiSquare(0.0, 0, 1.0, 0.0, 0.0)


def test_flags_need_the_effect_size_not_only_a_small_p_value():
    cfg = FairnessSection()
    tiny_but_certain = ChiSquare(500.0, 3, 1e-12, 0.05, 0.0)
    large_but_chance = ChiSquare(3.0, 3, 0.4, 0.3, 0.0)
    both = ChiSquare(60.0, 3, 1e-6, 0.12, 0.0)
    assert not is_flagged(tiny_but_certain, tiny_but_certain.p_value, cfg)
    assert not is_flagged(large_but_chance, large_but_chance.p_value, cfg)
    assert is_flagged(both, both.p_value, cfg)
    assert not is_flagged(None, None, cfg)


def test_small_groups_are_merged_into_other_and_reported_when_still_too_small():
    values = pl.Series("Country", ["UK"] * 5 + ["DE"] * 3 + ["FR"] + [None])
    grouping = group_customers(values, min_size=3)
    assert grouping.groups.to_list() == ["UK"] * 5 + ["DE"] * 3 + [OTHER, OTHER]
    assert grouping.merged == (MISSING, "FR")
    assert (grouping.other, grouping.other_size) == (OTHER, 2)
    # a real value called Other keeps its name; the merged group gets another
    named = group_customers(pl.Series("c", ["Other"] * 4 + ["X"]), min_size=3)
    assert named.groups.to_list() == ["Other"] * 4 + ["Other (merged)"]


def test_discount_segments_come_from_the_playbook_offers():
    plays = resolve_playbook({})
    actions = [
        _action(i, name, plays[name])
        for i, name in enumerate(
            ["Champions", "Loyal Customers", "At Risk", "Hibernating", "Lost", "Can't Lose Them"]
        )
    ]
    found = discount_segments(actions, "auto")
    assert [s for s, _ in found] == ["At Risk", "Hibernating", "Lost", "Can't Lose Them"]
    assert found[0][1] == "its offer mentions '15%'"
    listed = discount_segments(actions, ["Champions"])
    assert listed == [("Champions", "listed in fairness.discount_segments")]


def _action(label, name, play):
    from reportgen.playbook import Action

    return Action(label, name, 1, 100, 100, "", play)


# ---------------------------------------------------------------------------------------------
# A planted bias, both ways


def test_the_planted_bias_is_in_the_generated_columns():
    spec = SampleSpec(rows=5_000, customers=600, seed=1, demographics=True, planted_bias=1.0)
    people = planted_demographics(spec)
    from reportgen.sample import planted_types

    churned = people.join(planted_types(spec), on="CustomerID").filter(
        pl.col("customer_type") == PLANTED_BIAS[0]
    )
    assert churned.height > 0
    assert (churned[BIASED_COLUMN] == BIASED_GROUP).all()


def test_the_audit_flags_the_planted_bias_on_the_cramers_v_threshold(biased):
    audits = _by_name(biased)
    age = audits[BIASED_COLUMN]
    flagged = [s for s in age.segments if s.flagged]
    assert flagged, age.summary
    for skew in flagged:  # 65+ over-represented where the churned went, under elsewhere
        assert skew.test.cramers_v >= THRESHOLD
        gap = max(skew.groups, key=lambda g: abs(g.share - g.population_share))
        assert gap.group == BIASED_GROUP
        assert skew.finding.startswith(f"{skew.segment} is skewed: {BIASED_GROUP} make up")
    assert max(g.ratio for s in flagged for g in s.groups if g.group == BIASED_GROUP) > 1.5
    assert age.findings and age.flagged
    # the discounts go to the segments the planted customers fall into, so they reach 65+ more
    assert age.reach.flagged and age.reach.test.cramers_v >= THRESHOLD
    top = max(age.reach.groups, key=lambda g: g.rate_ratio)
    assert top.group == BIASED_GROUP and top.rate_ratio > 1.2
    assert top.revenue_reach_rate > age.reach.revenue_reach_rate  # in money too
    # the attributes without a bias stay clean, in the same data
    for name in ATTRIBUTES:
        if name != BIASED_COLUMN:
            assert not audits[name].flagged
            assert all(s.test.cramers_v < THRESHOLD for s in audits[name].segments if s.test)


def test_the_audit_does_not_flag_data_without_a_bias(unbiased):
    assert not unbiased.fairness.flagged
    assert unbiased.fairness.findings == ()
    for audit in unbiased.fairness.attributes:
        tested = [s for s in audit.segments if s.test is not None]
        assert tested, audit.attribute
        assert all(s.test.cramers_v < THRESHOLD for s in tested), audit.attribute
        assert audit.reach.test.cramers_v < THRESHOLD
        assert "no segment's make-up differs" in audit.summary


def test_revenue_at_stake_split_per_customer_adds_up_to_each_action(biased):
    seg, rfm = biased.segmentation, biased.rfm
    people = seg.assignments.select("customer_id", "label", "segment").join(
        rfm.frame.select("customer_id", "rfm_grid_segment", "revenue_minor"), on="customer_id"
    )
    stake = people.with_columns(customer_at_stake(people, seg.actions).alias("stake"))
    for action in seg.actions:
        mine = stake.filter(pl.col("label") == action.label)["stake"].sum()
        assert mine == action.revenue_at_stake_minor, action.segment


def test_segments_smaller_than_the_minimum_are_reported_not_tested(biased):
    sizes = sorted(p.customers for p in biased.segmentation.profiles)
    cfg = FairnessSection(enabled=True, min_group_size=sizes[0] + 1)
    audit = audit_fairness(biased.rfm, biased.segmentation, cfg, ["Gender"])
    small = [s for s in audit.attributes[0].segments if s.customers < cfg.min_group_size]
    assert small and all(s.test is None and not s.flagged for s in small)
    assert small[0].finding.endswith(f"too few to test (fewer than {cfg.min_group_size}).")
    # Gender's "Not stated" (2%, about 30 customers) is merged and too small at this size
    assert audit.attributes[0].too_small == ((OTHER, audit.attributes[0].too_small[0][1]),)
    assert "Not stated" in audit.attributes[0].merged


# ---------------------------------------------------------------------------------------------
# Config, CLI and exports


def test_audited_attributes_must_be_kept_per_customer(folder):
    with pytest.raises(ConfigError) as info:
        sample_config(folder, 0.0, attributes=["Age"])
    assert ("fairness: attributes ['Age'] are not in input.attributes "
            "['AgeBand', 'Gender', 'Region']") in str(info.value)  # fmt: skip


def test_discount_segments_must_be_segment_names(folder):
    with pytest.raises(ConfigError) as info:
        sample_config(folder, 0.0, discount_segments=["Loyal"])
    assert "fairness: discount_segments ['Loyal']: not a segment name" in str(info.value)


def test_sample_cli_plants_the_bias(tmp_path):
    out = tmp_path / "s.csv"
    result = CliRunner().invoke(cli, ["sample", "--rows", "3000", "--customers", "200", "--bias",
                                      "1", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pl.read_csv(out)
    assert set(DEMOGRAPHICS) <= set(frame.columns)
    bad = CliRunner().invoke(cli, ["sample", "--bias", "1.5", "-o", str(tmp_path / "x.csv")])
    assert bad.exit_code == 2


def test_sample_spec_refuses_a_bias_without_demographics():
    with pytest.raises(ValueError, match="planted_bias: needs demographics=True"):
        SampleSpec(planted_bias=0.5)
    with pytest.raises(ValueError, match="planted_bias: expected a number from 0 to 1"):
        SampleSpec(demographics=True, planted_bias=2)


def test_numbers_are_in_summary_json_and_fairness_csv(folder, tmp_path):
    result = reportgen.run(sample_config(folder, 0.7), output=tmp_path)
    summary = json.loads((result.folder / "summary.json").read_text())
    part = summary["fairness"]
    assert part["flagged"] is True and part["cramers_v_threshold"] == THRESHOLD
    age = next(a for a in part["attributes"] if a["attribute"] == BIASED_COLUMN)
    assert {s["segment"] for s in age["segments"]} == set(result.report.segmentation.names)
    assert all(s["test"]["cramers_v"] is not None for s in age["segments"])
    assert age["discount_reach"]["flagged"] is True
    csv = pl.read_csv(result.folder / "fairness.csv")
    assert csv.height == sum(len(s["groups"]) for a in part["attributes"] for s in a["segments"])
    assert summary["graph"] is None
