"""The `reportgen` command. stdout carries only the paths written; logs go to stderr.

Exit codes: 0 ok, 1 unexpected, 2 usage, 3 invalid config, 4 bad or stale input data,
5 delivery failed (report written), 6 output not writable or disk full, 7 another run holds
the lock, 130 interrupted.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, NoReturn

import click

from .errors import EXIT_CODES, ReportgenError

log = logging.getLogger("reportgen")

_EPILOG = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())


@click.group(epilog=_EPILOG)
@click.version_option(package_name="reportgen")
def cli() -> None:
    """Customer segmentation reports from a transaction log."""


def _config_option(function: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path),
        default=Path("config.yaml"), show_default=True, help="The YAML configuration file.",
    )(function)  # fmt: skip


def _verbosity(function: Callable[..., None]) -> Callable[..., None]:
    function = click.option("-v", "--verbose", count=True, help="More log detail (-vv: debug).")(
        function
    )
    return click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")(function)


def _parse_as_of(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> str | dt.date | None:
    from .config import parse_as_of

    if value is None:
        return None
    try:
        return parse_as_of(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command(epilog=_EPILOG)
@_config_option
@click.option("--as-of", callback=_parse_as_of, help="Last day covered (overrides the config).")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Output root (overrides output.dir).")  # fmt: skip
@click.option(
    "--send",
    is_flag=True,
    help="Email the summary to the config's recipients after writing the run folder.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Write the email (email.eml) and say what would be sent; send nothing.",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --send: send even if this run's email was sent before (sent.json).",
)
@_verbosity
def run(config_path: Path, as_of: str | dt.date | None, output: Path | None, send: bool, dry_run: bool,
        force: bool, verbose: int, quiet: bool) -> None:  # fmt: skip
    """Compute the report and write its run folder; --send emails it.

    The email is written into the run folder as email.eml on every run (when the config has an
    email section) and sent only with --send. A delivery failure exits with 5 and leaves every
    file in place; a second send of the same run is refused (exit 2) unless --force.
    """
    from .pipeline import run as run_pipeline

    with _handled(verbose, quiet):
        if force and not send:
            log.warning("--force only matters with --send: nothing is sent")
        if send and dry_run:
            log.info("--dry-run: nothing is sent")
        with _progress() as stage:
            result = run_pipeline(config_path, as_of=as_of, output=output, stage=stage,
                                  send=send, force=force, dry_run=dry_run)  # fmt: skip
    for path in result.paths:
        click.echo(str(path))


@cli.command(epilog=_EPILOG)
@click.argument("run_folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_config_option
@click.option("--force", is_flag=True, help="Send even if this run's email was sent before.")
@click.option("--dry-run", is_flag=True, help="Say what would be sent; send nothing.")
@_verbosity
def send(run_folder: Path, config_path: Path, force: bool, dry_run: bool, verbose: int,
         quiet: bool) -> None:  # fmt: skip
    """Send the email of an existing run folder (its email.eml) to the config's recipients.

    Records the delivery in RUN_FOLDER/sent.json; a run already sent needs --force (exit 2
    otherwise). A delivery failure exits with 5.
    """
    from .config import load_config
    from .mail import send_run
    from .output import report_lock

    with _handled(verbose, quiet):
        config = load_config(config_path)
        with report_lock(run_folder.resolve().parent):
            paths = send_run(run_folder, config, force=force, dry_run=dry_run)
    for path in paths:
        click.echo(str(path))


@cli.command(epilog=_EPILOG)
@_config_option
@_verbosity
def validate(config_path: Path, verbose: int, quiet: bool) -> None:
    """Check a config file and report every problem at once."""
    from .config import load_config

    with _handled(verbose, quiet):
        load_config(config_path)
        log.info("%s: valid", config_path)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the config file (for editor completion)."""
    from .starter import json_schema

    click.echo(json_schema())


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="config.yaml")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, force: bool) -> None:
    """Write a commented starter config (runs on the built-in sample data as it is)."""
    from .starter import render_starter_config

    if path.exists() and not force:
        raise click.UsageError(f"{path} exists; pass --force to overwrite it")
    path.write_text(render_starter_config(), encoding="utf-8")
    click.echo(str(path))


