"""Altair charts of the report: pure functions from the model to Vega-Lite specs.

Rules every chart follows (bench/RESULTS.md items 9-10, ECOSYSTEM.md sections 1-2):
- never one mark per customer: distributions are binned, boxplots drawn from quantiles, and the
  scatter plots show a seeded sample of at most `MAX_POINTS` customers, so a chart's size does
  not grow with the data;
- every segment keeps one colour in every chart (`segment_colors`), and the same colour marks it
  in the tables;
- data are inline values, never URLs (vl-convert runs with `allowed_base_urls=[]`);
- the font is set per output by `with_font`: the PDF pins the installed "Liberation Sans" that
  vl-convert measures with, so WeasyPrint draws labels exactly where they were laid out.

Charts are sized for an A4 page (at most ~650 px wide, axes and legend included).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from typing import Any

import altair as alt
import numpy as np
import polars as pl

from .algorithms import UNCLUSTERED
from .eda import Eda
from .rfm import RfmTable
from .segment import Segmentation, feature_matrix, find_knee

log = logging.getLogger(__name__)

Chart = alt.TopLevelMixin  # any top-level Altair chart (single, layered, concatenated)

PDF_FONT = "Liberation Sans"
SCREEN_FONT = "'Liberation Sans', Arial, Helvetica, sans-serif"
MAX_POINTS = 1_000  # customers drawn in a scatter plot
MIN_POINTS_PER_SEGMENT = 25  # so that small segments still show in a sample
WIDTH = 560  # full-width plot area (px); axes and legend come on top
GREY, INK, MUTED = "#c7ccd1", "#1f2933", "#6b7785"

SEGMENT_COLORS = {
    "Champions": "#1a7f4b",
    "Loyal Customers": "#55a84f",
    "Potential Loyalist": "#16a0a8",
    "New Customers": "#3d85c6",
    "Promising": "#7a65c4",
    "Need Attention": "#d9a400",
    "About To Sleep": "#ee8a2b",
    "At Risk": "#d9503a",
    "Can't Lose Them": "#9e2a2f",
    "Hibernating": "#8e7c9e",
    "Lost": "#98a0a8",
    UNCLUSTERED: "#4a5561",  # density clustering's noise: a neutral slate, not an alarm colour
}
_OTHER_COLORS = ("#4e79a7", "#f28e2b", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#e15759", "#bab0ac")  # fmt: skip
FEATURE_TITLES = {
    "recency_days": "Days since last order",
    "frequency": "Orders",
    "monetary": "Spend",
    "tenure_days": "Days since first order",
    "avg_order_value": "Average order value",
    "return_rate": "Return rate",
}


def segment_colors(names: Sequence[str]) -> dict[str, str]:
    """One colour per segment name: fixed for the 11 grid names, stable for any other name."""
    colors = {}
    for name in names:
        known = SEGMENT_COLORS.get(name)
        colors[name] = known or _OTHER_COLORS[zlib.crc32(name.encode()) % len(_OTHER_COLORS)]
    return colors


def _segment_scale(seg: Segmentation) -> alt.Scale:
    colors = segment_colors(seg.names)
    return alt.Scale(domain=list(seg.names), range=[colors[n] for n in seg.names])


def _segment_color(seg: Segmentation, legend: bool = True) -> alt.Color:
    return alt.Color(
        "segment:N",
        scale=_segment_scale(seg),
        sort=list(seg.names),
        legend=alt.Legend(
            title=None, orient="bottom", columns=min(len(seg.names), 6), symbolOpacity=1
        )
        if legend
        else None,
    )


def _short_axis(money: bool = False, **kwargs: Any) -> alt.Axis:
    """An axis labelled '0, 500, 1k, 1.5k' (each tick on its own: d3 would give '0k, 0.5k')."""
    fmt = "$~s" if money else "~s"
    return alt.Axis(labelExpr=f"datum.value === 0 ? '0' : format(datum.value, '{fmt}')", **kwargs)


def _log_short_axis(money: bool = False, **kwargs: Any) -> alt.Axis:
    """A log axis labelled '0.1, 1, 10, 100, 1k', thinned as d3 thins log ticks; below 1 in
    decimals: SI's '100m' (for milli) reads as millions."""
    short, small = ("$~s", "$.2~f") if money else ("~s", ".2~f")
    label = f"datum.label !== '' && datum.value < 1 ? format(datum.value, '{small}') : datum.label"
    return alt.Axis(format=short, labelExpr=label, **kwargs)


def _money(minor: float, digits: int) -> float:
    return float(minor) / 10**digits


# ---------------------------------------------------------------------------------------------
# Output settings


def base_config() -> dict[str, Any]:
    """Chart-wide settings (colours, sizes); the font is added per output by `with_font`."""
    axis = {"labelColor": INK, "titleColor": INK, "labelFontSize": 11, "titleFontSize": 11,
            "titleFontWeight": "normal", "gridColor": "#e8ebee", "domainColor": GREY,
            "tickColor": GREY}  # fmt: skip
    return {
        "axis": axis,
        "legend": {
            "labelFontSize": 11,
            "titleFontSize": 11,
            "labelColor": INK,
            "titleColor": INK,
            "symbolType": "circle",
            "labelLimit": 220,
        },
        "header": {"labelFontSize": 11, "titleFontSize": 11},
        "title": {"fontSize": 12, "anchor": "start", "color": INK, "fontWeight": "bold"},
        "view": {"stroke": None},
        "background": "white",
        "text": {"fontSize": 11},
    }


