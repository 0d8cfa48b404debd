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
import glob
import logging
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl

from .config import SAMPLE_PREFIX, InputSection
from .errors import InputDataError

log = logging.getLogger(__name__)

SOURCE_PREFIX = "src:"
ROW = "_row"
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
    first_line: int  # the file line of data row 0 (CSV: 2 with a header), for messages


@dataclass(frozen=True)
class Transactions:
    """The lazy canonical frame and where it came from."""

    frame: pl.LazyFrame
    source: Source
    minor_digits: int  # decimals of the currency's minor unit (GBP 2, JPY 0)
    has_order_id: bool  # without one, an order is a customer's purchases on one day
    attributes: tuple[str, ...]  # extra per-customer columns (e.g. Country)


def read_transactions(cfg: InputSection, currency: str, timezone: str = "UTC") -> Transactions:
    """Open the configured source lazily and map it to the canonical schema.

    Zoned timestamps are converted to `timezone`; naive ones are taken as already in it.
    """
    location, fmt, files = _locate(cfg)
    raw, first_line = _scan(cfg, fmt, files)
    columns = tuple(raw.collect_schema().names())
    _check_mapped_columns(cfg, columns, location)
    digits = _minor_digits(currency)
    frame = _canonical(raw.with_row_index(ROW), cfg, digits, timezone, raw.collect_schema())
    source = Source(location, fmt, tuple(files), columns, first_line)
    return Transactions(
        frame, source, digits, cfg.columns.order_id is not None, tuple(cfg.attributes)
    )


def sample_data_path(name: str) -> Path:
    """The file of a built-in sample data set."""
    return Path(str(resources.files("reportgen") / "data" / f"{name}.parquet"))


# --- locating and scanning ---------------------------------------------------------------------


def _locate(cfg: InputSection) -> tuple[str, str, list[str]]:
    path = cfg.path
    if path.startswith(SAMPLE_PREFIX):
        file = sample_data_path(path[len(SAMPLE_PREFIX) :])
        return path, "parquet", [str(file)]
    files = _expand(path)
    fmt = cfg.format if cfg.format != "auto" else _format_of(path, files)
    return path, fmt, files


def _expand(path: str) -> list[str]:
    if Path(path).is_dir():
        files = sorted(glob.glob(str(Path(path) / "**" / "*.parquet"), recursive=True))
        where = f"folder {path} has no .parquet files"
    elif glob.has_magic(path):
        files = sorted(f for f in glob.glob(path, recursive=True) if Path(f).is_file())
        where = f"no file matches {path}"
    else:
        files = [path] if Path(path).is_file() else []
        where = f"file not found: {path}"
    if not files:
        raise InputDataError(f"input.path: {where} (check the path in the config)")
    unreadable = [f for f in files if not _readable(f)]
    if unreadable:
        raise InputDataError(f"input.path: cannot read {unreadable[0]} (permission denied?)")
    return files


