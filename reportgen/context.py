"""The typed content of the HTML and PDF reports, built once from the Report.

`build_context(report)` gathers everything the templates show into frozen dataclasses: raw
numbers (money in integer minor units, shares as fractions, dates as dates) that the templates
format with the filters of `formatting.py`, the chart specs of `charts.py`, and texts. Nothing
here is HTML: the templates escape every string (autoescape), so customer data can never become
markup. Both outputs render the same context, section by section (DESIGN.md section 3).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from altair.utils.schemapi import debug_mode

from . import charts as ch
from .algorithms import TITLES
from .model import Report
from .segment import FEATURE_COLUMNS, STABILITY_THRESHOLD, Segmentation, revenue_expr

log = logging.getLogger(__name__)

DEFAULT_ACCENT = "#1f4e79"
TOP_RECOMMENDATIONS = 3
REDACTED = "[redacted]"
SECRET_KEY_PARTS = ("password", "passwd", "secret", "token", "user", "api_key", "apikey",
                    "credential", "private_key")  # fmt: skip
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")
_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_LOGO_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".gif": "image/gif", ".webp": "image/webp", ".svg": "image/svg+xml"}  # fmt: skip
_RENDER_PACKAGES = ("altair", "vl-convert-python", "jinja2", "weasyprint", "babel",
                    "scikit-learn", "scipy")  # fmt: skip

SEGMENT_DESCRIPTIONS = {
    "Champions": "Bought recently, buy often and spend the most.",
    "Loyal Customers": "Buy regularly and spend well; they answer recognition more than discounts.",
    "Potential Loyalist": "Recent customers with a few orders who could become regulars.",
    "New Customers": "Bought for the first time recently.",
    "Promising": "Recent buyers who have not spent much yet.",
    "Need Attention": "Above-average customers whose last order is starting to date.",
    "About To Sleep": "Below-average recency and frequency: they lapse without a reason to return.",
    "At Risk": "Spent well and bought often, but not for a long time.",
    "Can't Lose Them": "Were among your best customers and have not come back for a long time.",
    "Hibernating": "Low spend and few orders, the last one long ago.",
    "Lost": "The lowest recency, frequency and spend: most will not come back.",
    "Unclustered": "In no dense group of the chosen algorithm (DBSCAN/HDBSCAN): unusual customers, "
    "often the very largest accounts.",  # algorithms.UNCLUSTERED (issue 8)
}
KIND_WORDS = {"protect": "Protect", "grow": "Grow", "retain": "Retain", "win_back": "Win back"}
FIT_WORDS = {
    "weak": "weakly separated: customers near the borders could belong to either neighbour",
    "moderate": "moderately separated: most customers sit clearly in one segment",
    "clear": "clearly separated",
    "unknown": "of unknown separation (the silhouette could not be computed)",
}


# ---------------------------------------------------------------------------------------------
# The context types (one frozen dataclass per part of the report)


@dataclass(frozen=True)
class TocEntry:
    """A heading of the report: its anchor, its text and its level (1 section, 2 subsection)."""

    id: str
    title: str
    level: int = 1


@dataclass(frozen=True)
class ChartView:
    """One chart: anchor, title, a caption saying how to read it, and its Vega-Lite spec."""

    id: str
    title: str
    caption: str
    spec: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Branding:
    """Who the report is for and how it looks."""

    title: str
    company: str
    accent: str  # '#rrggbb', checked (it goes into CSS)
    logo: str | None  # a data: URI of the configured logo file


@dataclass(frozen=True)
class Cover:
    """The title page: what, whose, which period, from which data, when."""

    period_start: dt.date | None
    as_of: dt.date
    as_of_asked: str
    latest_transaction: dt.date
    timezone: str
    source: str  # the data source, credentials in URLs redacted
    source_format: str
    files: int
    generated_at: dt.datetime
    data_fingerprint: str


@dataclass(frozen=True)
class SegmentRow:
    """One segment in the tables: size, value and typical customer."""

    label: int
    name: str
    anchor: str
    color: str
    customers: int
    share: float
    revenue_minor: int
    revenue_share: float
    recency_median: float
    frequency_median: float
    monetary_median_minor: int
    mean_scores: tuple[float, float, float]  # R, F, M
    outliers: int
    silhouette: float | None
    returned_value_minor: int
    return_rate: float | None


@dataclass(frozen=True)
class Recommendation:
    """A segment's action ranked by the revenue riding on it."""

    rank: int
    segment: str
    anchor: str
    color: str
    kind: str  # Protect, Grow, Retain, Win back
    customers: int
    revenue_minor: int
    revenue_at_stake_minor: int
    basis: str
    objective: str


