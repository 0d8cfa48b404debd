"""The RFM stage: read the transactions, clean them, aggregate them per customer and score.

Everything `reportgen run` reads from the transactions comes from here (`compute_rfm_stage`):
the period, the cleaning audit, the monthly EDA and the RFM table. With a file source polars
runs the queries (`_collect`); with a database or Spark source they run there (pushdown).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import polars as pl

from .clean import (
    Cleaned,
    CleaningAudit,
    annotate,
    build_audit,
    collected_line_groups,
    first_pass_groups,
    group_audit_queries,
    line_groups,
    settle_duplicates,
    shown_and_candidates_query,
)
from .config import Config
from .eda import Eda, build_eda, month_columns, month_totals
from .errors import InputDataError, counted
from .grid import SegmentMap, load_segment_map
from .period import Period, PeriodRequest, request_period, window_start
from .purchase_lines import PAIRS_QUERY, PRODUCTS_QUERY, line_queries, representation_frames
from .pushdown import collect_stage, is_pushdown
from .read import (
    FILE,
    ROW,
    SOURCE_PREFIX,
    Source,
    located_read_error,
    not_money,
    read_transactions,
)
from .rfm import RfmTable, finish_rfm, order_query, rfm_query

Stage = Callable[[str], None]  # told the name of each step as it starts (the CLI's progress)
_SHOWN_ROWS = 5


@dataclass(frozen=True)
class RfmStage:
    """What the transactions give: the period, the audit, the EDA tables and the RFM table."""

    source: Source
    period: Period
    audit: CleaningAudit
    eda: Eda
    rfm: RfmTable
    segment_map: SegmentMap
    # graph.enabled: unique (customer_id, product_id) of kept purchases, and product names
    purchases: dict[str, pl.DataFrame] = dataclasses.field(default_factory=dict)
    # representation.features: extended: basket sizes and spend shares per customer
    extras: dict[str, pl.DataFrame] = dataclasses.field(default_factory=dict)


def compute_rfm_stage(
    config: Config,
    as_of: str | dt.date | None = None,
    now: dt.datetime | None = None,
    stage: Stage | None = None,
) -> RfmStage:
    """Read, clean and aggregate the transactions (`_collect`); score and name customers."""
    stage = stage or quiet
    stage("Reading the transactions")
    request = request_period(config.period, as_of, now)
    segment_map = load_segment_map(config.rfm.segment_map)
    if is_pushdown(config.input):  # a database or Spark source: the queries run there
        stage("Cleaning and computing RFM in the database")
        pushed = collect_stage(config, request)
        results, cleaned = pushed.results, pushed.cleaned
    else:
        tx = read_transactions(config.input, config.report.currency, config.period.timezone)
        stage("Cleaning and computing RFM")
        try:
            with _read_errors(tx.source, config):
                cleaned = annotate(tx, config.cleaning, request)
                _check_input(cleaned, config)  # after the first of the two reads
                results, cleaned = _collect(cleaned, config)
        finally:
            tx.release()
    return _rfm_stage_from(results, cleaned, request, config, segment_map)


def _rfm_stage_from(
    results: dict[str, pl.DataFrame], cleaned: Cleaned, request: PeriodRequest, config: Config,
    segment_map: SegmentMap,
) -> RfmStage:  # fmt: skip
    """Audit, period, scores and grid from the collected frames (embedded engine or pushdown)."""
    audit = build_audit(results, cleaned)
    period = _resolved_period(results["totals"].row(0, named=True), request, audit)
    digits = cleaned.transactions.minor_digits
    rfm = finish_rfm(results["rfm"], config.rfm, segment_map, digits, period.window_start)
    _check_not_empty(audit, rfm)
    purchases = {k: results[k] for k in (PAIRS_QUERY, PRODUCTS_QUERY) if k in results}
    span = (period.window_start or audit.first_date or period.as_of, period.as_of)
    return RfmStage(cleaned.transactions.source, period, audit, build_eda(results, cleaned, span),
                    rfm, segment_map, purchases, representation_frames(results))  # fmt: skip


def quiet(_: str) -> None:
    return None


def _collect(cleaned: Cleaned, config: Config) -> tuple[dict[str, pl.DataFrame], Cleaned]:
    """Everything read from the transactions: the rows grouped, then the aggregates.

    The first pass (clean.annotate) found the duplicate candidates, the value checks and the
    example rows, and grouped the rows of a Parquet source or a large CSV file. Here one
    query groups the rows when it did not (clean.line_groups) and another reads the candidates
    and the example rows again; the candidates are then settled. The audit counts, RFM and the
    monthly EDA come from the groups. Returns the frames and the cleaning with its duplicates
    known.
    """
    examples = config.cleaning.examples_per_rule
    # One query at a time: the second filters the rows by key as it reads them (10M rows:
    # 0.2 s), so sharing a scan with the first (pl.collect_all) would save nothing and hold
    # every row's columns meanwhile (10M rows: a peak of 1.4 GB instead of 0.8 GB).
    results = {"groups": _grouped_lines(cleaned)}
    cleaned = dataclasses.replace(cleaned, content_groups=None)  # held once: `del groups` frees
    fetched = shown_and_candidates_query(cleaned).collect()
    cleaned = settle_duplicates(cleaned, fetched, results, examples)
    lines = line_queries(cleaned, config)
    if lines:  # graph.enabled or features: extended read the purchase lines again
        results |= _collect_rows(lines, cleaned)
    groups = results.pop("groups")
    slices = -(-groups.height // SLICE_GROUPS)
    results |= _collect_all(group_audit_queries(cleaned, groups.lazy()))
    results["rfm"], order_parts = _customers_and_orders(groups, cleaned, slices)
    del groups  # 50M rows: 17M groups (0.6 GB) freed before the months are counted
    results["eda_months"] = month_totals(order_parts, cleaned)
    results["totals"] = pl.concat([results.pop("counted"), cleaned.checks], how="horizontal")
    return results, cleaned


# Past this many rows the rows are grouped a slice of customers at a time, each slice read
# again with the filter applied as the file is read: on 50M rows (17M groups) two slices took
# 5.8 s at a peak of 2.0 GB where one took 6.6 s and 2.4 GB; on 10M a second slice would cost
# 0.1 s to save 0.1 GB. A CSV file is parsed again for each slice (only a file too large to
# parse once whose duplicates compare some columns gets here: see clean._groups_in_first_pass).
GROUPBY_SLICE_ROWS = 25_000_000


def _grouped_lines(cleaned: Cleaned) -> pl.DataFrame:
    """clean.line_groups: grouped in the first pass, or a slice of customers at a time past
    GROUPBY_SLICE_ROWS rows."""
    in_first_pass = first_pass_groups(cleaned)
    if in_first_pass is not None:
        return in_first_pass
    slices = -(-cleaned.rows_read // GROUPBY_SLICE_ROWS)
    if slices <= 1:
        return collected_line_groups(cleaned)

    def grouped(rows: pl.LazyFrame) -> pl.LazyFrame:
        return line_groups(dataclasses.replace(cleaned, frame=rows))

    return _by_customer_slices(cleaned.frame, slices, grouped)


# The per-order and per-customer aggregates of a large input are computed for a slice of the
# customers at a time (eda.month_totals likewise): on 50M rows (18M groups) polars' group-by
# held 1.1 GB more when it took them all at once, and was no faster.
SLICE_GROUPS = 4_000_000


def _customers_and_orders(
    groups: pl.DataFrame, cleaned: Cleaned, slices: int
) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    """RFM's per-customer aggregates (rfm.rfm_query) and, per slice, the orders' month columns
    for the monthly EDA (eda.month_columns), from the orders (rfm.order_query) of a slice of
    customers at a time, so that one slice's orders are held whole, not all of them (50M rows, 17M
    orders: the stage's peak 2.77 -> 2.51-2.60 GB, 15.4-15.8 -> 14.9 s)."""
    customers, months = [], []
    for rows in _customer_slices(groups, slices):
        orders = order_query(rows, cleaned).collect()
        customers.append(rfm_query(orders.lazy(), cleaned).collect())
        months.append(orders.select(month_columns(cleaned)))  # the other columns freed
    return pl.concat(customers), months


