"""Clustering beyond K-Means: Gaussian mixture, DBSCAN, HDBSCAN, agglomerative (Ward), spectral.

Each method turns one space of customer coordinates (rows in `rfm.scored` order) into a label
per customer, -1 (`NOISE`) for the customers a density method leaves in no group (they form
the `Unclustered` group), with the parameters it used and how they were chosen:

- K-Means, agglomerative (Ward) and spectral clustering take the k chosen by the K-Means rule
  (segment.py), so that a comparison is about the shape of the segments, not their number;
- the Gaussian mixture chooses k itself: the lowest BIC among the k the K-Means rule could
  choose (min_k..max_k, at most the names available, smallest segment >= min_segment_share);
- DBSCAN: min_samples = 2 x dimensions (Sander et al. 1998; Schubert et al. 2017) and eps = the
  knee of the sorted distances to each customer's min_samples-th neighbour (Ester et al. 1996);
- HDBSCAN: min_cluster_size = min_segment_share of the customers fitted (the smallest segment
  the K-Means rule admits), min_samples as for DBSCAN.

Agglomerative, spectral, DBSCAN and HDBSCAN cost O(n^2) in time or memory, so they are fitted
on a seeded sample (`algorithm_options.sample_size`) and extended to everyone: agglomerative
and spectral by a majority of the nearest sampled customers; DBSCAN by the nearest core
customer within eps (DBSCAN's own rule for border points), HDBSCAN by the nearest sampled
customer's group if the customer lies no less densely than that group's sampled members do
(its distance to its min_samples-th sampled neighbour is at most the largest such distance in
the group); anyone else is Unclustered.

Stability is measured the same way for every method: refit on bootstrap samples (their
distinct customers) with the parameters found, and the adjusted Rand index against the full
labels on the customers each sample holds.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from .config import SegmentationSection
from .errors import ConfigError
from .playbook import SEGMENT_NAMES, Play

if TYPE_CHECKING:
    from .representation import Space
    from .segment import KChoice, Stability

log = logging.getLogger(__name__)

NOISE = -1
UNCLUSTERED = "Unclustered"
TITLES = {
    "kmeans": "K-Means",
    "gmm": "Gaussian mixture",
    "dbscan": "DBSCAN",
    "hdbscan": "HDBSCAN",
    "agglomerative": "Agglomerative (Ward)",
    "spectral": "Spectral",
}
SAMPLED = ("dbscan", "hdbscan", "agglomerative", "spectral")  # quadratic: sample and extend
DENSITY = ("dbscan", "hdbscan")
DESCRIPTIONS = {
    "kmeans": "k-means (scikit-learn KMeans, Lloyd)",
    "gmm": "Gaussian mixture (scikit-learn GaussianMixture), k by BIC, soft membership",
    "dbscan": "DBSCAN (scikit-learn), eps from the k-distance knee; noise kept as Unclustered",
    "hdbscan": "HDBSCAN (scikit-learn), noise kept as Unclustered",
    "agglomerative": "agglomerative clustering, Ward linkage (scikit-learn)",
    "spectral": "spectral clustering on a nearest-neighbour graph (scikit-learn)",
}

UNCLUSTERED_PLAY = Play(
    name=UNCLUSTERED,
    kind="retain",
    objective="Look at these customers one by one: they resemble no segment (often the very "
    "largest or most unusual accounts), so no segment's play fits them as a group.",
    channel="An account review by a person; each customer's RFM grid segment (in the export) is "
    "the starting point.",
    offer="The play of each customer's RFM grid segment, adjusted per account.",
    no_discount_offer="A personal check-in from their account manager.",
    timing="Review within 30 days, then at every run.",
    kpi="Share of these customers ordering within 90 days, and their revenue.",
    holdout="Too varied for one control group: compare each reviewed account with its own "
    "order history.",
    overridden=(),
)


@dataclass(frozen=True, eq=False)
class Clustering:
    """One method's labels for every customer of a space, and how it got them."""

    method: str
    labels: np.ndarray  # per customer; NOISE for Unclustered
    k: int  # clusters found (Unclustered not counted)
    fitted_on: int  # customers the model was fitted on; the others were extended to
    parameters: dict[str, Any]  # the values used (enough to refit: bootstrap)
    note: str  # how the parameters were chosen, in sentences
    evidence: dict[str, Any] = field(default_factory=dict)  # e.g. BIC per k
    membership: np.ndarray | None = None  # GMM: customers x k probabilities (rows sum to 1)

    @property
    def unclustered(self) -> int:
        """Customers in no cluster."""
        return int((self.labels == NOISE).sum())

    @property
    def title(self) -> str:
        """The method's name for people."""
        return TITLES[self.method]