def to_spec(chart: alt.TopLevelMixin, validate: bool = False) -> dict[str, Any]:
    """The Vega-Lite spec of a chart with the report's settings (no font yet); schema
    validation costs ~0.1-1 s per chart, so it is left to the tests."""
    spec = chart.to_dict(validate=validate)
    spec["config"] = {**base_config(), **spec.get("config", {})}
    return spec


def with_font(spec: dict[str, Any], font: str) -> dict[str, Any]:
    """A copy of `spec` drawn with `font` (PDF_FONT for the PDF, SCREEN_FONT for the page)."""
    return {**spec, "config": {**spec.get("config", {}), "font": font}}


# ---------------------------------------------------------------------------------------------
# Executive summary and segments


def segment_share_chart(seg: Segmentation) -> Chart:
    """Share of customers next to share of revenue, per segment."""
    rows = []
    for p in seg.profiles:
        rows.append({"segment": p.name, "measure": "Customers", "share": p.share})
        rows.append({"segment": p.name, "measure": "Revenue", "share": p.revenue_share})
    bars = alt.Chart(alt.Data(values=rows)).mark_bar(cornerRadiusEnd=2).encode(
        y=alt.Y("segment:N", sort=list(seg.names), title=None),
        yOffset=alt.YOffset("measure:N", sort=["Customers", "Revenue"]),
        x=alt.X("share:Q", axis=alt.Axis(format="%"), title="Share of all segmented customers / revenue"),
        color=alt.Color("measure:N", scale=alt.Scale(domain=["Customers", "Revenue"],
                        range=["#9fb3c8", "#1f4e79"]), legend=alt.Legend(title=None, orient="top")),
        tooltip=[alt.Tooltip("segment:N", title="Segment"), alt.Tooltip("measure:N", title="Share of"),
                 alt.Tooltip("share:Q", format=".1%", title="Share")],
    )  # fmt: skip
    labels = bars.mark_text(align="left", dx=3, fontSize=10, color=INK).encode(
        text=alt.Text("share:Q", format=".0%"), color=alt.value(INK)
    )
    return (bars + labels).properties(width=WIDTH - 60, height=alt.Step(13))


def profile_chart(seg: Segmentation) -> Chart:
    """Median recency, orders and spend per segment (the segments' profile bars)."""
    panels = []
    for i, (feature, fmt) in enumerate((("recency_days", ",.0f"), ("frequency", ",.0f"),
                                        ("monetary", "$,.0f"))):  # fmt: skip
        rows = [{"segment": p.name, "value": p.features[feature].median,
                 "mean": p.features[feature].mean} for p in seg.profiles]  # fmt: skip
        base = alt.Chart(alt.Data(values=rows)).encode(
            y=alt.Y("segment:N", sort=list(seg.names), title=None,
                    axis=alt.Axis(labelLimit=150) if i == 0 else None),
            x=alt.X("value:Q", title=f"{FEATURE_TITLES[feature]} (median)",
                    axis=alt.Axis(format=fmt, tickCount=4)),
        )  # fmt: skip
        bars = base.mark_bar(cornerRadiusEnd=2).encode(
            color=_segment_color(seg, legend=False),
            tooltip=[alt.Tooltip("segment:N", title="Segment"),
                     alt.Tooltip("value:Q", format=fmt.replace(".0f", ".2~f"), title="Median"),
                     alt.Tooltip("mean:Q", format=fmt.replace(".0f", ".2~f"), title="Mean")],
        )  # fmt: skip
        text = base.mark_text(align="left", dx=3, fontSize=10, color=INK).encode(
            text=alt.Text("value:Q", format=fmt)
        )
        panels.append((bars + text).properties(width=135, height=alt.Step(20)))
    return alt.hconcat(*panels, spacing=28)


def centroid_heatmap(seg: Segmentation) -> Chart:
    """The standardized centroids: how far each segment sits from the average, per feature."""
    features = seg.transform.features
    rows: list[dict[str, Any]] = [
        {"segment": p.name, "feature": FEATURE_TITLES.get(f, f), "z": z}
        for p in seg.profiles
        for f, z in zip(features, p.centroid_scaled, strict=True)
    ]
    limit = max(1.0, max(abs(r["z"]) for r in rows))
    base = alt.Chart(alt.Data(values=rows)).encode(
        y=alt.Y("segment:N", sort=list(seg.names), title=None, axis=alt.Axis(labelLimit=150)),
        x=alt.X("feature:N", sort=[FEATURE_TITLES.get(f, f) for f in features], title=None,
                axis=alt.Axis(orient="top", labelAngle=0)),
    )  # fmt: skip
    cells = base.mark_rect(stroke="white", strokeWidth=2).encode(
        color=alt.Color("z:Q", scale=alt.Scale(scheme="redblue", domain=[-limit, limit], reverse=True),
                        legend=alt.Legend(title="Standard deviations from the mean", orient="bottom",
                                          gradientLength=240, titleLimit=300)),
        tooltip=[alt.Tooltip("segment:N", title="Segment"), alt.Tooltip("feature:N", title="Feature"),
                 alt.Tooltip("z:Q", format="+.2f", title="Standardized centroid")],
    )  # fmt: skip
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("z:Q", format="+.2f"),
        color=alt.condition(f"abs(datum.z) > {limit * 0.55}", alt.value("white"), alt.value(INK)),
    )
    width = min(WIDTH - 150, 130 * len(features))
    return (cells + text).properties(width=width, height=alt.Step(28))