def _by_customer_slices(
    frame: pl.LazyFrame, slices: int, query: Callable[[pl.LazyFrame], pl.LazyFrame]
) -> pl.DataFrame:
    """`query` over `frame`, collected for one slice of the customers at a time and stacked:
    each result row belongs to one customer, so the slices' results never overlap."""
    return pl.concat(query(rows).collect() for rows in _customer_slices(frame, slices))


def _customer_slices(frame: pl.LazyFrame | pl.DataFrame, slices: int) -> list[pl.LazyFrame]:
    """`frame`'s rows in `slices` parts, each holding every row of its customers. A frame in
    memory gets its rows' slice as a column first, so that each customer id is hashed once, not
    once per slice (200M rows, 68M groups in 17 slices: 3.1 -> 1.2 s)."""
    if slices <= 1:
        return [frame.lazy()]
    in_slice = (pl.col("customer_id").hash(seed=0) % slices).cast(pl.UInt32)
    if isinstance(frame, pl.LazyFrame):
        return [frame.filter(in_slice == i) for i in range(slices)]
    numbered = frame.with_columns(in_slice.alias("_slice")).lazy()
    return [numbered.filter(pl.col("_slice") == i).drop("_slice") for i in range(slices)]


# The queries over the purchase lines (graph.enabled, representation.features: extended)
# collected together share one scan, but polars then holds the scanned columns (about 75 bytes
# a row); past this many rows each query streams on its own instead: slower, in bounded memory.
SHARED_SCAN_MAX_ROWS = 15_000_000


def _collect_rows(queries: dict[str, pl.LazyFrame], cleaned: Cleaned) -> dict[str, pl.DataFrame]:
    if cleaned.rows_read > SHARED_SCAN_MAX_ROWS:
        return {name: query.collect() for name, query in queries.items()}
    return _collect_all(queries)


def _collect_all(queries: dict[str, pl.LazyFrame]) -> dict[str, pl.DataFrame]:
    return dict(zip(queries, pl.collect_all(list(queries.values())), strict=True))


