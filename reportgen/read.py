"""Reading: transactions from CSV, Parquet or Excel into one lazy frame in the canonical schema.

Nothing is collected here. The frame carries the canonical columns (below), the source columns
under a `src:` prefix (for the duplicate rule, which compares whole source rows), a row number
(to name rows in errors) and flags for values that could not be parsed; `clean` turns the flags
into audit rules or input errors.

Canonical columns: customer_id (str), order_id (str), order_ts (local naive datetime),
amount_minor (int, currency minor units), amount (float), quantity, unit_price,
product_id, currency, and the configured attribute columns under their own names.
"""

from __future__ import annotations

import codecs
import csv
import functools
import glob
import itertools
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import polars as pl

from .config import SAMPLE_PREFIX, ColumnMap, InputSection
from .errors import InputDataError, counted

log = logging.getLogger(__name__)

SOURCE_PREFIX = "src:"
ROW = "_row"  # row number within its file
FILE = "_file"  # position of the file in Source.files
MAX_EXACT_FLOAT_ID = 2**53
_SUFFIX_FORMATS = {
    ".csv": "csv", ".tsv": "csv", ".txt": "csv",
    ".parquet": "parquet", ".pq": "parquet",
    ".xlsx": "excel", ".xlsm": "excel",
}  # fmt: skip


@dataclass(frozen=True)
class Source:
    """What was read: the resolved location, its format and its columns."""

    location: str
    format: str
    files: tuple[str, ...]
    columns: tuple[str, ...]
    first_line: int  # the file line of a file's data row 0 (CSV, Excel: after input.header_row)

    def line(self, row: int) -> int:
        """The 1-based line (Parquet: data row; Excel: sheet row) in its file of a file's data
        row `row`."""
        return row + self.first_line

    @property
    def position(self) -> str:
        """What `line` counts: 'line' (CSV) or 'row' (Parquet, Excel, tables)."""
        return position_word(self.format)

    def describe_rows(self, positions: list[tuple[int, int]]) -> str:
        """'first lines: 3, 5' (rows, for Parquet and Excel), naming the files when there are
        several."""
        unit = self.position + "s"
        if len(self.files) == 1:
            return f"first {unit}: " + ", ".join(str(self.line(r)) for _, r in positions)
        shown = ", ".join(f"{self.files[f]}:{self.line(r)}" for f, r in positions)
        return f"first {unit}: {shown}"


@dataclass(frozen=True)
class Transactions:
    """The lazy canonical frame and where it came from."""

    frame: pl.LazyFrame
    source: Source
    minor_digits: int  # decimals of the currency's minor unit (GBP 2, JPY 0)
    has_order_id: bool  # without one, an order is a customer's purchases on one day
    attributes: tuple[str, ...]  # extra per-customer columns (e.g. Country)
    temporary_files: tuple[str, ...] = ()  # UTF-8 copies of other encodings; see release()
    file_rows: tuple[int, ...] = ()  # several Parquet or CSV files: the rows of each
    read_files: Callable[[int, int], pl.LazyFrame] | None = None  # see `files_frame`

    def files_frame(self, first: int, last: int) -> pl.LazyFrame:
        """The canonical rows of the Parquet files `first` to `last` (excluded); `frame` when
        there is one file. A slice of one file reads only its rows, where a slice of `frame`,
        the files' union, reads every row before it (200M rows in four files: chunks of 5M took
        0.2 -> 2.3 s each); and the files of one schema are read as one scan (`_one_scan`).
        """
        return self.frame if self.read_files is None else self.read_files(first, last)

    def release(self) -> None:
        """Delete the temporary copies once the frame has been collected."""
        for path in self.temporary_files:
            Path(path).unlink(missing_ok=True)


def read_transactions(cfg: InputSection, currency: str, timezone: str = "UTC") -> Transactions:
    """Open the configured source lazily and map it to the canonical schema.

    Zoned timestamps are converted to `timezone`; naive ones are taken as already in it.
    Call `release()` on the result after collecting (it may hold transcoded copies).
    """
    location, fmt, files = _locate(cfg)
    scan_files, temporary = _utf8_copies(cfg, fmt, files)
    try:
        raw_files, first_line = _scan(cfg, fmt, scan_files)
        several = fmt != "excel" and len(files) > 1
        folder = _folder(scan_files, raw_files, _scanner(cfg, fmt)) if several else None
        raw = _concat(folder.frames(0, len(files)) if folder else raw_files)
        schema = _schema(raw, cfg, fmt, files)
    except BaseException:
        Transactions(pl.LazyFrame(), None, 0, False, (), temporary).release()  # type: ignore[arg-type]
        raise
    columns = tuple(schema.names())
    hint = _header_row_hint(cfg, fmt, (files[0], scan_files[0]), columns)
    check_mapped_columns(cfg.columns, cfg.attributes, columns, location, hint)
    _check_key_types(cfg.columns, schema, location)
    digits = _minor_digits(currency)
    source = Source(location, fmt, tuple(files), tuple(schema.names()), first_line)
    canonical = functools.partial(_canonical, cfg=cfg, digits=digits, tz=timezone, schema=schema)
    read_files = None
    if folder is not None and fmt == "parquet":  # the first pass reads it in chunks of files
        union = raw.collect_schema() if len(folder.runs) > 1 else None
        read_files = _files_reader(folder, union, canonical)
    return Transactions(
        canonical(raw), source, digits, cfg.columns.order_id is not None, tuple(cfg.attributes),
        tuple(temporary), tuple(folder.counts if folder else ()), read_files,
    )  # fmt: skip


