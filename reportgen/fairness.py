"""The fairness audit: is any segment's make-up, or the reach of its discounts, skewed by group?

For each audited attribute (a column kept per customer, e.g. country or age band) over the
segmented customers:
1. groups: attribute values with fewer than `min_group_size` customers are merged into "Other";
   if "Other" is still that small it is reported as too small and left out of the tests (a
   missing value is a group of its own, "(missing)");
2. per segment: the share of each group in the segment against the whole population and their
   ratio (the representation ratio), and a chi-square test of the segment against the rest
   (scipy `chi2_contingency`, no continuity correction) with its bias-corrected Cramer's V
   (Bergsma 2013). A segment is flagged when V reaches `cramers_v_threshold` AND the p-value,
   Bonferroni-adjusted over the segments tested, is below `alpha`: the effect must be large
   enough to matter, and not an accident of a small segment; the p-value alone never flags
   (with thousands of customers a trivial difference is "significant"). Segments smaller than
   `min_group_size` are reported, not tested;
3. overall: the same test on the whole segments x groups table;
4. discount reach: the segments whose playbook offer is a discount (`discount_segments`) reach
   a share of each group's customers and a share of the revenue at stake; the reached vs not
   reached x groups table is tested the same way.

Why 0.1: it is Cohen's "small" effect for a two-way split (w = 0.1), the smallest difference
worth a person's attention; Cohen's "medium" (0.3) would let a segment hold twice its share of a
10% group unflagged. A flag asks for a look at the reasons, it is not a verdict.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from .config import FairnessSection
from .playbook import NEXT_UP, Action
from .rfm import RfmTable
from .segment import Segmentation, revenue_expr

log = logging.getLogger(__name__)

OTHER, MISSING = "Other", "(missing)"
# A playbook offer is a discount when it names a percentage or one of these words.
DISCOUNT_PATTERN = re.compile(
    r"\d+(?:\s*-\s*\d+)?\s*%|\b(?:discount\w*|sale|clearance|coupons?|vouchers?|price cuts?|"
    r"pricing|markdowns?|cashback)\b",
    re.IGNORECASE,
)
METHOD = (
    "Per attribute, each segment is compared with the rest of the segmented customers: a "
    "chi-square test of the group counts and its bias-corrected Cramer's V (0 = the same make-up, "
    "1 = completely different groups). A segment is flagged when V reaches the threshold and the "
    "Bonferroni-adjusted p-value is below alpha. Representation ratio = a group's share of the "
    "segment / its share of all segmented customers (1 = as expected)."
)


# ---------------------------------------------------------------------------------------------
# Result types


@dataclass(frozen=True)
class ChiSquare:
    """A chi-square test of independence and its effect size."""

    chi2: float
    dof: int
    p_value: float
    cramers_v: float  # bias-corrected
    low_expected_share: float  # share of cells with an expected count under 5


@dataclass(frozen=True)
class GroupShare:
    """One group within one segment (or the whole population)."""

    group: str
    customers: int
    share: float  # of the segment
    population_share: float  # of all audited customers
    ratio: float  # share / population_share


@dataclass(frozen=True)
class SegmentSkew:
    """One segment's make-up by an attribute against everyone's."""

    segment: str
    customers: int
    groups: tuple[GroupShare, ...]
    test: ChiSquare | None  # None: too small to test
    p_adjusted: float | None
    flagged: bool
    finding: str


@dataclass(frozen=True)
class GroupReach:
    """How the discount actions reach one group, in customers and in money."""

    group: str
    customers: int
    reached: int
    reach_rate: float  # reached / customers
    rate_ratio: float  # reach_rate / the overall reach rate
    revenue_minor: int
    revenue_reached_minor: int  # revenue of the reached customers
    revenue_reach_rate: float  # revenue_reached / revenue: the money the discounts touch
    at_stake_minor: int  # revenue at stake in the discount segments
    customer_share: float  # of all audited customers
    at_stake_share: float  # of the discount segments' revenue at stake


@dataclass(frozen=True)
class DiscountReach:
    """Whether the discount actions reach an attribute's groups evenly."""

    groups: tuple[GroupReach, ...]
    reached: int
    reach_rate: float
    revenue_reach_rate: float  # of all audited customers' revenue
    at_stake_minor: int
    test: ChiSquare | None
    flagged: bool
    finding: str


