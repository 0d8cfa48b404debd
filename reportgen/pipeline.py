"""The whole job, top to bottom: read, clean, RFM, then write (gather first, then write)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import importlib
import json
import logging
import os
import platform
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import polars as pl

from .clean import (
    Cleaned,
    CleaningAudit,
    annotate,
    build_audit,
    candidates_queries,
    group_audit_queries,
    line_groups,
    row_audit_queries,
    settle_duplicates,
)
from .compare import compare_runs
from .comparison import Comparison, compare_segmentations
from .config import Config, load_config
from .eda import Eda, build_eda, month_totals
from .errors import InputDataError
from .export import write_exports
from .fairness import FairnessAudit, audit_fairness
from .graph import PAIRS_QUERY, PRODUCTS_QUERY, CustomerGraph, build_customer_graph, graph_queries
from .grid import SegmentMap, load_segment_map
from .history import Snapshot, previous_snapshot, snapshot_of
from .mail import SmtpFactory, email_settings, keep_marker, read_marker, send_password, send_run
from .model import Report
from .output import prepare_report_dir, report_lock, write_run_folder
from .period import Period, PeriodRequest, request_period, window_start
from .pushdown import collect_stage, is_pushdown
from .read import FILE, ROW, Source, located_read_error, read_transactions
from .representation import (
    Representation,
    build_representation,
    representation_frames,
    representation_queries,
)
from .rfm import RfmTable, finish_rfm, order_query, rfm_query
from .segment import PreviousSegments, Segmentation, segment_customers

log = logging.getLogger(__name__)

Stage = Callable[[str], None]
_SHOWN_ROWS = 5

# Imported on a thread while other work runs, so that they are loaded when needed: scikit-learn
# takes ~3 s to import here (SciPy's stats come with it), WeasyPrint and vl-convert ~1.5 s. The
# segmentation's while polars reads the rows (it releases the GIL), the writers' while the
# customers are segmented (on one thread, for determinism: the other core is idle). Starting
# vl-convert's engine there as well (its first chart costs ~1 s) slowed the segmentation by 2 s.
SEGMENTATION_MODULES = ("sklearn.cluster", "sklearn.metrics", "sklearn.preprocessing",
                        "scipy.optimize", "scipy.spatial.distance", "threadpoolctl")  # fmt: skip
WRITER_MODULES = ("weasyprint", "vl_convert")


def _import_all(modules: tuple[str, ...]) -> None:
    for name in modules:
        importlib.import_module(name)


@dataclass(frozen=True)
class RunResult:
    """A finished run: the report model, its run folder and every file written."""

    report: Report
    folder: Path
    paths: list[Path]


def run(
    config: Config | str | Path,
    as_of: str | dt.date | None = None,
    output: str | Path | None = None,
    stage: Stage | None = None,
    send: bool = False,
    force: bool = False,
    dry_run: bool = False,
    smtp_class: SmtpFactory | None = None,
) -> RunResult:
    """Compute the report and write its run folder (gather first, then write); with `send`,
    then email it (`dry_run`: say what would be sent; `force`: even if sent before).

    Sending fails with DeliveryError (exit 5) after the run folder is complete, and with
    AlreadySentError (exit 2) when this run's sent.json exists and `force` is not given."""
    if not isinstance(config, Config):
        config = load_config(config)
    if dry_run:
        email_settings(config)  # no email section: a config error, before any work
    password = send_password(config) if send and not dry_run else None  # idem
    root = output if output is not None else config.output.dir
    report_dir = prepare_report_dir(root, config.report.report_slug)
    with report_lock(report_dir):
        report = compute_report(config, as_of=as_of, stage=stage, history_dir=report_dir,
                                prepare=functools.partial(_import_all, WRITER_MODULES))  # fmt: skip
        (stage or _quiet)("Writing the run folder")
        folder = report_dir / report.run_name
        marker = read_marker(folder)  # a re-run of a sent as-of keeps its sent.json
        paths = write_run_folder(report_dir, report.run_name, lambda d: write_run_files(report, d))
        keep_marker(marker, folder)
        if send or dry_run:
            (stage or _quiet)("Sending the email" if not dry_run else "Checking the email")
            sent = send_run(folder, config, force=force, dry_run=dry_run, password=password,
                            smtp_class=smtp_class)  # fmt: skip
            paths += [path for path in sent if path not in paths]
    return RunResult(report, folder, paths)