@dataclass(frozen=True)
class Notice:
    """A warning the reader must see (data sufficiency, stability, reconciliation)."""

    code: str
    message: str


@dataclass(frozen=True)
class Summary:
    """The executive summary."""

    customers: int  # every customer with a purchase in the period
    segmented: int
    orders: int
    revenue_minor: int
    average_order_minor: int | None
    k: int
    silhouette: float | None
    fit_quality: str  # weak, moderate, clear, unknown
    fit_words: str
    stability_mean: float
    stable: bool
    segments: tuple[SegmentRow, ...]
    recommendations: tuple[Recommendation, ...]
    first_report: bool
    change_headlines: tuple[str, ...]
    warnings: tuple[Notice, ...]
    share_chart: ChartView


@dataclass(frozen=True)
class Comparison:
    """One feature of a segment against all segmented customers (money in minor units)."""

    feature: str
    money: bool
    segment_median: float
    overall_median: float
    segment_mean: float
    overall_mean: float


@dataclass(frozen=True)
class Play:
    """The playbook entry shown for a segment."""

    kind: str
    objective: str
    channel: str
    offer: str
    no_discount_offer: str
    timing: str
    kpi: str
    holdout: str
    overridden: tuple[str, ...]


@dataclass(frozen=True)
class SegmentPart:
    """One segment's page: who they are, against the whole, and what to do."""

    row: SegmentRow
    description: str
    comparisons: tuple[Comparison, ...]
    play: Play
    recommendation: Recommendation


@dataclass(frozen=True)
class Segments:
    """Section 'Segments and actions'."""

    profile_chart: ChartView
    heatmap_chart: ChartView
    boxplot_chart: ChartView
    scatter_chart: ChartView
    pca_chart: ChartView
    parts: tuple[SegmentPart, ...]
    sample_note: str
    revenue_at_stake_definition: str
    clustered_by: str  # 'K-Means on their days since last order, orders and spend'


@dataclass(frozen=True)
class SegmentDelta:
    """One segment's size and revenue at the previous run and now."""

    segment: str
    color: str
    customers_before: int
    customers_now: int
    customers_delta: int
    revenue_before_minor: int
    revenue_now_minor: int
    revenue_delta_minor: int


@dataclass(frozen=True)
class Changes:
    """Section 'Changes since the previous report' (empty on a first report)."""

    first_report: bool
    previous_as_of: dt.date | None = None
    k_before: int | None = None
    k_now: int | None = None
    headlines: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    segments: tuple[SegmentDelta, ...] = ()
    new_customers: int = 0
    gone_customers: int = 0
    moved_into_risk: int = 0
    matrix_to: tuple[str, ...] = ()  # column heads of the migration matrix
    matrix: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (from segment, customers per column)
    migration_chart: ChartView | None = None


@dataclass(frozen=True)
class GridRow:
    """One classic RFM grid segment."""

    name: str
    color: str
    customers: int
    share: float
    revenue_minor: int
    revenue_share: float


@dataclass(frozen=True)
class Grid:
    """Section 'The RFM grid'."""

    score_chart: ChartView
    segment_chart: ChartView
    rows: tuple[GridRow, ...]
    scored: int
    excluded: tuple[tuple[str, int, int], ...]  # reason, customers, revenue_minor
    map_source: str


@dataclass(frozen=True)
class Example:
    """A dropped row shown as an example (customer id masked)."""

    file: str
    line: int | None
    customer_id: str | None
    order_id: str | None
    order_date: str | None
    amount_minor: int | None


@dataclass(frozen=True)
class RuleRow:
    """Rows and revenue one cleaning rule dropped."""

    rule: str
    description: str
    rows: int
    revenue_minor: int
    examples: tuple[Example, ...]


@dataclass(frozen=True)
class Missing:
    """Missing values of one canonical column."""

    column: str
    count: int
    share: float


@dataclass(frozen=True)
class Quality:
    """Section 'Data quality': read, dropped per rule, kept, reconciled."""

    rows_read: int
    revenue_read_minor: int
    rules: tuple[RuleRow, ...]
    rows_kept: int
    revenue_kept_minor: int
    rows_dropped: int
    revenue_dropped_minor: int
    reconciles: bool
    returns_netted_rows: int
    returns_netted_minor: int
    first_date: dt.date | None
    last_date: dt.date | None
    missing: tuple[Missing, ...]
    columns: tuple[str, ...]
    position: str  # what an example's number counts: a CSV file's lines, else rows


@dataclass(frozen=True)
class Month:
    """One calendar month of the EDA."""

    month: dt.date
    revenue_minor: int
    orders: int
    customers: int
    new_customers: int
    returning_customers: int
    days_covered: int  # days of the month within the period
    days_in_month: int

    @property
    def partial(self) -> bool:
        """The period covers only part of the month: not comparable with the full months."""
        return self.days_covered < self.days_in_month