@dataclass(frozen=True)
class AttributeAudit:
    """Everything the audit says about one attribute."""

    attribute: str
    customers: int  # audited customers in the tested groups
    groups: tuple[GroupShare, ...]  # the population's make-up (tested groups)
    merged: tuple[str, ...]  # values merged into Other
    too_small: tuple[tuple[str, int], ...]  # (group, customers) left out of the tests
    overall: ChiSquare | None
    segments: tuple[SegmentSkew, ...]
    reach: DiscountReach | None
    flagged: bool
    findings: tuple[str, ...]  # plain-language flags (empty: nothing flagged)
    summary: str  # one sentence, flagged or not


@dataclass(frozen=True, eq=False)
class FairnessAudit:
    """The audit of every configured attribute."""

    settings: FairnessSection
    minor_digits: int
    customers: int  # segmented customers audited
    excluded_customers: int  # not segmented (non-positive spend): not audited
    discount_segments: tuple[tuple[str, str], ...]  # (segment, why it counts as a discount)
    attributes: tuple[AttributeAudit, ...]
    method: str

    @property
    def flagged(self) -> bool:
        """Whether any attribute has a flag."""
        return any(a.flagged for a in self.attributes)

    @property
    def findings(self) -> tuple[str, ...]:
        """Every plain-language flag, with the attribute it is about."""
        return tuple(f"{a.attribute}: {f}" for a in self.attributes for f in a.findings)


# ---------------------------------------------------------------------------------------------
# Statistics


def cramers_v(table: np.ndarray) -> ChiSquare:
    """Chi-square test of a contingency table (no continuity correction) and bias-corrected V.

    Bergsma (2013): phi2 corrected by its expected value under independence, and the table's
    dimensions corrected the same way, so V is close to 0 for independent data of any size.
    """
    from scipy.stats import chi2_contingency

    table = np.asarray(table, dtype=np.float64)
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    n = table.sum()
    r, k = table.shape
    if r < 2 or k < 2 or n < 2:
        return ChiSquare(0.0, 0, 1.0, 0.0, 0.0)
    chi2, p, dof, expected = chi2_contingency(table, correction=False)
    phi2 = max(0.0, chi2 / n - (k - 1) * (r - 1) / (n - 1))
    r_c, k_c = r - (r - 1) ** 2 / (n - 1), k - (k - 1) ** 2 / (n - 1)
    denominator = min(r_c - 1, k_c - 1)
    v = math.sqrt(phi2 / denominator) if denominator > 0 else 0.0
    return ChiSquare(float(chi2), int(dof), float(p), v, float((expected < 5).mean()))


def is_flagged(test: ChiSquare | None, p_adjusted: float | None, cfg: FairnessSection) -> bool:
    """Flag on the effect size, guarded by the (adjusted) p-value: never on the p-value alone."""
    if test is None or p_adjusted is None:
        return False
    return test.cramers_v >= cfg.cramers_v_threshold and p_adjusted < cfg.alpha


@dataclass(frozen=True)
class Grouping:
    """Each customer's group, and what was merged."""

    groups: pl.Series  # per customer
    merged: tuple[str, ...]  # values merged into `other`
    other: str  # the merged group's name
    other_size: int


def group_customers(values: pl.Series, min_size: int) -> Grouping:
    """Each customer's group: values with fewer than `min_size` customers merged into Other.

    Values are compared as text; a missing value is the group "(missing)".
    """
    text = values.cast(pl.String).fill_null(MISSING)
    counts = text.value_counts()
    small = counts.filter(pl.col("count") < min_size)[text.name].sort().to_list()
    other = OTHER if OTHER not in counts[text.name].to_list() else f"{OTHER} (merged)"
    grouped = text.replace(small, [other] * len(small)) if small else text
    size = int(counts.filter(pl.col(text.name).is_in(small))["count"].sum())
    return Grouping(grouped, tuple(small), other, size)


# ---------------------------------------------------------------------------------------------
# The stage


def audit_fairness(
    rfm: RfmTable, seg: Segmentation, cfg: FairnessSection, attributes: Sequence[str]
) -> FairnessAudit:
    """Audit the segments, and the reach of their discount actions, by each attribute."""
    names = list(cfg.attributes or attributes)
    people = _people(rfm, seg, names)
    discounts = discount_segments(seg.actions, cfg.discount_segments)
    audits = tuple(
        _audit_attribute(people, name, [s for s, _ in discounts], seg.names, cfg, rfm.minor_digits)
        for name in names
    )
    for audit in audits:
        log.info("fairness: %s", audit.summary)
    return FairnessAudit(
        settings=cfg,
        minor_digits=rfm.minor_digits,
        customers=people.height,
        excluded_customers=rfm.frame.height - people.height,
        discount_segments=tuple(discounts),
        attributes=audits,
        method=METHOD,
    )