def sample_data_path(name: str) -> Path:
    """The file of a built-in sample data set."""
    return Path(str(resources.files("reportgen") / "data" / f"{name}.parquet"))


# --- locating and scanning ---------------------------------------------------------------------


def _locate(cfg: InputSection) -> tuple[str, str, list[str]]:
    path = cfg.path
    assert path is not None, "a file source: the config requires input.path"
    if path.startswith(SAMPLE_PREFIX):
        file = sample_data_path(path[len(SAMPLE_PREFIX) :])
        return path, "parquet", [str(file)]
    files = _expand(path, cfg.format)
    fmt = cfg.format if cfg.format != "auto" else _format_of(path, files)
    return path, fmt, files


def _expand(path: str, fmt: str) -> list[str]:
    if Path(path).is_dir():
        files = _files_in_folder(Path(path), fmt)
        where = f"folder {path} holds no data files ({', '.join(sorted(_SUFFIX_FORMATS))})"
    elif glob.has_magic(path):
        files = sorted(f for f in glob.glob(path, recursive=True) if Path(f).is_file())
        where = f"no file matches {path}"
    else:
        files = [path] if Path(path).is_file() else []
        where = f"file not found: {path}" if not Path(path).exists() else f"not a file: {path}"
    if not files:
        raise InputDataError(f"input.path: {where} (check the path in the config)")
    for file in files:
        _check_readable(file)
    return files


def _files_in_folder(folder: Path, fmt: str) -> list[str]:
    """Every data file below `folder` of one format (the configured one, else the one found)."""
    found = [f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in _SUFFIX_FORMATS]
    formats = {_SUFFIX_FORMATS[f.suffix.lower()] for f in found}
    wanted = fmt if fmt != "auto" else (formats.pop() if len(formats) == 1 else "parquet")
    return sorted(str(f) for f in found if _SUFFIX_FORMATS[f.suffix.lower()] == wanted)


def _check_readable(path: str) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise InputDataError(f"input.path: cannot read {path}: {exc.strerror or exc}") from None


def _format_of(path: str, files: list[str]) -> str:
    suffixes = {Path(f).suffix.lower() for f in files}
    formats = {_SUFFIX_FORMATS.get(s, "") for s in suffixes}  # "": an unknown suffix
    if len(formats) == 1 and "" not in formats:
        return formats.pop()
    known = ", ".join(sorted(_SUFFIX_FORMATS))
    raise InputDataError(
        f"input.path: cannot tell the format of {path} (suffixes {sorted(suffixes)}); "
        f"use one of {known}, or set input.format to csv, parquet or excel"
    )


def _scan(cfg: InputSection, fmt: str, files: list[str]) -> tuple[list[pl.LazyFrame], int]:
    """A lazy frame per file; `_row` counts its rows and `_file` numbers the file."""
    if fmt == "parquet" and cfg.header_row != 1:
        raise InputDataError(
            f"input.header_row: {cfg.path} is Parquet, whose columns are named without a header "
            "row; remove input.header_row"
        )
    after_header = cfg.header_row + 1  # the file line (sheet row) of data row 0
    if fmt == "excel":
        return _numbered([_excel_frame(cfg, f) for f in files]), after_header
    try:
        scan = _scanner(cfg, fmt)
        frames = [scan(f).with_row_index(ROW) for f in files]
        return _numbered(frames), 1 if fmt == "parquet" else after_header
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise InputDataError(f"input.path: cannot read {cfg.path} as {fmt}: {exc}") from None


_Scan = Callable[..., pl.LazyFrame]  # a file or a list of files, and scan options


def _scanner(cfg: InputSection, fmt: str) -> _Scan:
    """How Parquet or CSV files are scanned (the paths are ours: no glob, no hive columns)."""
    if fmt == "parquet":
        return functools.partial(pl.scan_parquet, glob=False, hive_partitioning=False)
    return functools.partial(_scan_csv, cfg)


def _numbered(frames: list[pl.LazyFrame]) -> list[pl.LazyFrame]:
    return [f.with_columns(pl.lit(i, dtype=pl.UInt32).alias(FILE)) for i, f in enumerate(frames)]


def _concat(frames: list[pl.LazyFrame]) -> pl.LazyFrame:
    """The files as one table: columns by name, each in the type that holds every file's."""
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")


@dataclass(frozen=True)
class _Folder:
    """Several Parquet or CSV files, in runs of consecutive files of one schema (CSV: one
    header), each run read as one scan (`_one_scan`)."""

    files: list[str]  # the paths scanned (CSV in another encoding: the UTF-8 copies)
    scans: list[pl.LazyFrame]  # a scan per file (`_scan`)
    runs: list[tuple[int, int]]  # first and last (excluded) file of each run
    counts: list[int]  # each file's rows (a run's scan numbers its rows from them)
    scan: _Scan

    def frames(self, first: int, last: int) -> list[pl.LazyFrame]:
        """The rows of files `first` to `last` (excluded): a scan per run of them, or per file
        when alone in its run (a slice of its own scan reads only its rows)."""
        frames = []
        for start, end in self.runs:
            start, end = max(start, first), min(end, last)
            if end - start == 1:
                frames.append(self.scans[start])
            elif end > start:
                counts = self.counts[start:end]
                frames.append(_one_scan(self.files[start:end], counts, self.scan, start))
        return frames


