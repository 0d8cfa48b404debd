"""Customer representations beyond RFM: extended features, an autoencoder embedding, spaces.

`representation.features: extended` builds, per scored customer (DESIGN.md section 2 gives the
RFM definitions):
- recency_days, frequency, monetary, tenure_days, avg_order_value (from the RFM table);
- days_between_orders: tenure_days / (frequency - 1), the mean gap between orders; a customer
  with one order gets tenure_days (the gap after that order is at least that long);
- return_rate (returned value / gross purchases; 0 when nothing was bought back);
- basket_size: the mean number of distinct products per order (when input.columns.product_id
  is mapped);
- spend shares: for each column of `share_columns` (default every input.attribute), the share
  of the customer's spend per value, for the `share_top` values with the most spend overall,
  and the rest as `other`.
The basket sizes and spend shares come from lazy per-customer queries over the kept purchase
lines, collected by the RFM stage once duplicates are settled
(`purchase_lines.representation_queries`).
Skewed counts and amounts get log1p, then every feature is standardized; a constant feature is
left out (and said so).

The embedding is a small autoencoder (features -> hidden -> bottleneck -> hidden -> features,
tanh), a scikit-learn MLPRegressor trained on the CPU on a seeded sample to reproduce its
input; the bottleneck activations of every customer are their coordinates. The segmentation
can cluster in either space (`cluster_on`); segments are still described in RFM terms.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from .config import Config, EmbeddingOptions
from .errors import ConfigError
from .purchase_lines import BASKET, SHARE_PREFIX, share_columns
from .rfm import RfmTable
from .segment import feature_matrix, fit_transform

log = logging.getLogger(__name__)

# adam at 0.01 (scikit-learn's default is 0.001): on the sample data 100 epochs reach R^2 ~0.85
# in ~3 s, where 0.001 needs 300 epochs for ~0.75
LEARNING_RATE = 0.01
_LOG_FEATURES = (
    "recency_days",
    "frequency",
    "monetary",
    "tenure_days",
    "avg_order_value",
    "days_between_orders",
    "basket_size",
)
DEFINITIONS = {
    "recency_days": "Days from the last order to the as-of date.",
    "frequency": "Orders in the period.",
    "monetary": "Spend in the period.",
    "tenure_days": "Days from the first order (all history) to the as-of date.",
    "avg_order_value": "Spend per order.",
    "days_between_orders": "tenure_days / (orders - 1); one-order customers: tenure_days.",
    "return_rate": "Returned value / gross purchases (0 when nothing was returned).",
    "basket_size": "Mean number of distinct products per order.",
}


@dataclass(frozen=True, eq=False)
class Space:
    """Coordinates of the scored customers (rows in `rfm.scored` order) in one representation."""

    name: str  # rfm, extended or embedding
    columns: tuple[str, ...]
    coords: np.ndarray
    description: str  # for sentences: "the 3-dimensional autoencoder embedding of ..."


@dataclass(frozen=True, eq=False)
class Embedding:
    """The trained autoencoder's space and how well it reproduces its input."""

    space: Space
    inputs: tuple[str, ...]
    dimensions: int
    hidden: int
    trained_on: int
    iterations: int
    converged: bool
    loss: float  # final training loss (half the mean squared error, scikit-learn's definition)
    reconstruction_r2: float  # R^2 of the reconstruction of every customer's input, averaged


@dataclass(frozen=True, eq=False)
class Representation:
    """The features of the scored customers, their standardized space and the embedding."""

    features: pl.DataFrame  # customer_id + every feature in original units (money in currency)
    space: Space  # the features, log1p where skewed, standardized
    embedding: Embedding | None
    cluster_on: str  # rfm, extended or embedding
    dropped: tuple[str, ...] = ()  # constant features left out of the space
    definitions: dict[str, str] = field(default_factory=dict)

    @property
    def clustered(self) -> Space | None:
        """The space the segments are clustered in; None: the segmentation's own features."""
        if self.cluster_on == "embedding" and self.embedding is not None:
            return self.embedding.space
        return self.space if self.cluster_on == "extended" else None

    @property
    def compared(self) -> Space:
        """The space compared with RFM: the embedding if trained, else the features."""
        return self.embedding.space if self.embedding is not None else self.space


