"""Segmentation: K-Means on the RFM features, k chosen on the evidence, named and profiled.

Steps (DESIGN.md section 2, "Segmentation"):
1. features of the scored customers (default recency_days, frequency, monetary in currency
   units), optional quantile capping (capped customers are flagged `outlier`; exports keep the
   true values), log1p, scaling (standard, robust, min-max or none): a `Transform` that can be
   applied again to other data (periodic runs);
2. k: fixed, or every k of `k_range` fitted on one seeded sample of at most `fit_sample_size`
   customers, with inertia, silhouette (one seeded sample of `silhouette_sample_size`, the same
   for every k), Calinski-Harabasz and Davies-Bouldin; `choose_k` (a pure function of those
   arrays) applies the rule; the final model is fitted on every customer;
3. stability: the chosen k refitted with `stability_seeds` other seeds, adjusted Rand index
   against the final labels;
4. names: each cluster takes one of the RFM grid's names by optimal assignment to the name
   prototypes (the mean scaled features of the customers the grid gives that name);
5. profiles, the centroid distance matrix, the playbook per segment, revenue at stake and the
   data-sufficiency warnings.

Every random step is seeded from `seed`, and BLAS/OpenMP run on one thread (`_THREADS`): the
same data give the same labels and numbers, and a busy machine does not slow K-Means down
(OpenMP threads spinning against other processes cost 10-30x here).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import polars as pl

from .algorithms import kmeans_model
from .config import PlaybookEntry, SegmentationSection
from .errors import ConfigError, InputDataError, counted
from .playbook import (
    REVENUE_AT_STAKE_DEFINITION,
    SEGMENT_NAMES,
    Action,
    plan_actions,
    rank_actions,
    resolve_playbook,
)
from .rfm import RfmTable

if TYPE_CHECKING:
    from .algorithms import FinalAssignment
    from .representation import Space

log = logging.getLogger(__name__)

_THREADS = 1
STABILITY_THRESHOLD = 0.8
WEAK_BELOW, CLEAR_ABOVE = 0.25, 0.5  # silhouette: weak < 0.25 <= moderate <= 0.5 < clear
_TINY_SHARE = 0.01  # smallest segments under 1% suggest outliers, in the no-admissible-k error
TIE_TOLERANCE = 1e-9  # criteria values closer than this are a tie (the smaller k wins)

MIN_CUSTOMERS = 500
MIN_HISTORY_DAYS = 180
MIN_REPEAT_SHARE = 0.10
MIN_SEGMENT_CUSTOMERS = 50

# feature name -> (column of the RFM table, is money in minor units)
FEATURE_COLUMNS: dict[str, tuple[str, bool]] = {
    "recency_days": ("recency_days", False),
    "frequency": ("frequency", False),
    "monetary": ("monetary_minor", True),
    "tenure_days": ("tenure_days", False),
    "avg_order_value": ("avg_order_value_minor", True),
    "return_rate": ("return_rate", False),
}
RFM_FEATURES = ("recency_days", "frequency", "monetary")
CRITERIA = ("knee", "silhouette", "calinski_harabasz", "davies_bouldin")
_CRITERION_WORDS = {
    "knee": "the knee of the inertia curve",
    "silhouette": "the highest silhouette",
    "calinski_harabasz": "the highest Calinski-Harabasz",
    "davies_bouldin": "the lowest Davies-Bouldin",
}


# ---------------------------------------------------------------------------------------------
# Result types


@dataclass(frozen=True)
class Transform:
    """How features become the clustered coordinates: cap, log1p, then (x - center) / scale."""

    features: tuple[str, ...]
    caps: tuple[tuple[float, float], ...] | None  # per feature (low, high); None: no capping
    log1p: bool
    scaling: str
    center: tuple[float, ...]
    scale: tuple[float, ...]

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Coordinates of a (customers x features) array in original units."""
        values = np.asarray(raw, dtype=np.float64)
        if self.caps is not None:
            low, high = np.array(self.caps).T
            values = np.clip(values, low, high)
        if self.log1p:
            values = np.log1p(values)
        return (values - np.array(self.center)) / np.array(self.scale)

    def invert(self, coordinates: np.ndarray) -> np.ndarray:
        """Original units of coordinates (centroids); capping cannot be undone."""
        values = np.asarray(coordinates) * np.array(self.scale) + np.array(self.center)
        return np.expm1(values) if self.log1p else values


@dataclass(frozen=True)
class KEvidence:
    """The criteria of one k (fitted on the fit sample)."""

    k: int
    inertia: float
    silhouette: float
    calinski_harabasz: float
    davies_bouldin: float
    smallest_share: float  # share of the fit sample in the smallest segment
    admissible: bool
    not_admissible_because: str | None


@dataclass(frozen=True)
class KChoice:
    """The k used, the rule that picked it and why, in sentences a reader can check."""

    k: int
    rule: str  # knee, silhouette, calinski_harabasz, davies_bouldin, or fixed
    reason: str
    best: dict[str, int | None]  # per criterion, its best admissible k (knee: None if none)
    disagreement: str


@dataclass(frozen=True)
class Stability:
    """Adjusted Rand index of refits with other seeds against the final labels."""

    seeds: tuple[int, ...]
    ari: tuple[float, ...]
    mean: float
    min: float
    stable: bool
    note: str


@dataclass(frozen=True)
class FeatureStats:
    """Mean and median of one feature in a segment (original units; money in currency)."""

    mean: float
    median: float


@dataclass(frozen=True)
class SegmentProfile:
    """What one segment looks like."""

    label: int
    name: str
    customers: int
    share: float
    revenue_minor: int
    revenue_share: float
    outliers: int
    features: dict[str, FeatureStats]
    mean_scores: dict[str, float]  # mean r/f/m score
    returned_value_minor: int
    return_rate: float | None  # returned value / gross purchases of the segment
    mean_distance: float  # to its centroid, in scaled units
    silhouette: float | None  # mean over its customers in the silhouette sample
    centroid_scaled: tuple[float, ...]
    centroid: tuple[float, ...]  # back-transformed to original units


@dataclass(frozen=True)
class ExcludedGroup:
    """Customers kept out of clustering, and their revenue (so revenues reconcile)."""

    reason: str
    customers: int
    revenue_minor: int


@dataclass(frozen=True)
class Notice:
    """A warning shown in the report (never fatal)."""

    code: str
    message: str


@dataclass(frozen=True)
class PreviousSegments:
    """The previous run's segments, so names stay with the same kind of customers."""

    as_of: dt.date
    k: int
    names: tuple[str, ...]  # by label
    centroids: tuple[tuple[float, ...], ...]  # by label, original units of `features`
    features: tuple[str, ...]
    match_threshold: float  # in the current standardised units


