"""Database and Spark sources: the read, clean and aggregate work runs where the data lives.

The queries of sql.py run inside PostgreSQL, a DuckDB file or Spark; only aggregates come back
(one row per customer, per rule and per month). They come back as the very frames the embedded
engine gives (`rfm_stage._collect`), so the audit, the period, scoring
(`rfm.finish_rfm`) and everything after are shared code.

Credentials: the URL carries no password (config.py refuses one); it is read from the
environment variable named by `input.database.password_env` when connecting, and never logged.
Connectors are optional extras: `reportgen[database]` (psycopg 3; DuckDB needs `duckdb`) and
`reportgen[spark]` (pyspark).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast
from urllib.parse import urlsplit

import polars as pl
from polars.datatypes import DataTypeClass

from .clean import AS_OF, REASON, Cleaned
from .config import Config, DatabaseInput, InputSection, SparkInput
from .errors import ConfigError, InputDataError, counted
from .period import PeriodRequest, window_start
from .read import FILE, ROW, Source, Transactions, _customer_exprs, not_money
from .sql import (
    SqlSource,
    attribute_query,
    bad_amount_test,
    canonical_query,
    check_config,
    check_source,
    customers_query,
    months_query,
    rules_query,
    scan_query,
)

log = logging.getLogger(__name__)

_MISSING = ("customer_id", "order_id", "order_ts", "amount_minor", "product_id")
_COUNT = pl.UInt32  # counts as one unsigned type (the engines give BIGINT or DECIMAL)


@dataclass(frozen=True)
class PushedStage:
    """What the pushed-down queries give the pipeline.

    `results` holds the frames `rfm_stage._collect` returns ("by_rule", "totals", "examples",
    "eda_months", "rfm"); `cleaned` stands in for the cleaned transactions where the audit
    needs them (the source, the currency's digits, the window), with an empty frame.
    """

    cleaned: Cleaned
    results: dict[str, pl.DataFrame]


def is_pushdown(cfg: InputSection) -> bool:
    """The configured source is a database or Spark (not files)."""
    return getattr(cfg, "database", None) is not None or getattr(cfg, "spark", None) is not None


def collect_stage(config: Config, request: PeriodRequest) -> PushedStage:
    """Run the queries in the source's engine and return the frames of the embedded engine."""
    _check_supported(config)
    engine = open_engine(config.input, config.period.timezone)
    try:
        src = SqlSource(
            relation=engine.relation,
            schema=engine.fetch(f"SELECT * FROM {engine.relation} AS src WHERE 1 = 0").schema,
            columns=config.input.columns,
            attributes=tuple(config.input.attributes),
            cleaning=config.cleaning,
            minor_digits=_minor_digits(config.report.currency),
            location=engine.location,
        )
        check_source(src)
        src = dataclasses.replace(src, canonical=engine.materialize(canonical_query(src)))
        frames = _run_queries(engine, src, request, config)
    finally:
        engine.close()
    source = Source(engine.location, engine.kind, (engine.location,), tuple(src.schema), 1)
    tx = Transactions(pl.LazyFrame(), source, src.minor_digits, src.has_order_id, src.attributes)
    cleaned = Cleaned(pl.LazyFrame(), tx, request.window_days)
    return PushedStage(cleaned, _results(frames, src))


def _check_supported(config: Config) -> None:
    """Settings and features the queries cannot serve: say so before connecting."""
    check_config(config.cleaning)
    graph = getattr(config, "graph", None)
    if graph is not None and graph.enabled and config.input.columns.product_id is not None:
        raise ConfigError(
            "graph.enabled: the customer-product graph reads every purchase line; it is not "
            "available with input.database or input.spark (turn it off, or export to Parquet)"
        )
    representation = getattr(config, "representation", None)
    if representation is not None and representation.features == "extended":
        raise ConfigError(
            "representation.features: extended reads every purchase line; it is not available "
            "with input.database or input.spark (use rfm, or export to Parquet)"
        )


def _minor_digits(currency: str) -> int:
    from babel.numbers import get_currency_precision

    return get_currency_precision(currency)


def _run_queries(
    engine: Engine, src: SqlSource, request: PeriodRequest, config: Config
) -> dict[str, Any]:
    scan = _scan_row(engine.fetch(scan_query(src), "scan"))
    _check_scan(scan, src, config)  # before the other queries: they take as long
    as_of = request.as_of
    if as_of is None:  # `latest`: the last clean purchase, which the scan found
        as_of = scan["latest_clean"]
    start = window_start(as_of, request.window_days) if as_of is not None else None
    frames: dict[str, Any] = {
        "scan": scan,
        "rules": engine.fetch(rules_query(src, as_of, start), "rules"),
        "customers": engine.fetch(customers_query(src, as_of, start), "customers"),
        "months": engine.fetch(months_query(src, as_of, start), "months"),
        "attributes": [
            engine.fetch(attribute_query(src, i, as_of, start), f"attribute {a}")
            for i, a in enumerate(src.attributes)
        ],
        "as_of": as_of,
    }
    return frames


# --- from the query results to the embedded engine's frames ------------------------------------


def _results(frames: dict[str, Any], src: SqlSource) -> dict[str, pl.DataFrame]:
    customers = _with_customer_id(frames["customers"], src)
    return {
        "by_rule": _by_rule(frames["rules"]),
        "totals": _totals(frames["scan"], frames["rules"], frames["as_of"]),
        "examples": _no_examples(),
        "eda_months": _months(frames["months"]),
        "rfm": _rfm(customers, frames["attributes"], src, frames["as_of"]),
    }


def _by_rule(rules: pl.DataFrame) -> pl.DataFrame:
    """Rows and money per rule; the copies beyond a row's first are the duplicates."""
    per_rule = rules.group_by("reason").agg(
        pl.col("n_rows").sum().cast(_COUNT).alias("rows"),
        pl.col("revenue").sum().cast(pl.Int64),
    )
    duplicates = pl.DataFrame(
        {
            "reason": ["duplicate"],
            "rows": [int(rules["duplicate_rows"].sum())],
            "revenue": [int(rules["duplicate_revenue"].sum())],
        },
        schema={"reason": pl.String, "rows": _COUNT, "revenue": pl.Int64},
    ).filter(pl.col("rows") > 0)
    return pl.concat([per_rule, duplicates]).rename({"reason": REASON})


def _scan_row(scan: pl.DataFrame) -> dict[str, Any]:
    counts = [c for c in scan.columns if scan.schema[c].is_numeric()]  # some engines: DECIMAL
    row = scan.with_columns(pl.col(counts).cast(pl.Int64)).row(0, named=True)
    bounds = (row.get("currency_min"), row.get("currency_max"))  # with a currency column
    return row | {"currencies": sorted({c for c in bounds if c is not None})}


def _totals(row: dict[str, Any], rules: pl.DataFrame, as_of: dt.date | None) -> pl.DataFrame:
    netted = rules.filter(pl.col("reason").is_null() & (pl.col("is_return") == 1))
    kept_dates = rules.filter(pl.col("reason").is_null() | (pl.col("reason") == "before_window"))[
        "max_date"
    ]
    values: dict[str, tuple[Any, pl.DataType | DataTypeClass]] = {
        "rows": (row["n_rows"], _COUNT),
        "revenue": (row["revenue"] or 0, pl.Int64),
        "first_date": (row["first_date"], pl.Date),
        "last_date": (row["last_date"], pl.Date),
        "as_of": (as_of, pl.Date),
        "latest_kept": (kept_dates.max() if kept_dates.len() else None, pl.Date),
        "netted_rows": (int(netted["n_rows"].sum()), _COUNT),
        "netted_revenue": (int(netted["revenue"].sum()), pl.Int64),
        **{f"missing:{c}": (row[f"missing_{c}"], _COUNT) for c in _MISSING},
        "bad_ids": (row["bad_ids"], _COUNT),
        "bad_amounts": (row["bad_amounts"], _COUNT),
        "bad_dates": (row["bad_dates"], _COUNT),
        "zoned": (0, _COUNT),  # a typed column cannot mix zoned and naive timestamps
        "naive": (0, _COUNT),
        "currencies": (row["currencies"], pl.List(pl.String)),
    }
    return pl.DataFrame(
        {k: [v] for k, (v, _) in values.items()},
        schema={k: dtype for k, (_, dtype) in values.items()},
    )


def _no_examples() -> pl.DataFrame:
    """Example rows need row-level queries, which pushdown avoids: the audit lists none."""
    schema: dict[str, pl.DataType | DataTypeClass] = {
        REASON: pl.String, FILE: pl.UInt32, ROW: pl.UInt32, "customer_id": pl.String,
        "order_id": pl.String, "order_ts": pl.Datetime("us"), "amount_minor": pl.Int64,
    }  # fmt: skip
    return pl.DataFrame(schema=schema)


def _customer_id(frame: pl.DataFrame) -> pl.Expr:
    """read.py's customer_id (17850.0 -> 17850, ' 017 ' -> '017') from the engine's group key."""
    return _customer_exprs("customer_key", frame.schema["customer_key"])[0]


def _with_customer_id(customers: pl.DataFrame, src: SqlSource) -> pl.DataFrame:
    frame = customers.with_columns(_customer_id(customers))
    clashes = frame.filter(pl.col("customer_id").is_duplicated())["customer_id"].unique().sort()
    if clashes.len():
        shown = ", ".join(str(c) for c in clashes.head(5))
        raise InputDataError(
            f"{src.location}: customer ids that differ only in a '.0' suffix name the same "
            f"customer ({shown}); store the ids in one form"
        )
    return frame


def _rfm(
    customers: pl.DataFrame, attributes: list[pl.DataFrame], src: SqlSource, as_of: dt.date | None
) -> pl.DataFrame:
    """The unscored per-customer table of rfm.py `rfm_query`, same columns, same types."""
    frame = customers.select(
        "customer_id",
        pl.col("frequency").cast(pl.Int64),
        *[
            pl.col(c).cast(pl.Int64)
            for c in ("monetary_minor", "gross_minor", "returned_value_minor")
        ],
        pl.col("last_order").cast(pl.Date),
        pl.col("first_order").cast(pl.Date),
        pl.col("first_purchase").cast(pl.Date),  # for eda.monthly_table
        (pl.col("in_period") == 1).alias("_in_period"),
        pl.lit(as_of, dtype=pl.Date).alias(AS_OF),
    )
    for name, values in zip(src.attributes, attributes, strict=True):
        frame = frame.join(_attribute(values, name, src), on="customer_id", how="left")
    return frame


def _attribute(values: pl.DataFrame, name: str, src: SqlSource) -> pl.DataFrame:
    """Per customer the value most of their orders carry; ties go to the smallest value."""
    dtype = src.schema[name]
    if values.height == 0:
        return pl.DataFrame(schema={"customer_id": pl.String, name: dtype})
    return (
        values.with_columns(_customer_id(values))
        .sort(["customer_id", "orders", "attribute_value"], descending=[False, True, False])
        .group_by("customer_id", maintain_order=True)
        .first()
        .select("customer_id", pl.col("attribute_value").cast(dtype).alias(name))
    )


def _months(months: pl.DataFrame) -> pl.DataFrame:
    """eda.py's per-month totals from the months query (new customers come from the rfm table)."""
    key = pl.col("month_key").cast(pl.Int32)
    return months.select(
        pl.date(key // 100, key % 100, 1).alias("month"),
        pl.col("revenue_minor").cast(pl.Int64),
        pl.col("orders").cast(_COUNT),
        pl.col("customers").cast(_COUNT),
    )


def _check_scan(scan: dict[str, Any], src: SqlSource, config: Config) -> None:
    """The checks of rfm_stage `_check_input`, without row positions (tables have none)."""
    cols, where = config.input.columns, src.location
    if scan["n_rows"] == 0:
        raise InputDataError(f"{where}: the table has no rows")
    if scan["bad_ids"]:
        raise InputDataError(
            f"{where}: {counted(scan['bad_ids'], 'customer id')} in column "
            f"{cols.customer_id!r} stored as floats with a fraction or at or above 2^53 (digits "
            "lost); store the ids as text or integers"
        )
    if scan["bad_amounts"]:
        raise InputDataError(f"{where}: {_bad_amounts_message(scan, src)}")
    if scan["bad_dates"] and config.cleaning.unparseable_dates == "error":
        raise InputDataError(
            f"{where}: {counted(scan['bad_dates'], 'value')} in {cols.order_date!r} "
            f"{'is not a date' if scan['bad_dates'] == 1 else 'are not dates'}; "
            "store the column as a timestamp, or set cleaning.unparseable_dates: drop"
        )
    found = scan["currencies"]
    if len(found) > 1:
        raise InputDataError(
            f"{where}: column {cols.currency!r} holds more than one currency "
            f"({', '.join(found)}); filter or convert the data first"
        )
    if found and found[0] != config.report.currency:
        raise InputDataError(
            f"{where}: column {cols.currency!r} is in {found[0]} but report.currency is "
            f"{config.report.currency}; set report.currency to match"
        )


def _bad_amounts_message(scan: dict[str, Any], src: SqlSource) -> str:
    """What rfm_stage says of such values in a file, with one customer who has one and a query
    that finds them all in place of row numbers."""
    customer = scan["bad_amount_customer"]
    return (
        not_money(scan["bad_amounts"], src.columns, text=False)
        + (f", e.g. on a line of customer {customer!r}" if customer is not None else "")
        + f"; find them with: SELECT * FROM {src.relation} AS src WHERE {bad_amount_test(src)}"
    )


# --- engines -----------------------------------------------------------------------------------


class Engine(Protocol):
    """A connection that runs a query and returns its result as a polars frame."""

    kind: str  # "database" or "spark", the Source format
    location: str  # where the data is, without credentials
    relation: str  # what the queries read FROM

    def fetch(self, sql: str, name: str = "schema") -> pl.DataFrame:
        """Run one query; the whole (aggregated) result as a frame."""
        ...

    def materialize(self, sql: str) -> str | None:
        """Keep a query's result for the next queries: the name to read it by, or None."""
        ...

    def close(self) -> None:
        """Release the connection (or the Spark session this run started)."""
        ...


def open_engine(cfg: InputSection, timezone: str) -> Engine:
    """Connect to the configured database or Spark, with the session time zone set."""
    if cfg.spark is not None:
        return _Spark(cfg.spark, timezone)
    db = cfg.database
    if db is None:
        raise ConfigError("input: neither input.database nor input.spark is set")
    scheme = urlsplit(db.url).scheme
    if scheme == "duckdb":
        return _DuckDB(db, timezone)
    return _Postgres(db, timezone)


def _relation(table: str | None, query: str | None) -> str:
    if table:
        return table
    assert query, "the config requires a table or a query"
    return f"({query.strip().rstrip(';')})"


def _describe(location: str, table: str | None) -> str:
    return f"{location} ({'table ' + table if table else 'query'})"


def _timed(name: str, run: Callable[[], pl.DataFrame]) -> pl.DataFrame:
    started = time.perf_counter()
    frame = run()
    log.info(
        "pushdown %s query: %d rows in %.2f s", name, frame.height, time.perf_counter() - started
    )
    return frame


def _import(module: str, extra: str, what: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ConfigError(
            f"{what} needs the Python package {module.split('.')[0]!r}: "
            f"pip install 'reportgen[{extra}]'"
        ) from None


def _password(db: DatabaseInput) -> str | None:
    if db.password_env is None:
        return None
    value = os.environ.get(db.password_env)
    if value is None:
        raise ConfigError(
            f"input.database.password_env: environment variable {db.password_env} is not set "
            "(it must hold the database password)"
        )
    return value


def _first_line(exc: BaseException, secret: str | None = None) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text.replace(secret, "[redacted]") if secret else text


class _Database:
    """What the two databases share: one read-only connection, each query grouping the rows
    itself (no materialised table), driver errors reported with the query's name."""

    kind = "database"
    location: str
    _conn: Any
    _error: type[Exception]  # the driver's base error

    def _frame(self, sql: str) -> pl.DataFrame:
        raise NotImplementedError

    def fetch(self, sql: str, name: str = "schema") -> pl.DataFrame:
        try:
            return _timed(name, lambda: self._frame(sql))
        except self._error as exc:
            raise InputDataError(
                f"{self.location}: the {name} query failed: {_first_line(exc)}"
            ) from None

    def materialize(self, sql: str) -> str | None:
        return None  # a read-only session: each query groups the rows itself

    def close(self) -> None:
        self._conn.close()


class _Postgres(_Database):
    """PostgreSQL through psycopg 3; TLS and other libpq options pass through the URL."""

    def __init__(self, db: DatabaseInput, timezone: str) -> None:
        password = _password(db)
        psycopg = _import("psycopg", "database", "input.database (PostgreSQL)")
        parts = urlsplit(db.url)
        self.location = _describe(f"{parts.scheme}://{parts.netloc}{parts.path}", db.table)
        self.relation = _relation(db.table, db.query)
        extra = {"password": password} if password is not None else {}
        try:
            self._conn = psycopg.connect(
                db.url, autocommit=True, application_name="reportgen", **extra
            )
            with self._conn.cursor() as cur:
                cur.execute("SELECT set_config('TimeZone', %s, false)", [timezone])
                cur.execute("SET default_transaction_read_only = on")  # we only ever read
                # JIT compiling our long CASE expressions takes longer than running them
                cur.execute("SET jit = off")
        except psycopg.Error as exc:
            raise InputDataError(
                f"{self.location}: cannot connect: {_first_line(exc, password)}"
            ) from None
        self._error = psycopg.Error

    def _frame(self, sql: str) -> pl.DataFrame:
        with self._conn.cursor() as cur:
            cur.execute(sql)
            return _pg_frame(cur.description, cur.fetchall())


_PG_TYPES: dict[int, pl.DataType] = {
    16: pl.Boolean(), 20: pl.Int64(), 21: pl.Int64(), 23: pl.Int64(), 700: pl.Float64(),
    701: pl.Float64(), 25: pl.String(), 1043: pl.String(), 1042: pl.String(), 19: pl.String(),
    1082: pl.Date(), 1114: pl.Datetime("us"), 1184: pl.Datetime("us", "UTC"),
}  # fmt: skip


def _pg_frame(description: Any, rows: list[tuple]) -> pl.DataFrame:
    """A result as a frame, typed from the column descriptions (also when it has no rows)."""
    columns = {}
    for i, d in enumerate(description):
        dtype = _PG_TYPES.get(d.type_code)
        if d.type_code == 1700:  # numeric: its declared scale, else what the values need
            dtype = (
                pl.Decimal(38, d.scale)
                if d.scale is not None
                else (None if rows else pl.Decimal(38, 9))
            )
        values = [row[i] for row in rows]
        columns[d.name] = pl.Series(
            d.name, values, dtype=dtype if dtype is not None or rows else pl.Null
        )
    return pl.DataFrame(columns)


class _DuckDB(_Database):
    """A DuckDB database file, opened read-only."""

    def __init__(self, db: DatabaseInput, timezone: str) -> None:
        duckdb = _import("duckdb", "database", "input.database (DuckDB)")
        path = duckdb_path(db.url)
        self.location = _describe(f"duckdb:///{path}", db.table)
        self.relation = _relation(db.table, db.query)
        if not os.path.isfile(path):
            raise InputDataError(
                f"{self.location}: database file not found: {path} (as in SQLAlchemy, "
                "duckdb:///name is relative to the config file's folder, duckdb:////name absolute)"
            )
        try:
            self._conn = duckdb.connect(path, read_only=True)
            self._conn.execute(f"SET TimeZone = '{timezone}'")  # an IANA name (validated)
        except duckdb.Error as exc:
            raise InputDataError(f"{self.location}: cannot open: {_first_line(exc)}") from None
        self._error = duckdb.Error

    def _frame(self, sql: str) -> pl.DataFrame:
        return _arrow_frame(self._conn.sql(sql).to_arrow_table())


def duckdb_path(url: str) -> str:
    """The file of a duckdb:///path URL (duckdb:////abs or duckdb:///rel, as SQLAlchemy)."""
    return url[len("duckdb:///") :] if url.startswith("duckdb:///") else url[len("duckdb://") :]


class _Spark:
    """Spark SQL over a catalog table or a Parquet dataset; results come back as Arrow."""

    kind = "spark"
    _VIEW = "reportgen_transactions"
    _CANONICAL = "reportgen_canonical"
    _STARTUP_CONF: ClassVar = {"spark.ui.showConsoleProgress": "false"}  # no progress bars
    _SESSION_CONF: ClassVar = {
        "spark.sql.ansi.enabled": "true",  # standard casts and overflow errors, as elsewhere
        "spark.sql.ansi.doubleQuotedIdentifiers": "true",  # "Col" is a column, as in SQL
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }

    def __init__(self, cfg: SparkInput, timezone: str) -> None:
        _import("pyspark.sql", "spark", "input.spark")
        from pyspark.sql import SparkSession

        self._started = SparkSession.getActiveSession() is None
        builder = SparkSession.builder.master(cfg.master).appName(cfg.app_name)
        self._cached: Any = None
        for key, value in {**self._STARTUP_CONF, **cfg.conf}.items():
            builder = builder.config(key, value)
        self._session = builder.getOrCreate()
        conf = {**self._SESSION_CONF, "spark.sql.session.timeZone": timezone}
        conf |= _local_partitions(cfg, self._session)
        self._saved = {k: self._session.conf.get(k, None) for k in conf}
        for key, value in conf.items():
            self._session.conf.set(key, value)
        where = f"table {cfg.table}" if cfg.table else f"parquet {cfg.parquet}"
        self.location = f"spark {cfg.master} ({where})"
        self.relation = cfg.table or self._VIEW
        if cfg.parquet:
            try:
                self._session.read.parquet(cfg.parquet).createOrReplaceTempView(self._VIEW)
            except Exception as exc:  # noqa: BLE001 - Spark raises many kinds
                self.close()
                raise InputDataError(f"{self.location}: cannot read: {_first_line(exc)}") from None

    def fetch(self, sql: str, name: str = "schema") -> pl.DataFrame:
        try:
            return _timed(name, lambda: _spark_frame(self._session.sql(sql)))
        except Exception as exc:  # noqa: BLE001 - Spark raises many kinds
            raise InputDataError(
                f"{self.location}: the {name} query failed: {_first_line(exc)}"
            ) from None

    def materialize(self, sql: str) -> str | None:
        """The distinct canonical rows, cached: the other queries then read them from memory."""
        try:
            self._cached = self._session.sql(sql).cache()
        except Exception as exc:  # noqa: BLE001 - Spark raises many kinds
            raise InputDataError(
                f"{self.location}: the rows query failed: {_first_line(exc)}"
            ) from None
        self._cached.createOrReplaceTempView(self._CANONICAL)
        return self._CANONICAL

    def close(self) -> None:
        if self._cached is not None:
            self._cached.unpersist()
        if self._started:
            self._session.stop()
            return
        self._session.catalog.dropTempView(self._VIEW)
        self._session.catalog.dropTempView(self._CANONICAL)
        for key, value in self._saved.items():
            if value is None:
                self._session.conf.unset(key)
            else:
                self._session.conf.set(key, value)


def _local_partitions(cfg: SparkInput, session: Any) -> dict[str, str]:
    """In local mode, a few shuffle partitions per core: Spark's default 200 tasks per shuffle
    cost more than our aggregates (4x slower on a million rows); a setting given is kept."""
    key = "spark.sql.shuffle.partitions"
    if not cfg.master.startswith("local") or key in cfg.conf:
        return {}
    if session.conf.get(key, "200") != "200":  # the session's owner chose a value
        return {}
    return {key: str(2 * session.sparkContext.defaultParallelism)}


def _spark_frame(df: Any) -> pl.DataFrame:
    if hasattr(df, "toArrow"):  # pyspark 4
        return _arrow_frame(df.toArrow())
    return pl.from_pandas(df.toPandas())  # pyspark 3.5: Arrow-backed when enabled


def _arrow_frame(table: Any) -> pl.DataFrame:
    """A polars frame from an Arrow table (`from_arrow` gives a Series only for an array)."""
    return cast(pl.DataFrame, pl.from_arrow(table))
