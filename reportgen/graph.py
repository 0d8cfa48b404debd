"""The customer graph: customers linked by the products they share, and the communities in it.

Steps (issue 9):
1. the kept purchase lines give each customer's set of products (collected by the RFM stage
   once duplicates are settled: `purchase_lines.graph_queries`); excluded products (postage,
   fees) and products bought by more than `max_product_share` of the customers are left out:
   they link everyone;
2. similarity: cosine of the customers' product vectors weighted by inverse document frequency
   (a product few customers buy says more about them than a best seller), computed as a sparse
   customer x product matrix product in chunks of customers;
3. sparsification: each customer keeps its `neighbours` most similar customers, so the graph has
   at most `neighbours` x customers edges: its size grows linearly with the customers;
4. communities: Louvain (networkx, the optional `graph` extra), seeded; numbered by size;
5. what each community buys (the products most over-bought in it: the share of its customers
   buying a product minus the share of all customers), its segment mix, and how far communities
   agree with the segments (adjusted Rand index and normalised mutual information).
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from .config import GraphSection
from .errors import ConfigError
from .rfm import RfmTable
from .segment import Segmentation, revenue_expr, segment_columns

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'reportgen[graph]'"
_BLOCK_CELLS = 4_000_000  # similarity cells computed at once (32 MB): memory stays bounded
_MIN_SIMILARITY = 1e-9  # below this, rounding noise: no link
AGREEMENT_LOW, AGREEMENT_HIGH = 0.2, 0.5  # ARI bands for the sentence about agreement


# ---------------------------------------------------------------------------------------------
# Result types


@dataclass(frozen=True)
class ProductLift:
    """A product a community buys more than the customers as a whole."""

    product_id: str
    description: str | None
    buyers: int  # customers of the community who bought it
    share: float  # of the community's customers
    overall_share: float  # of all customers in the graph
    lift: float  # share / overall_share


@dataclass(frozen=True)
class Community:
    """One community of customers who buy alike."""

    id: int  # 1 = the largest
    customers: int
    share: float  # of the customers in the graph
    revenue_minor: int
    top_products: tuple[ProductLift, ...]
    segment_mix: tuple[tuple[str, int], ...]  # (segment, customers), largest first
    main_segment: str
    main_segment_share: float


@dataclass(frozen=True, eq=False)
class CustomerGraph:
    """The graph, its communities and their agreement with the segments."""

    settings: GraphSection
    seed: int
    minor_digits: int
    customers: int  # nodes: customers with at least one kept product line
    products: int  # products that link customers (after exclusions and the popularity cap)
    products_excluded: int  # listed in exclude_products and present in the data
    products_too_common: int  # bought by more than max_product_share of the customers
    edges: int
    max_edges: int  # neighbours x customers: the sparsification bound
    isolated: int  # customers sharing no linking product with anyone
    modularity: float | None
    communities: tuple[Community, ...]  # at least min_community_size customers, largest first
    small_communities: int  # communities under min_community_size
    small_community_customers: int
    ari: float | None  # adjusted Rand index, communities vs segments
    nmi: float | None  # normalised mutual information
    agreement_customers: int  # customers in both (segmented and in a community)
    agreement_words: str
    assignments: pl.DataFrame  # customer_id, community (null: isolated), sorted by customer_id
    seconds: float  # time to build the graph and find the communities (not exported)


# ---------------------------------------------------------------------------------------------
# The optional extra


def missing_extra_message() -> str | None:
    """None when networkx is importable, else the message saying how to install it."""
    try:
        importlib.import_module("networkx")
    except ImportError:
        return (
            "the customer graph needs the optional graph extra (networkx), which is not "
            f"installed: {EXTRA_HINT}, or set graph.enabled: false"
        )
    return None


def _networkx() -> Any:
    message = missing_extra_message()
    if message:
        raise ConfigError(f"graph.enabled: {message}")
    return importlib.import_module("networkx")


# ---------------------------------------------------------------------------------------------
# The stage


def build_customer_graph(
    pairs: pl.DataFrame,
    products: pl.DataFrame | None,
    seg: Segmentation,
    rfm: RfmTable,
    cfg: GraphSection,
    seed: int,
) -> CustomerGraph:
    """Link customers by shared products, find communities, and compare them with the segments.

    `pairs`: unique customer_id, product_id of kept purchase lines; `products`: product_id,
    description (or None).
    """
    nx = _networkx()
    started = time.perf_counter()
    matrix = customer_product_matrix(pairs, cfg.exclude_products, cfg.max_product_share)
    rows, cols, weights = similarity_edges(matrix.linking, cfg.neighbours)
    labels, modularity = detect_communities(
        nx, len(matrix.customers), rows, cols, weights, cfg.resolution, seed
    )
    seconds = time.perf_counter() - started
    log.info(
        "customer graph: %d customers, %d edges, %d communities in %.1f s",
        len(matrix.customers), rows.size, labels.max(initial=0), seconds,
    )  # fmt: skip
    assignments = pl.DataFrame(
        {"customer_id": matrix.customers, "community": labels},
        schema={"customer_id": pl.String, "community": pl.Int64},
    ).with_columns(pl.when(pl.col("community") > 0).then("community").alias("community"))
    return _assemble(matrix, assignments, rows.size, modularity, products, seg, rfm, cfg, seed,
                     seconds)  # fmt: skip


@dataclass(frozen=True, eq=False)
class ProductMatrix:
    """Customers x products (0/1), the linking products' columns and the product counts."""

    customers: list[str]  # sorted
    products: list[str]  # sorted; every product kept (linking or not)
    bought: Any  # scipy.sparse CSR, customers x products, 1 where bought
    linking: Any  # the columns of the products that link customers
    excluded: int
    too_common: int