def _people(rfm: RfmTable, seg: Segmentation, attributes: Sequence[str]) -> pl.DataFrame:
    """Per segmented customer: segment, revenue, revenue at stake and the attributes."""
    values = rfm.frame.select("customer_id", "rfm_grid_segment",
                              revenue_expr(rfm).alias("revenue_minor"), *attributes)  # fmt: skip
    people = seg.assignments.select("customer_id", "label", "segment").join(
        values, on="customer_id", how="left"
    )
    return people.with_columns(customer_at_stake(people, seg.actions).alias("at_stake_minor"))


def customer_at_stake(people: pl.DataFrame, actions: Sequence[Action]) -> pl.Series:
    """Each customer's part of its segment's revenue at stake (they sum to the segment's).

    Protect, retain and win back: the customer's revenue. Grow: what the customer would add by
    spending the target (the median spend of the next segment up), as in the playbook.
    """
    stake = people["revenue_minor"].cast(pl.Int64)
    for action in actions:
        if action.play.kind != "grow" or action.segment not in NEXT_UP:
            continue
        target = _median_spend(people, NEXT_UP[action.segment])
        mine = people["label"] == action.label
        uplift = (pl.lit(target or 0) - people["revenue_minor"]).clip(lower_bound=0)
        stake = people.select(
            pl.when(mine).then(uplift if target is not None else 0).otherwise(stake)
        ).to_series()
        _check_stake(int(stake.filter(mine).sum()), action)
    return stake.cast(pl.Int64)


def _median_spend(people: pl.DataFrame, name: str) -> int | None:
    """The median revenue of a segment, else of the RFM grid cell so named (as the playbook)."""
    for column in ("segment", "rfm_grid_segment"):
        values = people.filter(pl.col(column) == name)["revenue_minor"]
        if values.len():
            return round(float(np.median(values.to_numpy())))
    return None


def _check_stake(total: int, action: Action) -> None:
    if int(total) != action.revenue_at_stake_minor:
        log.warning(
            "fairness: revenue at stake of %s split per customer sums to %d, not %d",
            action.segment, total, action.revenue_at_stake_minor,
        )  # fmt: skip


def discount_segments(
    actions: Sequence[Action], setting: str | Sequence[str]
) -> list[tuple[str, str]]:
    """(segment, reason) of the segments whose action counts as a discount."""
    if setting != "auto":
        chosen = set(setting)
        return [(a.segment, "listed in fairness.discount_segments") for a in actions
                if a.segment in chosen]  # fmt: skip
    found = []
    for action in actions:
        match = DISCOUNT_PATTERN.search(action.play.offer)
        if match:
            found.append((action.segment, f"its offer mentions '{match.group(0)}'"))
    return found


def _audit_attribute(
    people: pl.DataFrame,
    attribute: str,
    discounts: Sequence[str],
    order: Sequence[str],
    cfg: FairnessSection,
    digits: int,
) -> AttributeAudit:
    grouping = group_customers(people[attribute], cfg.min_group_size)
    frame = people.with_columns(grouping.groups.alias("group"))
    too_small = _too_small(grouping, cfg.min_group_size)
    tested = frame.filter(~pl.col("group").is_in([g for g, _ in too_small]))
    groups = sorted(tested["group"].unique().to_list(), key=_group_order)
    population = _shares(tested, groups, tested.height, None)
    skews = _segment_skews(tested, groups, population, order, cfg)
    overall = _overall(tested, groups, order, cfg)
    reach = _discount_reach(tested, groups, discounts, cfg) if discounts else None
    findings = [s.finding for s in skews if s.flagged] + (
        [reach.finding] if reach and reach.flagged else []
    )
    audit = AttributeAudit(
        attribute, tested.height, tuple(population), grouping.merged, too_small, overall,
        tuple(skews), reach, bool(findings), tuple(findings), summary="",
    )  # fmt: skip
    return _with_summary(audit, cfg)