@dataclass(frozen=True, eq=False)
class Segmentation:
    """Everything the report and summary.json say about the segments."""

    settings: SegmentationSection
    seed: int
    minor_digits: int
    transform: Transform
    customers: int  # clustered customers
    fit_sample_size: int
    silhouette_sample_size: int
    evidence: tuple[KEvidence, ...]
    choice: KChoice
    stability: Stability
    inertia: float  # of the final model, on every clustered customer
    silhouette: float | None  # of the final model, on the silhouette sample
    fit_quality: str
    names: tuple[str, ...]  # by label
    assignments: pl.DataFrame  # customer_id, label, segment, outlier, distance
    silhouette_sample: pl.DataFrame  # customer_id, label, segment, silhouette
    centroid_distances: tuple[tuple[float, ...], ...]
    prototypes: dict[str, tuple[float, ...]]  # name -> scaled features (grid names present)
    profiles: tuple[SegmentProfile, ...]
    excluded: tuple[ExcludedGroup, ...]
    actions: tuple[Action, ...]  # by label
    recommendations: tuple[Action, ...]  # by revenue at stake
    revenue_at_stake_definition: str
    warnings: tuple[Notice, ...]
    kept_names: tuple[str, ...] = ()  # names matched to the previous run's centroids
    continuity: str = ""  # how names relate to the previous run, in a sentence
    algorithm: str = "kmeans"  # the algorithm whose clusters these are (algorithms.py)
    algorithm_note: str = ""  # how that algorithm's parameters were chosen ('' for K-Means)
    membership: pl.DataFrame | None = None  # GMM: customer_id, membership_<segment> columns

    @property
    def k(self) -> int:
        """The number of segments."""
        return self.choice.k


# ---------------------------------------------------------------------------------------------
# The stage


def segment_customers(
    rfm: RfmTable,
    cfg: SegmentationSection,
    playbook: Mapping[str, PlaybookEntry],
    seed: int,
    previous: PreviousSegments | None = None,
    space: Any | None = None,
) -> Segmentation:
    """Cluster the scored customers, choose k, name, profile and plan actions.

    With `previous`, clusters whose centroid lies near a previous centroid keep its name, and
    `k_policy: keep_previous` reuses its k. With `space` (a representation.Space, one row per
    scored customer) the clustering runs in that space; segments are still described in the
    features. `cfg.algorithm` other than kmeans: that algorithm's clusters (algorithms.py).

    Raises InputDataError when the data cannot give the segments asked (too few customers or
    distinct points, a constant feature) and ConfigError when the limits leave no k.
    """
    # Load the native libraries first: threadpool_limits only pins the pools already loaded,
    # and OpenMP on 2 threads sums the inertia in another order (last digits differ).
    import sklearn.cluster  # noqa: F401
    from threadpoolctl import threadpool_limits

    if previous is not None and cfg.k_policy == "keep_previous":
        cfg = cfg.model_copy(update={"k": previous.k})
    with threadpool_limits(limits=_THREADS):
        seg = _segment(rfm, cfg, playbook, seed, previous, space)
    if previous is not None and cfg.k_policy == "keep_previous":
        reason = (
            f"k={previous.k} is kept from the run of {previous.as_of} (k_policy: keep_previous)."
        )
        seg = dataclasses.replace(
            seg, choice=dataclasses.replace(seg.choice, rule="kept", reason=reason)
        )
    return seg


@dataclass(frozen=True, eq=False)
class _Fit:
    """The clustering itself, before naming: what `_assemble` turns into a Segmentation."""

    transform: Transform
    coords: np.ndarray  # scaled features of the scored customers
    outlier: np.ndarray
    fit_idx: np.ndarray
    sil_idx: np.ndarray
    evidence: list[KEvidence]
    choice: KChoice
    model: Any  # the final KMeans, fitted on every scored customer
    final: Any = None  # algorithms.FinalAssignment when another algorithm or space decided


def _segment(
    rfm: RfmTable,
    cfg: SegmentationSection,
    playbook: Mapping[str, PlaybookEntry],
    seed: int,
    previous: PreviousSegments | None,
    space: Any | None = None,
) -> Segmentation:
    scored = rfm.scored
    grid_names = _grid_names(scored)
    plays = resolve_playbook(playbook, grid_names)
    ks = _candidate_ks(cfg)
    _check_customers(scored.height, ks, cfg)
    raw = feature_matrix(scored, cfg.features, rfm.minor_digits)
    transform, outlier = fit_transform(raw, cfg)
    coords = transform.apply(raw)
    _check_points(coords, ks, cfg, len(grid_names))
    fit_idx, sil_idx = draw_samples(len(coords), cfg, seed)
    evidence = sweep(coords, ks, fit_idx, sil_idx, cfg, seed, len(grid_names))
    choice = _choose(evidence, cfg, len(grid_names))
    # the final model sees every customer
    model = kmeans_model(choice.k, cfg.n_init, seed).fit(coords)
    final = _other_algorithm(cfg, coords, space, choice, seed, len(grid_names))
    if final is not None:  # its labels replace K-Means' before naming and profiling
        model, choice, plays = final.model, final.choice, plays | final.plays
    fit = _Fit(transform, coords, outlier, fit_idx, sil_idx, evidence, choice, model, final)
    kept = match_previous(model.cluster_centers_, transform, previous)
    if final is not None:
        kept = final.names_kept(kept)
    named = name_clusters(
        model.cluster_centers_, coords, scored["rfm_grid_segment"], grid_names, kept
    )
    seg = _assemble(rfm, cfg, seed, fit, named, plays)
    return dataclasses.replace(
        seg,
        kept_names=tuple(sorted(kept.values())),
        continuity=_continuity(previous, kept, cfg, choice.k),
    )


def _other_algorithm(
    cfg: SegmentationSection,
    coords: np.ndarray,
    space: Space | None,
    choice: KChoice,
    seed: int,
    names: int,
) -> FinalAssignment | None:
    """The chosen algorithm's assignment (algorithms.py); None for K-Means on the features."""
    if cfg.algorithm == "kmeans" and space is None:
        return None
    from .algorithms import final_assignment

    return final_assignment(cfg, coords, space, choice, seed, names)


def _grid_names(scored: pl.DataFrame) -> list[str]:
    """The RFM grid names of the scored customers: the 11 in their order, then any others."""
    present = set(scored["rfm_grid_segment"].unique().to_list())
    known = [n for n in SEGMENT_NAMES if n in present]
    return known + sorted(present - set(known))


# ---------------------------------------------------------------------------------------------
# Features and transform