def customer_product_matrix(
    pairs: pl.DataFrame, exclude: Sequence[str], max_share: float
) -> ProductMatrix:
    """The 0/1 customer x product matrix, and its columns of products that may link customers."""
    from scipy import sparse

    present = set(pairs["product_id"].unique().to_list())
    excluded = len(present & set(exclude))
    pairs = pairs.filter(~pl.col("product_id").is_in(list(exclude)))
    customers = pairs["customer_id"].unique().sort()
    products = pairs["product_id"].unique().sort()
    row = pairs["customer_id"].cast(pl.Enum(customers)).to_physical().to_numpy()
    col = pairs["product_id"].cast(pl.Enum(products)).to_physical().to_numpy()
    shape = (customers.len(), products.len())
    bought = sparse.csr_matrix((np.ones(row.size), (row, col)), shape=shape)
    buyers = np.asarray(bought.sum(axis=0)).ravel()
    too_common = buyers > max_share * shape[0]
    # a product bought by one customer links nobody
    linking = np.flatnonzero(~too_common & (buyers >= 2))
    idf = np.log(shape[0] / buyers[linking])
    weighted = bought[:, linking] @ sparse.diags(idf)
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    linking_matrix = sparse.diags(1.0 / norms) @ weighted
    return ProductMatrix(customers.to_list(), products.to_list(), bought,
                         sparse.csr_matrix(linking_matrix), excluded,
                         int(too_common.sum()))  # fmt: skip