@dataclass(frozen=True)
class Exploration:
    """Section 'Exploratory analysis'."""

    monthly_chart: ChartView
    new_returning_chart: ChartView
    distribution_chart: ChartView
    months: tuple[Month, ...]


@dataclass(frozen=True)
class KRow:
    """The criteria of one k."""

    k: int
    inertia: float
    silhouette: float | None
    calinski_harabasz: float | None
    davies_bouldin: float | None
    smallest_share: float
    admissible: bool
    not_admissible_because: str | None
    chosen: bool


@dataclass(frozen=True)
class Method:
    """Section 'Method': how k was chosen, how good and stable the fit is, definitions."""

    k: int
    rule: str
    reason: str
    disagreement: str
    continuity: str  # how the names relate to the previous run ('' on a first run)
    rows: tuple[KRow, ...]
    elbow_chart: ChartView
    silhouette_chart: ChartView
    samples_chart: ChartView
    distance_chart: ChartView
    silhouette: float | None
    fit_quality: str
    stability_runs: tuple[tuple[int, float], ...]  # (seed, adjusted Rand index) per refit
    stability_mean: float
    stability_min: float
    stability_threshold: float
    stable: bool
    stability_note: str
    distance_names: tuple[str, ...]
    distances: tuple[tuple[float, ...], ...]
    customers: int
    fit_sample_size: int
    silhouette_sample_size: int
    features: tuple[str, ...]
    log1p: bool
    scaling: str
    outliers: str
    n_init: int
    seed: int
    definitions: tuple[tuple[str, str], ...]
    algorithm_note: str  # the algorithm that made the segments, when not K-Means on the features


@dataclass(frozen=True)
class Appendix:
    """Section 'Appendix': the configuration (redacted), versions and fingerprint."""

    config_yaml: str
    versions: tuple[tuple[str, str], ...]
    data_fingerprint: str


@dataclass(frozen=True)
class ReportContext:
    """Everything the report templates show, in the order they show it."""

    locale: str
    currency: str
    minor_digits: int
    branding: Branding
    cover: Cover
    toc: tuple[TocEntry, ...]
    summary: Summary
    segments: Segments
    changes: Changes
    grid: Grid
    quality: Quality
    exploration: Exploration
    method: Method
    appendix: Appendix
    charts: tuple[ChartView, ...]
    fairness: Any = None  # fairness_view.FairnessView when fairness.enabled (issue 9)
    graph: Any = None  # graph_view.GraphView when graph.enabled (issue 9)
    comparison: Any = None  # comparison_charts.ComparisonView when compare/representation (issue 8)

    def section(self, section_id: str) -> TocEntry:
        """The TOC entry of a section (templates take headings from here, so they match)."""
        for entry in self.toc:
            if entry.id == section_id:
                return entry
        raise KeyError(section_id)


SECTIONS = (
    ("summary", "Executive summary"),
    ("segments", "Segments and actions"),
    ("changes", "Changes since the previous report"),
    ("grid", "The RFM grid"),
    ("quality", "Data quality"),
    ("exploration", "Exploratory analysis"),
    ("method", "Method"),
    ("appendix", "Appendix"),
)
METHOD_PARTS = (
    ("method-k", "Choosing the number of segments"),
    ("method-fit", "Fit quality per customer"),
    ("method-stability", "Stability"),
    ("method-distances", "Distances between segments"),
    ("method-definitions", "Definitions"),
)


# ---------------------------------------------------------------------------------------------
# Building


def build_context(report: Report, segmentation: Segmentation | None = None) -> ReportContext:
    """The report's content from the Report (and its segmentation), ready for the templates."""
    seg = segmentation if segmentation is not None else getattr(report, "segmentation", None)
    if seg is None:
        raise ValueError("the report has no segmentation: run segment_customers first")
    # Altair validates every chart object against the Vega-Lite schema as it is built (about
    # 0.9 s of a report); the tests validate the finished specs instead (charts.to_spec).
    with debug_mode(False):
        return _build_context(report, seg)