def feature_matrix(scored: pl.DataFrame, features: Sequence[str], digits: int) -> np.ndarray:
    """The (customers x features) array in original units; money in currency units."""
    exprs = []
    for name in features:
        column, money = FEATURE_COLUMNS[name]
        expr = pl.col(column).cast(pl.Float64)
        if name == "return_rate":
            expr = expr.fill_null(0.0)  # no purchase value to return from: nothing returned
        exprs.append((expr / 10**digits if money else expr).alias(name))
    values = scored.select(exprs).to_numpy().astype(np.float64, copy=False)
    bad = [f for j, f in enumerate(features) if not np.isfinite(values[:, j]).all()]
    if bad:
        raise InputDataError(
            f"segmentation feature(s) {', '.join(bad)} have missing values for some customers; "
            "remove them from segmentation.features"
        )
    return values.reshape(len(scored), len(features))


def fit_transform(raw: np.ndarray, cfg: SegmentationSection) -> tuple[Transform, np.ndarray]:
    """Fit capping, log1p and scaling on `raw`; return the transform and the outlier flags."""
    features = tuple(cfg.features)
    caps, outlier = None, np.zeros(len(raw), dtype=bool)
    values = raw
    if cfg.outliers.method == "quantile_cap" and len(raw):
        low = np.quantile(raw, cfg.outliers.lower_quantile, axis=0)
        high = np.quantile(raw, cfg.outliers.upper_quantile, axis=0)
        caps = tuple((float(a), float(b)) for a, b in zip(low, high, strict=True))
        outlier = ((raw < low) | (raw > high)).any(axis=1)
        values = np.clip(raw, low, high)
    _check_constant(raw, values, features, caps is not None)
    if cfg.log1p:
        values = _log1p(values, features)
    center, scale = _scaler_params(values, cfg.scaling)
    transform = Transform(features, caps, cfg.log1p, cfg.scaling, center, scale)
    return transform, outlier


def _check_constant(
    raw: np.ndarray, capped: np.ndarray, features: tuple[str, ...], capping: bool
) -> None:
    for j, name in enumerate(features):
        if len(capped) and np.ptp(capped[:, j]) == 0:
            after = (
                " after quantile capping (segmentation.outliers)"
                if capping and np.ptp(raw[:, j]) > 0
                else ""
            )
            raise InputDataError(
                f"feature {name!r} has the same value ({capped[0, j]:g}) for all {len(capped):,} "
                f"customers{after}, so it cannot separate segments; remove it from "
                "segmentation.features"
            )


