"""The report section 'Beyond K-Means': its typed template context and its charts.

`comparison_view(report)` turns comparison.Comparison into what `templates/_comparison.html`
shows (numbers raw, formatted by the template filters; texts escaped by the templates), or
None when the comparison is off. Charts follow charts.py's rules: inline values, one colour per
segment name in every panel (charts.segment_colors), at most `comparison.PROJECTION_POINTS` points
per panel, sized for an A4 page.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import altair as alt

from . import charts as ch
from .algorithms import TITLES
from .comparison import Comparison, MethodResult, ProfileRow, Scores, SpaceComparison
from .context import ChartView, TocEntry

log = logging.getLogger(__name__)

SECTION = ("comparison", "Beyond K-Means")
PART_METHODS = ("comparison-methods", "Clustering methods compared")
PART_SPACE = ("comparison-representation", "A learned representation against RFM")
SPACE_TITLES = {"embedding": "Autoencoder embedding", "extended": "Extended features", "rfm": "RFM"}
FEATURE_TITLES = {
    **ch.FEATURE_TITLES,
    "days_between_orders": "Days between orders",
    "basket_size": "Products per order",
}
_PROFILE_SHOWN = {  # the profile tables' columns (short heads: eight fit an A4 page)
    "recency_days": "Days since last order",
    "frequency": "Orders",
    "monetary": "Spend",
    "tenure_days": "Days since first order",
    "avg_order_value": "Order value",
    "days_between_orders": "Days between orders",
    "return_rate": "Return rate",
    "basket_size": "Products per order",
}
_MONEY = ("monetary", "avg_order_value")


@dataclass(frozen=True)
class SizeCell:
    """One segment of one method."""

    segment: str
    color: str
    customers: int
    share: float


@dataclass(frozen=True)
class MethodRow:
    """One method's line of the comparison table."""

    method: str
    title: str
    chosen: bool
    k: int
    unclustered: int
    unclustered_share: float
    fitted_on: int
    customers: int
    silhouette: float | None  # in the shared (standard RFM) space
    davies_bouldin: float | None
    calinski_harabasz: float | None
    own: Scores | None  # in the space it clustered, when that is another one
    stability: float
    stable: bool
    ari_vs_kmeans: float
    note: str
    sizes: tuple[SizeCell, ...]


@dataclass(frozen=True)
class ProfileLine:
    """The typical customer of one segment in one clustering."""

    segment: str
    color: str
    customers: int
    share: float
    values: tuple[tuple[float, bool], ...]  # per shown feature: (median, is money in currency)
    mostly: str  # the spend-share value with the largest median ('' when no share features)


@dataclass(frozen=True)
class SpaceView:
    """K-Means in the learned (or extended) space against K-Means in RFM."""

    title: str
    space: str
    description: str
    inputs: tuple[str, ...]
    dropped: tuple[str, ...]
    k: int
    ari: float
    silhouette_rows: tuple[tuple[str, float | None, float | None], ...]  # measured in, RFM, other
    features: tuple[str, ...]  # titles of the profile columns
    rfm_profiles: tuple[ProfileLine, ...]
    other_profiles: tuple[ProfileLine, ...]
    shares: bool  # spend-share features exist: the profiles show the value most spent on
    embedding_words: str  # how the autoencoder was trained and how well it reproduces ('' if none)
    crosstab_chart: ChartView


@dataclass(frozen=True)
class ComparisonView:
    """Section 'Beyond K-Means'."""

    space_description: str
    clustered_elsewhere: bool  # the methods clustered another space than the shared one
    shared_features: tuple[str, ...]
    silhouette_sample_size: int
    bootstrap_samples: int
    stability_threshold: float
    methods: tuple[MethodRow, ...]
    sizes_chart: ChartView | None
    projection_chart: ChartView | None
    space: SpaceView | None
    charts: tuple[ChartView, ...]
    toc: tuple[TocEntry, ...]


# ---------------------------------------------------------------------------------------------
# Building


def comparison_view(report: Any) -> ComparisonView | None:
    """The section's content, or None when the report has no comparison."""
    comp: Comparison | None = getattr(report, "comparison", None)
    if comp is None:
        return None
    from .segment import STABILITY_THRESHOLD

    colors = segment_palette(_all_names(comp))
    methods = tuple(_method_row(r, colors) for r in comp.methods)
    sizes = projection = None
    if methods:
        sizes = _view(
            "chart-comparison-sizes",
            "Segment sizes by method",
            "Customers in each segment found by each method; segments are named from the "
            "same vocabulary as the report's, so a colour means the same kind of customer "
            "in every bar.",
            sizes_chart(methods),
        )
        projection = _view(
            "chart-comparison-projection",
            "The same customers coloured by each method",
            f"A seeded sample of {comp.projection.height:,} customers on the two principal axes of "
            f"the segmentation features ({_explained(comp)}); one panel per method.",
            projection_chart(comp, colors),
        )
    space = _space_view(comp.representation, colors) if comp.representation else None
    crosstab = space.crosstab_chart if space is not None else None
    charts = tuple(c for c in (sizes, projection, crosstab) if c is not None)
    return ComparisonView(
        comp.space_description,
        comp.space != "rfm",
        tuple(FEATURE_TITLES.get(f, f) for f in comp.shared_features),
        comp.silhouette_sample_size,
        comp.bootstrap_samples,
        STABILITY_THRESHOLD,
        methods,
        sizes,
        projection,
        space,
        charts,
        _toc(bool(methods), space is not None),
    )