def _build_context(report: Report, seg: Segmentation) -> ReportContext:
    rows = _segment_rows(seg)
    recommendations = _recommendations(seg, rows)
    summary = _summary(report, seg, rows, recommendations)
    segments = _segments(report, seg, rows, recommendations)
    grid, quality, exploration = _grid(report), _quality(report), _exploration(report)
    method = _method(seg)
    changes = _changes(getattr(report, "changes", None))
    migration = (changes.migration_chart,) if changes.migration_chart is not None else ()
    charts = (summary.share_chart, segments.profile_chart, segments.heatmap_chart,
              segments.boxplot_chart, segments.scatter_chart, segments.pca_chart, *migration,
              grid.score_chart, grid.segment_chart, exploration.monthly_chart,
              exploration.new_returning_chart, exploration.distribution_chart, method.elbow_chart,
              method.silhouette_chart, method.samples_chart, method.distance_chart)  # fmt: skip
    from .fairness_view import fairness_view  # imported here: they build on this module
    from .graph_view import graph_view

    fairness, graph = fairness_view(report), graph_view(report)  # None when off
    extensions = [v for v in (fairness, graph) if v is not None]
    charts += tuple(c for v in extensions for c in v.charts)
    from .comparison_charts import comparison_view

    comparison = comparison_view(report)  # None when off; its section comes after Method
    charts += comparison.charts if comparison is not None else ()
    return ReportContext(
        locale=report.config.report.locale,
        currency=report.config.report.currency,
        minor_digits=report.rfm.minor_digits,
        branding=_branding(report),
        cover=_cover(report),
        toc=_with_sections(
            _with_sections(_toc(rows), [e for v in extensions for e in v.toc], before="quality"),
            list(comparison.toc) if comparison is not None else [],
            before="appendix",
        ),
        summary=summary,
        segments=segments,
        changes=changes,
        grid=grid,
        quality=quality,
        exploration=exploration,
        method=method,
        appendix=_appendix(report),
        charts=charts,
        fairness=fairness,
        graph=graph,
        comparison=comparison,
    )


def _with_sections(
    toc: tuple[TocEntry, ...], entries: list[TocEntry], before: str
) -> tuple[TocEntry, ...]:
    """The contents with optional sections' entries inserted before the section `before`."""
    at = next((i for i, e in enumerate(toc) if e.id == before), len(toc))
    return (*toc[:at], *entries, *toc[at:])


def _chart(chart_id: str, title: str, caption: str, chart: Any) -> ChartView:
    return ChartView(chart_id, title, caption, ch.to_spec(chart))


def _toc(rows: list[SegmentRow]) -> tuple[TocEntry, ...]:
    entries = []
    for section_id, title in SECTIONS:
        entries.append(TocEntry(section_id, title, 1))
        if section_id == "segments":
            entries += [TocEntry(r.anchor, r.name, 2) for r in rows]
        if section_id == "method":
            entries += [TocEntry(i, t, 2) for i, t in METHOD_PARTS]
    return tuple(entries)


def _branding(report: Report) -> Branding:
    cfg = report.config.report
    accent = getattr(cfg, "accent_color", None) or DEFAULT_ACCENT
    if not _HEX_COLOR.match(accent):
        log.warning(
            "report.accent_color %r is not a #rrggbb colour; using %s", accent, DEFAULT_ACCENT
        )
        accent = DEFAULT_ACCENT
    return Branding(cfg.name, cfg.company, accent, _logo_uri(getattr(cfg, "logo", None)))


def _logo_uri(path: str | None) -> str | None:
    """The logo file as a data: URI (both outputs embed it; nothing is fetched)."""
    if not path:
        return None
    kind = _LOGO_TYPES.get(Path(path).suffix.lower())
    if kind is None:
        log.warning("report.logo %s: not a PNG, JPEG, GIF, WebP or SVG file; no logo shown", path)
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        log.warning("report.logo %s cannot be read (%s); no logo shown", path, exc.strerror or exc)
        return None
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def _cover(report: Report) -> Cover:
    period, audit = report.period, report.audit
    return Cover(
        period_start=period.window_start or audit.first_date,
        as_of=period.as_of,
        as_of_asked=period.asked,
        latest_transaction=period.latest_transaction,
        timezone=period.timezone,
        source=redact_text(report.source.location),
        source_format=report.source.format,
        files=len(report.source.files),
        generated_at=report.generated_at,
        data_fingerprint=report.data_fingerprint,
    )


def _anchor(label: int) -> str:
    return f"segment-{label + 1}"


def _segment_rows(seg: Segmentation) -> list[SegmentRow]:
    colors = ch.segment_colors(seg.names)
    digits = seg.minor_digits
    return [
        SegmentRow(
            label=p.label,
            name=p.name,
            anchor=_anchor(p.label),
            color=colors[p.name],
            customers=p.customers,
            share=p.share,
            revenue_minor=p.revenue_minor,
            revenue_share=p.revenue_share,
            recency_median=p.features["recency_days"].median,
            frequency_median=p.features["frequency"].median,
            monetary_median_minor=round(p.features["monetary"].median * 10**digits),
            mean_scores=(
                p.mean_scores["r_score"],
                p.mean_scores["f_score"],
                p.mean_scores["m_score"],
            ),
            outliers=p.outliers,
            silhouette=p.silhouette,
            returned_value_minor=p.returned_value_minor,
            return_rate=p.return_rate,
        )
        for p in seg.profiles
    ]