def _log1p(values: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
    low = values.min(axis=0) if len(values) else np.zeros(len(features))
    bad = [f for f, v in zip(features, low, strict=True) if v <= -1]
    if bad:
        raise InputDataError(
            f"feature(s) {', '.join(bad)} have values of -1 or less, which log1p cannot take; "
            "set segmentation.log1p: false or remove them from segmentation.features"
        )
    return np.log1p(values)


def _scaler_params(values: np.ndarray, scaling: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(center, scale) of the scikit-learn scaler, so that coordinates = (x - center) / scale."""
    from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

    d = values.shape[1]
    if scaling == "none":
        return (0.0,) * d, (1.0,) * d
    if scaling == "standard":
        s = StandardScaler().fit(values)
        center, scale = s.mean_, s.scale_
    elif scaling == "robust":
        s = RobustScaler().fit(values)
        center, scale = s.center_, s.scale_
    else:
        s = MinMaxScaler().fit(values)
        center, scale = s.data_min_, 1.0 / s.scale_  # scikit-learn sets scale_ 1 on zero range
    return tuple(map(float, center)), tuple(map(float, scale))


# ---------------------------------------------------------------------------------------------
# Samples, checks and the k sweep


def _candidate_ks(cfg: SegmentationSection) -> list[int]:
    if cfg.k != "auto":
        return [int(cfg.k)]
    low, high = cfg.k_range
    return list(range(low, high + 1))


def _what_and_fix(ks: list[int], cfg: SegmentationSection) -> tuple[str, str]:
    k = max(ks)
    if cfg.k != "auto":
        return f"k={k}", "lower segmentation.k"
    return f"the largest k in segmentation.k_range ({k})", "lower segmentation.k_range"


def _check_customers(n: int, ks: list[int], cfg: SegmentationSection) -> None:
    """At least as many customers as the largest k fitted."""
    what, fix = _what_and_fix(ks, cfg)
    if n < max(ks):
        raise InputDataError(
            f"only {counted(n, 'customer')} can be segmented (positive spend), fewer than "
            f"{what}; {fix}"
        )


def _check_points(coords: np.ndarray, ks: list[int], cfg: SegmentationSection, names: int) -> None:
    """Enough distinct points, and names, for the largest k fitted."""
    (k, n), (what, fix) = (max(ks), len(coords)), _what_and_fix(ks, cfg)
    distinct = pl.DataFrame(coords).n_unique()
    if distinct < k:
        raise InputDataError(
            f"the {n:,} customers have only {distinct:,} distinct combinations of "
            f"{', '.join(cfg.features)}, fewer than {what}; {fix} to at most {distinct}, or add "
            "features to segmentation.features"
        )
    if cfg.k != "auto" and k > names:
        raise ConfigError(
            f"segmentation.k is {k}, but segments take their names from the RFM grid, which "
            f"gives only {names} names to these customers; set segmentation.k to at most {names}"
        )


def draw_samples(n: int, cfg: SegmentationSection, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded fit sample (k sweep) and silhouette sample (a subset of it), as sorted indices."""
    rng = np.random.default_rng(seed)
    fit_idx = _subsample(rng, np.arange(n), cfg.fit_sample_size)
    sil_idx = _subsample(rng, fit_idx, cfg.silhouette_sample_size)
    return fit_idx, sil_idx


def _subsample(rng: np.random.Generator, idx: np.ndarray, size: int) -> np.ndarray:
    if len(idx) <= size:
        return idx
    return np.sort(rng.choice(idx, size=size, replace=False))


def sweep(
    coords: np.ndarray,
    ks: list[int],
    fit_idx: np.ndarray,
    sil_idx: np.ndarray,
    cfg: SegmentationSection,
    seed: int,
    names: int,
) -> list[KEvidence]:
    """Fit every k on the fit sample and measure its criteria."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    sample = coords[fit_idx]
    labels: dict[int, np.ndarray] = {}
    inertia: dict[int, float] = {}
    for k in ks:
        model = kmeans_model(k, cfg.n_init, seed).fit(sample)
        labels[k], inertia[k] = model.labels_, float(model.inertia_)
    sil_pos = np.searchsorted(fit_idx, sil_idx)
    sil = silhouette_values(coords[sil_idx], [labels[k][sil_pos] for k in ks])
    evidence = []
    for k, values in zip(ks, sil, strict=True):
        share = np.bincount(labels[k], minlength=k).min() / len(sample)
        why = _not_admissible(k, share, cfg, names)
        ch, db = _safe_scores(sample, labels[k], calinski_harabasz_score, davies_bouldin_score)
        evidence.append(
            KEvidence(k, inertia[k], _mean(values), ch, db, float(share), why is None, why)
        )
    return evidence


def _safe_scores(
    sample: np.ndarray, labels: np.ndarray, *scores: Callable[[np.ndarray, np.ndarray], float]
) -> list[float]:
    if len(np.unique(labels)) < 2:
        return [math.nan] * len(scores)
    return [float(score(sample, labels)) for score in scores]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) and np.isfinite(values).all() else math.nan


def _not_admissible(k: int, share: float, cfg: SegmentationSection, names: int) -> str | None:
    if cfg.k != "auto":
        return None
    if not cfg.min_k <= k <= cfg.max_k:
        return f"outside min_k..max_k ({cfg.min_k}..{cfg.max_k})"
    if k > names:
        return f"more segments than the {names} names the RFM grid gives these customers"
    if share < cfg.min_segment_share:
        return (
            f"smallest segment holds {share:.1%} of customers, under min_segment_share "
            f"({cfg.min_segment_share:.1%})"
        )
    return None


def silhouette_values(coords: np.ndarray, labelings: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-sample silhouette of each labelling of the same points (as scikit-learn defines it).

    The pairwise distances are computed once, in chunks of rows, and shared by every
    labelling: per cluster the distance sums are a product with the one-hot label matrix.
    """
    from scipy.spatial.distance import cdist

    m = len(coords)
    onehots = [_onehot(labels) for labels in labelings]
    counts = [h.sum(axis=0) for h in onehots]
    edges = np.cumsum([0] + [h.shape[1] for h in onehots])
    stacked = np.hstack(onehots) if onehots else np.zeros((m, 0))  # one product for every labelling
    out = [np.zeros(m) for _ in labelings]
    step = max(1, 4_000_000 // max(m, 1))  # ~32 MB of distances per chunk
    for start in range(0, m, step):
        rows = slice(start, min(start + step, m))
        sums = cdist(coords[rows], coords) @ stacked
        for j, (labels, count) in enumerate(zip(labelings, counts, strict=True)):
            part = sums[:, edges[j] : edges[j + 1]]
            out[j][rows] = _chunk_silhouette(part, labels[rows], count)
    return out


def _onehot(labels: np.ndarray) -> np.ndarray:
    hot = np.zeros((len(labels), int(labels.max()) + 1 if len(labels) else 0))
    hot[np.arange(len(labels)), labels] = 1.0
    return hot


def _chunk_silhouette(sums: np.ndarray, own: np.ndarray, count: np.ndarray) -> np.ndarray:
    rows = np.arange(len(own))
    own_count = count[own]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = sums[rows, own] / np.maximum(own_count - 1, 1)
        mean_other = np.where(count > 0, sums / np.where(count > 0, count, 1), np.inf)
        mean_other[rows, own] = np.inf
        b = mean_other.min(axis=1)
        s = (b - a) / np.maximum(a, b)
    s = np.nan_to_num(s, nan=0.0, posinf=math.nan, neginf=math.nan)
    s[own_count == 1] = 0.0  # scikit-learn: a singleton cluster scores 0
    return s


# ---------------------------------------------------------------------------------------------
# Choosing k (pure functions of the per-k arrays)


def find_knee(ks: Sequence[int], inertia: Sequence[float]) -> int | None:
    """The knee of a decreasing convex inertia curve (kneed), or None when there is none."""
    from kneed import KneeLocator

    if len(ks) < 3:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kneed warns when it finds no knee
        knee = KneeLocator(
            list(ks),
            list(inertia),
            S=1.0,
            curve="convex",
            direction="decreasing",
            interp_method="interp1d",
            online=False,
        ).knee
    return int(knee) if knee is not None else None


def best_k(
    ks: Sequence[int], values: Sequence[float], candidates: Sequence[bool], maximize: bool
) -> int | None:
    """The candidate k with the best finite value; ties (within TIE_TOLERANCE): the smaller k."""
    pairs = [
        (k, v) for k, v, ok in zip(ks, values, candidates, strict=True) if ok and math.isfinite(v)
    ]
    if not pairs:
        return None
    sign = 1.0 if maximize else -1.0
    top = max(sign * v for _, v in pairs)
    return min(k for k, v in pairs if sign * v >= top - TIE_TOLERANCE)


def choose_k(
    ks: Sequence[int],
    inertia: Sequence[float],
    silhouette: Sequence[float],
    calinski_harabasz: Sequence[float],
    davies_bouldin: Sequence[float],
    admissible: Sequence[bool],
    rule: str,
    min_k: int,
    max_k: int,
) -> KChoice:
    """Apply the rule to the per-k criteria (DESIGN.md section 2).

    `admissible[i]` says whether ks[i] may be chosen (within min_k..max_k and every other limit).
    Knee rule: the knee of the inertia curve over the ks within min_k..max_k; if there is none
    or it is not admissible, the best silhouette among the admissible ks. Ties: smaller k.
    Raises ValueError when no k is admissible.
    """
    if not any(admissible):
        raise ValueError("no admissible k")
    window = [min_k <= k <= max_k for k in ks]
    knee = find_knee(
        [k for k, w in zip(ks, window, strict=True) if w],
        [i for i, w in zip(inertia, window, strict=True) if w],
    )
    best = {
        "knee": knee if knee is not None and admissible[list(ks).index(knee)] else None,
        "silhouette": best_k(ks, silhouette, admissible, maximize=True),
        "calinski_harabasz": best_k(ks, calinski_harabasz, admissible, maximize=True),
        "davies_bouldin": best_k(ks, davies_bouldin, admissible, maximize=False),
    }
    values = dict(zip(ks, silhouette, strict=True))
    if rule == "knee":
        k, reason = _knee_reason(knee, best, values, min_k, max_k)
    else:
        best_for_rule = best[rule]
        if best_for_rule is None:  # every admissible value was NaN (not with fitted k-means)
            raise ValueError(f"no admissible k has a finite {rule}")
        k, reason = (
            best_for_rule,
            (
                f"k={best_for_rule} has {_CRITERION_WORDS[rule]} among the admissible k "
                f"({_ks(admissible, ks)})"
            ),
        )
    return KChoice(k, rule, reason + ".", best, _disagreement(best, rule, k))


def _knee_reason(
    knee: int | None,
    best: dict[str, int | None],
    silhouette: dict[int, float],
    min_k: int,
    max_k: int,
) -> tuple[int, str]:
    window = f"k={min_k}..{max_k}"
    admissible_knee = best["knee"]  # the knee, when it is admissible
    if admissible_knee is not None:
        return admissible_knee, (
            f"k={admissible_knee} is the knee of the inertia curve over {window}: beyond it, more segments "
            "reduce the within-segment spread much less"
        )
    k = best["silhouette"]
    if k is None:
        raise ValueError("no admissible k has a finite silhouette")
    why = "has no knee" if knee is None else f"has its knee at k={knee}, which is not admissible"
    return k, (
        f"the inertia curve over {window} {why}, so k={k} was taken for the best silhouette "
        f"({silhouette[k]:.3f}) among the admissible k"
    )


def _ks(admissible: Sequence[bool], ks: Sequence[int]) -> str:
    return ", ".join(str(k) for k, ok in zip(ks, admissible, strict=True) if ok)


def _disagreement(best: dict[str, int | None], rule: str, chosen: int) -> str:
    found = {c: k for c, k in best.items() if k is not None}
    tail = " (the inertia curve has no admissible knee)" if best.get("knee") is None else ""
    if len(set(found.values())) <= 1:
        agree = ", ".join(_CRITERION_WORDS[c] for c in found)
        return f"The criteria agree: {agree} all point to k={chosen}{tail}."
    parts = [f"{_CRITERION_WORDS[c]} points to k={k}" for c, k in found.items()]
    return (
        f"The criteria disagree: {'; '.join(parts)}{tail}. The {rule.replace('_', '-')} rule "
        f"picked k={chosen}."
    )


def _choose(evidence: list[KEvidence], cfg: SegmentationSection, names: int) -> KChoice:
    if cfg.k != "auto":
        k = int(cfg.k)
        return KChoice(
            k,
            "fixed",
            f"k={k} is fixed in the configuration (segmentation.k).",
            {c: None for c in CRITERIA},
            "k was fixed in the configuration, so the criteria were not compared.",
        )
    admissible = [e.admissible for e in evidence]
    if not any(admissible):
        raise ConfigError(_no_admissible_message(evidence, cfg, names))
    cols = {
        f: [getattr(e, f) for e in evidence]
        for f in ("k", "inertia", "silhouette", "calinski_harabasz", "davies_bouldin")
    }
    return choose_k(
        cols["k"],
        cols["inertia"],
        cols["silhouette"],
        cols["calinski_harabasz"],
        cols["davies_bouldin"],
        admissible,
        cfg.rule,
        cfg.min_k,
        cfg.max_k,
    )


def _no_admissible_message(evidence: list[KEvidence], cfg: SegmentationSection, names: int) -> str:
    """Which limit left no k, and what to change."""
    window = [e for e in evidence if cfg.min_k <= e.k <= cfg.max_k]
    small = [e for e in window if "min_segment_share" in (e.not_admissible_because or "")]
    unnamed = [e for e in window if "names" in (e.not_admissible_because or "")]
    reasons, fixes = [], []
    if small:
        shares = ", ".join(f"k={e.k}: {e.smallest_share:.1%}" for e in small)
        largest = math.floor(max(e.smallest_share for e in small) * 1000) / 1000
        reasons.append(
            f"the smallest segment holds less than segmentation.min_segment_share "
            f"({cfg.min_segment_share:.1%}) of the customers ({shares})"
        )
        fixes.append(f"lower segmentation.min_segment_share to at most {largest:.1%}")
        if cfg.min_k > cfg.k_range[0]:
            fixes.append("lower segmentation.min_k (fewer segments are bigger)")
        if largest < _TINY_SHARE:  # such segments are a handful of extreme customers
            fixes.append(
                "tame the extreme customers who make up such tiny segments with "
                "segmentation.log1p: true or segmentation.outliers.method: quantile_cap"
            )
    if unnamed:
        reasons.append(
            f"k={', '.join(str(e.k) for e in unnamed)} would need more than the {names} names "
            "the RFM grid gives these customers"
        )
        limits = "segmentation.min_k and max_k" if names < cfg.min_k else "segmentation.max_k"
        fixes.append(f"set {limits} to at most {names}")
    return (
        f"no k between segmentation.min_k ({cfg.min_k}) and segmentation.max_k ({cfg.max_k}) "
        f"is admissible: {'; '.join(reasons)}. To fix: {', or '.join(fixes)}"
    )


# ---------------------------------------------------------------------------------------------
# Final model, names, stability


@dataclass(frozen=True)
class _Named:
    order: np.ndarray  # old label -> new label (segments in vocabulary order)
    names: tuple[str, ...]  # by new label
    prototypes: dict[str, tuple[float, ...]]


def name_clusters(
    centroids: np.ndarray,
    coords: np.ndarray,
    grid: pl.Series,
    grid_names: list[str],
    kept: Mapping[int, str] | None = None,
) -> _Named:
    """Assign each cluster a distinct grid name by minimum total centroid-prototype distance.

    `kept` (cluster -> name) are fixed beforehand; the others share the remaining names.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    kept = dict(kept or {})
    grid_values = grid.to_numpy()
    prototypes = np.array([coords[grid_values == n].mean(axis=0) for n in grid_names])
    free = [i for i in range(len(centroids)) if i not in kept]
    names_left = [i for i, n in enumerate(grid_names) if n not in kept.values()]
    rows, cols = linear_sum_assignment(cdist(centroids[free], prototypes[names_left]))
    name_of = dict(kept) | {
        free[int(r)]: grid_names[names_left[int(c)]] for r, c in zip(rows, cols, strict=True)
    }
    vocabulary = grid_names + sorted(set(name_of.values()) - set(grid_names))
    by_vocabulary = sorted(name_of, key=lambda old: vocabulary.index(name_of[old]))
    order = np.empty(len(centroids), dtype=np.int64)
    order[by_vocabulary] = np.arange(len(centroids))
    return _Named(
        order=order,
        names=tuple(name_of[old] for old in by_vocabulary),
        prototypes={n: tuple(map(float, p)) for n, p in zip(grid_names, prototypes, strict=True)},
    )


def match_previous(
    centroids: np.ndarray, transform: Transform, previous: PreviousSegments | None
) -> dict[int, str]:
    """Clusters whose centroid lies within the threshold of a previous centroid: its name.

    Both go through the current transform, then an optimal assignment pairs them; a pair
    farther apart than `match_threshold` is a new segment, not a continuation.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    if previous is None or tuple(previous.features) != tuple(transform.features):
        return {}
    before = transform.apply(np.array(previous.centroids, dtype=np.float64))
    distances = cdist(centroids, before)
    rows, cols = linear_sum_assignment(distances)
    return {
        int(r): previous.names[int(c)]
        for r, c in zip(rows, cols, strict=True)
        if distances[r, c] <= previous.match_threshold
    }


def _continuity(
    previous: PreviousSegments | None,
    kept: Mapping[int, str],
    cfg: SegmentationSection,
    k_now: int,
) -> str:
    if previous is None:
        return "This is the first run of this report: names come from the RFM grid prototypes."
    if tuple(previous.features) != tuple(cfg.features):
        return (
            f"The features changed since the run of {previous.as_of} ({', '.join(previous.features)}"
            f" -> {', '.join(cfg.features)}): names come from the RFM grid prototypes, and the "
            "comparison is by name."
        )
    kept_list = ", ".join(sorted(kept.values()))
    if not kept:
        return (
            f"Compared with the run of {previous.as_of} (k={previous.k}): no segment centre stayed "
            "close to a previous one, so every name comes from the RFM grid prototypes."
        )
    others = "" if len(kept) == k_now else "; the others were named from the RFM grid prototypes"
    return (
        f"Compared with the run of {previous.as_of} (k={previous.k}): {len(kept)} segment"
        f"{'s' if len(kept) != 1 else ''} kept their names because their centres moved little "
        f"({kept_list}){others}."
    )


def measure_stability(
    coords: np.ndarray, labels: np.ndarray, k: int, cfg: SegmentationSection, seed: int
) -> Stability:
    """Refit k with `stability_seeds` other seeds on `coords`; ARI against `labels`."""
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng([seed, 1])
    seeds = tuple(int(s) for s in rng.integers(0, 2**31 - 1, size=cfg.stability_seeds))
    ari = tuple(
        float(adjusted_rand_score(labels, kmeans_model(k, cfg.n_init, s).fit(coords).labels_))
        for s in seeds
    )
    mean, low = float(np.mean(ari)), float(np.min(ari))
    stable = mean >= STABILITY_THRESHOLD
    note = (
        f"Refitted with {len(seeds)} other seeds, the segments agree with these ones at an "
        f"adjusted Rand index of {mean:.2f} on average (lowest {low:.2f})"
    )
    if stable:
        note += "; they hardly depend on the seed."
    else:
        note += (
            f", below {STABILITY_THRESHOLD}: the segments depend on chance more than they "
            "should; treat their borders with caution, or try another k or fewer features."
        )
    return Stability(seeds, ari, mean, low, stable, note)


def fit_quality(silhouette: float | None) -> str:
    """The silhouette in words: weak (< 0.25), moderate (0.25-0.5) or clear (> 0.5)."""
    if silhouette is None or not math.isfinite(silhouette):
        return "unknown"
    if silhouette < WEAK_BELOW:
        return "weak"
    return "moderate" if silhouette <= CLEAR_ABOVE else "clear"


# ---------------------------------------------------------------------------------------------
# Assembling the result


def _assemble(
    rfm: RfmTable, cfg: SegmentationSection, seed: int, fit: _Fit, named: _Named, plays: dict
) -> Segmentation:
    assignments, centroids = _assignments(rfm.scored, fit, named)
    labels = assignments["label"].to_numpy()
    sil_frame = assignments[fit.sil_idx].select("customer_id", "label", "segment")
    sil = silhouette_values(fit.coords[fit.sil_idx], [labels[fit.sil_idx]])[0]
    sil_frame = sil_frame.with_columns(pl.Series("silhouette", sil))
    stability = (
        fit.final.stability
        if fit.final is not None
        else measure_stability(
            fit.coords[fit.fit_idx], labels[fit.fit_idx], fit.choice.k, cfg, seed
        )
    )
    frame = _profile_frame(rfm, assignments)
    profiles = _profiles(frame, named.names, cfg, centroids, fit.transform, sil_frame, rfm)
    actions = plan_actions(
        frame.select("label", "segment", "revenue_minor"),
        frame.select("rfm_grid_segment", "revenue_minor"),
        plays,
        rfm.minor_digits,
    )
    overall = _mean(sil)
    return Segmentation(
        settings=cfg,
        seed=seed,
        minor_digits=rfm.minor_digits,
        transform=fit.transform,
        customers=len(fit.coords),
        fit_sample_size=len(fit.fit_idx),
        silhouette_sample_size=len(fit.sil_idx),
        evidence=tuple(fit.evidence),
        choice=fit.choice,
        stability=stability,
        inertia=float(fit.model.inertia_),
        silhouette=None if math.isnan(overall) else overall,
        fit_quality=fit_quality(overall),
        names=named.names,
        assignments=assignments,
        silhouette_sample=sil_frame,
        centroid_distances=_matrix(centroids),
        prototypes=named.prototypes,
        profiles=tuple(profiles),
        excluded=_excluded(rfm),
        actions=tuple(actions),
        recommendations=tuple(rank_actions(actions)),
        revenue_at_stake_definition=REVENUE_AT_STAKE_DEFINITION,
        warnings=tuple(sufficiency_warnings(rfm, profiles) + _stability_notice(stability)),
        **_final_fields(fit, named, rfm.scored["customer_id"]),
    )


def _final_fields(fit: _Fit, named: _Named, customer_ids: pl.Series) -> dict[str, Any]:
    """The algorithm, its note and the soft membership (GMM) of another algorithm's clusters."""
    if fit.final is None:
        return {}
    from .algorithms import membership_frame

    membership = fit.final.membership
    return {
        "algorithm": fit.final.algorithm,
        "algorithm_note": fit.final.note,
        "membership": None
        if membership is None
        else membership_frame(customer_ids, membership, named.order, named.names),
    }


def _assignments(scored: pl.DataFrame, fit: _Fit, named: _Named) -> tuple[pl.DataFrame, np.ndarray]:
    """Each customer's segment (labels in name order) and distance; the reordered centroids."""
    labels = named.order[fit.model.labels_]
    centroids = fit.model.cluster_centers_[np.argsort(named.order)]
    names = np.array(named.names, dtype=object)
    frame = pl.DataFrame(
        {
            "customer_id": scored["customer_id"],
            "label": pl.Series(labels, dtype=pl.Int32),
            "segment": pl.Series(names[labels].tolist(), dtype=pl.String),
            "outlier": pl.Series(fit.outlier, dtype=pl.Boolean),
            "distance": np.linalg.norm(fit.coords - centroids[labels], axis=1),
        }
    )
    return frame, centroids


def _matrix(centroids: np.ndarray) -> tuple[tuple[float, ...], ...]:
    from scipy.spatial.distance import cdist

    return tuple(tuple(map(float, row)) for row in cdist(centroids, centroids))


def revenue_expr(rfm: RfmTable) -> pl.Expr:
    """Each customer's revenue in the period (minor units): the spend, whatever `monetary` is."""
    if "revenue_minor" in rfm.frame.columns:
        return pl.col("revenue_minor")
    if rfm.monetary_definition == "sum":
        return pl.col("monetary_minor")
    # monetary is the mean order value: the total is the mean times the orders (to the unit)
    return pl.col("avg_order_value_minor") * pl.col("frequency")


def _profile_frame(rfm: RfmTable, assignments: pl.DataFrame) -> pl.DataFrame:
    """Per clustered customer: revenue, returns, scores, every feature, segment and distance."""
    scored = rfm.scored
    # money stays in minor units here; the segment statistics are divided afterwards (exact)
    features = {name: pl.col(col).cast(pl.Float64) for name, (col, _) in FEATURE_COLUMNS.items()}
    gross = pl.col("gross_minor") if "gross_minor" in scored.columns else pl.lit(None, pl.Int64)
    return scored.select(
        revenue_expr(rfm).alias("revenue_minor"),
        pl.col("returned_value_minor"),
        gross.alias("gross_minor"),
        pl.col("rfm_grid_segment"),
        pl.col("r_score", "f_score", "m_score").cast(pl.Float64),
        *[expr.alias(f"f_{name}") for name, expr in features.items()],
    ).hstack(assignments.select("label", "segment", "outlier", "distance").get_columns())


def _profiles(
    frame: pl.DataFrame,
    names: tuple[str, ...],
    cfg: SegmentationSection,
    centroids: np.ndarray,
    transform: Transform,
    sil_frame: pl.DataFrame,
    rfm: RfmTable,
) -> list[SegmentProfile]:
    """Per-segment figures: integer sums in polars (exact), float statistics in numpy.

    numpy sums in a fixed order, so means repeat to the last digit; a polars group-by mean of
    floats may add in another order from one call to the next.
    """
    shown = list(dict.fromkeys([*cfg.features, *RFM_FEATURES]))
    sums = frame.group_by("label").agg(
        pl.len().alias("customers"),
        pl.col("revenue_minor", "returned_value_minor", "gross_minor").sum(),
        pl.col("outlier").sum().alias("outliers"),
    )
    by_label = {row["label"]: row for row in sums.iter_rows(named=True)}
    labels = frame["label"].to_numpy()
    floats = ["distance", "r_score", "f_score", "m_score", *[f"f_{f}" for f in shown]]
    arrays = {c: frame[c].to_numpy() for c in floats}
    for label, row in by_label.items():
        mask = labels == label
        row |= {f"mean_{c}": float(arrays[c][mask].mean()) for c in floats}
        row |= {f"median_{c}": float(np.median(arrays[c][mask])) for c in floats[4:]}
    sil = _mean_by_label(sil_frame["label"].to_numpy(), sil_frame["silhouette"].to_numpy())
    total, revenue = frame.height, int(frame["revenue_minor"].sum())
    original = transform.invert(centroids)
    return [
        _profile(
            by_label[label],
            names,
            shown,
            total,
            revenue,
            centroids,
            original,
            sil,
            rfm.minor_digits,
        )
        for label in sorted(by_label)
    ]


def _mean_by_label(labels: np.ndarray, values: np.ndarray) -> dict[int, float]:
    return {int(label): float(values[labels == label].mean()) for label in np.unique(labels)}


def _feature_stats(row: dict, feature: str, digits: int) -> FeatureStats:
    divisor = 10**digits if FEATURE_COLUMNS[feature][1] else 1
    mean, median = row[f"mean_f_{feature}"], row[f"median_f_{feature}"]
    return FeatureStats(mean / divisor, median / divisor)


def _profile(
    row: dict[str, Any],
    names: tuple[str, ...],
    shown: list[str],
    total: int,
    revenue: int,
    centroids: np.ndarray,
    original: np.ndarray,
    sil: dict[int, float],
    digits: int,
) -> SegmentProfile:
    label = row["label"]
    gross = row["gross_minor"]
    return SegmentProfile(
        label=label,
        name=names[label],
        customers=row["customers"],
        share=row["customers"] / total,
        revenue_minor=int(row["revenue_minor"]),
        revenue_share=row["revenue_minor"] / revenue if revenue else math.nan,
        outliers=int(row["outliers"]),
        features={f: _feature_stats(row, f, digits) for f in shown},
        mean_scores={s: row[f"mean_{s}"] for s in ("r_score", "f_score", "m_score")},
        returned_value_minor=int(row["returned_value_minor"]),
        return_rate=row["returned_value_minor"] / gross if gross else None,
        mean_distance=row["mean_distance"],
        silhouette=sil.get(label),
        centroid_scaled=tuple(map(float, centroids[label])),
        centroid=tuple(map(float, original[label])),
    )


def _excluded(rfm: RfmTable) -> tuple[ExcludedGroup, ...]:
    rest = rfm.frame.filter(pl.col("r_score").is_null())
    if rest.is_empty():
        return ()
    groups = rest.group_by(_excluded_reason().alias("reason")).agg(
        pl.len().alias("customers"), revenue_expr(rfm).sum().alias("revenue_minor")
    )
    return tuple(
        ExcludedGroup(r["reason"], r["customers"], int(r["revenue_minor"]))
        for r in groups.sort("reason").iter_rows(named=True)
    )


def _excluded_reason() -> pl.Expr:
    grid = pl.col("rfm_grid_segment")
    return (
        pl.when(grid.str.starts_with("Excluded:"))
        .then(grid)
        .otherwise(pl.lit("Excluded: not scored"))
    )


# ---------------------------------------------------------------------------------------------
# Warnings


def sufficiency_warnings(rfm: RfmTable, profiles: Sequence[SegmentProfile]) -> list[Notice]:
    """The data-sufficiency warnings of DESIGN.md section 2 (shown, never fatal)."""
    scored = rfm.scored
    n = scored.height
    notes = []
    if n < MIN_CUSTOMERS:
        notes.append(
            Notice(
                "few_customers",
                (
                    f"Only {n:,} customers could be segmented (fewer than {MIN_CUSTOMERS}): segments "
                    "this small shift a lot from one run to the next; treat them as indicative."
                ),
            )
        )
    history = cast("int | None", rfm.frame["tenure_days"].max()) or 0  # None: no customers
    if history < MIN_HISTORY_DAYS:
        notes.append(
            Notice(
                "short_history",
                (
                    f"The data covers only {history} days of purchase history (under "
                    f"{MIN_HISTORY_DAYS}): recency and frequency cannot yet tell lapsed customers from "
                    "occasional ones."
                ),
            )
        )
    repeat = cast(float, (scored["frequency"] > 1).mean()) if n else 0.0
    if repeat < MIN_REPEAT_SHARE:
        notes.append(
            Notice(
                "few_repeat_buyers",
                (
                    f"Only {repeat:.1%} of customers bought more than once (under "
                    f"{MIN_REPEAT_SHARE:.0%}): frequency barely varies, so segments rest mostly on "
                    "recency and spend."
                ),
            )
        )
    small = [p for p in profiles if p.customers < MIN_SEGMENT_CUSTOMERS]
    if small:
        listed = ", ".join(f"{p.name} ({p.customers})" for p in small)
        notes.append(
            Notice(
                "small_segments",
                (
                    f"Segments with fewer than {MIN_SEGMENT_CUSTOMERS} customers: {listed}. Their "
                    "averages are unreliable and a 10% holdout would be too small to measure anything."
                ),
            )
        )
    return notes


def _stability_notice(stability: Stability) -> list[Notice]:
    return [] if stability.stable else [Notice("unstable_segments", stability.note)]


# ---------------------------------------------------------------------------------------------
# Exports


def segment_columns(seg: Segmentation, rfm: RfmTable) -> pl.DataFrame:
    """customer_id, segment, outlier for every customer of the RFM table (excluded ones too)."""
    joined = rfm.frame.select("customer_id", "rfm_grid_segment").join(
        seg.assignments.select("customer_id", "segment", "outlier"), on="customer_id", how="left"
    )
    columns = joined.select(
        "customer_id",
        pl.when(pl.col("segment").is_null())
        .then(_excluded_reason())
        .otherwise(pl.col("segment"))
        .alias("segment"),
        pl.col("outlier").fill_null(False),
    ).sort("customer_id")
    if seg.membership is None:
        return columns
    return columns.join(seg.membership, on="customer_id", how="left")  # GMM soft membership


def segmentation_summary(seg: Segmentation) -> dict[str, Any]:
    """Every figure of the segmentation, JSON-ready (no NaN: null instead)."""
    cfg, money = seg.settings, _money_fn(seg.minor_digits)
    summary = {
        "method": _method_part(seg),
        "k_selection": _k_part(seg),
        "fit": {
            "silhouette": seg.silhouette,
            "quality": seg.fit_quality,
            "quality_bands": {"weak": "< 0.25", "moderate": "0.25-0.5", "clear": "> 0.5"},
            "inertia": seg.inertia,
        },
        "stability": {
            "seeds": list(seg.stability.seeds),
            "ari": list(seg.stability.ari),
            "mean_ari": seg.stability.mean,
            "min_ari": seg.stability.min,
            "threshold": STABILITY_THRESHOLD,
            "stable": seg.stability.stable,
            "note": seg.stability.note,
        },
        "customers": seg.customers,
        "segments": [_profile_part(p, money, seg.transform.features) for p in seg.profiles],
        "excluded": [
            {"segment": g.reason, "customers": g.customers, "revenue": money(g.revenue_minor)}
            for g in seg.excluded
        ],
        "revenue_total": money(
            sum(p.revenue_minor for p in seg.profiles) + sum(g.revenue_minor for g in seg.excluded)
        ),
        "centroid_distances": {
            "segments": list(seg.names),
            "matrix": [list(r) for r in seg.centroid_distances],
        },
        "naming": {
            "method": "optimal assignment (scipy linear_sum_assignment) of cluster centroids to "
            "name prototypes: the mean scaled features of the customers the RFM grid gives "
            "each name",
            "prototypes": {
                n: dict(zip(cfg.features, p, strict=True)) for n, p in seg.prototypes.items()
            },
            "names": list(seg.names),
            "kept_names": list(seg.kept_names),
            "continuity": seg.continuity,
        },
        "revenue_at_stake_definition": seg.revenue_at_stake_definition,
        "actions": [_action_part(a, money) for a in seg.actions],
        "recommendations": [
            {
                "rank": i + 1,
                "segment": a.segment,
                "revenue_at_stake": money(a.revenue_at_stake_minor),
            }
            for i, a in enumerate(seg.recommendations)
        ],
        "warnings": [{"code": w.code, "message": w.message} for w in seg.warnings],
    }
    return _clean(summary)


def _money_fn(digits: int) -> Callable[[int], float]:
    return lambda minor: minor / 10**digits


def _algorithm_words(algorithm: str) -> str:
    from .algorithms import DESCRIPTIONS

    return DESCRIPTIONS.get(algorithm, algorithm)


def _method_part(seg: Segmentation) -> dict[str, Any]:
    cfg, t = seg.settings, seg.transform
    return {
        "algorithm": _algorithm_words(seg.algorithm),
        "algorithm_name": seg.algorithm,
        "algorithm_note": seg.algorithm_note,
        "n_init": cfg.n_init,
        "seed": seg.seed,
        "features": list(t.features),
        "outliers": {
            "method": cfg.outliers.method,
            "lower_quantile": cfg.outliers.lower_quantile,
            "upper_quantile": cfg.outliers.upper_quantile,
            "caps": None
            if t.caps is None
            else {f: list(c) for f, c in zip(t.features, t.caps, strict=True)},
            "customers_flagged": int(seg.assignments["outlier"].sum()),
        },
        "log1p": t.log1p,
        "scaling": t.scaling,
        "center": dict(zip(t.features, t.center, strict=True)),
        "scale": dict(zip(t.features, t.scale, strict=True)),
        "fit_sample_size": seg.fit_sample_size,
        "silhouette_sample_size": seg.silhouette_sample_size,
    }


def _k_part(seg: Segmentation) -> dict[str, Any]:
    cfg, c = seg.settings, seg.choice
    return {
        "k": c.k,
        "mode": "auto" if cfg.k == "auto" else "fixed",
        "rule": c.rule,
        "reason": c.reason,
        "disagreement": c.disagreement,
        "best_by_criterion": c.best,
        "k_range": list(cfg.k_range),
        "min_k": cfg.min_k,
        "max_k": cfg.max_k,
        "min_segment_share": cfg.min_segment_share,
        "per_k": [
            {
                "k": e.k,
                "inertia": e.inertia,
                "silhouette": e.silhouette,
                "calinski_harabasz": e.calinski_harabasz,
                "davies_bouldin": e.davies_bouldin,
                "smallest_segment_share": e.smallest_share,
                "admissible": e.admissible,
                "not_admissible_because": e.not_admissible_because,
            }
            for e in seg.evidence
        ],
    }


def _profile_part(
    p: SegmentProfile, money: Callable[[int], float], features: tuple[str, ...]
) -> dict[str, Any]:
    return {
        "label": p.label,
        "segment": p.name,
        "customers": p.customers,
        "share": p.share,
        "revenue": money(p.revenue_minor),
        "revenue_share": p.revenue_share,
        "outliers": p.outliers,
        "features": {f: {"mean": s.mean, "median": s.median} for f, s in p.features.items()},
        "mean_scores": p.mean_scores,
        "returned_value": money(p.returned_value_minor),
        "return_rate": p.return_rate,
        "mean_distance_to_centroid": p.mean_distance,
        "silhouette": p.silhouette,
        "centroid_scaled": dict(zip(features, p.centroid_scaled, strict=True)),
        "centroid": dict(zip(features, p.centroid, strict=True)),
    }


def _action_part(a: Action, money: Callable[[int], float]) -> dict[str, Any]:
    play = a.play
    return {
        "label": a.label,
        "segment": a.segment,
        "kind": play.kind,
        "customers": a.customers,
        "revenue": money(a.revenue_minor),
        "revenue_at_stake": money(a.revenue_at_stake_minor),
        "revenue_at_stake_basis": a.at_stake_basis,
        **{
            f: getattr(play, f)
            for f in (
                "objective",
                "channel",
                "offer",
                "no_discount_offer",
                "timing",
                "kpi",
                "holdout",
            )
        },
        "overridden": list(play.overridden),
    }


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
