"""The report section 'Fairness audit': its typed template context and its charts.

`fairness_view(report)` turns the FairnessAudit into what `templates/_fairness.html` shows
(numbers raw, formatted by the template filters; texts escaped by the templates), or None when
the audit is off. Charts follow charts.py's rules: inline values, one colour per segment, sized
for an A4 page.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import altair as alt

from . import charts as ch
from .context import ChartView, TocEntry
from .fairness import AttributeAudit, DiscountReach, FairnessAudit, SegmentSkew

log = logging.getLogger(__name__)

SECTION = ("fairness", "Fairness audit")
RATIO_LIMIT = 2.0  # the colour scale of the ratio heatmap saturates at 1/2x and 2x
_MERGED_SHOWN = 12


@dataclass(frozen=True)
class GroupCell:
    """One group's share of a segment against its share of all audited customers."""

    group: str
    customers: int
    share: float
    population_share: float
    ratio: float | None


@dataclass(frozen=True)
class SkewRow:
    """One segment's line of the audit table."""

    segment: str
    color: str
    customers: int
    tested: bool
    cramers_v: float | None
    p_adjusted: float | None
    flagged: bool
    finding: str
    cells: tuple[GroupCell, ...]


@dataclass(frozen=True)
class ReachRow:
    """How the discount actions reach one group."""

    group: str
    customers: int
    reached: int
    reach_rate: float
    rate_ratio: float | None
    revenue_reach_rate: float | None
    at_stake_minor: int
    at_stake_share: float | None
    customer_share: float


@dataclass(frozen=True)
class AttributeView:
    """One audited attribute."""

    attribute: str
    anchor: str
    summary: str
    flagged: bool
    findings: tuple[str, ...]
    customers: int
    groups: tuple[GroupCell, ...]  # the make-up of all audited customers
    merged: str  # the values merged into Other ('' when none)
    too_small: tuple[tuple[str, int], ...]
    overall_v: float | None
    overall_p: float | None
    rows: tuple[SkewRow, ...]
    reach: tuple[ReachRow, ...]
    reach_rate: float | None
    revenue_reach_rate: float | None
    reach_v: float | None
    reach_flagged: bool
    reach_finding: str
    ratio_chart: ChartView
    reach_chart: ChartView | None


@dataclass(frozen=True)
class FairnessView:
    """Section 'Fairness audit'."""

    threshold: float
    alpha: float
    min_group_size: int
    customers: int
    excluded_customers: int
    discount_segments: tuple[tuple[str, str], ...]
    flagged: bool
    findings: tuple[str, ...]
    attributes: tuple[AttributeView, ...]
    method: str
    charts: tuple[ChartView, ...]
    toc: tuple[TocEntry, ...]


