"""The comparison section: clustering methods side by side, and a learned space against RFM.

Methods (`segmentation.compare`, with K-Means as the reference and the chosen algorithm always
included) cluster the same customers in the same space as the report's segments, then each is
measured:
- in ONE shared space, the segmentation's own transform of its features (standard RFM), so the
  numbers compare across methods, and in the method's own space when that differs (cluster_on);
- silhouette (on the segmentation's seeded silhouette sample), Davies-Bouldin and
  Calinski-Harabasz, all over the clustered customers (Unclustered left out, as is usual);
- stability: adjusted Rand index of refits on bootstrap samples (algorithms.bootstrap_ari);
- agreement with K-Means: adjusted Rand index over every customer (Unclustered as one group);
- segment sizes, named from the RFM grid vocabulary like the report's segments;
- a 2D PCA projection of the shared space (a seeded sample of at most `PROJECTION_POINTS`)
  coloured by each method.

With a representation (representation.features: extended, or the embedding), K-Means with the
report's k in that space is compared with K-Means in RFM: agreement (ARI), silhouette of both
in each space, the segment profiles side by side and where customers moved.

Timings are logged, not stored: summary.json stays byte-identical from run to run.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from .algorithms import (
    NOISE,
    TITLES,
    UNCLUSTERED,
    Clustering,
    bootstrap_ari,
    cluster,
    grid_names,
    segment_names,
)
from .config import Config
from .representation import Embedding, Representation, Space
from .rfm import RfmTable
from .segment import (
    STABILITY_THRESHOLD,
    Segmentation,
    choose_k,
    draw_samples,
    feature_matrix,
    revenue_expr,
    silhouette_values,
)

log = logging.getLogger(__name__)

# customers drawn in the projection: one SVG circle per point and panel, so 800 x 6 methods keeps
# the PDF's chart near the size of the report's own scatter plots (2,000 made it 3.4 MB)
PROJECTION_POINTS = 800


@dataclass(frozen=True)
class Scores:
    """Separation of one labelling in one space (None where undefined: fewer than 2 clusters)."""

    silhouette: float | None
    davies_bouldin: float | None
    calinski_harabasz: float | None


@dataclass(frozen=True)
class SegmentSize:
    """One segment of one method."""

    segment: str
    customers: int
    share: float
    revenue_minor: int
    revenue_share: float


@dataclass(frozen=True, eq=False)
class MethodResult:
    """One method's segments and how they measure up."""

    method: str
    title: str
    chosen: bool  # the algorithm the report acts on
    k: int
    unclustered: int
    fitted_on: int
    note: str
    parameters: dict[str, Any]
    evidence: dict[str, Any]
    shared: Scores  # in the shared (standard RFM) space
    own: Scores | None  # in the space it clustered, when that is another one
    stability_ari: tuple[float, ...]
    stability_mean: float
    ari_vs_kmeans: float
    sizes: tuple[SegmentSize, ...]
    segments: np.ndarray  # segment name per customer (rfm.scored order)


@dataclass(frozen=True)
class ProfileRow:
    """The typical customer of one segment (medians in original units, money in currency)."""

    segment: str
    customers: int
    share: float
    medians: dict[str, float]


@dataclass(frozen=True, eq=False)
class SpaceComparison:
    """K-Means in a learned or extended space against K-Means in RFM, with the same k."""

    space: str  # embedding or extended
    description: str
    inputs: tuple[str, ...]  # the features the space was built from
    dropped: tuple[str, ...]  # constant features left out
    k: int
    ari: float
    silhouette: dict[str, dict[str, float | None]]  # measured in -> clustering -> silhouette
    rfm_profiles: tuple[ProfileRow, ...]
    other_profiles: tuple[ProfileRow, ...]
    profile_features: tuple[str, ...]
    crosstab_rows: tuple[str, ...]  # RFM clustering's segments
    crosstab_columns: tuple[str, ...]  # the other clustering's segments
    crosstab: tuple[tuple[int, ...], ...]
    embedding: Embedding | None


@dataclass(frozen=True, eq=False)
class Comparison:
    """Everything the comparison section shows and summary.json holds."""

    space: str  # where the methods clustered: rfm (the segmentation's features) or another
    space_description: str
    shared_features: tuple[str, ...]
    methods: tuple[MethodResult, ...]
    projection: pl.DataFrame  # customer_id, pc1, pc2, one column of segment names per method
    explained: tuple[float, ...]  # share of variance of each projection axis
    silhouette_sample_size: int
    bootstrap_samples: int
    representation: SpaceComparison | None