@contextlib.contextmanager
def _read_errors(source: Source, config: Config) -> Iterator[None]:
    """Data that cannot be read surfaces when a query runs: say which file and line."""
    try:
        yield
    except pl.exceptions.ComputeError as exc:
        raise located_read_error(exc, source, config.input) from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputDataError(f"{source.location}: {exc}") from None


def _check_input(cleaned: Cleaned, config: Config) -> None:
    """Values that make the data unusable as configured (the first pass's checks): stop and show
    where they are."""
    cols = config.input.columns
    totals = cleaned.checks.row(0, named=True)
    if cleaned.rows_read == 0:
        raise InputDataError(f"{cleaned.transactions.source.location}: the table has no rows")
    if totals["bad_ids"]:
        _raise_with_rows(
            cleaned, "_bad_id",
            f"{counted(totals['bad_ids'], 'customer id')} in column {cols.customer_id!r} stored as "
            "floats with a fraction or at or above 2^53 (digits lost); export the column as text",
        )  # fmt: skip
    if totals["bad_amounts"]:
        text = cleaned.transactions.source.format == "csv"
        _raise_with_rows(
            cleaned, "_bad_amount",
            not_money(totals["bad_amounts"], cols, text=True)
            + (f"; decimal separator {config.input.csv.decimal!r}: set input.csv.decimal if "
               "it is ','" if text else ""),
        )  # fmt: skip
    if totals["bad_dates"] and config.cleaning.unparseable_dates == "error":
        _raise_with_rows(
            cleaned, "_bad_date",
            f"{counted(totals['bad_dates'], 'date')} in {cols.order_date!r} match none of "
            f"input.date_formats {config.input.date_formats}: add their format, or set "
            "cleaning.unparseable_dates: drop to drop and audit them"
            + _numeric_dates(cleaned, cols.order_date),
        )  # fmt: skip
    if totals["zoned"] and totals["naive"]:
        _raise_with_rows(
            cleaned, "_zoned",
            f"column {cols.order_date!r} mixes timestamps with a time zone ({totals['zoned']:,}) "
            f"and without one ({totals['naive']:,}); make them all one kind",
        )  # fmt: skip
    _check_currency(totals["currencies"], cleaned, config)


def _numeric_dates(cleaned: Cleaned, column: str) -> str:
    """A hint when the date column holds numbers: dates written as numbers are read with a
    format; a count of seconds since 1970 is not a date reportgen guesses the unit of."""
    dtype = cleaned.transactions.frame.collect_schema()[SOURCE_PREFIX + column]
    if not dtype.is_numeric():
        return ""
    return (
        f". The column holds numbers ({dtype}): 20240301 reads with '%Y%m%d'; timestamps "
        "counted from 1970 must be exported as dates or text"
    )


def _raise_with_rows(cleaned: Cleaned, flag: str, message: str) -> None:
    source = cleaned.transactions.source
    rows = (
        cleaned.frame.filter(pl.col(flag).fill_null(False))
        .select(FILE, ROW).head(_SHOWN_ROWS).collect().iter_rows()
    )  # fmt: skip
    raise InputDataError(f"{source.location}: {message} ({source.describe_rows(list(rows))})")


def _check_currency(currencies: list[str] | None, cleaned: Cleaned, config: Config) -> None:
    found = [c for c in (currencies or []) if c]
    where = f"{cleaned.transactions.source.location}: column {config.input.columns.currency!r}"
    if len(found) > 1:
        raise InputDataError(
            f"{where} holds more than one currency ({', '.join(found)}); reportgen sums money "
            "in one currency: filter or convert the data first"
        )
    if found and found[0] != config.report.currency:
        raise InputDataError(
            f"{where} is in {found[0]} but report.currency is {config.report.currency}; "
            "set report.currency to match"
        )


def _resolved_period(totals: dict, request: PeriodRequest, audit: CleaningAudit) -> Period:
    as_of, latest = totals["as_of"], totals["latest_kept"]
    if as_of is None or latest is None:
        dropped = ", ".join(f"{r.rule} {r.rows:,}" for r in audit.rules if r.rows)
        raise InputDataError(
            f"no transaction is left after cleaning on or before the as-of date ({request.asked}); "
            f"{audit.rows_read:,} rows read, dropped: {dropped}"
        )
    period = Period(as_of, window_start(as_of, request.window_days), request.timezone,
                    request.asked, latest)  # fmt: skip
    limit = request.max_staleness_days
    if limit is not None and period.staleness_days > limit:
        raise InputDataError(
            f"data stale: the latest transaction is {latest}, {period.staleness_days} days "
            f"before the as-of date {as_of} (period.max_staleness_days: {limit})"
        )
    return period


def _check_not_empty(audit: CleaningAudit, rfm: RfmTable) -> None:
    if audit.rows_kept and rfm.frame.height:
        return
    dropped = ", ".join(f"{r.rule} {r.rows:,}" for r in audit.rules if r.rows)
    raise InputDataError(
        f"no customer is left after cleaning ({audit.rows_read:,} rows read; dropped: {dropped})"
    )