def _group_order(group: str) -> tuple[int, str]:
    """Groups in name order, with Other and (missing) last."""
    return (1 if group.startswith(OTHER) or group == MISSING else 0, group)


def _too_small(grouping: Grouping, min_size: int) -> tuple[tuple[str, int], ...]:
    """The merged group when it is still under the minimum size: reported, not tested."""
    if not grouping.merged or grouping.other_size >= min_size:
        return ()
    return ((grouping.other, grouping.other_size),)


def _shares(
    frame: pl.DataFrame, groups: Sequence[str], total: int, population: Mapping[str, float] | None
) -> list[GroupShare]:
    counts = dict(frame.group_by("group").len().iter_rows())
    out = []
    for group in groups:
        n = int(counts.get(group, 0))
        share = n / total if total else math.nan
        base = population[group] if population is not None else share
        out.append(GroupShare(group, n, share, base, share / base if base else math.nan))
    return out


def _table(frame: pl.DataFrame, rows: pl.Expr, groups: Sequence[str]) -> np.ndarray:
    """Counts of (row value, group) as a 2D array, rows sorted, columns in `groups` order."""
    counts = frame.group_by(rows.alias("_row"), "group").len()
    keys = sorted(counts["_row"].unique().to_list())
    table = np.zeros((len(keys), len(groups)))
    index = {g: j for j, g in enumerate(groups)}
    for row, group, n in counts.iter_rows():
        table[keys.index(row), index[group]] = n
    return table


def _segment_skews(
    frame: pl.DataFrame,
    groups: Sequence[str],
    population: Sequence[GroupShare],
    order: Sequence[str],
    cfg: FairnessSection,
) -> list[SegmentSkew]:
    base = {g.group: g.population_share for g in population}
    sizes = dict(frame.group_by("segment").len().iter_rows())
    present = [s for s in order if sizes.get(s, 0)]
    testable = [s for s in present if sizes[s] >= cfg.min_group_size]
    skews = []
    for segment in present:
        mine = frame.filter(pl.col("segment") == segment)
        shares = tuple(_shares(mine, groups, mine.height, base))
        test = None
        if segment in testable and len(groups) > 1:
            test = cramers_v(_table(frame, pl.col("segment") == segment, groups))
        p_adj = min(1.0, test.p_value * len(testable)) if test is not None else None
        flagged = is_flagged(test, p_adj, cfg)
        finding = _skew_finding(segment, shares, test, flagged, cfg, mine.height)
        skews.append(SegmentSkew(segment, mine.height, shares, test, p_adj, flagged, finding))
    return skews


def _overall(
    frame: pl.DataFrame, groups: Sequence[str], order: Sequence[str], cfg: FairnessSection
) -> ChiSquare | None:
    sizes = dict(frame.group_by("segment").len().iter_rows())
    testable = [s for s in order if sizes.get(s, 0) >= cfg.min_group_size]
    if len(testable) < 2 or len(groups) < 2:
        return None
    return cramers_v(_table(frame.filter(pl.col("segment").is_in(testable)), pl.col("segment"),
                            groups))  # fmt: skip


def _discount_reach(
    frame: pl.DataFrame, groups: Sequence[str], discounts: Sequence[str], cfg: FairnessSection
) -> DiscountReach:
    reached = pl.col("segment").is_in(list(discounts))
    per_group = frame.group_by("group").agg(
        pl.len().alias("customers"),
        reached.sum().alias("reached"),
        pl.col("revenue_minor").sum(),
        pl.col("revenue_minor").filter(reached).sum().alias("revenue_reached_minor"),
        pl.col("at_stake_minor").filter(reached).sum().alias("at_stake_minor"),
    )
    rows = {r["group"]: r for r in per_group.iter_rows(named=True)}
    total, hit = frame.height, int(frame.select(reached.sum()).item())
    stake = int(sum(int(r["at_stake_minor"]) for r in rows.values()))
    revenue = sum(int(r["revenue_minor"]) for r in rows.values())
    touched = sum(int(r["revenue_reached_minor"]) for r in rows.values())
    money_rate = touched / revenue if revenue else math.nan
    rate = hit / total if total else math.nan
    out = tuple(_group_reach(rows[g], total, rate, stake) for g in groups)
    test = (
        cramers_v(_table(frame, reached, groups)) if len(groups) > 1 and 0 < hit < total else None
    )
    flagged = is_flagged(test, test.p_value if test else None, cfg)
    finding = _reach_finding(out, rate, money_rate, test, flagged, cfg, discounts)
    return DiscountReach(out, hit, rate, money_rate, stake, test, flagged, finding)


