"""EDA of the kept transactions: revenue, orders and new vs returning customers per month.

The queries are lazy and collected in the pipeline's single collect, next to the audit and RFM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import polars as pl

from .clean import IS_RETURN, REASON, Cleaned
from .rfm import order_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Eda:
    """Per calendar month of the period (kept purchase lines only)."""

    monthly: pl.DataFrame  # month (date, 1st), revenue_minor, orders, customers, new_customers, returning_customers


def eda_queries(cleaned: Cleaned) -> dict[str, pl.LazyFrame]:
    """The lazy query of the monthly table."""
    month = pl.col("order_date").dt.truncate("1mo").alias("month")
    purchases = cleaned.frame.filter(pl.col(REASON).is_null() & ~pl.col(IS_RETURN))
    history = cleaned.frame.filter(
        (pl.col(REASON).is_null() | (pl.col(REASON) == "before_window")) & ~pl.col(IS_RETURN)
    )
    first_month = history.group_by("customer_id").agg(month.min().alias("first_month"))
    active = purchases.select("customer_id", month).unique()
    new_by_month = (
        active.join(first_month, on="customer_id", how="left")
        .group_by("month")
        .agg(
            pl.len().alias("customers"),
            (pl.col("month") == pl.col("first_month")).sum().alias("new_customers"),
        )
    )
    totals = purchases.group_by(month).agg(
        pl.col("amount_minor").sum().alias("revenue_minor"),
        order_key(cleaned).n_unique().alias("orders"),
    )
    monthly = totals.join(new_by_month, on="month", how="left").sort("month")
    return {"eda_monthly": monthly}


def build_eda(results: dict[str, pl.DataFrame]) -> Eda:
    """Assemble the EDA tables from the collected queries."""
    monthly = results["eda_monthly"].with_columns(
        (pl.col("customers") - pl.col("new_customers")).alias("returning_customers")
    )
    return Eda(monthly=monthly)