def _folder(files: list[str], scans: list[pl.LazyFrame], scan: _Scan) -> _Folder | None:
    """The files in runs of one schema, or None when one cannot be read (the union of a scan per
    file then says which, with the reason)."""
    try:
        schemas = [frame.collect_schema() for frame in scans]
    except (pl.exceptions.PolarsError, OSError):
        return None
    starts = [i for i, schema in enumerate(schemas) if i == 0 or schema != schemas[i - 1]]
    runs = list(itertools.pairwise([*starts, len(files)]))
    return _Folder(files, scans, runs, _row_counts(files, scan), scan)


_PATH, _SCAN_ROW = "__reportgen_path", "__reportgen_scan_row"


# Files' rows are counted this many at a time, in parallel (1,000 Parquet files: 0.78 -> 0.3
# s); polars warns past 512 blocking threads.
_COUNTED_AT_ONCE = 256


def _row_counts(files: list[str], scan: _Scan) -> list[int]:
    """The rows of each file: Parquet from its metadata, CSV by counting its records (10M rows
    in 1,000 files: 0.46 s, half a parse)."""
    counts = []
    for at in range(0, len(files), _COUNTED_AT_ONCE):
        queries = [scan(f).select(pl.len()) for f in files[at : at + _COUNTED_AT_ONCE]]
        counts += [frame.item() for frame in pl.collect_all(queries)]
    return counts


def _files_reader(
    folder: _Folder, union: pl.Schema | None, canonical: Callable[[pl.LazyFrame], pl.LazyFrame]
) -> Callable[[int, int], pl.LazyFrame]:
    """Transactions.read_files: the canonical rows of files `first` to `last` (excluded), each
    run of one schema cast to the files' `union` (None: they all share one schema)."""

    def read_files(first: int, last: int) -> pl.LazyFrame:
        frames = folder.frames(first, last)
        return pl.concat([canonical(f if union is None else _conformed(f, union)) for f in frames])

    return read_files


def _one_scan(files: list[str], counts: list[int], scan: _Scan, first: int = 0) -> pl.LazyFrame:
    """Files of one schema as one scan, which polars reads several times faster than the union of
    a scan per file (Parquet, 200 files of 50k rows: 0.3 s against 0.9 s; a chunk of 500 files
    of 10k rows: 0.38 s against 3.7 s; CSV, 10M rows in 1,000 files: 0.9 s against 12.6 s).
    `_file` comes from the row's file path (`first`: the position of the first file in the
    source), `_row` from its row in the scan less the rows of the files before. Looking that up
    in a Series stops polars from pushing a slice into the scan (hence Transactions.files_frame);
    `replace_strict` would not, but made a filtered read of 200M rows hold 13 GB. `counts`: the
    files' rows."""
    starts = pl.Series(list(itertools.accumulate([0, *counts[:-1]])), dtype=pl.UInt32)
    scanned = scan(files, include_file_paths=_PATH, row_index_name=_SCAN_ROW)
    position = pl.col(_PATH).cast(pl.Enum(files)).to_physical().cast(pl.UInt32)
    row = (pl.col(_SCAN_ROW) - pl.lit(starts).gather(position)).cast(pl.UInt32)
    numbered = scanned.with_columns((position + first).alias(FILE), row.alias(ROW))
    return numbered.drop(_PATH, _SCAN_ROW)


def _conformed(frame: pl.LazyFrame, union: pl.Schema) -> pl.LazyFrame:
    """A file's or a run's frame in the schema of the files' union (`_concat`): its columns cast
    to the union's types, the columns it lacks as nulls."""
    own = frame.collect_schema()
    return frame.select(
        pl.col(name).cast(dtype) if name in own else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in union.items()
    )


def _schema(raw: pl.LazyFrame, cfg: InputSection, fmt: str, files: list[str]) -> pl.Schema:
    """The source columns (without ours); unreadable files fail here, with the reason."""
    try:
        schema = raw.collect_schema()
    except pl.exceptions.NoDataError:
        empty = next((f for f in files if Path(f).stat().st_size == 0), None)
        if empty is None and cfg.header_row > 1:
            raise _no_header_row(cfg.path or "", cfg, fmt) from None
        raise InputDataError(
            f"input.path: {empty or cfg.path} is empty (no header, no rows)"
        ) from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputDataError(
            f"input.path: cannot read {cfg.path} as {fmt}: {first} (is it really {fmt}? "
            "set input.format if the file name misleads)"
        ) from None
    names = [n for n in schema.names() if n not in (ROW, FILE)]
    if fmt == "csv" and any("\ufffd" in n for n in names):
        raise undecodable_error(files, cfg.csv.encoding)
    return pl.Schema({n: schema[n] for n in names})


def _scan_csv(cfg: InputSection, files: str | list[str], **options: Any) -> pl.LazyFrame:
    # Everything is read as text: ids keep leading zeros, and parsing is ours, so a value that
    # does not parse can be counted and shown instead of silently becoming null.
    return pl.scan_csv(
        files,
        skip_lines=cfg.header_row - 1,
        separator=cfg.csv.separator,
        quote_char=cfg.csv.quote_char,
        infer_schema=False,
        encoding="utf8",
        glob=False,
        **options,
    )


