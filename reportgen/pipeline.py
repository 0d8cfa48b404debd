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

from .compare import compare_runs
from .comparison import Comparison, compare_segmentations
from .config import Config, load_config
from .export import write_exports
from .fairness import FairnessAudit, audit_fairness
from .graph import CustomerGraph, build_customer_graph
from .history import Snapshot, previous_snapshot, snapshot_of
from .mail import SmtpFactory, email_settings, keep_marker, read_marker, send_password, send_run
from .model import Report
from .output import prepare_report_dir, report_lock, write_run_folder
from .pdf_process import PdfProcess
from .purchase_lines import PAIRS_QUERY, PRODUCTS_QUERY
from .representation import Representation, build_representation
from .rfm_stage import RfmStage, Stage, compute_rfm_stage, quiet
from .segment import PreviousSegments, Segmentation, segment_customers

log = logging.getLogger(__name__)

# Imported on a thread while other work runs, so that they are loaded when needed: scikit-learn
# takes ~3 s to import here (SciPy's stats come with it), kneed 0.46 s (SciPy's signal),
# vl-convert ~1 s. The segmentation's while polars reads the rows (it releases the GIL), the
# writers' while the customers are segmented (on one thread, for determinism: the other core
# is idle, and the PDF's process gets ready there: see pdf_process). Starting vl-convert's
# engine on that thread as well (its first chart costs ~1 s) slowed the segmentation by 2 s.
SEGMENTATION_MODULES = ("sklearn.cluster", "sklearn.metrics", "sklearn.preprocessing",
                        "scipy.optimize", "scipy.spatial.distance", "threadpoolctl",
                        "kneed")  # fmt: skip
WRITER_MODULES = ("vl_convert",)  # the email's charts; the PDF has its own process


def _import_all(modules: tuple[str, ...]) -> None:
    for name in modules:
        importlib.import_module(name)


def _prepare_writers(pdf_process: PdfProcess, config: Config) -> None:
    """Start the PDF's process; load vl-convert here when the email needs its PNG charts."""
    pdf_process.start()
    if config.email is not None:
        _import_all(WRITER_MODULES)


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
    with report_lock(report_dir), PdfProcess() as pdf_process:
        report = compute_report(config, as_of=as_of, stage=stage, history_dir=report_dir,
                                prepare=functools.partial(_prepare_writers, pdf_process, config))  # fmt: skip
        (stage or quiet)("Writing the run folder")
        folder = report_dir / report.run_name
        marker = read_marker(folder)  # a re-run of a sent as-of keeps its sent.json
        paths = write_run_folder(report_dir, report.run_name,
                                 lambda d: write_run_files(report, d, pdf_process))  # fmt: skip
        keep_marker(marker, folder)
        if send or dry_run:
            (stage or quiet)("Sending the email" if not dry_run else "Checking the email")
            sent = send_run(folder, config, force=force, dry_run=dry_run, password=password,
                            smtp_class=smtp_class)  # fmt: skip
            paths += [path for path in sent if path not in paths]
    return RunResult(report, folder, paths)


def write_run_files(
    report: Report, folder: Path, pdf_process: PdfProcess | None = None
) -> list[Path]:
    """Every file of a run: the exports, then the reports, then the email (it attaches the PDF).
    With `pdf_process` (started), the PDF is written there while the exports, the HTML and the
    email's charts are made here."""
    from .context import build_context
    from .mail import email_charts, write_email
    from .render import start_reports

    ctx = build_context(report)  # one content model for the HTML, the PDF and the email
    reports = start_reports(report, folder, ctx, pdf_process)  # the PDF is written meanwhile
    exports = write_exports(report, folder)
    charts = email_charts(report, ctx)
    return [*exports, *reports(), *write_email(report, folder, ctx=ctx, charts=charts)]


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
    stage = stage or quiet
    with _in_background(functools.partial(_import_all, SEGMENTATION_MODULES)):
        facts = compute_rfm_stage(config, as_of, now, stage)
    previous = _previous(config, history_dir, facts.period.as_of)
    stage("Segmenting customers")
    earlier = _previous_segments(config, previous)
    with _in_background(prepare):
        representation = build_representation(facts.rfm, facts.extras, config)  # None unless on
        segmentation = segment_customers(
            facts.rfm,
            config.segmentation,
            config.playbook,
            config.seed,
            earlier,
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