def _group_reach(row: dict, total: int, rate: float, stake: int) -> GroupReach:
    n, hit = int(row["customers"]), int(row["reached"])
    group_rate = hit / n if n else math.nan
    return GroupReach(
        group=row["group"],
        customers=n,
        reached=hit,
        reach_rate=group_rate,
        rate_ratio=group_rate / rate if rate else math.nan,
        revenue_minor=int(row["revenue_minor"]),
        revenue_reached_minor=int(row["revenue_reached_minor"]),
        revenue_reach_rate=int(row["revenue_reached_minor"]) / int(row["revenue_minor"])
        if row["revenue_minor"]
        else math.nan,
        at_stake_minor=int(row["at_stake_minor"]),
        customer_share=n / total if total else math.nan,
        at_stake_share=int(row["at_stake_minor"]) / stake if stake else math.nan,
    )


# ---------------------------------------------------------------------------------------------
# Words


def _v_words(test: ChiSquare, cfg: FairnessSection) -> str:
    relation = "at or above" if test.cramers_v >= cfg.cramers_v_threshold else "below"
    return (f"Cramer's V {test.cramers_v:.2f}, {relation} the {cfg.cramers_v_threshold:.2f} "
            "threshold")  # fmt: skip


def _skew_finding(
    segment: str,
    shares: Sequence[GroupShare],
    test: ChiSquare | None,
    flagged: bool,
    cfg: FairnessSection,
    size: int,
) -> str:
    if test is None:
        return (f"{segment}: {size} customers, too few to test (fewer than "
                f"{cfg.min_group_size}).")  # fmt: skip
    gap = max(shares, key=lambda g: (abs(g.share - g.population_share), g.group))
    over = "over" if gap.share > gap.population_share else "under"
    detail = (
        f"{gap.group} make up {gap.share:.0%} of {segment} against "
        f"{gap.population_share:.0%} of all segmented customers ({over}-represented, ratio "
        f"{gap.ratio:.2f})"
    )
    if flagged:
        return f"{segment} is skewed: {detail}; {_v_words(test, cfg)}."
    return f"{segment} is not flagged ({_v_words(test, cfg)}); the largest gap: {detail}."


def _reach_finding(
    groups: Sequence[GroupReach],
    rate: float,
    money_rate: float,
    test: ChiSquare | None,
    flagged: bool,
    cfg: FairnessSection,
    discounts: Sequence[str],
) -> str:
    if test is None:
        return "The discount actions reach every customer or none: nothing to compare."
    gap = max(groups, key=lambda g: (abs(g.reach_rate - rate), g.group))
    detail = (f"the discount offers ({', '.join(discounts)}) reach {gap.reach_rate:.0%} of "
              f"{gap.group} customers against {rate:.0%} of all customers (ratio "
              f"{gap.rate_ratio:.2f}) and {gap.revenue_reach_rate:.0%} of their revenue against "
              f"{money_rate:.0%}; {gap.group} hold {gap.at_stake_share:.0%} of the discount "
              f"revenue at stake for {gap.customer_share:.0%} of the customers")  # fmt: skip
    if flagged:
        return f"Discounts reach groups unevenly: {detail}; {_v_words(test, cfg)}."
    return f"Discount reach is not flagged ({_v_words(test, cfg)}); the largest gap: {detail}."


def _with_summary(audit: AttributeAudit, cfg: FairnessSection) -> AttributeAudit:
    tested = [s for s in audit.segments if s.test is not None]
    if len(audit.groups) < 2:
        text = (f"Only one group of {audit.attribute} has at least {cfg.min_group_size} customers: "
                "nothing to compare.")  # fmt: skip
    elif audit.flagged:
        flagged = [s.segment for s in audit.segments if s.flagged]
        parts = ([f"skewed segments: {', '.join(flagged)}"] if flagged else []) + (
            ["uneven discount reach"] if audit.reach is not None and audit.reach.flagged else []
        )
        text = f"{audit.attribute}: flagged ({'; '.join(parts)})."
    elif tested:
        top, v = max(((s, s.test.cramers_v if s.test else 0.0) for s in tested), key=lambda t: t[1])
        text = (f"{audit.attribute}: no segment's make-up differs from all customers' beyond "
                f"the threshold (largest Cramer's V {v:.2f}, in {top.segment}).")  # fmt: skip
    else:
        text = f"{audit.attribute}: no segment is large enough to test."
    return dataclasses.replace(audit, summary=text)