def fairness_view(report: Any) -> FairnessView | None:
    """The section's content, or None when the audit is off."""
    audit: FairnessAudit | None = getattr(report, "fairness", None)
    if audit is None:
        return None
    colors = ch.segment_colors(list(report.segmentation.names))
    attributes = tuple(_attribute(a, i, colors) for i, a in enumerate(audit.attributes))
    charts = tuple(c for a in attributes for c in (a.ratio_chart, a.reach_chart) if c is not None)
    toc = (TocEntry(*SECTION), *(TocEntry(a.anchor, f"By {a.attribute}", 2) for a in attributes))
    cfg = audit.settings
    return FairnessView(
        threshold=cfg.cramers_v_threshold, alpha=cfg.alpha, min_group_size=cfg.min_group_size,
        customers=audit.customers, excluded_customers=audit.excluded_customers,
        discount_segments=audit.discount_segments, flagged=audit.flagged,
        findings=audit.findings, attributes=attributes, method=audit.method, charts=charts,
        toc=toc,
    )  # fmt: skip


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _anchor(index: int, attribute: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", attribute.lower()).strip("-")
    return f"fairness-{index + 1}-{slug}" if slug else f"fairness-{index + 1}"


def _cells(groups: Any) -> tuple[GroupCell, ...]:
    return tuple(GroupCell(g.group, g.customers, g.share, g.population_share, _finite(g.ratio))
                 for g in groups)  # fmt: skip


def _row(s: SegmentSkew, colors: dict[str, str]) -> SkewRow:
    return SkewRow(
        segment=s.segment, color=colors.get(s.segment, ch.GREY), customers=s.customers,
        tested=s.test is not None, cramers_v=s.test.cramers_v if s.test else None,
        p_adjusted=s.p_adjusted, flagged=s.flagged, finding=s.finding, cells=_cells(s.groups),
    )  # fmt: skip


def _reach_rows(reach: DiscountReach | None) -> tuple[ReachRow, ...]:
    if reach is None:
        return ()
    return tuple(
        ReachRow(
            g.group,
            g.customers,
            g.reached,
            g.reach_rate,
            _finite(g.rate_ratio),
            _finite(g.revenue_reach_rate),
            g.at_stake_minor,
            _finite(g.at_stake_share),
            g.customer_share,
        )
        for g in reach.groups
    )


def _attribute(a: AttributeAudit, index: int, colors: dict[str, str]) -> AttributeView:
    anchor = _anchor(index, a.attribute)
    merged = ", ".join(a.merged[:_MERGED_SHOWN]) + (
        f" and {len(a.merged) - _MERGED_SHOWN} more" if len(a.merged) > _MERGED_SHOWN else ""
    )
    reach = a.reach
    return AttributeView(
        attribute=a.attribute, anchor=anchor, summary=a.summary, flagged=a.flagged,
        findings=a.findings, customers=a.customers, groups=_cells(a.groups), merged=merged,
        too_small=a.too_small, overall_v=a.overall.cramers_v if a.overall else None,
        overall_p=a.overall.p_value if a.overall else None,
        rows=tuple(_row(s, colors) for s in a.segments), reach=_reach_rows(reach),
        reach_rate=reach.reach_rate if reach else None,
        revenue_reach_rate=_finite(reach.revenue_reach_rate) if reach else None,
        reach_v=reach.test.cramers_v if reach and reach.test else None,
        reach_flagged=bool(reach and reach.flagged), reach_finding=reach.finding if reach else "",
        ratio_chart=ChartView(
            f"chart-{anchor}-ratio", f"Representation of each {a.attribute} group per segment",
            "Each cell: a group's share of the segment divided by its share of all segmented "
            "customers (1.00 = as expected; red over-, blue under-represented). Segments marked "
            "'flagged' differ beyond the Cramer's V threshold; '(too small)' were not tested.",
            ch.to_spec(ratio_heatmap(a))),
        reach_chart=None if reach is None else ChartView(
            f"chart-{anchor}-reach", f"Who the discount offers reach, by {a.attribute}",
            "The share of each group's customers (left) and of its revenue (right) in a segment "
            "whose action is a discount; the dashed lines mark all customers.",
            ch.to_spec(reach_chart(reach))),
    )  # fmt: skip


def _segment_label(s: SegmentSkew) -> str:
    if s.test is None:
        return f"{s.segment} (too small)"
    return f"{s.segment} (flagged)" if s.flagged else s.segment


def ratio_heatmap(a: AttributeAudit) -> alt.LayerChart:
    """Representation ratios, segments x groups, on a log colour scale centred on 1."""
    groups = [g.group for g in a.groups]
    labels = [_segment_label(s) for s in a.segments]
    rows = [
        {"segment": _segment_label(s), "group": g.group, "ratio": _finite(g.ratio),
         "log_ratio": math.log2(g.ratio) if g.ratio and math.isfinite(g.ratio) else 0.0,
         "share": g.share, "population": g.population_share, "customers": g.customers}
        for s in a.segments for g in s.groups
    ]  # fmt: skip
    limit = math.log2(RATIO_LIMIT)
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("group:N", sort=groups, title=None,
                axis=alt.Axis(orient="top", labelAngle=0, labelLimit=110)),
        y=alt.Y("segment:N", sort=labels, title=None, axis=alt.Axis(labelLimit=190)),
    )  # fmt: skip
    cells = base.mark_rect(stroke="white", strokeWidth=2).encode(
        color=alt.Color("log_ratio:Q", legend=None,
                        scale=alt.Scale(scheme="redblue", domain=[-limit, limit], reverse=True,
                                        clamp=True)),
        tooltip=[alt.Tooltip("segment:N", title="Segment"), alt.Tooltip("group:N", title="Group"),
                 alt.Tooltip("customers:Q", format=",", title="Customers"),
                 alt.Tooltip("share:Q", format=".1%", title="Share of the segment"),
                 alt.Tooltip("population:Q", format=".1%", title="Share of everyone"),
                 alt.Tooltip("ratio:Q", format=".2f", title="Ratio")],
    )  # fmt: skip
    text = base.mark_text(fontSize=10).encode(
        text=alt.Text("ratio:Q", format=".2f"),
        color=alt.condition(f"abs(datum.log_ratio) > {limit * 0.6}", alt.value("white"),
                            alt.value(ch.INK)),
    )  # fmt: skip
    width = min(ch.WIDTH - 200, 80 * max(len(groups), 1))
    return (cells + text).properties(width=width, height=alt.Step(24))


def reach_chart(reach: DiscountReach) -> alt.HConcatChart:
    """Reach per group in customers and in revenue, each against the overall rate."""
    groups = [g.group for g in reach.groups]
    panels = []
    for i, (field, overall, title, color) in enumerate((
        ("customers", reach.reach_rate, "Share of customers reached", "#9fb3c8"),
        ("revenue", reach.revenue_reach_rate, "Share of revenue reached", "#1f4e79"),
    )):  # fmt: skip
        rows = [{"group": g.group, "rate": _finite(g.reach_rate if field == "customers"
                                                   else g.revenue_reach_rate),
                 "customers": g.customers, "reached": g.reached} for g in reach.groups]  # fmt: skip
        bars = alt.Chart(alt.Data(values=rows)).mark_bar(color=color, cornerRadiusEnd=2).encode(
            y=alt.Y("group:N", sort=groups, title=None,
                    axis=alt.Axis(labelLimit=120) if i == 0 else None),
            x=alt.X("rate:Q", title=title, axis=alt.Axis(format="%"),
                    scale=alt.Scale(domain=[0, 1])),
            tooltip=[alt.Tooltip("group:N", title="Group"),
                     alt.Tooltip("reached:Q", format=",", title="Customers reached"),
                     alt.Tooltip("customers:Q", format=",", title="Customers"),
                     alt.Tooltip("rate:Q", format=".1%", title=title)],
        )  # fmt: skip
        rule = alt.Chart(alt.Data(values=[{"rate": _finite(overall)}])).mark_rule(
            color=ch.INK, strokeDash=[4, 3]).encode(x="rate:Q")  # fmt: skip
        panels.append((bars + rule).properties(width=210, height=alt.Step(22)))
    return alt.hconcat(*panels, spacing=20)