def similarity_edges(matrix: Any, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The undirected edges (i < j, weight) of each row's `k` most similar other rows.

    Similarity is the dot product of rows (cosine for unit rows), computed one block of rows at
    a time so memory stays at `_BLOCK_CELLS`; ties go to the smaller index, so the result does
    not depend on the machine. At most k x rows edges.
    """
    n = matrix.shape[0]
    transposed = matrix.T.tocsc()
    step = max(1, min(n, _BLOCK_CELLS // max(n, 1)))
    kept = [_top_k((matrix[start : start + step] @ transposed).toarray(), start, k)
            for start in range(0, n, step)]  # fmt: skip
    if not kept:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    i, j, w = (np.concatenate(parts) for parts in zip(*kept, strict=True))
    low, high = np.minimum(i, j), np.maximum(i, j)
    # an edge kept from both ends appears twice: keep one (the weights are equal)
    _, first = np.unique(low * n + high, return_index=True)
    return low[first], high[first], w[first]


def _top_k(block: np.ndarray, start: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k largest positive off-diagonal entries of each row of a dense block of rows."""
    rows = np.arange(block.shape[0])
    block[rows, rows + start] = 0.0  # a customer is not its own neighbour
    block[block < _MIN_SIMILARITY] = 0.0
    k = min(k, block.shape[1])
    kth = -np.partition(-block, k - 1, axis=1)[:, k - 1 : k]
    above = block > kth
    # ties at the k-th value: the smallest column indices fill the remaining places
    tied = (block == kth) & (block > 0)
    room = k - above.sum(axis=1, keepdims=True)
    keep = above | (tied & (np.cumsum(tied, axis=1) <= room))
    r, c = np.nonzero(keep)
    return r.astype(np.int64) + start, c.astype(np.int64), block[r, c]


def detect_communities(
    nx: Any,
    n: int,
    rows: np.ndarray,
    cols: np.ndarray,
    weights: np.ndarray,
    resolution: float,
    seed: int,
) -> tuple[np.ndarray, float | None]:
    """Louvain communities numbered 1.. by size (ties: smallest member); 0 for isolated nodes."""
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_weighted_edges_from(zip(rows.tolist(), cols.tolist(), weights.tolist(), strict=True))
    if graph.number_of_edges() == 0:
        return np.zeros(n, np.int64), None
    found = nx.community.louvain_communities(
        graph, weight="weight", resolution=resolution, seed=seed
    )
    modularity = float(nx.community.modularity(graph, found, weight="weight"))
    connected = sorted((c for c in found if len(c) > 1 or graph.degree(next(iter(c))) > 0),
                       key=lambda c: (-len(c), min(c)))  # fmt: skip
    labels = np.zeros(n, np.int64)
    for number, members in enumerate(connected, start=1):
        labels[list(members)] = number
    return labels, modularity


# ---------------------------------------------------------------------------------------------
# Profiles and agreement


def _assemble(
    matrix: ProductMatrix,
    assignments: pl.DataFrame,
    edges: int,
    modularity: float | None,
    products: pl.DataFrame | None,
    seg: Segmentation,
    rfm: RfmTable,
    cfg: GraphSection,
    seed: int,
    seconds: float,
) -> CustomerGraph:
    members = _members(assignments, seg, rfm)
    sizes = members.filter(pl.col("community").is_not_null()).group_by("community").len()
    big = sizes.filter(pl.col("len") >= cfg.min_community_size)
    small = sizes.filter(pl.col("len") < cfg.min_community_size)
    lifts = _product_lifts(matrix, assignments, products, cfg.top_products)
    n = len(matrix.customers)
    communities = tuple(
        _community(int(c), members, lifts, n) for c in big.sort("community")["community"]
    )
    ari, nmi, both = _agreement(members)
    return CustomerGraph(
        settings=cfg, seed=seed, minor_digits=rfm.minor_digits, customers=n,
        products=matrix.linking.shape[1], products_excluded=matrix.excluded,
        products_too_common=matrix.too_common, edges=edges, max_edges=cfg.neighbours * n,
        isolated=int(assignments["community"].null_count()), modularity=modularity,
        communities=communities, small_communities=small.height,
        small_community_customers=int(small["len"].sum()), ari=ari, nmi=nmi,
        agreement_customers=both, agreement_words=agreement_words(ari, nmi),
        assignments=assignments.sort("customer_id"), seconds=seconds,
    )  # fmt: skip


def _members(assignments: pl.DataFrame, seg: Segmentation, rfm: RfmTable) -> pl.DataFrame:
    """Per customer in the graph: community, segment, revenue (minor units)."""
    revenue = rfm.frame.select("customer_id", revenue_expr(rfm).alias("revenue_minor"))
    return assignments.join(segment_columns(seg, rfm).select("customer_id", "segment"),
                            on="customer_id", how="left").join(
        revenue, on="customer_id", how="left")  # fmt: skip


def _product_lifts(
    matrix: ProductMatrix, assignments: pl.DataFrame, products: pl.DataFrame | None, top: int
) -> pl.DataFrame:
    """Per community, its `top` products by share of its customers minus share of everyone."""
    coo = matrix.bought.tocoo()
    lines = pl.DataFrame(
        {"community": assignments["community"].gather(coo.row), "product": coo.col.astype(np.int64)}
    )
    n = len(matrix.customers)
    overall = lines.group_by("product").agg((pl.len() / n).alias("overall_share"))
    sizes = assignments.group_by("community").agg(pl.len().alias("size"))
    names = pl.DataFrame(
        {"product": np.arange(len(matrix.products)), "product_id": matrix.products}
    )
    lifts = (
        lines.drop_nulls().group_by("community", "product").agg(pl.len().alias("buyers"))
        .join(sizes, on="community").join(overall, on="product").join(names, on="product")
        .with_columns((pl.col("buyers") / pl.col("size")).alias("share"))
        .with_columns((pl.col("share") - pl.col("overall_share")).alias("excess"))
        .sort(["community", "excess", "buyers", "product_id"],
              descending=[False, True, True, False])
    )  # fmt: skip
    lifts = lifts.group_by("community", maintain_order=True).head(top)
    if products is not None:
        return lifts.join(products, on="product_id", how="left")
    return lifts.with_columns(pl.lit(None, pl.String).alias("description"))


def _community(number: int, members: pl.DataFrame, lifts: pl.DataFrame, n: int) -> Community:
    mine = members.filter(pl.col("community") == number)
    mix = (
        mine.group_by("segment").len()
        .sort(["len", "segment"], descending=[True, False]).rows()
    )  # fmt: skip
    top = tuple(
        ProductLift(
            r["product_id"],
            r["description"],
            r["buyers"],
            r["share"],
            r["overall_share"],
            r["share"] / r["overall_share"],
        )
        for r in lifts.filter(pl.col("community") == number).iter_rows(named=True)
    )
    return Community(
        id=number,
        customers=mine.height,
        share=mine.height / n,
        revenue_minor=int(mine["revenue_minor"].sum()),
        top_products=top,
        segment_mix=tuple((str(s), int(c)) for s, c in mix),
        main_segment=str(mix[0][0]),
        main_segment_share=mix[0][1] / mine.height,
    )


def _agreement(members: pl.DataFrame) -> tuple[float | None, float | None, int]:
    """ARI and NMI of communities vs segments over customers in both (segmented, connected)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    both = members.filter(
        pl.col("community").is_not_null()
        & pl.col("segment").is_not_null()
        & ~pl.col("segment").str.starts_with("Excluded:")
    )
    if both.height < 2:
        return None, None, both.height
    a, b = both["community"].to_numpy(), both["segment"].to_numpy()
    return float(adjusted_rand_score(b, a)), float(normalized_mutual_info_score(b, a)), both.height


def agreement_words(ari: float | None, nmi: float | None) -> str:
    """How far the communities follow the segments, in a sentence."""
    if ari is None or nmi is None:
        return "Too few customers are both segmented and in a community to compare them."
    if ari >= AGREEMENT_HIGH:
        how = "largely follow the segments: what customers buy goes with how they buy"
    elif ari >= AGREEMENT_LOW:
        how = "partly follow the segments"
    else:
        how = (
            "cut across the segments: what customers buy says little about how recently, "
            "how often and how much they buy, so the two views complement each other"
        )
    return (f"The communities {how} (adjusted Rand index {ari:.2f}, normalised mutual "
            f"information {nmi:.2f}).")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Exports


def communities_frame(graph: CustomerGraph) -> pl.DataFrame:
    """communities.csv: customer_id, community (empty for customers linked to no one)."""
    return graph.assignments


def graph_summary(graph: CustomerGraph) -> dict[str, Any]:
    """Every figure of the graph, JSON-ready (no NaN)."""
    cfg, scale = graph.settings, 10**graph.minor_digits
    return _finite({
        "method": {
            "similarity": "cosine of idf-weighted customer x product vectors",
            "neighbours": cfg.neighbours,
            "max_product_share": cfg.max_product_share,
            "exclude_products": list(cfg.exclude_products),
            "algorithm": "Louvain (networkx.community.louvain_communities)",
            "resolution": cfg.resolution,
            "seed": graph.seed,
            "min_community_size": cfg.min_community_size,
        },
        "customers": graph.customers,
        "products": graph.products,
        "products_excluded": graph.products_excluded,
        "products_too_common": graph.products_too_common,
        "edges": graph.edges,
        "max_edges": graph.max_edges,
        "isolated_customers": graph.isolated,
        "modularity": graph.modularity,
        "communities": [_community_part(c, scale) for c in graph.communities],
        "small_communities": graph.small_communities,
        "small_community_customers": graph.small_community_customers,
        "agreement": {
            "adjusted_rand_index": graph.ari,
            "normalized_mutual_info": graph.nmi,
            "customers": graph.agreement_customers,
            "words": graph.agreement_words,
        },
    })  # fmt: skip


def _community_part(c: Community, scale: int) -> dict[str, Any]:
    return {
        "community": c.id,
        "customers": c.customers,
        "share": c.share,
        "revenue": c.revenue_minor / scale,
        "main_segment": c.main_segment,
        "main_segment_share": c.main_segment_share,
        "segment_mix": {s: n for s, n in c.segment_mix},
        "top_products": [
            {
                "product_id": p.product_id,
                "description": p.description,
                "buyers": p.buyers,
                "share": p.share,
                "overall_share": p.overall_share,
                "lift": p.lift,
            }
            for p in c.top_products
        ],
    }


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value