# ---------------------------------------------------------------------------------------------
# The methods


def cluster(
    method: str,
    coords: np.ndarray,
    cfg: SegmentationSection,
    k: int,
    seed: int,
    max_clusters: int = len(SEGMENT_NAMES),
) -> Clustering:
    """Cluster `coords` with `method`: parameters by the stated heuristics, then the fit.

    `k` is the number of segments for K-Means, agglomerative and spectral clustering (the
    Gaussian mixture takes it when segmentation.k is fixed); `max_clusters` is the number of
    names available: smaller clusters beyond it join their nearest kept cluster.
    """
    with _one_thread():
        params, note, evidence = _resolve(method, coords, cfg, k, seed)
        result = refit(method, coords, params, cfg, seed)
    labels, merged = _cap(result.labels, coords, max_clusters)
    if merged:
        note += (
            f" {merged} smaller cluster{'s' if merged > 1 else ''} beyond the {max_clusters} "
            "names available joined the nearest kept cluster."
        )
    membership = _merge_membership(result.membership, result.labels, labels)
    return Clustering(
        method, labels, _count(labels), result.fitted_on, params, note, evidence, membership
    )


def refit(
    method: str, coords: np.ndarray, params: Mapping[str, Any], cfg: SegmentationSection, seed: int
) -> Clustering:
    """Fit `method` with the given parameters (no choosing): the bootstrap refits use this."""
    opts = cfg.algorithm_options
    idx = _sample(len(coords), opts.sample_size, seed) if method in SAMPLED else None
    fit_coords = coords if idx is None else coords[idx]
    membership, core = None, None
    if method == "kmeans":
        labels = kmeans_model(params["k"], cfg.n_init, seed).fit(fit_coords).labels_
    elif method == "gmm":  # fitted on the k sweep's sample, then every customer is scored
        sample = coords[_fit_sample(len(coords), cfg, seed)]
        model = _gmm(params["k"], params["covariance"], cfg.n_init, seed).fit(sample)
        labels, membership = model.predict(fit_coords), model.predict_proba(fit_coords)
    else:
        labels, core = _fit_sampled(method, fit_coords, params, seed)
    if idx is not None and len(idx) < len(coords):
        labels = _extend(method, coords, idx, labels, params, core, opts.neighbors)
    labels, membership = _compact(np.asarray(labels, dtype=np.int64), membership)
    fitted = len(fit_coords)
    return Clustering(method, labels, _count(labels), fitted, dict(params), "", {}, membership)