def _quantile_rows(frame: pl.DataFrame, feature: str, names: Sequence[str]) -> list[dict]:
    stats = (
        frame.group_by("segment")
        .agg(
            *[pl.col(feature).quantile(q, interpolation="linear").alias(a)
              for a, q in (("p5", 0.05), ("q1", 0.25), ("median", 0.5), ("q3", 0.75), ("p95", 0.95))],
            pl.len().alias("customers"),
        )
    )  # fmt: skip
    order = {n: i for i, n in enumerate(names)}
    return sorted(stats.to_dicts(), key=lambda r: order.get(r["segment"], len(order)))


def segment_feature_frame(rfm: RfmTable, seg: Segmentation) -> pl.DataFrame:
    """customer_id, segment and R, F, M (money in currency units) of every segmented customer."""
    scored = rfm.scored
    digits = rfm.minor_digits
    return pl.DataFrame(
        {
            "customer_id": scored["customer_id"],
            "segment": seg.assignments["segment"],
            "recency_days": scored["recency_days"].cast(pl.Float64),
            "frequency": scored["frequency"].cast(pl.Float64),
            "monetary": scored["monetary_minor"].cast(pl.Float64) / 10**digits,
        }
    )


def boxplot_chart(rfm: RfmTable, seg: Segmentation) -> Chart:
    """Per segment and feature: median, interquartile box and 5th-95th percentile whiskers."""
    frame = segment_feature_frame(rfm, seg)
    panels = []
    for i, feature in enumerate(("recency_days", "frequency", "monetary")):
        rows = _quantile_rows(frame, feature, seg.names)
        fmt = "$,.0f" if feature == "monetary" else ",.0f"
        log_scale = feature != "recency_days"
        scale = alt.Scale(type="log", nice=False) if log_scale else alt.Scale(zero=True)
        base = alt.Chart(alt.Data(values=rows)).encode(
            y=alt.Y("segment:N", sort=list(seg.names), title=None,
                    axis=alt.Axis(labelLimit=150) if i == 0 else None),
        )  # fmt: skip
        x_title = FEATURE_TITLES[feature] + (" (log scale)" if log_scale else "")
        tooltip = [alt.Tooltip("segment:N", title="Segment")] + [
            alt.Tooltip(f"{a}:Q", format=fmt.replace(".0f", ".2~f"), title=t)
            for a, t in (("p5", "5th percentile"), ("q1", "25th percentile"), ("median", "Median"),
                         ("q3", "75th percentile"), ("p95", "95th percentile"))
        ]  # fmt: skip
        whisker = base.mark_rule(color=MUTED).encode(
            x=alt.X("p5:Q", scale=scale, title=x_title, axis=alt.Axis(format=fmt, tickCount=4)),
            x2="p95:Q",
        )
        box = base.mark_bar(size=13, cornerRadius=2).encode(
            x="q1:Q", x2="q3:Q", color=_segment_color(seg, legend=False), tooltip=tooltip
        )
        median = base.mark_tick(color="white", size=13, thickness=2).encode(x="median:Q")
        panels.append((whisker + box + median).properties(width=135, height=alt.Step(20)))
    return alt.hconcat(*panels, spacing=28)


def sample_customers(frame: pl.DataFrame, seed: int, limit: int = MAX_POINTS) -> pl.DataFrame:
    """A seeded sample of at most `limit` rows, each segment drawn in proportion to its size,
    with at least MIN_POINTS_PER_SEGMENT rows (or all) from every segment."""
    if frame.height <= limit:
        return frame
    sizes = dict(frame.group_by("segment", maintain_order=True).len().iter_rows())
    want = {name: min(size, max(MIN_POINTS_PER_SEGMENT, round(limit * size / frame.height)))
            for name, size in sizes.items()}  # fmt: skip
    for name in sorted(sizes, key=lambda n: -want[n]):  # the floors and rounding took too many
        overflow = sum(want.values()) - limit
        if overflow <= 0:
            break
        want[name] -= min(overflow, want[name] - min(sizes[name], MIN_POINTS_PER_SEGMENT))
    rng = np.random.default_rng([seed, 7])
    segments = frame["segment"].to_numpy()
    picks = [rng.choice(np.flatnonzero(segments == name), size=count, replace=False)
             for name, count in want.items()]  # fmt: skip
    return frame[np.sort(np.concatenate(picks))]