def _excel_frame(cfg: InputSection, file: str) -> pl.LazyFrame:
    """A sheet's rows, `_row` numbering them so that `Source.position` gives the sheet's own
    rows: blank rows are numbered, then left out (they are not transactions), and without
    input.header_row the header may follow blank rows."""
    try:
        rows, header_row = _read_excel(cfg, file)
    except pl.exceptions.NoDataError:
        if cfg.header_row > 1:
            raise _no_header_row(file, cfg, "excel") from None
        raise InputDataError(f"input.path: {file}: the sheet is empty") from None
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise InputDataError(f"input.path: cannot read {file} as excel: {exc}") from None
    # Source.position adds input.header_row + 1; rows above a header found lower are added here
    numbered = rows.with_row_index(ROW, offset=header_row - cfg.header_row)
    return numbered.filter(pl.any_horizontal(pl.all().exclude(ROW).is_not_null())).lazy()


def position_word(fmt: str) -> str:
    """A CSV file's positions are lines (a record may span several); a sheet's or Parquet's,
    rows."""
    return "line" if fmt == "csv" else "row"


def _no_header_row(file: str, cfg: InputSection, fmt: str) -> InputDataError:
    where = position_word(fmt)
    return InputDataError(
        f"input.header_row: {file} has nothing on or after {where} {cfg.header_row}; set "
        f"input.header_row to the {where} of the column names"
    )


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name == "utf-8"


def _read_excel(cfg: InputSection, file: str) -> tuple[pl.DataFrame, int]:
    """The sheet's rows under its header, blank rows kept, and the header's row (from 1).

    The header is on input.header_row; left at 1 and blank there, it is the first row that is
    not blank (as polars would find it, but counted, so that rows keep their sheet numbers).
    """
    import fastexcel

    sheet = cfg.excel.sheet
    try:
        sheets = fastexcel.read_excel(file).sheet_names
    except fastexcel.FastExcelError as exc:
        raise InputDataError(f"{file}: cannot read it as an Excel workbook: {exc}") from None
    if sheet not in sheets and not (isinstance(sheet, int) and 0 <= sheet < len(sheets)):
        raise InputDataError(
            f"{file}: input.excel.sheet {sheet!r} not found; the workbook has "
            f"{', '.join(repr(s) for s in sheets)} (give a name, or a position counted from 0)"
        )
    by: dict[str, Any] = (
        {"sheet_name": sheet} if isinstance(sheet, str) else {"sheet_id": sheet + 1}
    )

    def under_header(row: int) -> pl.DataFrame:
        options = {"header_row": row - 1, "skip_rows": 0}  # counted from the sheet's first row
        return pl.read_excel(
            file, engine="calamine", read_options=options, drop_empty_rows=False, **by
        )

    rows = under_header(cfg.header_row)
    if cfg.header_row > 1 or not all(c.startswith(_UNNAMED) for c in rows.columns):
        return rows, cfg.header_row
    filled = rows.select(pl.any_horizontal(pl.all().is_not_null()).arg_true().first()).item()
    if filled is None:  # nothing under a blank first row
        raise pl.exceptions.NoDataError("the sheet is empty")
    header_row = cfg.header_row + 1 + filled
    return under_header(header_row), header_row


_UNNAMED = "__UNNAMED__"  # how polars names a column whose header cell is blank


def _utf8_copies(cfg: InputSection, fmt: str, files: list[str]) -> tuple[list[str], list[str]]:
    """CSV files in another encoding are transcoded to temporary UTF-8 copies."""
    if fmt != "csv" or _is_utf8(cfg.csv.encoding):
        return files, []
    copies: list[str] = []
    try:
        for file in files:
            copies.append(_transcode_to_utf8(file, cfg.csv.encoding))
    except BaseException:
        for copy in copies:
            Path(copy).unlink(missing_ok=True)
        raise
    return copies, copies