def _resolve(
    method: str, coords: np.ndarray, cfg: SegmentationSection, k: int, seed: int
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The parameters of `method` on these coordinates, the sentence saying why, the evidence."""
    opts = cfg.algorithm_options
    fitted = min(len(coords), opts.sample_size) if method in SAMPLED else len(coords)
    if method == "gmm":
        return _choose_gmm_k(coords, cfg, seed)
    if method in ("kmeans", "agglomerative", "spectral"):
        params: dict[str, Any] = {"k": k}
        if method == "spectral":
            params["neighbors"] = min(opts.neighbors, fitted - 1)
        return params, f"k={k}, the number of segments chosen by the K-Means rule.", {}
    d = coords.shape[1]
    min_samples = 2 * d if opts.min_samples == "auto" else opts.min_samples
    min_samples = max(1, min(min_samples, fitted - 1))
    how = (
        f"min_samples={min_samples} (2 x {d} dimensions)"
        if opts.min_samples == "auto"
        else f"min_samples={min_samples} (configured)"
    )
    if method == "hdbscan":
        size, why = _min_cluster_size(opts.min_cluster_size, cfg.min_segment_share, fitted)
        return (
            {"min_cluster_size": size, "min_samples": min_samples},
            f"min_cluster_size={size} ({why}), {how}.",
            {},
        )
    eps, evidence = _dbscan_eps(coords, opts, min_samples, seed)
    return (
        {"eps": eps, "min_samples": min_samples},
        f"eps={eps:.3f} ({evidence['how']}), {how}.",
        evidence,
    )


def kmeans_model(k: int, n_init: int, seed: int) -> Any:  # an unfitted KMeans (Lloyd)
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=n_init, random_state=seed, algorithm="lloyd")


def _gmm(k: int, covariance: str, n_init: int, seed: int) -> Any:  # a GaussianMixture
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(
        n_components=k, covariance_type=covariance, n_init=n_init, random_state=seed
    )


def _choose_gmm_k(
    coords: np.ndarray, cfg: SegmentationSection, seed: int
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """k by the lowest BIC among the admissible k (fitted on the K-Means fit sample)."""
    from .segment import draw_samples

    covariance = cfg.algorithm_options.gmm_covariance
    if cfg.k != "auto":
        k = int(cfg.k)
        return (
            {"k": k, "covariance": covariance},
            f"k={k} is fixed in the configuration (segmentation.k).",
            {},
        )
    fit_idx, _ = draw_samples(len(coords), cfg, seed)
    sample = coords[fit_idx]
    low, high = max(cfg.k_range[0], cfg.min_k), min(cfg.k_range[1], cfg.max_k, len(SEGMENT_NAMES))
    rows = []
    for k in range(low, min(high, len(sample) - 1) + 1):
        model = _gmm(k, covariance, cfg.n_init, seed).fit(sample)
        share = np.bincount(model.predict(sample), minlength=k).min() / len(sample)
        rows.append(
            {
                "k": k,
                "bic": float(model.bic(sample)),
                "smallest_share": float(share),
                "admissible": bool(share >= cfg.min_segment_share),
            }
        )
    admissible = [r for r in rows if r["admissible"]] or rows
    best = min(admissible, key=lambda r: (r["bic"], r["k"]))
    limit = (
        f"whose smallest segment holds at least {cfg.min_segment_share:.0%} of customers"
        if admissible is not rows
        else "(none kept min_segment_share; all were considered)"
    )
    note = (
        f"k={best['k']} has the lowest BIC of the Gaussian mixtures ({covariance} covariance, "
        f"{cfg.n_init} restarts) with k in {low}..{high} {limit}."
    )
    return {"k": best["k"], "covariance": covariance}, note, {"bic_by_k": rows}


def _min_cluster_size(setting: int | str, share: float, fitted: int) -> tuple[int, str]:
    if setting != "auto":
        return int(setting), "configured"
    size = max(5, math.ceil(share * fitted))
    return size, f"min_segment_share {share:.0%} of the {fitted:,} customers fitted, at least 5"


def _dbscan_eps(
    coords: np.ndarray, opts: Any, min_samples: int, seed: int
) -> tuple[float, dict[str, Any]]:
    """eps: configured, or the knee of the sorted k-distance curve of the fit sample."""
    if opts.eps != "auto":
        return float(opts.eps), {"how": "configured"}
    from kneed import KneeLocator
    from sklearn.neighbors import NearestNeighbors

    sample = coords[_sample(len(coords), opts.sample_size, seed)]
    distances, _ = NearestNeighbors(n_neighbors=min_samples).fit(sample).kneighbors(sample)
    curve = np.sort(distances[:, -1])  # the point itself is its first neighbour, as in DBSCAN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kneed warns when it finds no knee
        knee = KneeLocator(
            np.arange(len(curve)), curve, curve="convex", direction="increasing"
        ).knee
    if knee is None:
        eps = float(np.quantile(curve, 0.95))
        how = f"no knee in the distances to the {min_samples}th neighbour: their 95th percentile"
    else:
        eps = float(curve[int(knee)])
        how = (
            f"the knee of the sorted distances to each customer's {min_samples}th neighbour, "
            f"at the {int(knee) + 1:,}th of {len(curve):,}"
        )
    knee_index = None if knee is None else int(knee)
    return max(eps, 1e-9), {"how": how, "knee_index": knee_index, "customers": len(curve)}


def _fit_sampled(
    method: str, coords: np.ndarray, params: Mapping[str, Any], seed: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels of the sampled customers, and DBSCAN's core customers (None for the others)."""
    from sklearn.cluster import DBSCAN, HDBSCAN, AgglomerativeClustering, SpectralClustering

    n = len(coords)
    if method == "dbscan":
        model = DBSCAN(eps=params["eps"], min_samples=params["min_samples"]).fit(coords)
        core = np.zeros(n, dtype=bool)
        core[model.core_sample_indices_] = True
        return model.labels_, core
    if method == "hdbscan":
        size = min(params["min_cluster_size"], n)
        model = HDBSCAN(
            min_cluster_size=max(size, 2), min_samples=min(params["min_samples"], n - 1), copy=True
        ).fit(coords)
        return model.labels_, None
    k = min(params["k"], n)
    if method == "agglomerative":
        return AgglomerativeClustering(n_clusters=k, linkage="ward").fit(coords).labels_, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "graph is not fully connected": the result still holds
        model = SpectralClustering(
            n_clusters=k,
            affinity="nearest_neighbors",
            n_neighbors=min(params["neighbors"], n - 1),
            assign_labels="cluster_qr",
            random_state=seed,
        ).fit(coords)
    return model.labels_, None


def _extend(
    method: str,
    coords: np.ndarray,
    idx: np.ndarray,
    sample_labels: np.ndarray,
    params: Mapping[str, Any],
    core: np.ndarray | None,
    neighbors: int,
) -> np.ndarray:
    """Labels for every customer from the labels of the sampled ones (see the module doc)."""
    from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

    labels = np.full(len(coords), NOISE, dtype=np.int64)
    labels[idx] = sample_labels
    rest = np.setdiff1d(np.arange(len(coords)), idx)
    if method == "dbscan":
        if core is None or not core.any():
            return labels
        distance, nearest = (
            NearestNeighbors(n_neighbors=1).fit(coords[idx][core]).kneighbors(coords[rest])
        )
        core_labels = sample_labels[core][nearest[:, 0]]
        labels[rest] = np.where(distance[:, 0] <= params["eps"], core_labels, NOISE)
        return labels
    if method == "hdbscan":
        labels[rest] = _extend_hdbscan(
            coords[idx], sample_labels, coords[rest], params["min_samples"]
        )
        return labels
    votes = min(neighbors, len(idx))
    labels[rest] = (
        KNeighborsClassifier(n_neighbors=votes)
        .fit(coords[idx], sample_labels)
        .predict(coords[rest])
    )
    return labels


def _extend_hdbscan(
    sample: np.ndarray, sample_labels: np.ndarray, rest: np.ndarray, min_samples: int
) -> np.ndarray:
    """The nearest sampled customer's group, for customers as dense as its sampled members."""
    from sklearn.neighbors import NearestNeighbors

    m = max(2, min(min_samples, len(sample)))
    near = NearestNeighbors(n_neighbors=m).fit(sample)
    core = near.kneighbors(sample)[0][:, -1]  # m-1 other sampled customers (the first is itself)
    distance, nearest = near.kneighbors(rest, n_neighbors=m - 1)
    own_core = distance[:, -1]  # the same count of sampled neighbours
    limit = np.zeros(int(sample_labels.max(initial=-1)) + 1)
    for label in range(len(limit)):
        limit[label] = core[sample_labels == label].max(initial=0.0)
    group = sample_labels[nearest[:, 0]]
    dense = (group != NOISE) & (own_core <= limit[np.maximum(group, 0)])
    return np.where(dense, group, NOISE)


# ---------------------------------------------------------------------------------------------
# Labels


def _one_thread() -> Any:  # a context manager
    """BLAS/OpenMP on one thread (as segment.py): same numbers everywhere, and no threads
    spinning against a busy machine (a Gaussian mixture ran 10x slower without it)."""
    import sklearn.cluster  # noqa: F401  (load the native pools first: only loaded ones are pinned)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _fit_sample(n: int, cfg: SegmentationSection, seed: int) -> np.ndarray:
    """segment.py's seeded fit sample (the k sweep's): at most fit_sample_size customers."""
    from .segment import draw_samples

    return draw_samples(n, cfg, seed)[0]


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    """A seeded sample of at most `size` of n rows, as sorted indices."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 3]).choice(n, size=size, replace=False))


def _count(labels: np.ndarray) -> int:
    return len(np.unique(labels[labels != NOISE]))


def _compact(
    labels: np.ndarray, membership: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Clusters numbered 0..k-1 in the order of their old numbers (empty ones dropped)."""
    present = np.unique(labels[labels != NOISE])
    mapping = np.full(int(labels.max(initial=0)) + 2, NOISE, dtype=np.int64)
    mapping[present] = np.arange(len(present))
    out = np.where(labels == NOISE, NOISE, mapping[np.where(labels == NOISE, 0, labels)])
    if membership is not None:
        membership = membership[:, present]
        membership = membership / membership.sum(axis=1, keepdims=True)
    return out, membership


def _cap(labels: np.ndarray, coords: np.ndarray, limit: int) -> tuple[np.ndarray, int]:
    """At most `limit` clusters: the smallest beyond it join the nearest kept cluster."""
    from scipy.spatial.distance import cdist

    clusters, sizes = np.unique(labels[labels != NOISE], return_counts=True)
    if len(clusters) <= limit:
        return labels, 0
    order = clusters[np.lexsort((clusters, -sizes))]  # largest first; ties by number
    kept, dropped = np.sort(order[:limit]), order[limit:]
    centers = np.array([coords[labels == c].mean(axis=0) for c in kept])
    out = labels.copy()
    for c in dropped:
        mask = labels == c
        out[mask] = kept[int(cdist(coords[mask].mean(axis=0)[None], centers).argmin())]
    return _compact(out, None)[0], len(dropped)


def _merge_membership(
    membership: np.ndarray | None, before: np.ndarray, after: np.ndarray
) -> np.ndarray | None:
    """Membership columns summed as clusters were merged by `_cap`."""
    if membership is None:
        return None
    k = _count(after)
    out = np.zeros((len(after), k))
    for old in range(membership.shape[1]):
        new = np.unique(after[before == old])
        out[:, int(new[0]) if len(new) else 0] += membership[:, old]
    return out


def member_means(coords: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """The mean coordinates of each cluster's customers (k x dimensions)."""
    return np.array([coords[labels == c].mean(axis=0) for c in range(k)])


def grid_names(scored: pl.DataFrame) -> list[str]:
    """The RFM grid names of the scored customers: the 11 in their order, then any others."""
    present = set(scored["rfm_grid_segment"].unique().to_list())
    known = [n for n in SEGMENT_NAMES if n in present]
    return known + sorted(present - set(known))


def segment_names(
    labels: np.ndarray, coords: np.ndarray, grid: pl.Series, names: list[str]
) -> np.ndarray:
    """Each customer's segment name: clusters named by segment.name_clusters, noise Unclustered."""
    from .segment import name_clusters

    k = _count(labels)
    out = np.full(len(labels), UNCLUSTERED, dtype=object)
    if k == 0:
        return out
    named = name_clusters(member_means(coords, labels, k), coords, grid, names)
    by_label = np.array(named.names, dtype=object)[named.order]
    clustered = labels != NOISE
    out[clustered] = by_label[labels[clustered]]
    return out


# ---------------------------------------------------------------------------------------------
# Stability


def bootstrap_ari(
    result: Clustering, coords: np.ndarray, cfg: SegmentationSection, seed: int
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Refit on `stability_seeds` bootstrap samples (their distinct customers) with the same
    parameters; the adjusted Rand index against `result.labels` on the customers each holds.

    Samples are drawn from the k sweep's seeded sample (at most fit_sample_size customers), as
    segment.measure_stability refits on it: the cost does not grow with the customer count.
    """
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng([seed, 2])
    seeds = tuple(int(s) for s in rng.integers(0, 2**31 - 1, size=cfg.stability_seeds))
    base = _fit_sample(len(coords), cfg, seed)
    scores = []
    with _one_thread():
        for s in seeds:
            picks = np.random.default_rng(s).integers(0, len(base), size=len(base))
            drawn = np.unique(base[picks])
            again = refit(result.method, coords[drawn], result.parameters, cfg, s)
            scores.append(float(adjusted_rand_score(result.labels[drawn], again.labels)))
    return seeds, tuple(scores)


def stability_of(
    result: Clustering, coords: np.ndarray, cfg: SegmentationSection, seed: int
) -> Stability:
    """The bootstrap stability as segment.Stability, with its sentence."""
    from .segment import STABILITY_THRESHOLD, Stability

    seeds, ari = bootstrap_ari(result, coords, cfg, seed)
    mean, low = float(np.mean(ari)), float(np.min(ari))
    stable = mean >= STABILITY_THRESHOLD
    note = (
        f"Refitted on {len(seeds)} bootstrap samples of the customers with the same "
        f"parameters, {result.title} agrees with these segments at an adjusted Rand index of "
        f"{mean:.2f} on average (lowest {low:.2f})"
    )
    note += (
        "; they hardly depend on which customers are in the data."
        if stable
        else f", below {STABILITY_THRESHOLD}: the segments depend on chance more than they should; "
        "treat their borders with caution."
    )
    return Stability(seeds, ari, mean, low, stable, note)


# ---------------------------------------------------------------------------------------------
# The hook of segment.py: another algorithm's labels for the segments the report acts on


@dataclass(frozen=True, eq=False)
class FinalModel:
    """The attributes of a fitted KMeans that segment.py reads, for any method's labels."""

    labels_: np.ndarray  # Unclustered folded in as the last label
    cluster_centers_: np.ndarray  # mean scaled features of each label's customers
    inertia_: float


@dataclass(frozen=True, eq=False)
class FinalAssignment:
    """What segment.py needs to act on another algorithm's (or another space's) clusters."""

    model: FinalModel
    choice: KChoice
    stability: Stability
    algorithm: str
    note: str
    unclustered_label: int | None
    membership: np.ndarray | None  # customers x clusters, in the model's label order
    plays: dict[str, Play]

    def names_kept(self, kept: Mapping[int, str]) -> dict[int, str]:
        """Names fixed before naming: the previous run's matches, and Unclustered for noise."""
        noise = self.unclustered_label
        out = {c: n for c, n in kept.items() if n != UNCLUSTERED and c != noise}
        return out if noise is None else out | {noise: UNCLUSTERED}


def final_assignment(
    cfg: SegmentationSection,
    coords: np.ndarray,
    space: Space | None,
    choice: KChoice,
    seed: int,
    names: int,
) -> FinalAssignment:
    """Cluster with `cfg.algorithm` (in `space` when given, else `coords`) for segment.py.

    Centroids, inertia and names stay in `coords` (the segmentation's transform), so segments
    are described the same way whatever clustered them.
    """
    where = coords if space is None else space.coords
    started = time.perf_counter()
    result = cluster(cfg.algorithm, where, cfg, choice.k, seed, names)
    if result.k == 0:
        raise ConfigError(
            f"segmentation.algorithm {cfg.algorithm}: every customer is noise with {result.note} "
            "Set segmentation.algorithm_options (eps, min_samples, min_cluster_size) or choose "
            "another algorithm"
        )
    stability = stability_of(result, where, cfg, seed)
    log.info(
        "%s: %d clusters, %d unclustered, in %.1f s",
        result.title,
        result.k,
        result.unclustered,
        time.perf_counter() - started,
    )
    labels, noise = _fold_noise(result.labels, result.k)
    k_all = result.k + (noise is not None)
    centers = member_means(coords, labels, k_all)
    inertia = float(((coords - centers[labels]) ** 2).sum())
    plays = {UNCLUSTERED: UNCLUSTERED_PLAY} if noise is not None else {}
    return FinalAssignment(
        FinalModel(labels, centers, inertia),
        _final_choice(result, choice, space),
        stability,
        cfg.algorithm,
        _final_note(result, space),
        noise,
        result.membership,
        plays,
    )


def _fold_noise(labels: np.ndarray, k: int) -> tuple[np.ndarray, int | None]:
    if not (labels == NOISE).any():
        return labels, None
    return np.where(labels == NOISE, k, labels), k


def _space_words(space: Space | None) -> str:
    return "the segmentation features" if space is None else space.description


def _final_note(result: Clustering, space: Space | None) -> str:
    extended = (
        ""
        if result.fitted_on == len(result.labels)
        else (
            f" Fitted on a seeded sample of {result.fitted_on:,} customers and extended to all "
            f"{len(result.labels):,}."
        )
    )
    # the mixture's note says how k was chosen: the "k = ..." paragraph carries it (_final_choice)
    how = "." if result.method == "gmm" else f": {result.note}"
    return f"{DESCRIPTIONS[result.method]}, on {_space_words(space)}{how}{extended}"


def _final_choice(result: Clustering, kmeans: KChoice, space: Space | None) -> KChoice:
    from .segment import KChoice

    title = result.title
    if result.method in DENSITY:
        none = result.unclustered
        groups = f"{result.k} group{'s' if result.k != 1 else ''}"
        reason = (
            f"{title} found {groups} ({result.note.rstrip('.')}); {none:,} "
            f"customers ({none / len(result.labels):.1%}) are in none and form the "
            f"{UNCLUSTERED} group."
        )
        return KChoice(result.k, "density", reason, kmeans.best, kmeans.disagreement)
    if result.method == "gmm":
        return KChoice(result.k, "bic", result.note, kmeans.best, kmeans.disagreement)
    reason = f"{kmeans.reason} {title} on {_space_words(space)} then used that k."
    return dataclasses.replace(kmeans, k=result.k, reason=reason)


def membership_frame(
    customer_ids: pl.Series, membership: np.ndarray, order: np.ndarray, names: Sequence[str]
) -> pl.DataFrame:
    """customer_id and one `membership_<segment>` column per cluster (probabilities, 6 decimals).

    `order` maps the model's labels to the segment labels (segment.py's naming order).
    """
    by_segment = membership[:, np.argsort(order)[: membership.shape[1]]]
    columns = {
        f"membership_{_slug(names[j])}": np.round(by_segment[:, j], 6)
        for j in range(by_segment.shape[1])
    }
    return pl.DataFrame({"customer_id": customer_ids, **columns})


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower().replace("'", "")).strip("_")