# ---------------------------------------------------------------------------------------------
# The stage


def compare_segmentations(
    rfm: RfmTable, seg: Segmentation, config: Config, representation: Representation | None
) -> Comparison | None:
    """The comparison section, or None when neither `compare` nor a representation is on."""
    methods = methods_to_compare(config)
    if not methods and representation is None:
        return None
    import sklearn.cluster  # noqa: F401  (load the native pools before pinning them)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _compare(rfm, seg, config, representation, methods)


def methods_to_compare(config: Config) -> list[str]:
    """K-Means (the reference), the chosen algorithm, then `compare` in its order; [] if empty."""
    cfg = config.segmentation
    if not cfg.compare:
        return []
    return list(dict.fromkeys(["kmeans", cfg.algorithm, *cfg.compare]))


@dataclass(frozen=True, eq=False)
class _Setting:
    """What every method is measured against."""

    shared: np.ndarray  # the segmentation's coordinates
    own: np.ndarray  # the coordinates clustered (shared unless cluster_on says otherwise)
    grid: pl.Series
    names: list[str]
    sil_idx: np.ndarray
    revenue: np.ndarray  # minor units per customer
    k: int  # the K-Means rule's k


def _compare(
    rfm: RfmTable,
    seg: Segmentation,
    config: Config,
    representation: Representation | None,
    methods: list[str],
) -> Comparison:
    cfg, scored = config.segmentation, rfm.scored
    shared = seg.transform.apply(feature_matrix(scored, seg.transform.features, rfm.minor_digits))
    space = representation.clustered if representation is not None else None
    _, sil_idx = draw_samples(len(shared), cfg, config.seed)
    setting = _Setting(
        shared,
        shared if space is None else space.coords,
        scored["rfm_grid_segment"],
        grid_names(scored),
        sil_idx,
        scored.select(revenue_expr(rfm))["revenue_minor"].to_numpy(),
        kmeans_k(seg),
    )
    kmeans = cluster("kmeans", setting.own, cfg, setting.k, config.seed, len(setting.names))
    results = tuple(_measure(m, kmeans, setting, config, space) for m in methods)
    projection, explained = _projection(scored["customer_id"], shared, results, config.seed)
    spaces = None
    if representation is not None:
        spaces = compare_spaces(representation, setting, config)
    return Comparison(
        "rfm" if space is None else space.name,
        "the segmentation features" if space is None else space.description,
        tuple(seg.transform.features),
        results,
        projection,
        explained,
        len(sil_idx),
        cfg.stability_seeds,
        spaces,
    )


def kmeans_k(seg: Segmentation) -> int:
    """The k the K-Means rule chose (the report's k may come from another algorithm)."""
    cfg = seg.settings
    if cfg.k != "auto":
        return int(cfg.k)
    if seg.algorithm in ("kmeans", "agglomerative", "spectral"):
        return seg.k
    ev = seg.evidence
    return choose_k(
        [e.k for e in ev],
        [e.inertia for e in ev],
        [e.silhouette for e in ev],
        [e.calinski_harabasz for e in ev],
        [e.davies_bouldin for e in ev],
        [e.admissible for e in ev],
        cfg.rule,
        cfg.min_k,
        cfg.max_k,
    ).k


def _measure(
    method: str, kmeans: Clustering, s: _Setting, config: Config, space: Space | None
) -> MethodResult:
    """Cluster with one method and measure it."""
    from sklearn.metrics import adjusted_rand_score

    cfg, seed = config.segmentation, config.seed
    started = time.perf_counter()
    result = kmeans if method == "kmeans" else cluster(method, s.own, cfg, s.k, seed, len(s.names))
    _, ari = bootstrap_ari(result, s.own, cfg, seed)
    segments = segment_names(result.labels, s.shared, s.grid, s.names)
    log.info(
        "%s: k=%d, %d unclustered, in %.1f s",
        result.title,
        result.k,
        result.unclustered,
        time.perf_counter() - started,
    )
    return MethodResult(
        method=method,
        title=TITLES[method],
        chosen=method == cfg.algorithm,
        k=result.k,
        unclustered=result.unclustered,
        fitted_on=result.fitted_on,
        note=result.note,
        parameters=result.parameters,
        evidence=result.evidence,
        shared=scores(s.shared, result.labels, s.sil_idx),
        own=None if space is None else scores(s.own, result.labels, s.sil_idx),
        stability_ari=ari,
        stability_mean=float(np.mean(ari)),
        ari_vs_kmeans=float(adjusted_rand_score(kmeans.labels, result.labels)),
        sizes=segment_sizes(segments, s.revenue, s.names),
        segments=segments,
    )