def _toc(methods: bool, space: bool) -> tuple[TocEntry, ...]:
    entries = [TocEntry(*SECTION, 1)]
    if methods:
        entries.append(TocEntry(*PART_METHODS, 2))
    if space:
        entries.append(TocEntry(*PART_SPACE, 2))
    return tuple(entries)


def _view(chart_id: str, title: str, caption: str, chart: Any) -> ChartView:
    return ChartView(chart_id, title, caption, ch.to_spec(chart))


def _all_names(comp: Comparison) -> list[str]:
    names = [z.segment for r in comp.methods for z in r.sizes]
    if comp.representation is not None:
        rep = comp.representation
        names += [p.segment for p in (*rep.rfm_profiles, *rep.other_profiles)]
    return list(dict.fromkeys(names))


def segment_palette(names: list[str]) -> dict[str, str]:
    """charts.py's colour of every segment name: the same as in the rest of the report."""
    return ch.segment_colors(names)


def _explained(comp: Comparison) -> str:
    shares = [f"{v:.0%}" for v in comp.explained]
    return f"{' and '.join(shares)} of the variance" if shares else "no variance"


def _method_row(r: MethodResult, colors: dict[str, str]) -> MethodRow:
    from .segment import STABILITY_THRESHOLD

    customers = len(r.segments)
    return MethodRow(
        r.method,
        r.title,
        r.chosen,
        r.k,
        r.unclustered,
        r.unclustered / customers if customers else 0.0,
        r.fitted_on,
        customers,
        r.shared.silhouette,
        r.shared.davies_bouldin,
        r.shared.calinski_harabasz,
        r.own,
        r.stability_mean,
        r.stability_mean >= STABILITY_THRESHOLD,
        r.ari_vs_kmeans,
        r.note,
        tuple(SizeCell(z.segment, colors[z.segment], z.customers, z.share) for z in r.sizes),
    )


def _space_view(rep: SpaceComparison, colors: dict[str, str]) -> SpaceView:
    title = SPACE_TITLES.get(rep.space, rep.space)
    shown = tuple(f for f in _PROFILE_SHOWN if f in rep.profile_features)
    rows = tuple(
        (SPACE_TITLES.get(where, where), values.get("rfm"), values.get(rep.space))
        for where, values in rep.silhouette.items()
    )
    return SpaceView(
        title=title,
        space=rep.space,
        description=rep.description,
        inputs=tuple(FEATURE_TITLES.get(f, _share_title(f)) for f in rep.inputs),
        dropped=tuple(FEATURE_TITLES.get(f, _share_title(f)) for f in rep.dropped),
        k=rep.k,
        ari=rep.ari,
        silhouette_rows=rows,
        features=tuple(_PROFILE_SHOWN[f] for f in shown),
        rfm_profiles=tuple(_profile_line(p, shown, colors) for p in rep.rfm_profiles),
        other_profiles=tuple(_profile_line(p, shown, colors) for p in rep.other_profiles),
        shares=any(f.startswith("share_") for f in rep.profile_features),
        embedding_words=_embedding_words(rep),
        crosstab_chart=_view(
            "chart-comparison-crosstab",
            f"Where the RFM segments went in the {title.lower()}",
            f"Customers of each K-Means segment in RFM (rows) by their K-Means segment in the "
            f"{title.lower()} (columns), both with k={rep.k}: a full diagonal would mean the two "
            "agree.",
            crosstab_chart(rep),
        ),
    )


def _share_title(feature: str) -> str:
    attribute, _, value = feature.removeprefix("share_").partition("=")
    return f"Spend share: {attribute} {value}" if value else feature


def _profile_line(p: ProfileRow, shown: tuple[str, ...], colors: dict[str, str]) -> ProfileLine:
    shares = {k: v for k, v in p.medians.items() if k.startswith("share_")}
    mostly = ""
    if shares:
        top = max(shares, key=lambda k: (shares[k], k))
        mostly = top.removeprefix("share_").partition("=")[2] if shares[top] > 0 else ""
    return ProfileLine(
        p.segment,
        colors[p.segment],
        p.customers,
        p.share,
        tuple((p.medians[f], f in _MONEY) for f in shown),
        mostly,
    )


def _embedding_words(rep: SpaceComparison) -> str:
    emb = rep.embedding
    if emb is None:
        return ""
    stop = (
        f"stopped after {emb.iterations} epochs when the loss settled"
        if emb.converged
        else f"ran the full {emb.iterations} epochs (representation.embedding.max_iter)"
    )
    return (
        f"An autoencoder ({len(emb.inputs)} inputs, {emb.hidden}-{emb.dimensions}-{emb.hidden} "
        f"tanh layers, scikit-learn MLPRegressor, adam) was trained on {emb.trained_on:,} "
        f"customers to reproduce their standardized features through a {emb.dimensions}-number "
        f"bottleneck; it {stop} and reproduces the features with R\u00b2 "
        f"{emb.reconstruction_r2:.2f} (1 = perfectly)."
    )