def scatter_chart(rfm: RfmTable, seg: Segmentation, seed: int) -> Chart:
    """Recency, frequency and spend against each other, for a seeded sample of customers."""
    sample = sample_customers(segment_feature_frame(rfm, seg), seed)
    rows = sample.to_dicts()
    pick = alt.selection_point(fields=["segment"], bind="legend")
    tooltip = [alt.Tooltip("customer_id:N", title="Customer"), alt.Tooltip("segment:N", title="Segment"),
               alt.Tooltip("recency_days:Q", title="Days since last order", format=",.0f"),
               alt.Tooltip("frequency:Q", title="Orders", format=",.0f"),
               alt.Tooltip("monetary:Q", title="Spend", format="$,.2f")]  # fmt: skip
    base = (
        alt.Chart()
        .mark_circle(size=16, opacity=0.65)
        .encode(
            color=_segment_color(seg),
            opacity=alt.condition(pick, alt.value(0.7), alt.value(0.06)),
            tooltip=tooltip,
        )
    )
    panels = []
    pairs = (("recency_days", "frequency"), ("recency_days", "monetary"), ("frequency", "monetary"))
    for i, (x, y) in enumerate(pairs):
        panel = base.encode(x=alt.X(**_log_axis(x)), y=alt.Y(**_log_axis(y)))
        if i == 0:
            panel = panel.add_params(pick)
        panels.append(panel.properties(width=150, height=150))
    return alt.hconcat(*panels, data=alt.Data(values=rows), spacing=20)


def _log_axis(feature: str) -> dict[str, Any]:
    """Encoding arguments of one R/F/M feature on a log axis (recency: symlog, it can be 0)."""
    scale = (
        alt.Scale(type="symlog", constant=5) if feature == "recency_days" else alt.Scale(type="log")
    )
    axis = (
        alt.Axis(tickCount=5, format=",.0f")
        if feature == "recency_days"
        else _log_short_axis(money=feature == "monetary", tickCount=5)
    )
    return {
        "shorthand": f"{feature}:Q",
        "title": f"{FEATURE_TITLES[feature]} (log)",
        "scale": scale,
        "axis": axis,
    }


