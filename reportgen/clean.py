"""Cleaning: decide, for every row read, whether it is kept or which rule drops it.

Nothing is removed here: each row gets `_reason`, the first rule (in `RULES` order) that drops
it, or null when it is kept. That single column feeds both the audit (rows and revenue per
rule, which therefore reconcile exactly with what was read) and the RFM stage.

Duplicates come first: an exact copy of an earlier row is a copy whatever else is wrong with
it, which is also how the published figure for the sample (5,268 duplicate rows) is counted.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import polars as pl

from .config import CleaningSection
from .errors import InputDataError
from .period import PeriodRequest
from .read import FILE, ROW, SOURCE_PREFIX, Transactions

log = logging.getLogger(__name__)

RULES: dict[str, str] = {
    "duplicate": "exact duplicate of an earlier row",
    "missing_customer_id": "no customer id",
    "missing_date": "no order date",
    "unparseable_date": "order date matching none of the formats",
    "missing_amount": "no amount",
    "cancellation": "cancellation or return line",
    "non_positive": "quantity, price or amount not positive",
    "after_as_of": "order after the as-of date",
    "before_window": "order before the window",
}
REASON = "_reason"
IS_RETURN = "_is_return"
AS_OF = "_as_of"


@dataclass(frozen=True)
class RuleCount:
    """Rows and revenue one cleaning rule dropped, with a few masked example rows."""

    rule: str
    description: str
    rows: int
    revenue_minor: int
    examples: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class CleaningAudit:
    """What was read, what each rule dropped, what was kept: reconciled to the minor unit."""

    rows_read: int
    revenue_read_minor: int
    rules: list[RuleCount]
    rows_kept: int
    revenue_kept_minor: int
    returns_netted_rows: int
    returns_netted_minor: int
    first_date: dt.date | None
    last_date: dt.date | None
    missing_values: dict[str, int]

    @property
    def reconciles(self) -> bool:
        """Revenue read equals revenue kept plus the revenue each rule dropped."""
        dropped = sum(r.revenue_minor for r in self.rules)
        rows = sum(r.rows for r in self.rules)
        return (
            self.revenue_read_minor == self.revenue_kept_minor + dropped
            and self.rows_read == self.rows_kept + rows
        )


@dataclass(frozen=True)
class Cleaned:
    """The annotated lazy frame: every row read, with `_reason`, `_is_return` and `_as_of`."""

    frame: pl.LazyFrame
    transactions: Transactions
    window_days: int | None


def annotate(tx: Transactions, cfg: CleaningSection, period: PeriodRequest) -> Cleaned:
    """Add the cleaning decision of every row (lazily) and the period's `as_of`."""
    frame = _flag_duplicates(tx, cfg).with_columns(
        pl.col("order_ts").dt.date().alias("order_date"),
        _is_return(tx, cfg).alias(IS_RETURN),
    )
    frame = frame.with_columns(_content_reason(cfg).alias(REASON))
    frame = frame.with_columns(_as_of_expr(period).alias(AS_OF))
    frame = frame.with_columns(
        pl.coalesce(pl.col(REASON), _period_reason(period.window_days)).alias(REASON)
    )
    return Cleaned(frame, tx, period.window_days)


def _is_return(tx: Transactions, cfg: CleaningSection) -> pl.Expr:
    """Return lines: order ids with the cancellation prefix; without order ids, negative lines."""
    text_ids = tx.frame.collect_schema()["order_id"] == pl.String
    if tx.has_order_id and cfg.cancellation_prefix and text_ids:
        return pl.col("order_id").str.starts_with(cfg.cancellation_prefix).fill_null(False)
    return (pl.col("amount_minor") < 0).fill_null(False)


