"""The run folder `<output root>/<report slug>/<as_of>/`: lock, atomic replacement, clean-up.

Writers write into a sibling temporary folder `.tmp-<pid>`; only when every file is there does
it replace the run folder, by renames. A failure or an interrupt therefore never leaves half a
report, and a re-run of the same as_of replaces the previous files as a whole.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import LockedError, OutputError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


def prepare_report_dir(output_root: str | Path, slug: str) -> Path:
    """Create `<root>/<slug>` and prove it is writable, before any computing starts."""
    report_dir = Path(output_root) / slug
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        probe = report_dir / f"{TMP_PREFIX}probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"output folder {report_dir} is not writable ({exc.strerror or exc}); "
            "set output.dir in the config or pass --output DIR"
        ) from None
    return report_dir


@contextlib.contextmanager
def report_lock(report_dir: Path) -> Iterator[None]:
    """Hold the report's lock for the whole run; fail at once if another run holds it."""
    lock = FileLock(report_dir / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise LockedError(
            f"another reportgen run is writing {report_dir} (lock {report_dir / LOCK_NAME}); "
            "wait for it to finish, then run again"
        ) from None
    try:
        _remove_stale_temporaries(report_dir)
        yield
    finally:
        lock.release()


def _remove_stale_temporaries(report_dir: Path) -> None:
    """Under the lock, any temporary folder is left over from a run that died."""
    for leftover in report_dir.iterdir():
        if leftover.is_dir() and leftover.name.startswith((TMP_PREFIX, OLD_PREFIX)):
            log.info("removing %s, left by an interrupted run", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def write_run_folder(
    report_dir: Path, name: str, write_files: Callable[[Path], list[Path]]
) -> list[Path]:
    """Let `write_files` fill a temporary folder, then swap it in as `report_dir/name`."""
    tmp = report_dir / f"{TMP_PREFIX}{os.getpid()}"
    final = report_dir / name
    try:
        tmp.mkdir()
        written = write_files(tmp)
        _swap_in(tmp, final)
    except OSError as exc:
        raise _output_error(exc, report_dir) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [final / path.relative_to(tmp) for path in written]


def _swap_in(tmp: Path, final: Path) -> None:
    old = final.parent / f"{OLD_PREFIX}{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _output_error(exc: OSError, report_dir: Path) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing into {report_dir}; free space and run again")
    return OutputError(f"cannot write into {report_dir}: {exc.strerror or exc}")