def principal_axes(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two first principal axes of `coords` (as rows) and the share of variance of each."""
    centered = coords - coords.mean(axis=0)
    cov = np.cov(centered, rowvar=False) if len(coords) > 1 else np.eye(coords.shape[1])
    values, vectors = np.linalg.eigh(np.atleast_2d(cov))
    order = np.argsort(values)[::-1][:2]
    axes = vectors[:, order].T
    axes *= np.where(axes.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)  # deterministic signs
    total = values.sum()
    return axes, values[order] / total if total > 0 else np.zeros(len(order))


def pca_chart(rfm: RfmTable, seg: Segmentation, seed: int) -> Chart:
    """The clustered coordinates projected on their two principal axes (sampled), centroids marked."""
    scored = rfm.scored
    coords = seg.transform.apply(feature_matrix(scored, seg.transform.features, rfm.minor_digits))
    axes, explained = principal_axes(coords)
    mean = coords.mean(axis=0)
    frame = pl.DataFrame({"customer_id": scored["customer_id"], "segment": seg.assignments["segment"],
                          "row": np.arange(len(coords))})  # fmt: skip
    sample = sample_customers(frame, seed)
    projected = (coords[sample["row"].to_numpy()] - mean) @ axes.T
    points = [
        {"customer_id": c, "segment": s, "pc1": float(a), "pc2": float(b)}
        for c, s, (a, b) in zip(sample["customer_id"], sample["segment"], projected, strict=True)
    ]
    centers = (np.array([p.centroid_scaled for p in seg.profiles]) - mean) @ axes.T
    centroid_rows = [{"segment": p.name, "pc1": float(a), "pc2": float(b)}
                     for p, (a, b) in zip(seg.profiles, centers, strict=True)]  # fmt: skip
    pc = [f"Principal axis {i + 1} ({share:.0%} of variance)" for i, share in enumerate(explained)]
    pick = alt.selection_point(fields=["segment"], bind="legend")
    dots = alt.Chart(alt.Data(values=points)).mark_circle(size=14).encode(
        x=alt.X("pc1:Q", title=pc[0]), y=alt.Y("pc2:Q", title=pc[1] if len(pc) > 1 else None),
        color=_segment_color(seg),
        opacity=alt.condition(pick, alt.value(0.55), alt.value(0.05)),
        tooltip=[alt.Tooltip("customer_id:N", title="Customer"), alt.Tooltip("segment:N", title="Segment")],
    ).add_params(pick)  # fmt: skip
    centroid_base = alt.Chart(alt.Data(values=centroid_rows)).encode(x="pc1:Q", y="pc2:Q")
    marks = centroid_base.mark_point(shape="diamond", size=170, filled=True, stroke="white",
                                     strokeWidth=1.5, opacity=1).encode(
        color=_segment_color(seg), tooltip=[alt.Tooltip("segment:N", title="Centroid of")])  # fmt: skip
    halo = centroid_base.mark_text(
        dy=-13, fontSize=11, fontWeight="bold", stroke="white", strokeWidth=3, strokeOpacity=0.85
    ).encode(text="segment:N")
    labels = centroid_base.mark_text(dy=-13, fontSize=11, fontWeight="bold", color=INK).encode(
        text="segment:N"
    )
    return (dots + marks + halo + labels).properties(width=WIDTH - 40, height=320)


def migration_chart(columns: Sequence[str], matrix: Sequence[tuple[str, Sequence[int]]]) -> Chart:
    """Customers by segment at the previous run (rows) and now (columns)."""
    rows: list[dict[str, Any]] = [{"before": before, "now": now, "customers": int(count)}
            for before, counts in matrix for now, count in zip(columns, counts, strict=True)]  # fmt: skip
    top = max([r["customers"] for r in rows] + [1])
    before_order = [before for before, _ in matrix]
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("now:N", sort=list(columns), title="Now",
                axis=alt.Axis(orient="top", labelAngle=-30, labelAlign="left", labelLimit=120)),
        y=alt.Y("before:N", sort=before_order, title="Previous report", axis=alt.Axis(labelLimit=150)),
    )  # fmt: skip
    cells = base.mark_rect(stroke="white", strokeWidth=2).encode(
        color=alt.Color("customers:Q", scale=alt.Scale(scheme="greens", domain=[0, top]), legend=None),
        tooltip=[alt.Tooltip("before:N", title="Previous"), alt.Tooltip("now:N", title="Now"),
                 alt.Tooltip("customers:Q", format=",d", title="Customers")],
    )  # fmt: skip
    text = base.mark_text(fontSize=10).encode(
        text=alt.Text("customers:Q", format=",d"),
        color=alt.condition(f"datum.customers > {top * 0.6}", alt.value("white"), alt.value(INK)),
    )
    return (cells + text).properties(width=alt.Step(min(62, 480 // max(len(columns), 1))),
                                     height=alt.Step(24))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# RFM grid and EDA


def score_distribution_chart(rfm: RfmTable) -> Chart:
    """How many customers got each R, F and M score."""
    scored = rfm.scored
    panels = []
    for i, (score, title) in enumerate((("r_score", "Recency score"), ("f_score", "Frequency score"),
                                        ("m_score", "Monetary score"))):  # fmt: skip
        counts = dict(scored.group_by(score).len().iter_rows())
        rows = [{"score": s, "customers": int(counts.get(s, 0))} for s in range(1, 6)]
        panels.append(
            alt.Chart(alt.Data(values=rows))
            .mark_bar(color="#1f4e79", cornerRadiusEnd=2)
            .encode(
                x=alt.X("score:O", title=f"{title} (5 = best)", axis=alt.Axis(labelAngle=0)),
                y=alt.Y(
                    "customers:Q",
                    title="Customers" if i == 0 else None,
                    axis=alt.Axis(format=",d", tickCount=4),
                ),
                tooltip=[
                    alt.Tooltip("score:O", title=title),
                    alt.Tooltip("customers:Q", format=",d", title="Customers"),
                ],
            )
            .properties(width=150, height=130)
        )
    return alt.hconcat(*panels, spacing=24)


def grid_segment_chart(rfm: RfmTable) -> Chart:
    """Customers per classic RFM grid segment (the scored customers)."""
    counts = rfm.scored.group_by("rfm_grid_segment").len().sort("len", descending=True)
    names = counts["rfm_grid_segment"].to_list()
    colors = segment_colors(names)
    total = max(int(counts["len"].sum()), 1)
    rows = [{"segment": n, "customers": int(c), "share": c / total} for n, c in counts.iter_rows()]
    base = alt.Chart(alt.Data(values=rows)).encode(
        y=alt.Y("segment:N", sort=names, title=None, axis=alt.Axis(labelLimit=150)),
        x=alt.X("customers:Q", title="Customers", axis=alt.Axis(format=",d", tickCount=5)),
    )
    bars = base.mark_bar(cornerRadiusEnd=2).encode(
        color=alt.Color("segment:N", scale=alt.Scale(domain=names, range=[colors[n] for n in names]),
                        legend=None),
        tooltip=[alt.Tooltip("segment:N", title="Grid segment"),
                 alt.Tooltip("customers:Q", format=",d", title="Customers"),
                 alt.Tooltip("share:Q", format=".1%", title="Share")],
    )  # fmt: skip
    text = base.mark_text(align="left", dx=3, fontSize=10, color=INK).encode(
        text=alt.Text("share:Q", format=".1%")
    )
    return (bars + text).properties(width=WIDTH - 160, height=alt.Step(18))


def _monthly_rows(eda: Eda, digits: int) -> list[dict]:
    return [
        {
            "month": r["month"].isoformat(),
            "revenue": _money(r["revenue_minor"], digits),
            "orders": int(r["orders"]),
            "new": int(r["new_customers"] or 0),
            "returning": int(r["returning_customers"] or 0),
            "partial": r["days_covered"] < r["days_in_month"],
            "days": f"{r['days_covered']} of {r['days_in_month']}",
        }
        for r in eda.monthly.iter_rows(named=True)
    ]


# A month the period covers in part is drawn lighter (the caption says which and how much).
_PARTIAL_OPACITY = alt.condition("datum.partial", alt.value(0.45), alt.value(1.0))
_DAYS_TOOLTIP = alt.Tooltip("days:N", title="Days in the period")


def monthly_chart(eda: Eda, digits: int, accent: str) -> Chart:
    """Revenue (bars) and orders (line) per calendar month."""
    rows = _monthly_rows(eda, digits)
    tooltip = [alt.Tooltip("month:T", timeUnit="yearmonth", format="%B %Y", title="Month"),
               alt.Tooltip("revenue:Q", format="$,.0f", title="Revenue"),
               alt.Tooltip("orders:Q", format=",d", title="Orders"), _DAYS_TOOLTIP]  # fmt: skip
    revenue = (
        alt.Chart()
        .mark_bar(color=accent, cornerRadiusEnd=2)
        .encode(
            x=_month_x(labels=False),
            y=alt.Y("revenue:Q", title="Revenue", axis=_short_axis(money=True, tickCount=4)),
            opacity=_PARTIAL_OPACITY,
            tooltip=tooltip,
        )
        .properties(width=WIDTH, height=150)
    )
    orders = alt.Chart().mark_line(color=INK, point=alt.OverlayMarkDef(color=INK, size=25)).encode(
        x=_month_x(), y=alt.Y("orders:Q", title="Orders", axis=_short_axis(tickCount=4)),
        tooltip=tooltip,
    ).properties(width=WIDTH, height=110)  # fmt: skip
    return alt.vconcat(revenue, orders, data=alt.Data(values=rows), spacing=8)


def _month_x(labels: bool = True) -> alt.X:
    axis = (
        alt.Axis(format="%b %Y", labelAngle=-40, labelOverlap=True)
        if labels
        else alt.Axis(labels=False, ticks=False)
    )
    return alt.X("month:T", timeUnit="yearmonth", title=None, axis=axis)


def new_returning_chart(eda: Eda) -> Chart:
    """Customers buying each month: first-time buyers and returning ones."""
    rows = [
        {
            **{k: r[k] for k in ("month", "partial", "days")},
            "kind": kind,
            "customers": r[key],
            "order": i,
        }  # fmt: skip
        for r in _monthly_rows(eda, 0)
        for i, (kind, key) in enumerate((("New", "new"), ("Returning", "returning")))
    ]
    return (
        alt.Chart(alt.Data(values=rows))
        .mark_bar()
        .encode(
            x=_month_x(),
            y=alt.Y(
                "customers:Q", title="Customers buying", stack="zero", axis=_short_axis(tickCount=4)
            ),
            color=alt.Color(
                "kind:N",
                scale=alt.Scale(domain=["New", "Returning"], range=["#e69b3a", "#1f4e79"]),
                legend=alt.Legend(title=None, orient="top"),
            ),
            order=alt.Order("order:Q"),
            opacity=_PARTIAL_OPACITY,
            tooltip=[
                alt.Tooltip("month:T", timeUnit="yearmonth", format="%B %Y", title="Month"),
                alt.Tooltip("kind:N", title="Customers"),
                alt.Tooltip("customers:Q", format=",d", title="Count"),
                _DAYS_TOOLTIP,
            ],
        )
        .properties(width=WIDTH, height=170)
    )


def _nice_step(span: float, bins: int) -> float:
    raw = max(span / bins, 1e-9)
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def histogram_rows(values: np.ndarray, kind: str, bins: int = 24) -> list[dict]:
    """Binned counts of one distribution: linear bins ('linear'), integer bins ('count'),
    or log-spaced bins ('log', for positive money); the top 1% share the last bin."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return []
    top = float(np.quantile(values, 0.99))
    low = float(values.min())
    if kind == "log" and low > 0 and top > low:
        edges = np.geomspace(low, top, bins + 1)
    elif kind == "count":
        step = max(1.0, math.ceil(_nice_step(top - low + 1, bins)))
        edges = np.arange(math.floor(low), top + step + 1, step)
    else:
        step = _nice_step(top - low, bins) if top > low else 1.0
        edges = np.arange(math.floor(low / step) * step, top + step, step)
    edges = np.unique(edges)
    if len(edges) < 2:
        edges = np.array([low, low + 1.0])
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return [
        {"start": float(a), "end": float(b), "customers": int(c), "last": i == len(counts) - 1}
        for i, (a, b, c) in enumerate(zip(edges[:-1], edges[1:], counts, strict=True))
    ]


def distribution_chart(rfm: RfmTable) -> Chart:
    """Histograms of recency, frequency and spend (binned here: never one mark per customer)."""
    scored = rfm.scored
    digits = rfm.minor_digits
    specs = (
        ("recency_days", scored["recency_days"].to_numpy().astype(float), "linear", ",.0f", False),
        ("frequency", scored["frequency"].to_numpy().astype(float), "count", ",.0f", False),
        ("monetary", scored["monetary_minor"].to_numpy().astype(float) / 10**digits, "log", "$~s", True),
    )  # fmt: skip
    panels = []
    for i, (feature, values, kind, fmt, log_scale) in enumerate(specs):
        rows = histogram_rows(values, kind)
        scale = alt.Scale(type="log") if log_scale else alt.Scale(zero=False, nice=False)
        title = FEATURE_TITLES[feature] + (" (log scale)" if log_scale else "")
        chart = alt.Chart(alt.Data(values=rows)).mark_rect(color="#1f4e79", stroke="white",
                                                           strokeWidth=0.5).encode(
            x=alt.X("start:Q", scale=scale, title=title, axis=_log_short_axis(money=True, tickCount=4)
                    if log_scale else alt.Axis(format=fmt, tickCount=4)),
            x2="end:Q",
            y=alt.Y("customers:Q", title="Customers" if i == 0 else None,
                    axis=alt.Axis(format=",d", tickCount=4)),
            y2=alt.datum(0),
            tooltip=[alt.Tooltip("start:Q", format=fmt.replace("~s", ",.2f"), title="From"),
                     alt.Tooltip("end:Q", format=fmt.replace("~s", ",.2f"), title="To"),
                     alt.Tooltip("customers:Q", format=",d", title="Customers")],
        ).properties(width=155, height=130)  # fmt: skip
        panels.append(chart)
    return alt.hconcat(*panels, spacing=22)


# ---------------------------------------------------------------------------------------------
# Method


def _evidence_rows(seg: Segmentation) -> list[dict]:
    return [
        {"k": e.k, "inertia": e.inertia, "silhouette": e.silhouette,
         "status": "chosen" if e.k == seg.k else ("admissible" if e.admissible else "not admissible")}
        for e in seg.evidence
    ]  # fmt: skip


_STATUS_SCALE = alt.Scale(domain=["chosen", "admissible", "not admissible"],
                          range=["#d9503a", "#1f4e79", GREY])  # fmt: skip


def elbow_chart(seg: Segmentation) -> Chart:
    """Inertia by k, the knee of the curve marked and the chosen k highlighted."""
    rows = _evidence_rows(seg)
    cfg = seg.settings
    window = [r for r in rows if cfg.min_k <= r["k"] <= cfg.max_k]
    knee = find_knee([r["k"] for r in window], [r["inertia"] for r in window]) if window else None
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("k:Q", title="Number of segments (k)", axis=alt.Axis(tickMinStep=1, format="d"),
                scale=alt.Scale(nice=False, padding=12)),
        y=alt.Y("inertia:Q", title="Inertia (within-segment spread)", axis=_short_axis()),
    )  # fmt: skip
    line = base.mark_line(color=MUTED)
    points = base.mark_point(filled=True, size=70).encode(
        color=alt.Color("status:N", scale=_STATUS_SCALE, legend=alt.Legend(title=None, orient="top")),
        tooltip=[alt.Tooltip("k:Q", title="k"), alt.Tooltip("inertia:Q", format=",.1f", title="Inertia"),
                 alt.Tooltip("status:N", title="Status")],
    )  # fmt: skip
    layers = [line, points]
    if knee is not None:
        mark = [{"k": knee, "label": f"knee: k={knee}"}]
        rule = (
            alt.Chart(alt.Data(values=mark))
            .mark_rule(strokeDash=[4, 3], color="#d9503a")
            .encode(x="k:Q")
        )
        label = alt.Chart(alt.Data(values=mark)).mark_text(
            align="left", dx=5, y=8, fontSize=11, color="#d9503a", fontWeight="bold"
        ).encode(x="k:Q", text="label:N")  # fmt: skip
        layers += [rule, label]
    return alt.layer(*layers).properties(width=250, height=190)