def _recommendations(seg: Segmentation, rows: list[SegmentRow]) -> list[Recommendation]:
    by_label = {r.label: r for r in rows}
    return [
        Recommendation(
            rank=i + 1,
            segment=a.segment,
            anchor=by_label[a.label].anchor,
            color=by_label[a.label].color,
            kind=KIND_WORDS.get(a.play.kind, a.play.kind),
            customers=a.customers,
            revenue_minor=a.revenue_minor,
            revenue_at_stake_minor=a.revenue_at_stake_minor,
            basis=a.at_stake_basis,
            objective=a.play.objective,
        )
        for i, a in enumerate(seg.recommendations)
    ]


def _summary(
    report: Report, seg: Segmentation, rows: list[SegmentRow], recs: list[Recommendation]
) -> Summary:
    frame = report.rfm.frame
    revenue = sum(p.revenue_minor for p in seg.profiles) + sum(
        g.revenue_minor for g in seg.excluded
    )
    orders = int(frame["frequency"].sum() or 0)
    return Summary(
        customers=frame.height,
        segmented=seg.customers,
        orders=orders,
        revenue_minor=revenue,
        average_order_minor=round(revenue / orders) if orders else None,
        k=seg.k,
        silhouette=seg.silhouette,
        fit_quality=seg.fit_quality,
        fit_words=FIT_WORDS.get(seg.fit_quality, seg.fit_quality),
        stability_mean=seg.stability.mean,
        stable=seg.stability.stable,
        segments=tuple(rows),
        recommendations=tuple(recs[:TOP_RECOMMENDATIONS]),
        first_report=getattr(report, "changes", None) is None,
        change_headlines=tuple(getattr(getattr(report, "changes", None), "headlines", ())),
        warnings=tuple(_notices(report, seg)),
        share_chart=_chart(
            "chart-shares",
            "Share of customers and of revenue per segment",
            "Each segment's share of the segmented customers (light) next to its share of their "
            "revenue (dark): a segment whose dark bar is longer brings more than its weight.",
            ch.segment_share_chart(seg),
        ),
    )


def _notices(report: Report, seg: Segmentation) -> list[Notice]:
    notes = [Notice(w.code, w.message) for w in seg.warnings]
    if not report.audit.reconciles:
        notes.append(Notice("not_reconciled", "Revenue read does not equal revenue kept plus the "
                            "revenue each cleaning rule dropped: see Data quality."))  # fmt: skip
    return notes


def _overall(report: Report) -> dict[str, tuple[float, float]]:
    """Median and mean of every feature over the segmented customers (money in minor units)."""
    scored = report.rfm.scored
    out = {}
    for feature, (column, _money) in FEATURE_COLUMNS.items():
        values = scored[column].cast(pl.Float64)
        if feature == "return_rate":
            values = values.fill_null(0.0)
        median, mean = values.median(), values.mean()
        out[feature] = (float(median or 0.0), float(mean or 0.0))  # type: ignore[arg-type]
    return out


def _comparisons(seg: Segmentation, label: int, overall: dict) -> tuple[Comparison, ...]:
    profile = next(p for p in seg.profiles if p.label == label)
    scale = 10**seg.minor_digits
    comparisons = []
    for feature, stats in profile.features.items():
        money = FEATURE_COLUMNS[feature][1]
        factor = scale if money else 1
        median, mean = overall[feature]
        comparisons.append(
            Comparison(
                ch.FEATURE_TITLES.get(feature, feature),
                money,
                stats.median * factor,
                median,
                stats.mean * factor,
                mean,
            )
        )
    return tuple(comparisons)


def _play(action: Any) -> Play:
    p = action.play
    return Play(KIND_WORDS.get(p.kind, p.kind), p.objective, p.channel, p.offer,
                p.no_discount_offer, p.timing, p.kpi, p.holdout, tuple(p.overridden))  # fmt: skip