def scores(coords: np.ndarray, labels: np.ndarray, sil_idx: np.ndarray) -> Scores:
    """Silhouette (on the silhouette sample), Davies-Bouldin and Calinski-Harabasz of the
    clustered customers; None when fewer than two clusters remain."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    clustered = labels != NOISE
    if len(np.unique(labels[clustered])) < 2:
        return Scores(None, None, None)
    idx = sil_idx[clustered[sil_idx]]
    sil = None
    if len(np.unique(labels[idx])) >= 2:
        sil = float(silhouette_values(coords[idx], [_dense(labels[idx])])[0].mean())
    points, kept = coords[clustered], labels[clustered]
    return Scores(
        sil, float(davies_bouldin_score(points, kept)), float(calinski_harabasz_score(points, kept))
    )


def _dense(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1]


def segment_sizes(
    segments: np.ndarray, revenue: np.ndarray, names: list[str]
) -> tuple[SegmentSize, ...]:
    """Customers and revenue per segment, in vocabulary order (Unclustered last)."""
    order = [n for n in [*names, UNCLUSTERED] if n in set(segments)]
    order += sorted(set(segments) - set(order))
    total_revenue = int(revenue.sum())
    sizes = []
    for name in order:
        mask = segments == name
        money = int(revenue[mask].sum())
        sizes.append(
            SegmentSize(
                name,
                int(mask.sum()),
                float(mask.mean()),
                money,
                money / total_revenue if total_revenue else math.nan,
            )
        )
    return tuple(sizes)


def _projection(
    customer_ids: pl.Series, shared: np.ndarray, results: tuple[MethodResult, ...], seed: int
) -> tuple[pl.DataFrame, tuple[float, ...]]:
    """The shared space on its two principal axes, for a seeded sample of customers."""
    from sklearn.decomposition import PCA

    n, d = shared.shape
    idx = (
        np.arange(n)
        if n <= PROJECTION_POINTS
        else np.sort(
            np.random.default_rng([seed, 8]).choice(n, size=PROJECTION_POINTS, replace=False)
        )
    )
    pca = PCA(n_components=min(2, d), svd_solver="full").fit(shared)
    xy = pca.transform(shared[idx])
    xy = np.hstack([xy, np.zeros((len(idx), 2 - xy.shape[1]))])
    columns = {r.method: pl.Series(r.segments[idx].tolist(), dtype=pl.String) for r in results}
    frame = pl.DataFrame(
        {"customer_id": customer_ids.gather(idx), "pc1": xy[:, 0], "pc2": xy[:, 1], **columns}
    )
    return frame, tuple(float(v) for v in pca.explained_variance_ratio_)


# ---------------------------------------------------------------------------------------------
# A learned (or extended) space against RFM


def compare_spaces(rep: Representation, s: _Setting, config: Config) -> SpaceComparison:
    """K-Means with the K-Means rule's k in RFM and in the representation's space."""
    from sklearn.metrics import adjusted_rand_score

    cfg, seed, other = config.segmentation, config.seed, rep.compared
    started = time.perf_counter()
    a = cluster("kmeans", s.shared, cfg, s.k, seed, len(s.names))
    b = cluster("kmeans", other.coords, cfg, s.k, seed, len(s.names))
    silhouette = {
        where: {
            "rfm": _silhouette(coords, a.labels, s.sil_idx),
            other.name: _silhouette(coords, b.labels, s.sil_idx),
        }
        for where, coords in (("rfm", s.shared), (other.name, other.coords))
    }
    names_a = segment_names(a.labels, s.shared, s.grid, s.names)
    names_b = segment_names(b.labels, s.shared, s.grid, s.names)
    shown = tuple(rep.features.columns[1:])
    rows, columns, counts = crosstab(names_a, names_b, s.names)
    log.info("representation comparison in %.1f s", time.perf_counter() - started)
    return SpaceComparison(
        other.name,
        other.description,
        tuple(rep.space.columns),
        rep.dropped,
        s.k,
        float(adjusted_rand_score(a.labels, b.labels)),
        silhouette,
        profiles(names_a, rep.features, s.names),
        profiles(names_b, rep.features, s.names),
        shown,
        rows,
        columns,
        counts,
        rep.embedding,
    )


def _silhouette(coords: np.ndarray, labels: np.ndarray, sil_idx: np.ndarray) -> float | None:
    return scores(coords, labels, sil_idx).silhouette


def profiles(
    segments: np.ndarray, features: pl.DataFrame, names: list[str]
) -> tuple[ProfileRow, ...]:
    """Per segment: customers, share and the median of every feature."""
    values = {c: features[c].to_numpy().astype(np.float64) for c in features.columns[1:]}
    rows = []
    for size in segment_sizes(segments, np.zeros(len(segments)), names):
        mask = segments == size.segment
        medians = {c: float(np.median(v[mask])) for c, v in values.items()}
        rows.append(ProfileRow(size.segment, size.customers, size.share, medians))
    return tuple(rows)


def crosstab(
    a: np.ndarray, b: np.ndarray, names: list[str]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """Customers per (segment in a, segment in b), both in vocabulary order."""
    rows = tuple(s.segment for s in segment_sizes(a, np.zeros(len(a)), names))
    columns = tuple(s.segment for s in segment_sizes(b, np.zeros(len(b)), names))
    counts = tuple(tuple(int(((a == r) & (b == c)).sum()) for c in columns) for r in rows)
    return rows, columns, counts


# ---------------------------------------------------------------------------------------------
# summary.json


def comparison_summary(comp: Comparison, digits: int) -> dict[str, Any]:
    """Every number of the comparison, JSON-ready (no NaN: null instead)."""
    return _json_ready(
        {
            "space": comp.space,
            "space_description": comp.space_description,
            "shared_space": {
                "features": list(comp.shared_features),
                "transform": "the segmentation's transform (log1p and scaling as configured)",
            },
            "silhouette_sample_size": comp.silhouette_sample_size,
            "bootstrap_samples": comp.bootstrap_samples,
            "stability_threshold": STABILITY_THRESHOLD,
            "methods": [_method_part(r, digits) for r in comp.methods],
            "projection": {
                "points": comp.projection.height,
                "explained_variance": list(comp.explained),
            },
            "representation": None
            if comp.representation is None
            else _space_part(comp.representation),
        }
    )


def _scores_part(s: Scores | None) -> dict[str, float | None] | None:
    if s is None:
        return None
    return {
        "silhouette": s.silhouette,
        "davies_bouldin": s.davies_bouldin,
        "calinski_harabasz": s.calinski_harabasz,
    }


def _method_part(r: MethodResult, digits: int) -> dict[str, Any]:
    return {
        "method": r.method,
        "title": r.title,
        "chosen": r.chosen,
        "k": r.k,
        "unclustered": r.unclustered,
        "fitted_on": r.fitted_on,
        "note": r.note,
        "parameters": r.parameters,
        "evidence": r.evidence,
        "shared_space": _scores_part(r.shared),
        "own_space": _scores_part(r.own),
        "stability": {
            "ari": list(r.stability_ari),
            "mean_ari": r.stability_mean,
            "stable": r.stability_mean >= STABILITY_THRESHOLD,
        },
        "ari_vs_kmeans": r.ari_vs_kmeans,
        "segments": [
            {
                "segment": z.segment,
                "customers": z.customers,
                "share": z.share,
                "revenue": z.revenue_minor / 10**digits,
                "revenue_share": z.revenue_share,
            }
            for z in r.sizes
        ],
    }


def _space_part(c: SpaceComparison) -> dict[str, Any]:
    emb = c.embedding
    return {
        "space": c.space,
        "description": c.description,
        "inputs": list(c.inputs),
        "dropped_constant_features": list(c.dropped),
        "k": c.k,
        "ari_vs_rfm": c.ari,
        "silhouette": c.silhouette,
        "profiles": {
            "rfm": [_profile_part(p) for p in c.rfm_profiles],
            c.space: [_profile_part(p) for p in c.other_profiles],
        },
        "crosstab": {
            "rfm_segments": list(c.crosstab_rows),
            f"{c.space}_segments": list(c.crosstab_columns),
            "counts": [list(r) for r in c.crosstab],
        },
        "embedding": None
        if emb is None
        else {
            "dimensions": emb.dimensions,
            "hidden": emb.hidden,
            "trained_on": emb.trained_on,
            "iterations": emb.iterations,
            "converged": emb.converged,
            "loss": emb.loss,
            "reconstruction_r2": emb.reconstruction_r2,
        },
    }


def _profile_part(p: ProfileRow) -> dict[str, Any]:
    return {"segment": p.segment, "customers": p.customers, "share": p.share, "medians": p.medians}


def _json_ready(value: Any) -> Any:
    """Plain Python values: numpy scalars converted, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value