def silhouette_by_k_chart(seg: Segmentation) -> Chart:
    """Mean silhouette by k, with the weak / moderate / clear bands."""
    rows = [r for r in _evidence_rows(seg) if math.isfinite(r["silhouette"])]
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("k:Q", title="Number of segments (k)", axis=alt.Axis(tickMinStep=1, format="d"),
                scale=alt.Scale(nice=False, padding=12)),
        y=alt.Y("silhouette:Q", title="Mean silhouette", scale=alt.Scale(domain=[0, 0.75]),
                axis=alt.Axis(format=".2f", tickCount=4)),
    )  # fmt: skip
    bands = alt.Chart(alt.Data(values=[{"y": 0.25, "label": "weak below 0.25", "dy": 9},
                                       {"y": 0.5, "label": "clear above 0.5", "dy": -6}]))  # fmt: skip
    rules = bands.mark_rule(strokeDash=[2, 3], color=GREY).encode(y="y:Q")
    band_text = alt.layer(
        *[bands.transform_filter(f"datum.dy == {dy}").mark_text(
            align="right", x="width", dy=dy, fontSize=10, color=MUTED).encode(y="y:Q", text="label:N")
          for dy in (9, -6)]
    )  # fmt: skip
    line = base.mark_line(color=MUTED)
    points = base.mark_point(filled=True, size=70).encode(
        color=alt.Color("status:N", scale=_STATUS_SCALE, legend=alt.Legend(title=None, orient="top")),
        tooltip=[alt.Tooltip("k:Q", title="k"), alt.Tooltip("silhouette:Q", format=".3f", title="Silhouette"),
                 alt.Tooltip("status:N", title="Status")],
    )  # fmt: skip
    return alt.layer(rules, band_text, line, points).properties(width=250, height=190)