def write_run_files(report: Report, folder: Path) -> list[Path]:
    """Every file of a run: the exports, then the reports, then the email (it attaches the PDF)."""
    from .context import build_context
    from .mail import write_email
    from .render import write_reports

    ctx = build_context(report)  # one content model for the HTML, the PDF and the email
    return [
        *write_exports(report, folder),
        *write_reports(report, folder, ctx=ctx),
        *write_email(report, folder, ctx=ctx),
    ]


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


def compute_report(
    config: Config,
    as_of: str | dt.date | None = None,
    now: dt.datetime | None = None,
    stage: Stage | None = None,
    history_dir: Path | None = None,
    prepare: Callable[[], None] | None = None,
) -> Report:
    """Every stage from the transactions to the Report model; writes nothing.

    `history_dir` (the report's folder of run folders) holds the earlier runs to compare with.
    `prepare`: what the next stage needs (its imports), done while customers are segmented.
    """
    stage = stage or _quiet
    with _in_background(functools.partial(_import_all, SEGMENTATION_MODULES)):
        facts = compute_rfm_stage(config, as_of, now, stage)
    previous = _previous(config, history_dir, facts.period.as_of)
    stage("Segmenting customers")
    earlier = _previous_segments(config, previous)
    with _in_background(prepare):
        representation = build_representation(facts.rfm, facts.extras, config)  # None unless on
        segmentation = segment_customers(
            facts.rfm, config.segmentation, config.playbook, config.seed, earlier,
            space=representation.clustered if representation is not None else None,
        )
        fairness, graph = _extensions(config, facts, segmentation, stage)
    report = Report(
        config=config,
        source=facts.source,
        period=facts.period,
        audit=facts.audit,
        eda=facts.eda,
        rfm=facts.rfm,
        segment_map=facts.segment_map,
        segmentation=segmentation,
        data_fingerprint=_fingerprint(facts),
        generated_at=generated_at(now),
        versions=_versions(),
        changes=None,
        fairness=fairness,
        graph=graph,
        comparison=_comparison(config, facts, segmentation, representation, stage),
    )
    if previous is None:
        return report
    changes = compare_runs(
        previous, snapshot_of(report), config.history.risk_segments, segmentation.continuity
    )
    return dataclasses.replace(report, changes=changes)


