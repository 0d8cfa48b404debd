"""The queries over the kept purchase lines that stages after RFM need, collected by the RFM
stage with its own once duplicates are settled (so the lines are read once more, not once per
stage): the customer graph's (customer, product) pairs and product names (graph.enabled), and
the extended representation's basket sizes and spend shares per customer
(representation.features: extended).

They live apart from `graph` and `representation` so that the RFM stage does not import what
those stages compute with (numpy, the segmentation): reading the transactions starts sooner.
"""

from __future__ import annotations

import polars as pl

from .clean import IS_RETURN, REASON, Cleaned
from .config import Config
from .errors import InputDataError
from .read import SOURCE_PREFIX
from .rfm import within_customer

PAIRS_QUERY, PRODUCTS_QUERY = "graph_pairs", "graph_products"
BASKET = "repr_basket"
SHARE_PREFIX = "repr_share:"


def line_queries(cleaned: Cleaned, config: Config) -> dict[str, pl.LazyFrame]:
    """Every query over the purchase lines the config asks for; {} when it asks for none."""
    return graph_queries(cleaned, config) | representation_queries(cleaned, config)


def graph_queries(cleaned: Cleaned, config: Config) -> dict[str, pl.LazyFrame]:
    """Unique (customer_id, product_id) pairs of kept purchase lines, and product names."""
    cfg = config.graph
    if not cfg.enabled or config.input.columns.product_id is None:
        return {}
    lines = cleaned.frame.filter(
        pl.col(REASON).is_null() & ~pl.col(IS_RETURN) & pl.col("product_id").is_not_null()
    )
    # numeric ids may be read as integers; the RFM table (and every export) holds them as text
    pairs = lines.select(
        pl.col("customer_id").cast(pl.String), pl.col("product_id").cast(pl.String)
    )
    queries = {PAIRS_QUERY: pairs.unique()}
    if cfg.description_column is not None:
        _check_description_column(cfg.description_column, cleaned)
        text = pl.col(SOURCE_PREFIX + cfg.description_column).cast(pl.String).str.strip_chars()
        queries[PRODUCTS_QUERY] = lines.group_by("product_id").agg(
            # the most frequent name of a product (ties: the first in sort order)
            text.drop_nulls().mode().sort().first().alias("description")
        )
    return queries


def _check_description_column(column: str, cleaned: Cleaned) -> None:
    source = cleaned.transactions.source
    if column not in source.columns:
        raise InputDataError(
            f"{source.location}: graph.description_column {column!r} is not a column of the "
            f"data (it has: {', '.join(source.columns)}); fix the name or set it to null"
        )


def share_columns(config: Config) -> list[str]:
    """The attribute columns whose spend shares are features."""
    rep = config.representation
    return list(config.input.attributes if rep.share_columns is None else rep.share_columns)


def representation_queries(cleaned: Cleaned, config: Config) -> dict[str, pl.LazyFrame]:
    """Basket sizes and spend shares per customer (kept purchase lines); {} unless extended."""
    if config.representation.features != "extended":
        return {}
    purchases = cleaned.frame.filter(pl.col(REASON).is_null() & ~pl.col(IS_RETURN))
    customer = pl.col("customer_id").cast(pl.String)  # numeric ids become text, as in the RFM table
    queries = {}
    if config.input.columns.product_id is not None:
        # an order within a customer: its id, or without ids, the day (as rfm_query groups)
        orders = purchases.group_by("customer_id", within_customer(cleaned)).agg(
            pl.col("product_id").drop_nulls().n_unique().alias("products")
        )
        queries[BASKET] = orders.group_by(customer).agg(
            pl.col("products").mean().alias("basket_size")
        )
    for column in share_columns(config):
        queries[SHARE_PREFIX + column] = purchases.group_by(
            customer, pl.col(column).cast(pl.String).alias("value")
        ).agg(pl.col("amount_minor").sum().alias("spend_minor"))
    return queries


def representation_frames(results: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """The collected frames of `representation_queries` from the pipeline's results."""
    return {k: v for k, v in results.items() if k == BASKET or k.startswith(SHARE_PREFIX)}