def silhouette_rows(seg: Segmentation, per_segment: int = 60) -> list[dict]:
    """The per-sample silhouette plot as quantile steps: per segment, at most `per_segment`
    points of its sorted values over a band as high as its share of the sample (never one mark
    per customer)."""
    frame = seg.silhouette_sample.filter(pl.col("silhouette").is_finite())
    total = max(frame.height, 1)
    rows, offset = [], 0.0
    for label, name in enumerate(seg.names):
        values = frame.filter(pl.col("label") == label)["silhouette"].to_numpy()
        if len(values) == 0:
            continue
        steps = min(per_segment, len(values))
        height = len(values) / total
        positions = np.linspace(0, 1, steps) if steps > 1 else np.array([0.0])
        picked = np.quantile(values, 1 - positions)  # largest first, like the classic plot
        rows += [{"segment": name, "silhouette": float(v), "y": offset + height * p}
                 for v, p in zip(picked, positions, strict=True)]  # fmt: skip
        rows.append({"segment": name, "label": name, "silhouette": None, "y": offset + height / 2})
        offset += height + 0.02
    return rows


def silhouette_samples_chart(seg: Segmentation) -> Chart:
    """Per-sample silhouettes sorted within each segment, the mean marked."""
    rows = silhouette_rows(seg)
    low = min([-0.2] + [r["silhouette"] for r in rows if r["silhouette"] is not None])
    data = alt.Data(values=rows)
    x_scale = alt.Scale(domain=[math.floor(low * 10) / 10, 1], nice=False)
    top = max((r["y"] for r in rows), default=1.0)
    y_scale = alt.Scale(reverse=True, nice=False, zero=False, domain=[-0.02, top + 0.02])
    areas = alt.Chart(data).transform_filter("datum.silhouette != null").mark_area(
        orient="horizontal", interpolate="step", opacity=0.9
    ).encode(
        x=alt.X("silhouette:Q", title="Silhouette of each customer (sorted within its segment)",
                scale=x_scale),
        x2=alt.datum(0),
        y=alt.Y("y:Q", axis=None, scale=y_scale),
        color=_segment_color(seg, legend=False),
        detail="segment:N",
        tooltip=[alt.Tooltip("segment:N", title="Segment"),
                 alt.Tooltip("silhouette:Q", format=".3f", title="Silhouette")],
    )  # fmt: skip
    names = alt.Chart(data).transform_filter("datum.label != null").mark_text(
        align="right", x="width", fontSize=11, color=INK
    ).encode(y=alt.Y("y:Q", scale=y_scale), text="label:N")  # fmt: skip
    layers = [areas, names]
    if seg.silhouette is not None:
        mean = alt.Data(values=[{"x": seg.silhouette, "label": f"mean {seg.silhouette:.2f}"}])
        layers.append(alt.Chart(mean).mark_rule(strokeDash=[4, 3], color=INK).encode(x="x:Q"))
        layers.append(alt.Chart(mean).mark_text(align="left", dx=4, y=-6, fontSize=10, color=INK)
                      .encode(x="x:Q", text="label:N"))  # fmt: skip
    return alt.layer(*layers).properties(width=WIDTH - 80, height=240)