def _flag_duplicates(tx: Transactions, cfg: CleaningSection) -> pl.LazyFrame:
    """`_duplicate`: the row repeats an earlier one in every compared source column.

    Comparing whole rows is the costliest step of the engine, so rows are first hashed and only
    those whose hash occurs more than once are compared exactly (a hash collision can therefore
    never drop a row); the verdicts are joined back by row position.
    """
    if cfg.duplicates == "off":
        return tx.frame.with_columns(pl.lit(False).alias("_duplicate"))
    names = tx.source.columns if cfg.duplicates == "all" else cfg.duplicates
    unknown = [n for n in names if n not in tx.source.columns]
    if unknown:
        raise InputDataError(
            f"{tx.source.location}: cleaning.duplicates names column(s) not in the data: "
            f"{', '.join(unknown)}. The data has: {', '.join(tx.source.columns)}"
        )
    row = pl.struct([pl.col(SOURCE_PREFIX + c) for c in names])
    frame = tx.frame.with_columns(row.hash(seed=0).alias("_hash"))
    repeats = (
        frame.filter(pl.col("_hash").is_duplicated())
        .filter(~row.is_first_distinct())
        .select(FILE, ROW, pl.lit(True).alias("_duplicate"))
    )
    return (
        frame.join(repeats, on=[FILE, ROW], how="left", maintain_order="left")
        .with_columns(pl.col("_duplicate").fill_null(False))
        .drop("_hash")
    )