# ---------------------------------------------------------------------------------------------
# Exports


def fairness_frame(audit: FairnessAudit) -> pl.DataFrame:
    """fairness.csv: one row per attribute, segment and group (customers, shares, ratio)."""
    rows = [
        {"attribute": a.attribute, "segment": s.segment, "group": g.group,
         "customers": g.customers, "segment_share": g.share,
         "population_share": g.population_share, "representation_ratio": g.ratio,
         "segment_cramers_v": s.test.cramers_v if s.test else None, "segment_flagged": s.flagged}
        for a in audit.attributes for s in a.segments for g in s.groups
    ]  # fmt: skip
    schema = {"attribute": pl.String, "segment": pl.String, "group": pl.String,
              "customers": pl.Int64, "segment_share": pl.Float64,
              "population_share": pl.Float64, "representation_ratio": pl.Float64,
              "segment_cramers_v": pl.Float64, "segment_flagged": pl.Boolean}  # fmt: skip
    return pl.DataFrame(rows, schema=schema).with_columns(pl.selectors.float().round(6))


def fairness_summary(audit: FairnessAudit) -> dict[str, Any]:
    """Every figure of the audit, JSON-ready (no NaN)."""
    cfg, scale = audit.settings, 10**audit.minor_digits
    return _finite({
        "method": audit.method,
        "cramers_v_threshold": cfg.cramers_v_threshold,
        "alpha": cfg.alpha,
        "min_group_size": cfg.min_group_size,
        "customers": audit.customers,
        "excluded_customers": audit.excluded_customers,
        "discount_segments": [{"segment": s, "why": w} for s, w in audit.discount_segments],
        "flagged": audit.flagged,
        "findings": list(audit.findings),
        "attributes": [_attribute_part(a, scale) for a in audit.attributes],
    })  # fmt: skip


def _test_part(test: ChiSquare | None) -> dict[str, Any] | None:
    if test is None:
        return None
    return {"chi2": test.chi2, "dof": test.dof, "p_value": test.p_value,
            "cramers_v": test.cramers_v, "low_expected_share": test.low_expected_share}  # fmt: skip


def _attribute_part(a: AttributeAudit, scale: int) -> dict[str, Any]:
    return {
        "attribute": a.attribute,
        "customers": a.customers,
        "flagged": a.flagged,
        "summary": a.summary,
        "findings": list(a.findings),
        "groups": [
            {"group": g.group, "customers": g.customers, "share": g.share} for g in a.groups
        ],
        "merged_into_other": list(a.merged),
        "too_small": [{"group": g, "customers": n} for g, n in a.too_small],
        "overall": _test_part(a.overall),
        "segments": [
            {
                "segment": s.segment,
                "customers": s.customers,
                "test": _test_part(s.test),
                "p_adjusted": s.p_adjusted,
                "flagged": s.flagged,
                "finding": s.finding,
                "groups": [
                    {
                        "group": g.group,
                        "customers": g.customers,
                        "share": g.share,
                        "population_share": g.population_share,
                        "ratio": g.ratio,
                    }
                    for g in s.groups
                ],
            }
            for s in a.segments
        ],
        "discount_reach": _reach_part(a.reach, scale),
    }


def _reach_part(reach: DiscountReach | None, scale: int) -> dict[str, Any] | None:
    if reach is None:
        return None
    return {
        "reached": reach.reached,
        "reach_rate": reach.reach_rate,
        "revenue_reach_rate": reach.revenue_reach_rate,
        "revenue_at_stake": reach.at_stake_minor / scale,
        "test": _test_part(reach.test),
        "flagged": reach.flagged,
        "finding": reach.finding,
        "groups": [
            {
                "group": g.group,
                "customers": g.customers,
                "reached": g.reached,
                "reach_rate": g.reach_rate,
                "rate_ratio": g.rate_ratio,
                "revenue": g.revenue_minor / scale,
                "revenue_reached": g.revenue_reached_minor / scale,
                "revenue_reach_rate": g.revenue_reach_rate,
                "revenue_at_stake": g.at_stake_minor / scale,
                "customer_share": g.customer_share,
                "at_stake_share": g.at_stake_share,
            }
            for g in reach.groups
        ],
    }


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value