# ---------------------------------------------------------------------------------------------
# Building the representation


def build_representation(
    rfm: RfmTable, extras: dict[str, pl.DataFrame], config: Config
) -> Representation | None:
    """The representation the config asks for; None when it asks for nothing beyond RFM."""
    rep = config.representation
    if rep.features == "rfm" and not rep.embedding.enabled:
        return None
    import sklearn.neural_network  # noqa: F401  (load its native pools before pinning them)
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    with threadpool_limits(limits=1):  # one thread: same numbers on every machine, and fast
        if rep.features == "extended":
            features = extended_features(rfm, extras, config)
            space, dropped = standardized_space(features)
        else:
            features, space, dropped = _rfm_space(rfm, config)
        embedding = (
            train_embedding(space, rep.embedding, config.seed) if rep.embedding.enabled else None
        )
    log.info("representation built in %.1f s", time.perf_counter() - started)
    definitions = {c: DEFINITIONS.get(c, _share_definition(c)) for c in features.columns[1:]}
    return Representation(features, space, embedding, rep.cluster_on, dropped, definitions)


def _rfm_space(rfm: RfmTable, config: Config) -> tuple[pl.DataFrame, Space, tuple[str, ...]]:
    """The segmentation's own features and transform, as a space."""
    names = tuple(config.segmentation.features)
    raw = feature_matrix(rfm.scored, names, rfm.minor_digits)
    transform, _ = fit_transform(raw, config.segmentation)
    frame = pl.DataFrame(
        {"customer_id": rfm.scored["customer_id"], **{n: raw[:, j] for j, n in enumerate(names)}}
    )
    return frame, Space("rfm", names, transform.apply(raw), f"the features {', '.join(names)}"), ()


def extended_features(
    rfm: RfmTable, extras: dict[str, pl.DataFrame], config: Config
) -> pl.DataFrame:
    """customer_id and every extended feature of the scored customers (money in currency)."""
    scale = 10**rfm.minor_digits
    frequency, tenure = pl.col("frequency"), pl.col("tenure_days").cast(pl.Float64)
    frame = rfm.scored.select(
        "customer_id",
        pl.col("recency_days").cast(pl.Float64),
        frequency.cast(pl.Float64),
        (pl.col("monetary_minor") / scale).alias("monetary"),
        tenure.alias("tenure_days"),
        (pl.col("avg_order_value_minor") / scale).alias("avg_order_value"),
        pl.when(frequency > 1)
        .then(tenure / (frequency - 1))
        .otherwise(tenure)
        .alias("days_between_orders"),
        pl.col("return_rate").fill_null(0.0),
    )
    if BASKET in extras:
        frame = frame.join(extras[BASKET], on="customer_id", how="left").with_columns(
            pl.col("basket_size").fill_null(pl.col("basket_size").median())
        )
    for column in share_columns(config):
        shares = spend_shares(
            extras[SHARE_PREFIX + column],
            frame["customer_id"],
            column,
            config.representation.share_top,
        )
        frame = frame.join(shares, on="customer_id", how="left").fill_null(0.0)
    return frame


def spend_shares(long: pl.DataFrame, customers: pl.Series, column: str, top: int) -> pl.DataFrame:
    """customer_id and the share of spend per value of `column` (the `top` values with the most
    spend over these customers; the rest, nulls included, as `other`)."""
    long = long.filter(pl.col("customer_id").is_in(customers.implode()))
    totals = long.group_by("value").agg(pl.col("spend_minor").sum()).drop_nulls("value")
    kept = totals.sort(["spend_minor", "value"], descending=[True, False])["value"].head(top)
    bucket = pl.when(pl.col("value").is_in(kept.implode())).then("value").otherwise(pl.lit("other"))
    grouped = long.group_by("customer_id", bucket.alias("bucket")).agg(pl.col("spend_minor").sum())
    grouped = grouped.with_columns(
        (pl.col("spend_minor") / pl.col("spend_minor").sum().over("customer_id")).alias("share")
    )
    wide = grouped.pivot(on="bucket", index="customer_id", values="share").fill_null(0.0)
    order = [v for v in [*kept.to_list(), "other"] if v in wide.columns]
    return wide.select("customer_id", *[pl.col(v).alias(f"share_{column}={v}") for v in order])


