"""The playbook: default entries, YAML overrides, revenue at stake and the ranking."""

from __future__ import annotations

import polars as pl
import pytest

import reportgen
from reportgen.config import PlaybookEntry
from reportgen.errors import ConfigError
from reportgen.grid import load_segment_map
from reportgen.playbook import (
    DEFAULT_PLAYBOOK,
    FIELDS,
    KINDS,
    REVENUE_AT_STAKE_DEFINITION,
    SEGMENT_NAMES,
    plan_actions,
    rank_actions,
    resolve_playbook,
)

MINIMAL_INPUT = {"path": "tx.csv"}


def test_every_name_has_a_complete_default_entry():
    """The 11 grid names, each with all seven fields written out."""
    assert set(DEFAULT_PLAYBOOK) == set(SEGMENT_NAMES) == set(KINDS)
    assert set(SEGMENT_NAMES) == set(load_segment_map().names)
    for name, entry in DEFAULT_PLAYBOOK.items():
        assert set(entry) == set(FIELDS), name
        assert all(len(text) > 20 for text in entry.values()), name
        assert "10%" in entry["holdout"], name


def test_overrides_replace_only_the_fields_given():
    """One field overridden; the others keep the defaults, and the override is recorded."""
    plays = resolve_playbook({"Champions": PlaybookEntry(offer="A signed thank-you card")})
    champions = plays["Champions"]
    assert champions.offer == "A signed thank-you card"
    assert champions.objective == DEFAULT_PLAYBOOK["Champions"]["objective"]
    assert champions.overridden == ("offer",)
    assert plays["Lost"].overridden == ()


def test_unknown_name_is_a_config_error():
    """A misspelt name is refused, naming playbook.<name> and the valid names."""
    with pytest.raises(ConfigError) as err:
        resolve_playbook({"Champs": PlaybookEntry(offer="x")})
    assert str(err.value) == (
        "playbook.Champs: not a segment name (names are case-sensitive); valid names: "
        "Champions, Loyal Customers, Potential Loyalist, New Customers, Promising, "
        "Need Attention, About To Sleep, At Risk, Can't Lose Them, Hibernating, Lost"
    )
    assert err.value.exit_code == 3


def test_unknown_name_is_refused_when_the_config_loads(tmp_path):
    """The YAML check points at the line of the bad key."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "input:\n  path: tx.csv\nplaybook:\n  Champions:\n    kpi: Repeat rate\n"
        "  champions:\n    kpi: x\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        reportgen.load_config(path)
    assert f"{path}:6: playbook.champions: not a segment name (names are case-sensitive)" in str(
        err.value
    )


def test_names_of_a_custom_segment_map_are_valid_keys():
    """With a user's map, its own names may be given actions."""
    data = {
        "input": MINIMAL_INPUT,
        "rfm": {"segment_map": {"Early": ["[12]**"], "Late": ["[345]**"]}},
        "playbook": {"Early": {"offer": "Come back"}},
    }
    config = reportgen.config_from_dict(data)
    plays = resolve_playbook(config.playbook, ["Early", "Late"])
    assert plays["Early"].offer == "Come back"
    assert (
        plays["Late"].offer == "No default for this segment name; set it under playbook.Late.offer."
    )


def test_blank_override_is_refused():
    """An empty string would blank the report's text: refused."""
    with pytest.raises(ConfigError, match=r"playbook.Lost.kpi: must not be empty"):
        reportgen.config_from_dict({"input": MINIMAL_INPUT, "playbook": {"Lost": {"kpi": " "}}})


def _customers(rows: list[tuple[int, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["label", "segment", "revenue_minor"], orient="row")


def test_revenue_at_stake_per_kind():
    """Protect/retain/win back: the revenue; grow: the uplift to the next segment's median."""
    customers = _customers(
        [
            (0, "Loyal Customers", 10_000),
            (0, "Loyal Customers", 30_000),
            (0, "Loyal Customers", 50_000),
            (1, "Potential Loyalist", 5_000),
            (1, "Potential Loyalist", 35_000),
            (1, "Potential Loyalist", 40_000),
            (2, "Lost", 700),
        ]
    )
    grid = customers.select(pl.col("segment").alias("rfm_grid_segment"), "revenue_minor")
    actions = plan_actions(customers, grid, resolve_playbook({}), 2)
    stakes = {a.segment: a.revenue_at_stake_minor for a in actions}
    # the median Loyal customer spends 300.00: 250.00 + 0 + 0 missing among Potential Loyalists
    assert stakes == {"Loyal Customers": 90_000, "Potential Loyalist": 25_000, "Lost": 700}
    assert [a.customers for a in actions] == [3, 3, 1]
    assert actions[0].at_stake_basis == (
        "the segment's revenue in the period: what leaves with these customers if they lapse"
    )
    assert actions[2].at_stake_basis.endswith("what winning these customers back would restore")
    growth = actions[1].at_stake_basis
    assert growth == (
        "uplift if every customer below 300.00 (the median spend of Loyal Customers, this "
        "segmentation) spent that much"
    )
    assert "period" in REVENUE_AT_STAKE_DEFINITION and "median" in REVENUE_AT_STAKE_DEFINITION


def test_growth_target_falls_back_to_the_rfm_grid():
    """No Potential Loyalist segment this run: its median in the RFM grid is the target."""
    customers = _customers([(0, "New Customers", 1_000), (0, "New Customers", 4_000)])
    grid = pl.DataFrame(
        {
            "rfm_grid_segment": ["Potential Loyalist", "Potential Loyalist"],
            "revenue_minor": [2_000, 3_001],
        }
    )
    (action,) = plan_actions(customers, grid, resolve_playbook({}), 2)
    assert action.revenue_at_stake_minor == 2_500 - 1_000  # median 2,500.5 rounds half to even
    assert "Potential Loyalist, in the RFM grid" in action.at_stake_basis


def test_growth_without_any_target_is_zero():
    """Neither the segments nor the grid hold the next segment up: nothing at stake, said so."""
    customers = _customers([(0, "Promising", 1_000)])
    grid = customers.select(pl.col("segment").alias("rfm_grid_segment"), "revenue_minor")
    (action,) = plan_actions(customers, grid, resolve_playbook({}), 2)
    assert action.revenue_at_stake_minor == 0
    assert action.at_stake_basis.startswith("no customer is in Potential Loyalist")


def test_ranking_by_revenue_at_stake_ties_by_label():
    """Largest first; equal stakes keep segment order."""
    customers = _customers(
        [
            (0, "Champions", 500),
            (1, "At Risk", 900),
            (2, "Hibernating", 500),
            (3, "Lost", 100),
        ]
    )
    grid = customers.select(pl.col("segment").alias("rfm_grid_segment"), "revenue_minor")
    ranked = rank_actions(plan_actions(customers, grid, resolve_playbook({}), 2))
    assert [a.segment for a in ranked] == ["At Risk", "Champions", "Hibernating", "Lost"]
