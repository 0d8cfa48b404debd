"""What changed since the previous report: segment sizes and revenue, the migration matrix,
and the customers who moved into risk segments.

Comparisons are by segment name (names stay with the same kind of customers, see
`segment.match_previous`), so they hold even when k or the features changed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from .history import Snapshot

log = logging.getLogger(__name__)

NEW, GONE = "(new)", "(gone)"


@dataclass(frozen=True)
class SegmentChange:
    """One segment's size and revenue then and now."""

    segment: str
    customers_before: int
    customers_now: int
    revenue_before_minor: int
    revenue_now_minor: int

    @property
    def customers_delta(self) -> int:
        """Customers gained (negative: lost)."""
        return self.customers_now - self.customers_before

    @property
    def revenue_delta_minor(self) -> int:
        """Revenue gained (negative: lost)."""
        return self.revenue_now_minor - self.revenue_before_minor


@dataclass(frozen=True)
class Changes:
    """The comparison of this run with the previous one."""

    previous_as_of: dt.date
    k_before: int
    k_now: int
    notes: tuple[str, ...]  # k or features changed, how names were kept
    segments: tuple[SegmentChange, ...]
    migration: pl.DataFrame  # from_segment (or NEW), to_segment (or GONE), customers
    moved_into_risk: pl.DataFrame  # customer_id, from_segment, to_segment, RFM values now
    new_customers: int
    gone_customers: int
    headlines: tuple[str, ...]

    def matrix(self) -> pl.DataFrame:
        """The migration as a wide table: one row per earlier segment, one column per current."""
        order_to = [s.segment for s in self.segments] + [GONE]
        wide = self.migration.pivot(
            on="to_segment", index="from_segment", values="customers", aggregate_function="sum"
        ).fill_null(0)
        missing = [c for c in order_to if c not in wide.columns]
        wide = wide.with_columns(pl.lit(0, dtype=pl.UInt32).alias(c) for c in missing)
        order_from = [s.segment for s in self.segments] + [NEW]
        rows = pl.DataFrame({"from_segment": order_from})
        return (
            rows.join(wide, on="from_segment", how="left")
            .fill_null(0)
            .select("from_segment", *order_to)
        )


def compare_runs(
    previous: Snapshot, current: Snapshot, risk_segments: Sequence[str], continuity: str
) -> Changes:
    """Compare two snapshots of the same report."""
    pairs = _pairs(previous.customers, current.customers)
    migration = (
        pairs.group_by("from_segment", "to_segment")
        .agg(pl.len().cast(pl.Int64).alias("customers"))
        .sort("from_segment", "to_segment")
    )
    segments = _segment_changes(previous, current)
    moved = _moved_into_risk(pairs, current.customers, risk_segments)
    new = int(pairs.filter(pl.col("from_segment") == NEW).height)
    gone = int(pairs.filter(pl.col("to_segment") == GONE).height)
    notes = _notes(previous, current, continuity)
    return Changes(
        previous_as_of=previous.as_of,
        k_before=previous.k,
        k_now=current.k,
        notes=notes,
        segments=segments,
        migration=migration,
        moved_into_risk=moved,
        new_customers=new,
        gone_customers=gone,
        headlines=_headlines(segments, new, gone, moved, previous.as_of),
    )


def _pairs(before: pl.DataFrame, now: pl.DataFrame) -> pl.DataFrame:
    """Every customer of either run with its segment then and now (NEW / GONE when absent)."""
    joined = before.select("customer_id", pl.col("segment").alias("from_segment")).join(
        now.select("customer_id", pl.col("segment").alias("to_segment")),
        on="customer_id",
        how="full",
        coalesce=True,
    )
    return joined.with_columns(
        pl.col("from_segment").fill_null(NEW), pl.col("to_segment").fill_null(GONE)
    ).sort("customer_id")


def _segment_changes(previous: Snapshot, current: Snapshot) -> tuple[SegmentChange, ...]:
    names = list(current.names) + sorted(
        set(previous.sizes) | set(current.sizes) - set(current.names)
    )
    names = list(dict.fromkeys(names))
    return tuple(
        SegmentChange(
            segment=name,
            customers_before=previous.sizes.get(name, 0),
            customers_now=current.sizes.get(name, 0),
            revenue_before_minor=previous.revenue_minor.get(name, 0),
            revenue_now_minor=current.revenue_minor.get(name, 0),
        )
        for name in names
    )


def _moved_into_risk(
    pairs: pl.DataFrame, now: pl.DataFrame, risk_segments: Sequence[str]
) -> pl.DataFrame:
    risky = list(risk_segments)
    moved = pairs.filter(
        pl.col("to_segment").is_in(risky)
        & ~pl.col("from_segment").is_in(risky)
        & (pl.col("from_segment") != NEW)
    )
    return moved.join(now.drop("segment"), on="customer_id", how="left").sort("customer_id")


def _notes(previous: Snapshot, current: Snapshot, continuity: str) -> tuple[str, ...]:
    notes = [continuity] if continuity else []
    if previous.k != current.k:
        notes.append(
            f"The number of segments changed from {previous.k} to {current.k}; segments are "
            "compared by name."
        )
    if previous.features != current.features:
        notes.append("The clustered features changed; segments are compared by name.")
    if previous.config_hash != current.config_hash:
        notes.append("The configuration changed since the previous run.")
    return tuple(notes)


def _headlines(
    segments: Sequence[SegmentChange], new: int, gone: int, moved: pl.DataFrame,
    previous_as_of: dt.date,
) -> tuple[str, ...]:  # fmt: skip
    """The few changes worth a sentence in the executive summary and the email."""
    lines = []
    biggest = sorted(segments, key=lambda s: (-abs(s.customers_delta), s.segment))[:3]
    for change in biggest:
        if change.customers_delta == 0:
            continue
        verb = "grew" if change.customers_delta > 0 else "shrank"
        relative = (
            f" ({change.customers_delta / change.customers_before:+.0%})"
            if change.customers_before
            else ""
        )
        lines.append(
            f"{change.segment} {verb} by {abs(change.customers_delta):,} customers{relative} "
            f"to {change.customers_now:,} since {previous_as_of}."
        )
    lines.append(f"{new:,} customers are new in this period and {gone:,} are gone.")
    if moved.height:
        lines.append(
            f"{moved.height:,} customers moved into a risk segment (see moved_into_risk.csv)."
        )
    return tuple(lines)
