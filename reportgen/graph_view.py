"""The report section 'Customer graph': its typed template context and its chart.

`graph_view(report)` turns the CustomerGraph into what `templates/_graph.html` shows, or None
when the graph is off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import altair as alt

from . import charts as ch
from .context import ChartView, TocEntry
from .graph import Community, CustomerGraph

log = logging.getLogger(__name__)

SECTION = ("graph", "Customer graph")
_LABEL_CHARS = 34  # community labels in the chart: "3: HERB MARKER ROSEMARY"


@dataclass(frozen=True)
class ProductRow:
    """A product a community buys more than everyone."""

    product: str  # the description, else the id
    product_id: str
    buyers: int
    share: float
    overall_share: float
    lift: float


@dataclass(frozen=True)
class MixPart:
    """One segment within a community."""

    segment: str
    color: str
    customers: int
    share: float


@dataclass(frozen=True)
class CommunityRow:
    """One community: size, value, what it buys and which segments it holds."""

    id: int
    label: str  # "Community 3"
    customers: int
    share: float
    revenue_minor: int
    main_segment: str
    main_color: str
    main_share: float
    products: tuple[ProductRow, ...]
    mix: tuple[MixPart, ...]


@dataclass(frozen=True)
class GraphView:
    """Section 'Customer graph'."""

    customers: int
    products: int
    products_excluded: int
    products_too_common: int
    max_product_share: float
    neighbours: int
    edges: int
    max_edges: int
    isolated: int
    resolution: float
    modularity: float | None
    min_community_size: int
    communities: tuple[CommunityRow, ...]
    small_communities: int
    small_community_customers: int
    ari: float | None
    nmi: float | None
    agreement_customers: int
    agreement_words: str
    has_descriptions: bool
    mix_chart: ChartView
    charts: tuple[ChartView, ...]
    toc: tuple[TocEntry, ...]


def graph_view(report: Any) -> GraphView | None:
    """The section's content, or None when the graph is off."""
    graph: CustomerGraph | None = getattr(report, "graph", None)
    if graph is None:
        return None
    colors = ch.segment_colors(sorted({s for c in graph.communities for s, _ in c.segment_mix}))
    rows = tuple(_community(c, colors) for c in graph.communities)
    mix = ChartView(
        "chart-graph-mix", "The communities and the segments they hold",
        "Customers of each community (largest first), coloured by their segment: a community "
        "of one colour is a segment that also buys alike; a mix of colours cuts across segments.",
        ch.to_spec(community_mix_chart(rows)),
    )  # fmt: skip
    cfg = graph.settings
    return GraphView(
        customers=graph.customers, products=graph.products,
        products_excluded=graph.products_excluded, products_too_common=graph.products_too_common,
        max_product_share=cfg.max_product_share, neighbours=cfg.neighbours, edges=graph.edges,
        max_edges=graph.max_edges, isolated=graph.isolated, resolution=cfg.resolution,
        modularity=graph.modularity, min_community_size=cfg.min_community_size,
        communities=rows,
        small_communities=graph.small_communities,
        small_community_customers=graph.small_community_customers, ari=graph.ari, nmi=graph.nmi,
        agreement_customers=graph.agreement_customers, agreement_words=graph.agreement_words,
        has_descriptions=any(p.description for c in graph.communities for p in c.top_products),
        mix_chart=mix, charts=(mix,), toc=(TocEntry(*SECTION),),
    )  # fmt: skip


def _community(c: Community, colors: dict[str, str]) -> CommunityRow:
    products = tuple(
        ProductRow(
            p.description or p.product_id, p.product_id, p.buyers, p.share, p.overall_share, p.lift
        )
        for p in c.top_products
    )
    mix = tuple(MixPart(s, colors[s], n, n / c.customers) for s, n in c.segment_mix)
    return CommunityRow(c.id, f"Community {c.id}", c.customers, c.share, c.revenue_minor,
                        c.main_segment, colors[c.main_segment], c.main_segment_share, products,
                        mix)  # fmt: skip


def _chart_label(row: CommunityRow) -> str:
    top = row.products[0].product.strip() if row.products else ""
    text = f"{row.id}: {top}" if top else str(row.id)
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1].rstrip() + "…"


def community_mix_chart(rows: tuple[CommunityRow, ...]) -> alt.Chart:
    """Stacked bars: customers of each community by segment (segment colours)."""
    labels = [_chart_label(r) for r in rows]
    data = [
        {"community": label, "segment": m.segment, "customers": m.customers, "share": m.share}
        for label, r in zip(labels, rows, strict=True)
        for m in r.mix
    ]
    names = list(dict.fromkeys(m.segment for r in rows for m in r.mix))
    ordered = [n for n in ch.SEGMENT_COLORS if n in names] + [
        n for n in names if n not in ch.SEGMENT_COLORS
    ]
    colors = ch.segment_colors(ordered)
    return alt.Chart(alt.Data(values=data)).mark_bar().encode(
        y=alt.Y("community:N", sort=labels, title=None, axis=alt.Axis(labelLimit=230)),
        x=alt.X("customers:Q", title="Customers", stack="zero"),
        color=alt.Color("segment:N", sort=ordered, title=None,
                        scale=alt.Scale(domain=ordered, range=[colors[n] for n in ordered]),
                        legend=alt.Legend(orient="bottom", columns=min(len(ordered), 5))),
        order=alt.Order("customers:Q", sort="descending"),
        tooltip=[alt.Tooltip("community:N", title="Community"),
                 alt.Tooltip("segment:N", title="Segment"),
                 alt.Tooltip("customers:Q", format=",", title="Customers"),
                 alt.Tooltip("share:Q", format=".0%", title="Share of the community")],
    ).properties(width=ch.WIDTH - 230, height=alt.Step(16))  # fmt: skip
