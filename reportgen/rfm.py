"""RFM per customer: recency, frequency, monetary, returns and tenure, scores 1-5 and the grid.

Definitions (DESIGN.md section 2):
- recency_days: whole calendar days from the last purchase to as_of (0 = bought on as_of);
- frequency: distinct orders in the period with a positive value;
- monetary: total spend in the period (integer minor units, so sums are exact), or the mean
  order value; with `returns: net` the returned value is subtracted;
- first_order and tenure_days look at all history up to as_of, not only the window;
- score = 1 + floor(5 L / n), L = customers with a strictly worse value, n = scored customers:
  ties share a score and nothing depends on row order.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import polars as pl

from .clean import AS_OF, IS_RETURN, REASON, Cleaned
from .config import RfmSection
from .grid import SegmentMap
from .period import window_start

log = logging.getLogger(__name__)

EXCLUDED_NON_POSITIVE = "Excluded: non-positive spend"
SCORE_FEATURES = {"r_score": "recency_days", "f_score": "frequency", "m_score": "monetary_minor"}


@dataclass(frozen=True)
class RfmTable:
    """One row per customer in the period, sorted by customer_id."""

    frame: pl.DataFrame
    as_of: dt.date | None  # None only for an empty table, which the RFM stage refuses
    window_start: dt.date | None
    minor_digits: int
    monetary_definition: str

    @property
    def scored(self) -> pl.DataFrame:
        """The customers with a positive spend (the ones scored and segmented)."""
        return self.frame.filter(pl.col("r_score").is_not_null())


def order_query(groups: pl.LazyFrame, cleaned: Cleaned) -> pl.LazyFrame:
    """Lazy per-order aggregates of the lines RFM and the monthly EDA read.

    `groups` is clean.line_groups (rows already summed per customer, order, day, rule and
    return flag). An order is an order id (or without ids a customer's day) within a customer.
    """
    lines = groups.filter(
        pl.col(REASON).is_null() | pl.col(REASON).is_in(["before_window", "cancellation"])
    ).with_columns(_line_flags(cleaned))
    money, date = pl.col("amount_minor"), pl.col("order_date")
    # Masked columns and plain aggregates (not filtered ones) keep the streaming engine's fast
    # group-by: sum, min, max and any skip the nulls.
    return lines.group_by("customer_id", within_customer(cleaned)).agg(
        pl.when("_kept").then(money).sum().alias("value"),
        pl.when("_purchase").then(money).sum().alias("gross"),
        pl.when("_returned").then(-money).sum().alias("returned"),
        pl.when("_purchase").then(date).max().alias("last_purchase"),
        pl.when("_purchase").then(date).min().alias("first_purchase"),
        pl.when("_history").then(date).min().alias("first_history"),
        pl.col("_kept").any().alias("kept"),
        *[pl.col(a).min() for a in cleaned.transactions.attributes],
    )


def rfm_query(orders: pl.LazyFrame, cleaned: Cleaned) -> pl.LazyFrame:
    """Lazy per-customer aggregates (unscored) from `order_query`: orders -> customers."""
    attributes = cleaned.transactions.attributes
    return orders.group_by("customer_id").agg(
        ((pl.col("value") > 0) & pl.col("kept")).sum().cast(pl.Int64).alias("frequency"),
        pl.col("value").sum().alias("monetary_minor"),
        pl.col("gross").sum().alias("gross_minor"),
        pl.col("returned").sum().alias("returned_value_minor"),
        pl.col("last_purchase").max().alias("last_order"),
        pl.col("first_history").min().alias("first_order"),
        pl.col("first_purchase").min(),  # for the monthly count of new customers
        pl.col("kept").any().alias("_in_period"),
        pl.lit(cleaned.as_of, dtype=pl.Date).alias(AS_OF),
        *[pl.col(a).drop_nulls().mode().sort().first() for a in attributes],
    )


def within_customer(cleaned: Cleaned) -> str:
    """What tells a customer's orders apart: the order id, or without ids the day."""
    return "order_id" if cleaned.transactions.has_order_id else "order_date"


def _line_flags(cleaned: Cleaned) -> list[pl.Expr]:
    reason, is_return, date = pl.col(REASON), pl.col(IS_RETURN), pl.col("order_date")
    as_of = cleaned.as_of
    in_period = date <= pl.lit(as_of, dtype=pl.Date)
    start = window_start(as_of, cleaned.window_days) if as_of is not None else None
    if start is not None:
        in_period &= date >= pl.lit(start, dtype=pl.Date)
    kept = reason.is_null()
    return [
        kept.alias("_kept"),
        (kept & ~is_return).alias("_purchase"),
        (is_return & in_period & (kept | (reason == "cancellation"))).alias("_returned"),
        (~is_return & (kept | (reason == "before_window"))).alias("_history"),
    ]


def finish_rfm(
    aggregates: pl.DataFrame, cfg: RfmSection, segment_map: SegmentMap, minor_digits: int,
    window_start: dt.date | None,
) -> RfmTable:  # fmt: skip
    """Derive recency, tenure and returns, score, and name each customer's grid cell."""
    frame = aggregates.filter(pl.col("_in_period")).drop(
        "_in_period", "first_purchase", strict=False
    )
    frame = frame.with_columns(pl.col("customer_id").cast(pl.String))  # numeric ids become text
    as_of = frame[AS_OF][0] if frame.height else None
    frame = _derive(frame, cfg).drop(AS_OF)
    frame = _score(frame)
    frame = _grid(frame.sort("customer_id"), segment_map)
    return RfmTable(frame, as_of, window_start, minor_digits, cfg.monetary)


def _derive(frame: pl.DataFrame, cfg: RfmSection) -> pl.DataFrame:
    as_of = pl.col(AS_OF)
    avg = _divide_rounded(pl.col("monetary_minor"), pl.col("frequency"))
    frame = frame.with_columns(
        pl.col("monetary_minor").alias("revenue_minor"),  # total spend, whatever monetary means
        (as_of - pl.col("last_order")).dt.total_days().cast(pl.Int64).alias("recency_days"),
        (as_of - pl.col("first_order")).dt.total_days().cast(pl.Int64).alias("tenure_days"),
        avg.alias("avg_order_value_minor"),
        pl.when(pl.col("gross_minor") > 0)
        .then(pl.col("returned_value_minor") / pl.col("gross_minor"))
        .alias("return_rate"),
    )
    if cfg.monetary == "mean_order":
        frame = frame.with_columns(pl.col("avg_order_value_minor").alias("monetary_minor"))
    return frame


def _divide_rounded(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """Integer division rounded half to even, null when dividing by zero."""
    exact = numerator.cast(pl.Float64) / denominator
    return pl.when(denominator > 0).then(exact.round(0, mode="half_to_even").cast(pl.Int64))


def _score(frame: pl.DataFrame) -> pl.DataFrame:
    """Scores over the customers with a positive spend; the others get null scores."""
    eligible = (pl.col("monetary_minor") > 0) & (pl.col("frequency") > 0)
    n = frame.select(eligible.sum()).item()
    better_when_higher = {
        "r_score": -pl.col("recency_days"),  # fewer days is better
        "f_score": pl.col("frequency"),
        "m_score": pl.col("monetary_minor"),
    }
    return frame.with_columns(
        _score_expr(pl.when(eligible).then(key), n).alias(name)
        for name, key in better_when_higher.items()
    )


def _score_expr(key: pl.Expr, n: int) -> pl.Expr:
    """1 + floor(5 L / n) with L = how many non-null keys are strictly lower (nulls stay null)."""
    strictly_lower = key.rank("min").cast(pl.Int64) - 1
    return (1 + (5 * strictly_lower) // max(n, 1)).cast(pl.Int8)


def _grid(frame: pl.DataFrame, segment_map: SegmentMap) -> pl.DataFrame:
    """Each customer's grid cell: name and code, looked up in the map's 125 rows (50M rows,
    1.7M customers: sorting first and joining the code too, 0.69 -> 0.48 s with the sort)."""
    cells = segment_map.to_frame()
    frame = frame.join(cells, on=["r_score", "f_score", "m_score"], how="left",
                       maintain_order="left")  # fmt: skip
    return frame.with_columns(pl.col("rfm_grid_segment").fill_null(pl.lit(EXCLUDED_NON_POSITIVE)))