def _share_definition(column: str) -> str:
    attribute, _, value = column.removeprefix("share_").partition("=")
    return f"Share of the customer's spend with {attribute} {value}."


def standardized_space(features: pl.DataFrame) -> tuple[Space, tuple[str, ...]]:
    """log1p for skewed counts and amounts, then z-scores; constant features are left out."""
    names = features.columns[1:]
    values = features.select(names).to_numpy().astype(np.float64)
    logged = [j for j, n in enumerate(names) if n in _LOG_FEATURES]
    values[:, logged] = np.log1p(np.clip(values[:, logged], 0, None))
    spread = values.std(axis=0)
    keep = spread > 0
    dropped = tuple(n for n, k in zip(names, keep, strict=True) if not k)
    coords = (values[:, keep] - values[:, keep].mean(axis=0)) / spread[keep]
    columns = tuple(n for n, k in zip(names, keep, strict=True) if k)
    return Space("extended", columns, coords, f"the {len(columns)} extended features"), dropped


# ---------------------------------------------------------------------------------------------
# The autoencoder


def train_embedding(space: Space, opts: EmbeddingOptions, seed: int) -> Embedding:
    """Train the autoencoder on a seeded sample of `space`; embed every customer."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    inputs = space.coords.shape[1]
    if opts.dimensions >= inputs:
        raise ConfigError(
            f"representation.embedding.dimensions is {opts.dimensions}, but the embedding "
            f"compresses only {inputs} features ({', '.join(space.columns)}): set it below "
            f"{inputs}, or set representation.features: extended for more features"
        )
    idx = _sample(len(space.coords), opts.sample_size, seed)
    train = space.coords[idx]
    net = MLPRegressor(
        hidden_layer_sizes=(opts.hidden, opts.dimensions, opts.hidden),
        activation="tanh",
        solver="adam",
        learning_rate_init=LEARNING_RATE,
        max_iter=opts.max_iter,
        tol=1e-4,
        n_iter_no_change=10,
        batch_size=min(256, len(train)),
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported as `converged` instead
        net.fit(train, train)
    codes = encode(net, space.coords)
    columns = tuple(f"embedding_{i + 1}" for i in range(opts.dimensions))
    described = f"the {opts.dimensions}-dimensional autoencoder embedding of {space.description}"
    return Embedding(
        Space("embedding", columns, codes, described),
        space.columns,
        opts.dimensions,
        opts.hidden,
        len(idx),
        int(net.n_iter_),
        net.n_iter_ < opts.max_iter,
        float(net.loss_),
        float(net.score(space.coords, space.coords)),
    )


def encode(net: Any, coords: np.ndarray) -> np.ndarray:  # net: a fitted MLPRegressor
    """The bottleneck activations of a fitted (hidden, bottleneck, hidden) MLPRegressor."""
    values = coords
    for weights, bias in zip(net.coefs_[:2], net.intercepts_[:2], strict=True):
        values = np.tanh(values @ weights + bias)
    return values


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 5]).choice(n, size=size, replace=False))


def describe(rep: Representation) -> str:
    """One sentence on the representation, for notes and logs."""
    emb = rep.embedding
    text = f"{len(rep.space.columns)} features ({', '.join(rep.space.columns)})"
    if emb is not None:
        fit = "converged" if emb.converged else "stopped at max_iter"
        text += (
            f"; a {emb.dimensions}-dimensional autoencoder trained on {emb.trained_on:,} "
            f"customers ({emb.iterations} epochs, {fit}) reproduces them with R^2 "
            f"{emb.reconstruction_r2:.2f}"
        )
    return text