def _readable(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        return True
    except OSError:
        return False


def _format_of(path: str, files: list[str]) -> str:
    suffixes = {Path(f).suffix.lower() for f in files}
    formats = {_SUFFIX_FORMATS.get(s) for s in suffixes}
    if len(formats) == 1 and None not in formats:
        return formats.pop()
    known = ", ".join(sorted(_SUFFIX_FORMATS))
    raise InputDataError(
        f"input.path: cannot tell the format of {path} (suffixes {sorted(suffixes)}); "
        f"use one of {known}, or set input.format to csv, parquet or excel"
    )


def _scan(cfg: InputSection, fmt: str, files: list[str]) -> tuple[pl.LazyFrame, int]:
    try:
        if fmt == "parquet":
            return pl.scan_parquet(files), 1
        if fmt == "excel":
            return _read_excel(cfg, files), 2
        return _scan_csv(cfg, files), 2
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise InputDataError(f"input.path: cannot read {cfg.path} as {fmt}: {exc}") from None


def _scan_csv(cfg: InputSection, files: list[str]) -> pl.LazyFrame:
    options = cfg.csv
    if codecs.lookup(options.encoding).name != "utf-8":
        files = [_transcode_to_utf8(f, options.encoding) for f in files]
    # Everything is read as text: ids keep leading zeros, and parsing is ours, so a value that
    # does not parse can be counted and shown instead of silently becoming null.
    return pl.scan_csv(
        files,
        separator=options.separator,
        quote_char=options.quote_char,
        infer_schema=False,
        encoding="utf8",
        missing_columns="insert",
    )


def _read_excel(cfg: InputSection, files: list[str]) -> pl.LazyFrame:
    sheet = cfg.excel.sheet
    by = {"sheet_name": sheet} if isinstance(sheet, str) else {"sheet_id": sheet + 1}
    frames = [pl.read_excel(f, engine="calamine", **by) for f in files]
    return pl.concat(frames, how="diagonal_relaxed").lazy()


def _transcode_to_utf8(path: str, encoding: str) -> str:
    """Write a UTF-8 copy of a file in another encoding; an undecodable byte names its line."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    out = tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".csv", delete=False)
    with open(path, "rb") as source, out:
        line = 1
        for chunk in iter(lambda: source.read(1 << 20), b""):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                bad_line = line + chunk[: exc.start].count(b"\n")
                raise InputDataError(
                    f"{path}:{bad_line}: byte {chunk[exc.start]:#04x} cannot be decoded as "
                    f"{encoding} (set input.csv.encoding to the file's encoding)"
                ) from None
            line += chunk.count(b"\n")
            out.write(text)
    return out.name


def find_undecodable_line(path: str) -> int | None:
    """The 1-based line of the first byte that is not UTF-8, or None."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    line = 1
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return line + chunk[: exc.start].count(b"\n")
            line += chunk.count(b"\n")
    return None


# --- mapping to the canonical schema -----------------------------------------------------------


def _check_mapped_columns(cfg: InputSection, columns: tuple[str, ...], location: str) -> None:
    wanted = {f"input.columns.{k}": v for k, v in cfg.columns.mapped().items()}
    wanted |= {f"input.attributes[{i}]": a for i, a in enumerate(cfg.attributes)}
    missing = [f"{key}: {col!r}" for key, col in wanted.items() if col not in columns]
    if missing:
        raise InputDataError(
            f"{location}: mapped column(s) not found: {'; '.join(missing)}. "
            f"The data has: {', '.join(columns)}"
        )


def _minor_digits(currency: str) -> int:
    from babel.numbers import get_currency_precision

    return get_currency_precision(currency)


def _canonical(
    raw: pl.LazyFrame, cfg: InputSection, digits: int, tz: str, schema: pl.Schema
) -> pl.LazyFrame:
    cols = cfg.columns
    dec = cfg.csv.decimal
    exprs = [
        pl.col(ROW),
        *_customer_exprs(cols.customer_id, schema[cols.customer_id]),
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
    if column is None:
        return pl.lit(None, dtype=pl.String)
    expr = pl.col(column).cast(pl.String).str.strip_chars()
    return pl.when(expr != "").then(expr)


def _customer_exprs(column: str, dtype: pl.DataType) -> list[pl.Expr]:
    """customer_id as text; floats like 17850.0 shown as 17850; floats >= 2^53 flagged."""
    col = pl.col(column)
    if dtype.is_float():
        as_int = pl.when(col.abs() < MAX_EXACT_FLOAT_ID).then(col)
        integral = as_int == as_int.floor()
        text = pl.when(integral).then(as_int.cast(pl.Int64).cast(pl.String)).otherwise(
            as_int.cast(pl.String)
        )
        return [text.alias("customer_id"), (col.abs() >= MAX_EXACT_FLOAT_ID).alias("_bad_id")]
    text = col.cast(pl.String).str.strip_chars()
    text = pl.when(text != "").then(text.str.replace(r"^(\d+)\.0+$", "$1"))
    return [text.alias("customer_id"), pl.lit(False).alias("_bad_id")]


def _date_exprs(column: str, dtype: pl.DataType, formats: list[str], tz: str) -> list[pl.Expr]:
    """order_ts as naive local time in `tz`, plus flags: zoned source value, unparseable text."""
    col = pl.col(column)
    if isinstance(dtype, pl.Datetime):
        zoned = dtype.time_zone is not None
        ts = col.dt.convert_time_zone(tz).dt.replace_time_zone(None) if zoned else col
        flags = [pl.lit(zoned).alias("_zoned"), pl.lit(False).alias("_bad_date")]
        return [ts.cast(pl.Datetime("us")).alias("order_ts"), *flags]
    if dtype == pl.Date:
        ts = col.cast(pl.Datetime("us"))
        return [ts.alias("order_ts"), pl.lit(False).alias("_zoned"), pl.lit(False).alias("_bad_date")]
    text = col.cast(pl.String).str.strip_chars()
    parsed = [(_parse(text, f, tz), "%z" in f or "%Z" in f) for f in formats]
    ts = pl.coalesce([p for p, _ in parsed])
    zoned = pl.coalesce([pl.when(p.is_not_null()).then(pl.lit(z)) for p, z in parsed])
    present = text.is_not_null() & (text != "")
    return [ts.alias("order_ts"), zoned.alias("_zoned"), (present & ts.is_null()).alias("_bad_date")]


def _parse(text: pl.Expr, fmt: str, tz: str) -> pl.Expr:
    parsed = text.str.strptime(pl.Datetime("us"), fmt, strict=False)
    if "%z" in fmt or "%Z" in fmt:  # polars returns these in UTC
        parsed = parsed.dt.convert_time_zone(tz).dt.replace_time_zone(None)
    return parsed


def _amount_exprs(cols, schema: pl.Schema, digits: int, decimal: str) -> list[pl.Expr]:
    """amount_minor = round(amount x 10^digits), exact integer money; non-numbers flagged."""
    if cols.amount is not None:
        amount, bad = _number(cols.amount, schema, decimal)
        quantity = unit_price = pl.lit(None, dtype=pl.Float64)
    else:
        quantity, bad_q = _number(cols.quantity, schema, decimal)
        unit_price, bad_p = _number(cols.unit_price, schema, decimal)
        amount, bad = quantity * unit_price, bad_q | bad_p
    minor = (amount * 10**digits).round(0, mode="half_to_even").cast(pl.Int64)
    return [
        minor.alias("amount_minor"),
        amount.alias("amount"),  # unrounded, for the sign test of the cleaning rules
        quantity.alias("quantity"),
        unit_price.alias("unit_price"),
        bad.alias("_bad_amount"),
    ]


def _number(column: str, schema: pl.Schema, decimal: str) -> tuple[pl.Expr, pl.Expr]:
    col = pl.col(column)
    if schema[column].is_numeric():
        return col.cast(pl.Float64), pl.lit(False)
    text = col.cast(pl.String).str.strip_chars()
    if decimal == ",":  # thousands separators are not guessed: "1.234,5" is reported, not read
        text = text.str.replace(",", ".", literal=True)
    value = text.cast(pl.Float64, strict=False)
    return value, text.is_not_null() & (text != "") & value.is_null()