@cli.command()
@click.option("--rows", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option("--customers", type=click.IntRange(min=1), default=5_000, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default=None,
              help="File format (default: from the file name).")  # fmt: skip
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="File to write (.csv or .parquet).")  # fmt: skip
@click.option("--demographics", is_flag=True,
              help="Add AgeBand, Gender and Region columns (for the fairness audit).")  # fmt: skip
@click.option("--bias", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of the churned customers moved into the 65+ age band: a planted "
                   "bias (implies --demographics).")  # fmt: skip
@_verbosity
def sample(rows: int, customers: int, seed: int, fmt: Literal["csv", "parquet"] | None, output: Path, demographics: bool,
           bias: float, verbose: int, quiet: bool) -> None:  # fmt: skip
    """Write synthetic transactions (UCI Online Retail columns) with planted customer types."""
    from .sample import SampleSpec, write_sample

    with _handled(verbose, quiet):
        if fmt is None and output.suffix.lower() not in (".csv", ".parquet"):
            raise click.UsageError("give --format, or a file name ending in .csv or .parquet")
        try:
            spec = SampleSpec(
                rows=rows,
                customers=customers,
                seed=seed,
                demographics=demographics or bias > 0,
                planted_bias=bias,
            )
            written = write_sample(spec, output, fmt)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(str(written))


@cli.command(epilog=_EPILOG)
@_config_option
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Output root (overrides output.dir).")  # fmt: skip
@_verbosity
def history(config_path: Path, output: Path | None, verbose: int, quiet: bool) -> None:
    """List the runs of the report: as-of date, k, segment sizes and names."""
    from .config import load_config
    from .history import read_snapshot, run_folders

    with _handled(verbose, quiet):
        config = load_config(config_path)
        report_dir = (output or Path(config.output.dir)) / config.report.report_slug
        folders = run_folders(report_dir)
        if not folders:
            log.info("no runs yet in %s", report_dir)
        for folder in folders:
            try:
                snap = read_snapshot(folder)
            except ValueError as exc:
                log.warning("%s", exc)
                continue
            sizes = ", ".join(f"{name} {snap.sizes.get(name, 0):,}" for name in snap.names)
            click.echo(f"{snap.as_of}  k={snap.k}  {sum(snap.sizes.values()):,} customers  {sizes}")


@contextlib.contextmanager
def _handled(verbose: int, quiet: bool) -> Iterator[None]:
    """Logging set-up, and user errors turned into a message and their exit code."""
    _configure_logging(verbose, quiet)
    try:
        yield
    except ReportgenError as exc:
        log.error("%s", exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted; nothing was half-written")
        sys.exit(130)
    except click.ClickException:
        raise
    except Exception:
        log.exception("unexpected error (a bug: please report it with this log)")
        sys.exit(1)


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    root = logging.getLogger("reportgen")
    root.setLevel(level)
    root.handlers.clear()
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.propagate = False


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[str], None]]:
    """A progress display of the stages on a terminal; plain log lines otherwise."""
    if not sys.stderr.isatty():
        yield lambda text: log.info("%s", text)
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("Starting", total=None)
        yield lambda text: progress.update(task, description=text)


def main() -> NoReturn:
    """Console-script entry point."""
    try:
        cli(prog_name="reportgen")
    except SystemExit as done:
        _exit_now(done.code)
    _exit_now(0)


def _exit_now(code: int | str | None) -> NoReturn:
    """Exit without tearing the interpreter down: unloading SciPy, scikit-learn and polars
    module by module took 1-1.5 s at the end of every run, for nothing. The exit handlers
    (logging's flush among them) still run, and the streams are flushed."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


if __name__ == "__main__":
    main()