# ---------------------------------------------------------------------------------------------
# Charts


def _color(names: list[str], palette: dict[str, str], legend: bool = True) -> alt.Color:
    scale = alt.Scale(domain=names, range=[palette[n] for n in names])
    return alt.Color(
        "segment:N",
        scale=scale,
        sort=names,
        legend=alt.Legend(title=None, orient="bottom", columns=min(len(names), 6), symbolOpacity=1)
        if legend
        else None,
    )


def sizes_chart(rows: tuple[MethodRow, ...]) -> alt.Chart:
    """Per method, its segments as one bar split by share of customers."""
    data = [
        {
            "method": r.title,
            "segment": z.segment,
            "customers": z.customers,
            "share": z.share,
            "order": i,
        }
        for r in rows
        for i, z in enumerate(r.sizes)
    ]
    palette = {z.segment: z.color for r in rows for z in r.sizes}
    names = list(palette)
    return (
        alt.Chart(alt.Data(values=data))
        .mark_bar(stroke="white", strokeWidth=0.8)
        .encode(
            y=alt.Y("method:N", title=None, sort=[r.title for r in rows]),
            x=alt.X(
                "share:Q",
                title="Share of customers",
                axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1]),
            ),
            color=_color(names, palette),
            order=alt.Order("order:Q"),
            tooltip=[
                alt.Tooltip("method:N", title="Method"),
                alt.Tooltip("segment:N", title="Segment"),
                alt.Tooltip("customers:Q", title="Customers", format=","),
                alt.Tooltip("share:Q", title="Share", format=".1%"),
            ],
        )
        .properties(width=ch.WIDTH - 130, height=24 * len(rows))
    )


def projection_chart(comp: Comparison, palette: dict[str, str]) -> alt.Chart:
    """Small multiples of the PCA sample, one panel per method, coloured by its segments."""
    titles = [TITLES[r.method] for r in comp.methods]
    frame = comp.projection.rename({r.method: TITLES[r.method] for r in comp.methods})
    rows = [
        {**row, "pc1": round(row["pc1"], 3), "pc2": round(row["pc2"], 3)}
        for row in frame.drop("customer_id").to_dicts()
    ]
    names = [n for n in palette if any(n in {z.segment for z in r.sizes} for r in comp.methods)]
    axes = [f"Principal axis {i + 1}" for i in range(2)]
    return (
        alt.Chart(alt.Data(values=rows))
        .transform_fold(list[Any](titles), as_=["method", "segment"])
        .mark_circle(size=9, opacity=0.6)
        .encode(
            x=alt.X("pc1:Q", title=axes[0], axis=alt.Axis(labels=False, ticks=False)),
            y=alt.Y("pc2:Q", title=axes[1], axis=alt.Axis(labels=False, ticks=False)),
            color=_color(names, palette),
            tooltip=[
                alt.Tooltip("method:N", title="Method"),
                alt.Tooltip("segment:N", title="Segment"),
            ],
        )
        .properties(width=165, height=135)
        .facet(facet=alt.Facet("method:N", sort=titles, title=None), columns=3, spacing=14)
    )


def crosstab_chart(rep: SpaceComparison) -> alt.LayerChart:
    """Customers per (RFM segment, other-space segment), as a heatmap with counts."""
    title = SPACE_TITLES.get(rep.space, rep.space)
    data = [
        {"rfm": r, "other": c, "customers": n}
        for r, counts in zip(rep.crosstab_rows, rep.crosstab, strict=True)
        for c, n in zip(rep.crosstab_columns, counts, strict=True)
    ]
    base = alt.Chart(alt.Data(values=data)).encode(
        x=alt.X(
            "other:N",
            title=f"Segment in the {title.lower()}",
            sort=list(rep.crosstab_columns),
            axis=alt.Axis(labelAngle=-30),
        ),
        y=alt.Y("rfm:N", title="Segment in RFM", sort=list(rep.crosstab_rows)),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("customers:Q", scale=alt.Scale(scheme="blues"), legend=None),
        tooltip=[
            alt.Tooltip("rfm:N", title="In RFM"),
            alt.Tooltip("other:N", title=f"In the {title.lower()}"),
            alt.Tooltip("customers:Q", title="Customers", format=","),
        ],
    )
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("customers:Q", format=","),
        color=alt.condition(
            alt.datum.customers > max(1, _max_count(rep)) / 2, alt.value("white"), alt.value(ch.INK)
        ),
    )
    return (cells + text).properties(
        width=min(ch.WIDTH - 180, 70 * len(rep.crosstab_columns)),
        height=26 * len(rep.crosstab_rows),
    )


def _max_count(rep: SpaceComparison) -> int:
    return max((n for row in rep.crosstab for n in row), default=0)