def _content_reason(cfg: CleaningSection) -> pl.Expr:
    """The first rule that drops a row for what it contains (period rules come later)."""
    not_positive = (
        (pl.col("quantity") <= 0) | (pl.col("unit_price") <= 0) | (pl.col("amount") <= 0)
    ).fill_null(False)
    drop_returns = cfg.returns == "exclude"
    return (
        pl.when(pl.col("_duplicate")).then(pl.lit("duplicate"))
        .when(pl.col("customer_id").is_null()).then(pl.lit("missing_customer_id"))
        .when(pl.col("order_ts").is_null() & ~pl.col("_bad_date")).then(pl.lit("missing_date"))
        .when(pl.col("_bad_date")).then(pl.lit("unparseable_date"))
        .when(pl.col("amount_minor").is_null()).then(pl.lit("missing_amount"))
        .when(pl.col(IS_RETURN) & pl.lit(drop_returns)).then(pl.lit("cancellation"))
        .when(~pl.col(IS_RETURN) & not_positive).then(pl.lit("non_positive"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )  # fmt: skip


def _as_of_expr(period: PeriodRequest) -> pl.Expr:
    """The fixed as_of, or for `latest` the last day with a purchase that survives cleaning."""
    if period.as_of is not None:
        return pl.lit(period.as_of, dtype=pl.Date)
    survivor = pl.col(REASON).is_null() & ~pl.col(IS_RETURN)
    return pl.col("order_date").filter(survivor).max()


def _period_reason(window_days: int | None) -> pl.Expr:
    date, as_of = pl.col("order_date"), pl.col(AS_OF)
    reason = pl.when(date > as_of).then(pl.lit("after_as_of"))
    if window_days is not None:
        start = as_of - pl.duration(days=window_days - 1)
        reason = reason.when(date < start).then(pl.lit("before_window"))
    return reason.otherwise(pl.lit(None, dtype=pl.String))


def audit_queries(cleaned: Cleaned, examples_per_rule: int) -> dict[str, pl.LazyFrame]:
    """The lazy queries the audit is made from (collected together with the RFM query)."""
    frame = cleaned.frame
    money = pl.col("amount_minor").fill_null(0)
    by_rule = frame.group_by(REASON).agg(pl.len().alias("rows"), money.sum().alias("revenue"))
    netted = pl.col(REASON).is_null() & pl.col(IS_RETURN)
    totals = frame.select(
        pl.len().alias("rows"),
        money.sum().alias("revenue"),
        pl.col("order_date").min().alias("first_date"),
        pl.col("order_date").max().alias("last_date"),
        pl.col(AS_OF).first().alias("as_of"),
        pl.col("order_date").filter(_kept_before(AS_OF)).max().alias("latest_kept"),
        netted.sum().alias("netted_rows"),
        money.filter(netted).sum().alias("netted_revenue"),
        *[pl.col(c).null_count().alias(f"missing:{c}") for c in _MISSING_TRACKED],
        pl.col("_bad_id").sum().alias("bad_ids"),
        pl.col("_bad_amount").sum().alias("bad_amounts"),
        pl.col("_bad_date").sum().alias("bad_dates"),
        pl.col("_zoned").filter(pl.col("_zoned")).len().alias("zoned"),
        pl.col("_zoned").filter(~pl.col("_zoned")).len().alias("naive"),
        pl.col("currency").drop_nulls().unique().sort().head(5).implode().alias("currencies"),
    )
    shown = [FILE, ROW, "customer_id", "order_id", "order_ts", "amount_minor"]
    examples = (
        frame.filter(pl.col(REASON).is_not_null())
        .group_by(REASON)
        .agg(pl.col(c).bottom_k_by([FILE, ROW], examples_per_rule) for c in shown)
        .explode(shown)
    )
    return {"by_rule": by_rule, "totals": totals, "examples": examples}


_MISSING_TRACKED = ("customer_id", "order_id", "order_ts", "amount_minor", "product_id")


def _kept_before(as_of: str) -> pl.Expr:
    clean = pl.col(REASON).is_null() | (pl.col(REASON) == "before_window")
    return clean & (pl.col("order_date") <= pl.col(as_of))


def build_audit(results: dict[str, pl.DataFrame], cleaned: Cleaned) -> CleaningAudit:
    """Assemble the audit from the collected queries."""
    totals = results["totals"].row(0, named=True)
    counts = {r[REASON]: r for r in results["by_rule"].iter_rows(named=True)}
    examples = _examples_by_rule(results["examples"], cleaned)
    none = {"rows": 0, "revenue": 0}
    rules = [
        RuleCount(rule, text, counts.get(rule, none)["rows"], counts.get(rule, none)["revenue"],
                  examples.get(rule, []))
        for rule, text in RULES.items()
        if rule in counts or _always_listed(rule, cleaned)
    ]  # fmt: skip
    kept = counts.get(None, none)
    return CleaningAudit(
        rows_read=totals["rows"],
        revenue_read_minor=totals["revenue"],
        rules=rules,
        rows_kept=kept["rows"],
        revenue_kept_minor=kept["revenue"],
        returns_netted_rows=totals["netted_rows"],
        returns_netted_minor=totals["netted_revenue"] or 0,
        first_date=totals["first_date"],
        last_date=totals["last_date"],
        missing_values={c: totals[f"missing:{c}"] for c in _MISSING_TRACKED},
    )


def _always_listed(rule: str, cleaned: Cleaned) -> bool:
    """Rules that apply to this run are listed even when they dropped nothing."""
    if rule == "before_window":
        return cleaned.window_days is not None
    return rule not in {"unparseable_date", "missing_date", "missing_amount"}


def _examples_by_rule(frame: pl.DataFrame, cleaned: Cleaned) -> dict[str, list[dict]]:
    source = cleaned.transactions.source
    digits = cleaned.transactions.minor_digits
    out: dict[str, list[dict]] = {}
    for row in frame.sort(FILE, ROW).iter_rows(named=True):
        out.setdefault(row[REASON], []).append(
            {
                "file": source.files[row[FILE]],
                "line": source.line(row[ROW]),
                "customer_id": mask_id(None if row["customer_id"] is None else str(row["customer_id"])),
                "order_id": row["order_id"],
                "order_ts": row["order_ts"].isoformat(sep=" ") if row["order_ts"] else None,
                "amount": format_minor(row["amount_minor"], digits),
            }
        )
    return out


def mask_id(value: str | None) -> str | None:
    """Hide a customer id but its last two characters ('17850' -> '•••50')."""
    if value is None:
        return None
    return "•" * max(len(value) - 2, 1) + value[-2:]


def format_minor(value: int | None, digits: int) -> str | None:
    """Integer minor units as a plain decimal string ('-1234' -> '-12.34')."""
    if value is None:
        return None
    sign, value = ("-" if value < 0 else ""), abs(value)
    if digits == 0:
        return f"{sign}{value}"
    return f"{sign}{value // 10**digits}.{value % 10**digits:0{digits}d}"