def _segments(
    report: Report, seg: Segmentation, rows: list[SegmentRow], recs: list[Recommendation]
) -> Segments:
    rfm, seed = report.rfm, report.config.seed
    overall = _overall(report)
    rec_by_segment = {r.segment: r for r in recs}
    actions = {a.label: a for a in seg.actions}
    parts = tuple(
        SegmentPart(
            row=row,
            description=SEGMENT_DESCRIPTIONS.get(row.name, "A segment of the configured RFM grid."),
            comparisons=_comparisons(seg, row.label, overall),
            play=_play(actions[row.label]),
            recommendation=rec_by_segment[row.name],
        )
        for row in rows
    )
    sampled = min(seg.customers, ch.MAX_POINTS)
    return Segments(
        profile_chart=_chart(
            "chart-profile", "Typical customer of each segment",
            "Median days since the last order, number of orders and spend of each segment's "
            "customers.", ch.profile_chart(seg)),
        heatmap_chart=_chart(
            "chart-heatmap", "Segment centres, standardized",
            "Where each segment's centre lies on every clustering feature, in standard deviations "
            "from the average customer after the log transform (red above, blue below average; "
            "fewer days since the last order is better).", ch.centroid_heatmap(seg)),
        boxplot_chart=_chart(
            "chart-boxplots", "Spread of recency, orders and spend within each segment",
            "Boxes span the middle half of each segment's customers (25th to 75th percentile), the "
            "white tick is the median and the whiskers reach the 5th and 95th percentiles.",
            ch.boxplot_chart(rfm, seg)),
        scatter_chart=_chart(
            "chart-scatter", "Recency, orders and spend against each other",
            f"A seeded sample of {sampled:,} of the {seg.customers:,} segmented customers, every "
            "segment represented; logarithmic axes.", ch.scatter_chart(rfm, seg, seed)),
        pca_chart=_chart(
            "chart-pca", "The segments on the two main axes of the data (PCA)",
            "The clustered features projected onto their two principal axes (same sample); "
            "diamonds mark the segment centres.", ch.pca_chart(rfm, seg, seed)),
        parts=parts,
        sample_note=f"{sampled:,} of {seg.customers:,} customers drawn",
        revenue_at_stake_definition=seg.revenue_at_stake_definition,
        clustered_by=_clustered_by(seg),
    )  # fmt: skip


def _clustered_by(seg: Segmentation) -> str:
    """What made the segments, for the section's first sentence."""
    if seg.algorithm_note:  # another algorithm, or K-Means in another space: Method says more
        return f"{TITLES[seg.algorithm]} clustering (the method section says how)"
    features = [ch.FEATURE_TITLES.get(f, f).lower() for f in seg.transform.features]
    listed = ", ".join(features[:-1]) + " and " + features[-1] if len(features) > 1 else features[0]
    return f"K-Means on their {listed}"


def _changes(changes: Any | None) -> Changes:
    """The comparison with the previous run (compare.Changes), or the first-report marker."""
    if changes is None:
        return Changes(first_report=True)
    colors = ch.segment_colors([s.segment for s in changes.segments])
    deltas = tuple(
        SegmentDelta(
            s.segment,
            colors[s.segment],
            s.customers_before,
            s.customers_now,
            s.customers_delta,
            s.revenue_before_minor,
            s.revenue_now_minor,
            s.revenue_delta_minor,
        )
        for s in changes.segments
    )
    wide = changes.matrix()
    heads = tuple(wide.columns[1:])
    matrix = tuple((row[0], tuple(int(v) for v in row[1:])) for row in wide.iter_rows())
    return Changes(
        first_report=False,
        previous_as_of=changes.previous_as_of,
        k_before=changes.k_before,
        k_now=changes.k_now,
        headlines=tuple(changes.headlines),
        notes=tuple(changes.notes),
        segments=deltas,
        new_customers=changes.new_customers,
        gone_customers=changes.gone_customers,
        moved_into_risk=changes.moved_into_risk.height,
        matrix_to=heads,
        matrix=matrix,
        migration_chart=_chart(
            "chart-migration", "Where the customers of the previous report are now",
            "Customers per segment at the previous run (rows) and now (columns); the diagonal "
            "stayed, (new) had no purchase before, (gone) have none in this period.",
            ch.migration_chart(heads, matrix)),
    )  # fmt: skip