def _transcode_to_utf8(path: str, encoding: str) -> str:
    """Write a UTF-8 copy of a file in another encoding; an undecodable byte names its line."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    # closed by the `with` below; opened here so that its name outlives it
    out = tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".csv", delete=False)  # noqa: SIM115
    with open(path, "rb") as source, out:
        try:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                out.write(decoder.decode(chunk))
        except UnicodeDecodeError:
            out.close()
            Path(out.name).unlink(missing_ok=True)
            raise undecodable_error([path], encoding) from None
    return out.name


def undecodable_error(files: list[str] | tuple[str, ...], encoding: str) -> InputDataError:
    """The error naming the line and byte of the first text that does not decode."""
    for file in files:
        found = find_undecodable_line(file, encoding)
        if found is not None:
            line, byte = found
            return InputDataError(
                f"{file}:{line}: byte {byte:#04x} cannot be decoded as {encoding.upper()}; set "
                "input.csv.encoding to the file's encoding (e.g. latin-1 or cp1252)"
            )
    return InputDataError(f"{files[0]}: text that cannot be decoded as {encoding}")


def located_read_error(exc: Exception, source: Source, cfg: InputSection) -> InputDataError:
    """Turn a reading failure seen at collect time into an error naming the file and line."""
    text = str(exc).strip().splitlines()[0]
    if source.format == "csv" and "utf" in text.lower():
        return undecodable_error(source.files, "utf-8")
    if source.format == "csv" and "more fields" in text:
        for file in source.files:
            line = find_ragged_line(file, cfg)
            if line is not None:
                return InputDataError(
                    f"{file}:{line}: this line has more fields than the header; check "
                    f"input.csv.separator ({cfg.csv.separator!r}) and the quoting in the file"
                )
    where = source.location
    if source.format == "csv" and len(source.files) > 1 and _is_utf8(cfg.csv.encoding):
        where = next((f for f in source.files if not _parses(cfg, f)), where)
    if source.format == "csv" and "properly escaped" in str(exc):
        for file in source.files if where == source.location else [where]:
            quoting = find_bad_quote(file, cfg)
            if quoting is not None:
                return InputDataError(f"{file}:{quoting[0]}: {quoting[1]}")
        text = "a quoted field is not closed properly; check the quoting in the file"
    return InputDataError(f"{where}: cannot read the data: {text}")


def _parses(cfg: InputSection, file: str) -> bool:
    """Whether a CSV file parses (only asked once a folder's read failed: which file was it?)."""
    try:
        _scan_csv(cfg, file).collect()
    except (pl.exceptions.PolarsError, OSError):
        return False
    return True


def find_undecodable_line(path: str, encoding: str = "utf-8") -> tuple[int, int] | None:
    """(1-based line, byte) of the first byte that does not decode, or None."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    line = 1
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return line + chunk[: exc.start].count(b"\n"), chunk[exc.start]
            line += chunk.count(b"\n")
    return None


def find_bad_quote(path: str, cfg: InputSection) -> tuple[int, str] | None:
    """(1-based line, what is wrong) of the first CSV record whose quoting is broken, or None.
    polars reports only the field (with every line a quote that never closes swallowed)."""
    quote = cfg.csv.quote_char
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        skipped = _skip_above_header(handle, cfg)
        reader = csv.reader(handle, delimiter=cfg.csv.separator, quotechar=quote, strict=True)
        start = skipped + 1  # the line the record being read starts on
        try:
            for _ in reader:
                start = skipped + reader.line_num + 1
        except csv.Error as exc:
            if "end of data" in str(exc):
                return start, (
                    f"a field opened with a quote ({quote}) on this line is never closed (the "
                    "rest of the file would be one value); close it or remove the quote"
                )
            return start, (
                f"a quoted field is followed by more text before the next separator "
                f"({cfg.csv.separator!r}); a quote ({quote}) inside a quoted field is written "
                f"twice ({quote}{quote})"
            )
    return None


def find_ragged_line(path: str, cfg: InputSection) -> int | None:
    """The 1-based line of the first CSV record with more fields than the header, or None."""
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        skipped = _skip_above_header(handle, cfg)
        reader = csv.reader(handle, delimiter=cfg.csv.separator, quotechar=cfg.csv.quote_char)
        width = len(next(reader, []))
        for record in reader:
            if len(record) > width:
                return skipped + reader.line_num
    return None


def _skip_above_header(handle: TextIO, cfg: InputSection) -> int:
    """Read past the lines above the header (input.header_row), as polars' skip_lines does."""
    for _ in range(cfg.header_row - 1):
        handle.readline()
    return cfg.header_row - 1


# --- mapping to the canonical schema -----------------------------------------------------------


def check_mapped_columns(
    mapping: ColumnMap,
    attributes: Sequence[str],
    columns: tuple[str, ...],
    location: str,
    hint: str | None = None,
) -> None:
    """Every mapped column and attribute is one of `columns` (a file's or a table's), once.
    `hint`: the likely cause when some are not (else guessed from the names)."""
    wanted = {f"input.columns.{k}": v for k, v in mapping.mapped().items()}
    wanted |= {f"input.attributes[{i}]": a for i, a in enumerate(attributes)}
    missing = [
        f"{key}: {col!r}{_closest_column(col, columns)}"
        for key, col in wanted.items() if col not in columns
    ]  # fmt: skip
    # polars renames a CSV header's repeated name to name_duplicated_0, ...: which was meant?
    repeated = [f"{key}: {col!r}" for key, col in wanted.items()
                if f"{col}_duplicated_0" in columns]  # fmt: skip
    if repeated:
        raise InputDataError(
            f"{location}: mapped column(s) appear more than once in the header: "
            f"{'; '.join(repeated)}; rename the copies so that each name is one column"
        )
    if missing:
        raise InputDataError(
            f"{location}: mapped column(s) not found: {'; '.join(missing)}. "
            f"The data has: {', '.join(_printable(c) for c in columns)}"
            f"{hint or _header_hint(columns, len(missing) == len(wanted))}"
        )


def is_id_type(dtype: pl.DataType) -> bool:
    """Whether a column of this type can hold customer or order ids: text, or numbers (floats
    are checked for whole values when read)."""
    textual = dtype in (pl.String, pl.Categorical, pl.Null) or isinstance(dtype, pl.Enum)
    return textual or dtype.is_integer() or dtype.is_float() or dtype.is_decimal()


def _check_key_types(mapping: ColumnMap, schema: pl.Schema, location: str) -> None:
    """A mapped id column of true/false, dates or lists, or a date column of true/false, is the
    wrong column (a Boolean id column made two customers, 'true' and 'false')."""
    for key, what in (("customer_id", "customer"), ("order_id", "order")):
        name = getattr(mapping, key)
        if name is not None and not is_id_type(schema[name]):
            raise InputDataError(
                f"{location}: column {name!r} (input.columns.{key}) has type {schema[name]}, "
                f"which cannot hold ids; map the column that identifies each {what} (text or "
                "whole numbers)"
            )
    dtype = schema[mapping.order_date]
    # text and numbers (20240301) are read with input.date_formats
    if not (dtype == pl.Date or isinstance(dtype, pl.Datetime) or is_id_type(dtype)):
        raise InputDataError(
            f"{location}: column {mapping.order_date!r} (input.columns.order_date) has type "
            f"{dtype}, which cannot hold dates; map the column of order dates"
        )


# A header further down than this is not looked for (the file is then not the one expected).
_HEADER_SEARCH_ROWS = 50


def _header_row_hint(
    cfg: InputSection, fmt: str, first: tuple[str, str], columns: tuple[str, ...]
) -> str | None:
    """When the header lacks mapped names and another of the first file's first rows holds them
    all (a title or notes above the header), the sentence saying which row to set; else None.
    `first`: the file, and the path read (a UTF-8 copy of a CSV file in another encoding)."""
    wanted = {*cfg.columns.mapped().values(), *cfg.attributes}
    if fmt not in ("csv", "excel") or wanted <= set(columns):
        return None
    file, read = first
    for number, row in enumerate(_first_rows(cfg, fmt, read), start=1):
        if number != cfg.header_row and wanted <= {str(v).strip() for v in row if v is not None}:
            where = position_word(fmt)
            return f". The mapped names are on {where} {number} of {file}: set input.header_row: {number}"
    return None


def _first_rows(cfg: InputSection, fmt: str, file: str) -> list[list[Any]]:
    """The first rows of a CSV file (each line read as a record) or of a sheet (from its first
    row, empty ones included)."""
    if fmt == "csv":
        with open(file, newline="", encoding="utf-8", errors="replace") as handle:
            lines = list(itertools.islice(handle, _HEADER_SEARCH_ROWS))
        separator, quote = cfg.csv.separator, cfg.csv.quote_char
        return [
            next(csv.reader([line], delimiter=separator, quotechar=quote), []) for line in lines
        ]
    import fastexcel

    sheet = fastexcel.read_excel(file).load_sheet(
        cfg.excel.sheet, header_row=None, skip_rows=0, n_rows=_HEADER_SEARCH_ROWS
    )
    return [list(row) for row in sheet.to_polars().rows()]


def _closest_column(name: str, columns: tuple[str, ...]) -> str:
    """' (did you mean ...?)' naming a column of the same letters and digits in another case or
    spacing ('Customer ID' for 'customer_id'). Close spellings are not offered: 'invoice_dat'
    is close to both 'invoice_date' and 'invoice_id'."""

    def letters(text: str) -> str:
        return "".join(c for c in text.casefold() if c.isalnum())

    same = [c for c in columns if letters(c) == letters(name)]
    return f" (did you mean {same[0]!r}?)" if same else ""


def _printable(name: str) -> str:
    """A column name as read, control characters escaped (a binary file's 'header')."""
    return name if name.isprintable() else repr(name)


def _header_hint(columns: tuple[str, ...], none_found: bool) -> str:
    """Why a file's header may hold none of the mapped names: a CSV read with the wrong separator
    has one column whose name holds the others; a title above the header is read as the header
    (a sheet's empty cells beside it named _UNNAMED)."""
    alone = columns[0] if len(columns) == 1 else ""
    separators = [s for s in (";", "\t", "|", ",") if s in alone]
    if separators:
        chosen = separators[0]
        return f". Is the separator {chosen!r}? Set input.csv.separator: {json.dumps(chosen)}"
    titled = (alone != "" and alone.isprintable()) or any(c.startswith(_UNNAMED) for c in columns)
    if none_found and titled:
        return (
            ". Is there a title above the header? Remove the rows above it, or set "
            "input.header_row to the header's row"
        )
    return ""


def _minor_digits(currency: str) -> int:
    from babel.numbers import get_currency_precision

    return get_currency_precision(currency)


def _canonical(
    raw: pl.LazyFrame, cfg: InputSection, digits: int, tz: str, schema: pl.Schema
) -> pl.LazyFrame:
    cols = cfg.columns
    dec = cfg.csv.decimal
    # Text is parsed once, into columns: an expression used several times (the money rounding
    # reads an amount six times) would otherwise parse the text again at each use.
    texts = [cols.order_id, cols.product_id, cols.currency, cols.amount, cols.quantity,
             cols.unit_price, cols.order_date]  # fmt: skip
    if not schema[cols.customer_id].is_numeric():
        texts.append(cols.customer_id)
    for step in (
        _trimmed_texts(texts, schema, cols.order_date),
        _parsed_numbers(cols, schema, dec),
        [_scaled_money(cols, schema, dec)],
        *_parsed_dates(cols.order_date, schema, cfg.date_formats, tz),
    ):
        if step:
            raw = raw.with_columns(step)
    exprs = [
        pl.col(ROW),
        pl.col(FILE),
        *_customer_exprs(cols.customer_id, schema[cols.customer_id], trimmed=True),
        _text(cols.order_id, schema).alias("order_id"),
        *_date_exprs(cols.order_date, schema[cols.order_date], cfg.date_formats, tz),
        *_amount_exprs(cols, schema, digits, dec),
        _text(cols.product_id, schema).alias("product_id"),
        _text(cols.currency, schema).alias("currency"),
        *[pl.col(a) for a in cfg.attributes],
        *[pl.col(c).alias(SOURCE_PREFIX + c) for c in schema.names()],
    ]
    return raw.select(exprs)


def _text(column: str | None, schema: pl.Schema) -> pl.Expr:
    """Text columns trimmed, empty as null; integer columns stay integers (cheaper to group)."""
    if column is None:
        return pl.lit(None, dtype=pl.String)
    if schema[column].is_integer():
        return pl.col(column).cast(pl.Int64)
    trimmed = pl.col(f"_trimmed:{column}")
    # not .replace: in polars 2.1 it holds the whole column
    return pl.when(trimmed != "").then(trimmed)


def _trimmed_texts(columns: list[str | None], schema: pl.Schema, dates: str) -> list[pl.Expr]:
    """The mapped columns that are not numbers or dates, trimmed, as `_trimmed:NAME`: every
    later use reads the column (an expression repeated in another is computed again). The
    `dates` column is text to parse unless it holds dates (an integer 20240301 reads with
    '%Y%m%d')."""
    texts = dict.fromkeys(
        c for c in columns
        if c is not None and not schema[c].is_temporal()
        and (c == dates or not schema[c].is_numeric())
    )  # fmt: skip
    return [_trimmed(c).alias(f"_trimmed:{c}") for c in texts]


def _trimmed(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.String).str.strip_chars()


def _customer_exprs(column: str, dtype: pl.DataType, trimmed: bool = False) -> list[pl.Expr]:
    """customer_id and the `_bad_id` flag.

    Numeric ids stay integers until the per-customer table (grouping 10M integers is far
    cheaper than 10M strings); floats must be whole and below 2^53, or digits were lost.
    Text ids keep leading zeros; '17850.0' (an id once stored as a float) is read as 17850.
    `trimmed`: the frame has the text trimmed as `_trimmed:NAME` (see _canonical).
    """
    col = pl.col(column)
    if dtype.is_integer():
        return [col.cast(pl.Int64).alias("customer_id"), pl.lit(False).alias("_bad_id")]
    if dtype.is_float():
        exact = (col.abs() < MAX_EXACT_FLOAT_ID) & (col == col.floor())
        return [
            pl.when(exact).then(col).cast(pl.Int64).alias("customer_id"),
            (col.is_not_null() & ~exact).alias("_bad_id"),
        ]
    text = pl.col(f"_trimmed:{column}") if trimmed else _trimmed(column)
    # the pattern runs only where there is a dot (elsewhere a null, which costs nothing)
    whole = pl.when(text.str.contains(".", literal=True)).then(text).str.replace(_FLOAT_ID, "$1")
    text = pl.coalesce(whole, text)
    return [pl.when(text != "").then(text).alias("customer_id"), pl.lit(False).alias("_bad_id")]


_FLOAT_ID = r"^(\d+)\.0+$"  # '17850.0': an id once stored as a float


def _date_exprs(column: str, dtype: pl.DataType, formats: list[str], tz: str) -> list[pl.Expr]:
    """order_ts as naive local time in `tz`, plus flags: zoned source value, unparseable text."""
    col = pl.col(column)
    if isinstance(dtype, pl.Datetime):
        is_zoned = dtype.time_zone is not None
        ts = col.dt.convert_time_zone(tz).dt.replace_time_zone(None) if is_zoned else col
        flags = [pl.lit(is_zoned).alias("_zoned"), pl.lit(False).alias("_bad_date")]
        return [ts.cast(pl.Datetime("us")).alias("order_ts"), *flags]
    if dtype == pl.Date:
        ts = col.cast(pl.Datetime("us"))
        return [
            ts.alias("order_ts"),
            pl.lit(False).alias("_zoned"),
            pl.lit(False).alias("_bad_date"),
        ]
    parsed = [(pl.col(f"_date{i}"), "%z" in f or "%Z" in f) for i, f in enumerate(formats)]
    ts = pl.coalesce([p for p, _ in parsed])
    zoned = pl.coalesce([pl.when(p.is_not_null()).then(pl.lit(z)) for p, z in parsed])
    bad = pl.col("_date_given") & ts.is_null()
    return [ts.alias("order_ts"), zoned.alias("_zoned"), bad.alias("_bad_date")]


def _parsed_dates(
    column: str, schema: pl.Schema, formats: list[str], tz: str
) -> list[list[pl.Expr]]:
    """A text date column parsed with each format, as `_date0`, `_date1`..., and `_date_given`
    (it is not empty), in steps for `_canonical`: each format parses only the values that the
    formats before it did not (a null costs nothing to parse; 10M rows: 1.8 -> 1.0 s)."""
    if schema[column] == pl.Date or isinstance(schema[column], pl.Datetime):
        return []
    text = pl.col(f"_trimmed:{column}")
    steps = [[(text.is_not_null() & (text != "")).alias("_date_given")]]
    for i, fmt in enumerate(formats):
        steps.append([_parse(text, fmt, tz).alias(f"_date{i}")])
        text = pl.when(pl.col(f"_date{i}").is_null()).then(text)
    return steps


def _parse(text: pl.Expr, fmt: str, tz: str) -> pl.Expr:
    parsed = text.str.strptime(pl.Datetime("us"), fmt, strict=False)
    if "%z" in fmt or "%Z" in fmt:  # polars returns these in UTC
        parsed = parsed.dt.convert_time_zone(tz).dt.replace_time_zone(None)
    return parsed


# Money is fixed point: prices and amounts are exact to 6 decimals, quantities to 3, and every
# line is rounded once, half to even, to the currency's minor unit. Float products would round
# exact half pennies the wrong way (5 x 0.011 = 0.05499999... in binary).
_PRICE_SCALE, _QUANTITY_SCALE = 6, 3


_SCALED = "_scaled_money"


def _scaled_money(cols: ColumnMap, schema: pl.Schema, decimal: str) -> pl.Expr:
    """The line's money as a whole number of 10^-6 (an amount, a float) or 10^-9 (quantity times
    unit price, an Int128), as `_SCALED` for `_canonical`: the rounding reads it four times, and
    an expression repeated in another is computed again (5M amounts: 0.064 -> 0.035 s)."""
    if cols.amount is not None:
        amount, _ = _number(cols.amount, schema, decimal)
        return (amount * 10**_PRICE_SCALE).round(0).alias(_SCALED)
    quantity_column, price_column = cols.price_parts()
    quantity, _ = _number(quantity_column, schema, decimal)
    unit_price, _ = _number(price_column, schema, decimal)
    exact = _fixed(quantity, _QUANTITY_SCALE) * _fixed(unit_price, _PRICE_SCALE)
    return pl.when(_in_range(quantity * unit_price)).then(exact).alias(_SCALED)


def _amount_exprs(cols: ColumnMap, schema: pl.Schema, digits: int, decimal: str) -> list[pl.Expr]:
    """amount_minor: exact integer money per line (rounded from `_scaled_money`); non-numbers
    flagged."""
    scaled = pl.col(_SCALED)
    if cols.amount is not None:
        amount, bad = _number(cols.amount, schema, decimal)
        quantity = unit_price = pl.lit(None, dtype=pl.Float64)
        minor = _round_half_even_whole_float(scaled, _PRICE_SCALE - digits)
    else:
        quantity_column, price_column = cols.price_parts()
        quantity, bad_q = _number(quantity_column, schema, decimal)
        unit_price, bad_p = _number(price_column, schema, decimal)
        amount = quantity * unit_price
        bad = bad_q | bad_p | (amount.is_not_null() & ~_in_range(amount))
        minor = _round_half_even(scaled, _QUANTITY_SCALE + _PRICE_SCALE - digits)
    return [
        minor.cast(pl.Int64).alias("amount_minor"),
        amount.alias("amount"),  # unrounded, for the sign test of the cleaning rules
        quantity.alias("quantity"),
        unit_price.alias("unit_price"),
        bad.alias("_bad_amount"),
    ]


def _fixed(value: pl.Expr, scale: int) -> pl.Expr:
    """A decimal number as an integer count of 10^-scale (wide, so products cannot overflow)."""
    return (value * 10**scale).round(0).cast(pl.Int128)


def _round_half_even_whole_float(value: pl.Expr, drop_digits: int) -> pl.Expr:
    """`_round_half_even` for a float holding a whole number, in float arithmetic (4x cheaper).

    Exact while |value| < 2^53 (an amount below 9e9 at 6 decimals): every intermediate is then
    a whole number a float holds exactly. Beyond, the input float itself has no 6th decimal.
    """
    divisor = float(10**drop_digits)
    quotient = (value / divisor).floor()
    # a correctly rounded division can land on the next whole number, never below the true one
    quotient = pl.when(value - quotient * divisor < 0).then(quotient - 1).otherwise(quotient)
    twice_rest = (value - quotient * divisor) * 2
    up = (twice_rest > divisor) | ((twice_rest == divisor) & (quotient % 2 == 1))
    return quotient + up.cast(pl.Float64)


def _round_half_even(value: pl.Expr, drop_digits: int) -> pl.Expr:
    """Integer division by 10^drop_digits, rounded half to even, in exact integer arithmetic."""
    divisor = 10**drop_digits
    quotient = value // divisor  # floor, also for negative values
    twice_rest = (value - quotient * divisor) * 2
    up = (twice_rest > divisor) | ((twice_rest == divisor) & (quotient % 2 == 1))
    return quotient + up.cast(pl.Int128)


# Money is a finite number below this in size: its minor units then fit a 64-bit integer with
# room for any total. NaN, infinity and larger values (1e19 in a float column) cannot be summed
# exactly; they are reported with the values that are not numbers.
MONEY_LIMIT = 1e15


def not_money(count: int, cols: ColumnMap, text: bool) -> str:
    """The sentence for `count` money values that are not money (`_number`), in the file engine's
    and the pushdown's messages; `text`: the source can hold text (CSV)."""
    names = cols.amount or "/".join(cols.price_parts())
    return (
        f"{counted(count, 'value')} in {names!r} "
        f"{'is not a number' if count == 1 else 'are not numbers'} that can be money "
        f"({'text, ' if text else ''}NaN, infinity, or {MONEY_LIMIT:,.0f} or more)"
    )


def _number(column: str, schema: pl.Schema, decimal: str) -> tuple[pl.Expr, pl.Expr]:
    """The value of a number column (null when it is not a number below MONEY_LIMIT) and whether
    it holds such a value."""
    if schema[column].is_numeric():
        value, not_number = pl.col(column).cast(pl.Float64), pl.lit(False)
    else:
        value, not_number = pl.col(f"_number:{column}"), pl.col(f"_not_number:{column}")
    usable = _in_range(value)
    return pl.when(usable).then(value), not_number | (value.is_not_null() & ~usable)


def _in_range(value: pl.Expr) -> pl.Expr:
    return value.is_finite() & (value.abs() < MONEY_LIMIT)


def _parsed_numbers(cols: ColumnMap, schema: pl.Schema, decimal: str) -> list[pl.Expr]:
    """Text number columns parsed, as `_number:NAME` and `_not_number:NAME` (see _canonical)."""
    exprs = []
    for column in (cols.amount, cols.quantity, cols.unit_price):
        if column is None or schema[column].is_numeric():
            continue
        text = pl.col(f"_trimmed:{column}")
        if decimal == ",":  # thousands separators are not guessed: "1.234,5" is reported, not read
            text = text.str.replace(",", ".", literal=True)
        value = text.cast(pl.Float64, strict=False)
        exprs += [
            value.alias(f"_number:{column}"),
            (text.is_not_null() & (text != "") & value.is_null()).alias(f"_not_number:{column}"),
        ]
    return exprs