def distance_chart(seg: Segmentation) -> Chart:
    """Distances between the segment centroids (standardized units)."""
    names = list(seg.names)
    rows: list[dict[str, Any]] = [
        {"a": a, "b": b, "distance": float(d)}
        for a, row in zip(names, seg.centroid_distances, strict=True)
        for b, d in zip(names, row, strict=True)
    ]
    top = max([r["distance"] for r in rows] + [1e-9])
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("b:N", sort=names, title=None, axis=alt.Axis(orient="top", labelAngle=-30,
                                                             labelLimit=120, labelAlign="left")),
        y=alt.Y("a:N", sort=names, title=None, axis=alt.Axis(labelLimit=150)),
    )  # fmt: skip
    cells = base.mark_rect(stroke="white", strokeWidth=2).encode(
        color=alt.Color("distance:Q", scale=alt.Scale(scheme="blues", domain=[0, top]),
                        legend=alt.Legend(title="Distance", orient="right", gradientLength=120)),
        tooltip=[alt.Tooltip("a:N", title="From"), alt.Tooltip("b:N", title="To"),
                 alt.Tooltip("distance:Q", format=".2f", title="Distance")],
    )  # fmt: skip
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("distance:Q", format=".2f"),
        color=alt.condition(f"datum.distance > {top * 0.6}", alt.value("white"), alt.value(INK)),
    )
    return (cells + text).properties(width=alt.Step(62), height=alt.Step(28))
