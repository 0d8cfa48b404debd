"""report.pdf written by a second process while this one writes the other files.

The PDF is the longest writer (1M rows on a busy evening: charts 3.6 s, of which 1.3 s start
vl-convert's engine, and layout 6.4 s, all holding the GIL), and the segmentation before it
leaves a core idle. So `reportgen run` starts a second process while the customers are
segmented, which imports WeasyPrint and starts vl-convert's engine there, then writes the PDF
while this process writes the exports, the HTML and the email. This module imports neither:
only the second process does (reportgen.pdf).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.process
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import ReportContext

log = logging.getLogger("reportgen.pdf")  # its lines read as the PDF writer's
REFUSED = "PDF: refused to load %s (the report loads only its own assets)"


@dataclass(frozen=True)
class PdfWritten:
    """How writing a PDF went: its charts' and its layout's seconds, and the URLs refused."""

    charts_s: float
    layout_s: float
    refused: list[str]


def log_written(path: Path, written: PdfWritten) -> None:
    log.info("wrote %s (%s bytes): charts %.1f s, layout %.1f s", path, f"{path.stat().st_size:,}",
             written.charts_s, written.layout_s)  # fmt: skip


class PdfProcess:
    """report.pdf written by a second process, started (`start`) before it is needed.

    `write` hands it the report's content and returns a function that waits for the file. If
    the process could not start or died, the PDF is written here instead; an error it raised
    (a broken user template: ConfigError) is raised here. Use it as a context manager: leaving
    stops the process."""

    def __init__(self) -> None:
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._done = False  # it sent back the PDF's outcome, and ends by itself

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # fork would copy polars' threads' locks
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(child,), name="reportgen-pdf", daemon=True)
        try:
            process.start()
        except OSError as exc:
            log.warning("PDF: no second process (%s); it is written after the HTML", exc)
            return
        child.close()
        self._process, self._conn = process, parent

    def write(
        self, ctx: ReportContext, path: Path, templates_dir: str | Path | None = None
    ) -> Callable[[], Path]:
        """Start writing report.pdf at `path`; the function returned waits for it."""
        conn = self._conn
        if conn is None or self._process is None or not self._process.is_alive():
            return lambda: _write_here(ctx, path, templates_dir)
        conn.send((ctx, path, templates_dir))

        def written() -> Path:
            try:
                status, value = conn.recv()
            except (EOFError, OSError):
                log.warning("PDF: the second process ended unexpectedly; writing it here")
                return _write_here(ctx, path, templates_dir)
            self._done = True
            if status == "error":
                raise value
            for url in value.refused:
                log.warning(REFUSED, url)
            log_written(path, value)
            return path

        return written

    def __enter__(self) -> PdfProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            if not self._done:  # no PDF asked, or this run failed first: stop it now
                self._process.terminate()
            self._process.join()


def _serve(conn: Connection) -> None:
    """The second process: get ready, then write the one PDF it is sent."""
    # its log lines reach the run's log through the parent (`written`), not stderr from here
    logging.getLogger("reportgen").addHandler(logging.NullHandler())
    # the job is read as it comes, during the warm-up: a pipe holds 64 KB, and the parent's send
    # of a larger content would wait for the warm-up's end instead of writing the HTML. It is
    # unpickled after (unpickling imports modules, which the warm-up imports too)
    jobs: list[bytes | None] = []
    receiver = threading.Thread(target=lambda: jobs.append(_job(conn)))
    receiver.start()
    _warm_up()
    receiver.join()
    if jobs[0] is None:
        return
    ctx, path, templates_dir = ForkingPickler.loads(jobs[0])
    from .errors import ReportgenError
    from .pdf import write_pdf_timed

    try:
        conn.send(("ok", write_pdf_timed(ctx, path, templates_dir)))
    except ReportgenError as exc:  # the user's to fix (a broken template): raised as it is
        conn.send(("error", exc))
    except Exception as exc:  # a bug: its traceback goes to the run's log
        conn.send(("error", RuntimeError("".join(traceback.format_exception(exc)))))


def _job(conn: Connection) -> bytes | None:
    """The PDF to write, pickled, or None when the run ended without asking for one."""
    try:
        return conn.recv_bytes()
    except (EOFError, OSError):
        return None


def _write_here(ctx: ReportContext, path: Path, templates_dir: str | Path | None) -> Path:
    from .pdf import write_pdf

    return write_pdf(ctx, path, templates_dir)


def _warm_up() -> None:
    """Import WeasyPrint and start vl-convert's engine with a one-point chart."""
    import vl_convert

    from .pdf import vl_version  # imports WeasyPrint

    spec = {"data": {"values": [{"x": 1}]}, "mark": "point", "encoding": {"x": {"field": "x"}}}
    vl_convert.vegalite_to_svg(spec, vl_version=vl_version(), allowed_base_urls=[])