@contextlib.contextmanager
def _in_background(task: Callable[[], None] | None) -> Iterator[None]:
    """Run `task` (loading modules) on a thread while the block runs; wait for it when the
    block ends. The block must not import the same modules (two threads importing each
    other's modules can deadlock). A failure is left to where the module is used to report."""
    if task is None:
        yield
        return
    thread = threading.Thread(target=_quietly, args=(task,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def _quietly(task: Callable[[], None]) -> None:
    try:
        task()
    except Exception:  # the import where the module is used reports it
        log.debug("preparing in the background failed", exc_info=True)


def _extensions(
    config: Config, facts: RfmStage, segmentation: Segmentation, stage: Stage
) -> tuple[FairnessAudit | None, CustomerGraph | None]:
    """The optional fairness audit and customer graph (both off by default)."""
    fairness = graph = None
    if config.fairness.enabled:
        stage("Auditing the segments for fairness")
        fairness = audit_fairness(facts.rfm, segmentation, config.fairness, config.input.attributes)
    if config.graph.enabled and PAIRS_QUERY in facts.purchases:
        stage("Building the customer graph")
        graph = build_customer_graph(
            facts.purchases[PAIRS_QUERY], facts.purchases.get(PRODUCTS_QUERY), segmentation,
            facts.rfm, config.graph, config.seed,
        )  # fmt: skip
    elif config.graph.enabled:
        log.warning("graph.enabled: the customer graph needs the purchase lines, which database "
                    "and Spark sources do not bring back; it is left out of this report")  # fmt: skip
    return fairness, graph


def _comparison(
    config: Config,
    facts: RfmStage,
    segmentation: Segmentation,
    representation: Representation | None,
    stage: Stage,
) -> Comparison | None:
    """Clustering methods side by side, and the representation against RFM (both off by default)."""
    if not config.segmentation.compare and representation is None:
        return None
    stage("Comparing clustering methods")
    return compare_segmentations(facts.rfm, segmentation, config, representation)


def _previous(config: Config, history_dir: Path | None, as_of: dt.date) -> Snapshot | None:
    if history_dir is None or not config.history.compare:
        return None
    return previous_snapshot(Path(history_dir), as_of)


def _previous_segments(config: Config, previous: Snapshot | None) -> PreviousSegments | None:
    if previous is None:
        return None
    return PreviousSegments(
        as_of=previous.as_of,
        k=previous.k,
        names=previous.names,
        centroids=previous.centroids,
        features=previous.features,
        match_threshold=config.history.match_threshold,
    )


def compute_rfm_stage(
    config: Config,
    as_of: str | dt.date | None = None,
    now: dt.datetime | None = None,
    stage: Stage | None = None,
) -> RfmStage:
    """Read, clean and aggregate the transactions (pipeline._collect); score and name customers."""
    stage = stage or _quiet
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
                results, cleaned = _collect(annotate(tx, config.cleaning, request), config)
            _check_input(results["totals"].row(0, named=True), cleaned, config)
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
    return RfmStage(cleaned.transactions.source, period, audit, build_eda(results, cleaned), rfm,
                    segment_map, purchases, representation_frames(results))  # fmt: skip


def _quiet(_: str) -> None:
    return None


def _collect(cleaned: Cleaned, config: Config) -> tuple[dict[str, pl.DataFrame], Cleaned]:
    """Everything read from the transactions: the rows grouped, then the aggregates.

    One query groups the rows (clean.line_groups); the others take what only the rows have:
    value checks, example rows and the duplicate candidates, which are then settled. They
    share one scan of the rows (`_collect_rows`). The audit counts, RFM and the monthly EDA
    come from the groups. Returns the frames and the cleaning with its duplicates known.
    """
    examples = config.cleaning.examples_per_rule
    first = {"groups": line_groups(cleaned)} | row_audit_queries(cleaned, examples)
    results = _collect_rows(first | candidates_queries(cleaned), cleaned)
    cleaned = settle_duplicates(cleaned, results, examples)
    lines = graph_queries(cleaned, config) | representation_queries(cleaned, config)
    if lines:  # graph.enabled or features: extended read the purchase lines again
        results |= _collect_rows(lines, cleaned)
    groups = results.pop("groups")
    slices = -(-groups.height // SLICE_GROUPS)
    orders = _orders(groups, cleaned, slices)  # for the monthly EDA and RFM
    queries = group_audit_queries(cleaned, groups.lazy()) | {"rfm": rfm_query(orders.lazy(), cleaned)}
    results |= _collect_all(queries)
    results["eda_months"] = month_totals(orders, cleaned, slices)
    results["totals"] = pl.concat([results.pop("counted"), results.pop("checks")], how="horizontal")
    return results, cleaned


# The per-order aggregates of a large input are computed for a slice of the customers at a time
# (eda.month_totals likewise): on 50M rows (18M groups) polars' group-by held 1.1 GB more when it
# took them all at once, and was no faster.
SLICE_GROUPS = 4_000_000


def _orders(groups: pl.DataFrame, cleaned: Cleaned, slices: int) -> pl.DataFrame:
    """rfm.order_query over `groups`, a slice of customers at a time (their orders stay whole)."""
    if slices <= 1:
        return order_query(groups.lazy(), cleaned).collect()
    in_slice = pl.col("customer_id").hash(seed=0) % slices
    return pl.concat(
        order_query(groups.lazy().filter(in_slice == i), cleaned).collect() for i in range(slices)
    )


# Queries over the rows collected together share one scan, but polars then holds the scanned
# columns (about 75 bytes a row); past this many rows each query streams on its own instead:
# slower, in bounded memory.
SHARED_SCAN_MAX_ROWS = 15_000_000


def _collect_rows(queries: dict[str, pl.LazyFrame], cleaned: Cleaned) -> dict[str, pl.DataFrame]:
    if cleaned.rows_read is not None and cleaned.rows_read > SHARED_SCAN_MAX_ROWS:
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


def _check_input(totals: dict, cleaned: Cleaned, config: Config) -> None:
    """Values that make the data unusable as configured: stop and show where they are."""
    cols = config.input.columns
    count = _counted
    if totals["rows"] == 0:
        raise InputDataError(f"{cleaned.transactions.source.location}: the table has no rows")
    if totals["bad_ids"]:
        _raise_with_rows(
            cleaned, "_bad_id",
            f"{count(totals['bad_ids'], 'customer id')} in column {cols.customer_id!r} stored as "
            "floats with a fraction or at or above 2^53 (digits lost); export the column as text",
        )  # fmt: skip
    if totals["bad_amounts"]:
        names = cols.amount or f"{cols.quantity}/{cols.unit_price}"
        _raise_with_rows(
            cleaned, "_bad_amount",
            f"{count(totals['bad_amounts'], 'value')} in {names!r} "
            f"{'is not a number' if totals['bad_amounts'] == 1 else 'are not numbers'} "
            f"(decimal separator {config.input.csv.decimal!r}: set input.csv.decimal if it is ',')",
        )  # fmt: skip
    if totals["bad_dates"] and config.cleaning.unparseable_dates == "error":
        _raise_with_rows(
            cleaned, "_bad_date",
            f"{count(totals['bad_dates'], 'date')} in {cols.order_date!r} match none of "
            f"input.date_formats {config.input.date_formats}: add their format, or set "
            "cleaning.unparseable_dates: drop to drop and audit them",
        )  # fmt: skip
    if totals["zoned"] and totals["naive"]:
        _raise_with_rows(
            cleaned, "_zoned",
            f"column {cols.order_date!r} mixes timestamps with a time zone ({totals['zoned']:,}) "
            f"and without one ({totals['naive']:,}); make them all one kind",
        )  # fmt: skip
    _check_currency(totals["currencies"], cleaned, config)


def _counted(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"



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


def _fingerprint(stage: RfmStage) -> str:
    """A content hash of what was read: same data, same fingerprint, on any machine."""
    columns, audit, rfm = stage.source.columns, stage.audit, stage.rfm
    facts = {
        "columns": list(columns),
        "rows": audit.rows_read,
        "revenue": audit.revenue_read_minor,
        "dates": [str(audit.first_date), str(audit.last_date)],
        "rules": {r.rule: [r.rows, r.revenue_minor] for r in audit.rules},
        "customers": rfm.frame.height,
        "monetary": int(rfm.frame["monetary_minor"].sum()),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def generated_at(now: dt.datetime | None = None) -> dt.datetime:
    """The report's time stamp; SOURCE_DATE_EPOCH pins it for reproducible builds."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return dt.datetime.fromtimestamp(int(epoch), tz=dt.UTC)
    return (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)


def _versions() -> dict[str, str]:
    names = ("reportgen", "polars", "numpy", "pydantic")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return {"python": platform.python_version(), **found}