def _grid(report: Report) -> Grid:
    rfm = report.rfm
    scored = rfm.scored
    revenue = revenue_expr(rfm)
    stats = (
        scored.group_by("rfm_grid_segment")
        .agg(pl.len().alias("customers"), revenue.sum().alias("revenue_minor"))
        .sort(["customers", "rfm_grid_segment"], descending=[True, False])
    )
    total_c, total_r = max(scored.height, 1), int(stats["revenue_minor"].sum() or 0)
    colors = ch.segment_colors(stats["rfm_grid_segment"].to_list())
    rows = tuple(
        GridRow(n, colors[n], int(c), c / total_c, int(r), r / total_r if total_r else math.nan)
        for n, c, r in stats.iter_rows()
    )
    excluded = rfm.frame.filter(pl.col("r_score").is_null())
    excluded_groups = tuple(
        (name, int(c), int(r))
        for name, c, r in excluded.group_by("rfm_grid_segment")
        .agg(pl.len(), revenue.sum())
        .sort("rfm_grid_segment")
        .iter_rows()
    )
    return Grid(
        score_chart=_chart(
            "chart-scores", "Customers per score",
            "Scores split the customers into five groups of equal size where values allow; ties "
            "share a score, so a feature with many equal values (one order) fills fewer groups.",
            ch.score_distribution_chart(rfm)),
        segment_chart=_chart(
            "chart-grid", "Customers per RFM grid segment",
            "The classic segments named by the R, F and M scores (before clustering).",
            ch.grid_segment_chart(rfm)),
        rows=rows,
        scored=scored.height,
        excluded=excluded_groups,
        map_source=report.segment_map.source,
    )  # fmt: skip


def _example(row: dict, digits: int) -> Example:
    line = row.get("line")
    return Example(
        file=Path(str(row.get("file") or "")).name,
        line=int(line) if line is not None else None,
        customer_id=row.get("customer_id"),
        order_id=row.get("order_id"),
        order_date=row.get("order_ts") or row.get("order_date"),
        amount_minor=_minor(row.get("amount"), digits),
    )


def _minor(text: Any, digits: int) -> int | None:
    if text is None:
        return None
    try:
        return int(Decimal(str(text)).scaleb(digits))
    except (InvalidOperation, ValueError):
        return None


def _quality(report: Report) -> Quality:
    audit, digits = report.audit, report.rfm.minor_digits
    rules = tuple(
        RuleRow(
            r.rule,
            r.description,
            r.rows,
            r.revenue_minor,
            tuple(_example(e, digits) for e in r.examples),
        )
        for r in audit.rules
    )
    read = max(audit.rows_read, 1)
    return Quality(
        rows_read=audit.rows_read,
        revenue_read_minor=audit.revenue_read_minor,
        rules=rules,
        rows_kept=audit.rows_kept,
        revenue_kept_minor=audit.revenue_kept_minor,
        rows_dropped=sum(r.rows for r in rules),
        revenue_dropped_minor=sum(r.revenue_minor for r in rules),
        reconciles=audit.reconciles,
        returns_netted_rows=audit.returns_netted_rows,
        returns_netted_minor=audit.returns_netted_minor,
        first_date=audit.first_date,
        last_date=audit.last_date,
        missing=tuple(Missing(c, n, n / read) for c, n in audit.missing_values.items()),
        columns=tuple(report.source.columns),
        position=report.source.position,
    )


def _exploration(report: Report) -> Exploration:
    eda, digits = report.eda, report.rfm.minor_digits
    months = tuple(
        Month(
            r["month"],
            int(r["revenue_minor"]),
            int(r["orders"]),
            int(r["customers"] or 0),
            int(r["new_customers"] or 0),
            int(r["returning_customers"] or 0),
            int(r["days_covered"]),
            int(r["days_in_month"]),
        )
        for r in eda.monthly.iter_rows(named=True)
    )
    partial = (
        "; a lighter bar is a month the period covers only in part (the table below gives its days)"
        if any(m.partial for m in months)
        else ""
    )
    accent = _branding(report).accent
    return Exploration(
        monthly_chart=_chart(
            "chart-monthly", "Revenue and orders per month",
            f"Revenue (bars) and orders (line) of the kept purchases per calendar month{partial}.",
            ch.monthly_chart(eda, digits, accent)),
        new_returning_chart=_chart(
            "chart-new-returning", "New and returning customers per month",
            "Customers buying in each month: first purchase ever (new) or bought before "
            f"(returning){partial}.", ch.new_returning_chart(eda)),
        distribution_chart=_chart(
            "chart-distributions", "Distributions of recency, orders and spend",
            "Customers per bin; the top 1% of each feature share the last bin.",
            ch.distribution_chart(report.rfm)),
        months=months,
    )  # fmt: skip


def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _method(seg: Segmentation) -> Method:
    cfg, t, st = seg.settings, seg.transform, seg.stability
    rows = tuple(
        KRow(
            e.k,
            e.inertia,
            _finite(e.silhouette),
            _finite(e.calinski_harabasz),
            _finite(e.davies_bouldin),
            e.smallest_share,
            e.admissible,
            e.not_admissible_because,
            e.k == seg.k,
        )
        for e in seg.evidence
    )
    outliers = ("none" if t.caps is None else
                f"capped at the {cfg.outliers.lower_quantile:.0%}-{cfg.outliers.upper_quantile:.0%} "
                f"quantiles ({int(seg.assignments['outlier'].sum()):,} customers flagged)")  # fmt: skip
    return Method(
        k=seg.k, rule=seg.choice.rule, reason=seg.choice.reason,
        disagreement=seg.choice.disagreement, continuity=getattr(seg, "continuity", ""), rows=rows,
        elbow_chart=_chart(
            "chart-elbow", "Inertia by number of segments",
            "The within-segment spread falls as k grows; the knee is where adding segments stops "
            "paying off. Grey points are outside the allowed range.", ch.elbow_chart(seg)),
        silhouette_chart=_chart(
            "chart-silhouette-k", "Mean silhouette by number of segments",
            "How much closer customers are to their own segment than to the next one "
            "(1 = perfectly separated, 0 = on the border).", ch.silhouette_by_k_chart(seg)),
        samples_chart=_chart(
            "chart-silhouette-samples", "Silhouette of each customer in the chosen segmentation",
            f"The {seg.silhouette_sample_size:,} customers of the silhouette sample, sorted within "
            "their segment; values below zero sit closer to another segment.",
            ch.silhouette_samples_chart(seg)),
        distance_chart=_chart(
            "chart-distances", "Distances between segment centres",
            "Euclidean distances between the standardized segment centres: small distances mark "
            "neighbouring segments whose borders are soft.", ch.distance_chart(seg)),
        silhouette=seg.silhouette, fit_quality=seg.fit_quality,
        stability_runs=tuple(zip(st.seeds, st.ari, strict=True)), stability_mean=st.mean,
        stability_min=st.min, stability_threshold=STABILITY_THRESHOLD, stable=st.stable,
        stability_note=st.note, distance_names=seg.names, distances=seg.centroid_distances,
        customers=seg.customers, fit_sample_size=seg.fit_sample_size,
        silhouette_sample_size=seg.silhouette_sample_size,
        features=tuple(ch.FEATURE_TITLES.get(f, f) for f in t.features), log1p=t.log1p,
        scaling=t.scaling, outliers=outliers, n_init=cfg.n_init, seed=seg.seed,
        definitions=_definitions(seg), algorithm_note=seg.algorithm_note,
    )  # fmt: skip


DEFINITIONS = {
    "Recency": (
        "Whole days from a customer's last purchase to the as-of date (0 = bought on the as-of "
        "date)."
    ),
    "Frequency": "Distinct orders in the period with a positive value.",
    "Monetary (spend)": "Total spend in the period, or the mean order value if configured.",
    "Scores": (
        "1 to 5 per feature: 1 + floor(5 L / n), where L counts customers with a strictly worse "
        "value among the n scored customers; ties share a score."
    ),
    "Segments": (
        "{algorithm} clusters of the transformed features, each named after the RFM grid segment "
        "whose customers lie closest to its centre."
    ),
    "Silhouette": (
        "(b - a) / max(a, b) per customer, with a the mean distance to its own segment and b to "
        "the nearest other one; weak below 0.25, moderate up to 0.5, clear above."
    ),
    "Calinski-Harabasz": "Between-segment over within-segment dispersion (higher is better).",
    "Davies-Bouldin": "Mean similarity of each segment to its most similar one (lower is better).",
    "Adjusted Rand index": (
        "Agreement of two segmentations of the same customers, corrected for chance: 1 "
        "identical, 0 no better than chance."
    ),
}


def _definitions(seg: Segmentation) -> tuple[tuple[str, str], ...]:
    terms = {t: text.format(algorithm=TITLES[seg.algorithm]) for t, text in DEFINITIONS.items()}
    return (*terms.items(), ("Revenue at stake", seg.revenue_at_stake_definition))


# ---------------------------------------------------------------------------------------------
# Appendix and redaction


def redact(value: Any, key: str = "") -> Any:
    """A copy of a config dump with credentials hidden: values under keys naming a password,
    secret, token or user (but `*_env` keys, which name an environment variable), and the
    user:password part of URLs in any string."""
    lowered = key.lower()
    secret = any(part in lowered for part in SECRET_KEY_PARTS) and not lowered.endswith("_env")
    if secret and value not in (None, "", [], {}):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    """`text` with the credentials of any URL in it replaced ('postgresql://[redacted]@db/x')."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)


def _appendix(report: Report) -> Appendix:
    dump = redact(report.config.model_dump(mode="json"))
    text = yaml.safe_dump(dump, sort_keys=False, allow_unicode=True, width=88)
    versions = dict(report.versions)
    for name in _RENDER_PACKAGES:
        try:
            versions.setdefault(name, metadata.version(name))
        except metadata.PackageNotFoundError:
            versions.setdefault(name, "not installed")
    return Appendix(text, tuple(versions.items()), report.data_fingerprint)
