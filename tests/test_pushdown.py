"""Database and Spark sources: the pushed-down queries give the embedded engine's results.

Every engine is real. `.ci/run` starts a throwaway PostgreSQL server on 127.0.0.1 (its URL in
REPORTGEN_TEST_PG_URL, the password in REPORTGEN_TEST_PG_PASSWORD), installs pyspark (Java is
on the machine) and sets REPORTGEN_TEST_REQUIRE_PUSHDOWN=1, which turns a missing engine into a
failure instead of a skip. DuckDB (a test dependency) always runs. Each data set is loaded into
every engine and compared with `compute_rfm_stage` on the same data read from a Parquet file:
the period, the audit (rows and money per rule), every column of every customer of the RFM
table and the monthly EDA table must be equal.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
import os
from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from reportgen.config import config_from_dict
from reportgen.errors import ConfigError, InputDataError
from reportgen.read import sample_data_path
from reportgen.rfm_stage import RfmStage, compute_rfm_stage
from reportgen.sample import SampleSpec, generate_transactions
from reportgen.sql import (
    SqlSource,
    attribute_query,
    canonical_query,
    customers_query,
    months_query,
    rules_query,
    scan_query,
)

# pyspark warns on import that it has not caught up with pandas 3; results come through Arrow.
pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas")
REPO = Path(__file__).resolve().parent.parent
REQUIRED = os.environ.get("REPORTGEN_TEST_REQUIRE_PUSHDOWN") == "1"
PG_URL = os.environ.get("REPORTGEN_TEST_PG_URL")
PG_PASSWORD_ENV = "REPORTGEN_TEST_PG_PASSWORD"
ENGINES = ("duckdb", "postgres", "spark")


def _unavailable(engine: str, why: str) -> None:
    """Skip (saying why) on a developer's machine; fail where .ci/run provides the engine."""
    if REQUIRED:
        pytest.fail(f"{engine} is required here (REPORTGEN_TEST_REQUIRE_PUSHDOWN=1) but {why}")
    pytest.skip(f"{engine} not available: {why}")


# --- the data sets: one frame, a column mapping and the engine-specific table types ------------


@dataclasses.dataclass(frozen=True)
class DataSet:
    """Transactions and how a report reads them."""

    name: str
    frame: pl.DataFrame  # as every engine stores it
    config: dict  # the config without `input.path` / `input.database` / `input.spark`


def _shipped_config() -> dict:
    data = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    data.pop("output", None)
    data["input"].pop("path")
    return data


def _uci() -> DataSet:
    """The shipped UCI sample as it is, with the shipped config (the golden figures hold)."""
    return DataSet("uci", pl.read_parquet(sample_data_path("online_retail")), _shipped_config())


def _typed() -> DataSet:
    """Synthetic rows with integer ids, DECIMAL prices and text dates; net returns, a window."""
    frame = generate_transactions(SampleSpec(rows=20_000, customers=1_000, seed=5)).with_columns(
        pl.col("CustomerID").cast(pl.Int64), pl.col("UnitPrice").cast(pl.Decimal(10, 2))
    )
    config = _shipped_config()
    config["period"] = {"as_of": "2024-10-31", "window_days": 200, "timezone": "UTC"}
    config["cleaning"] = {"returns": "net"}
    return DataSet("typed", frame, config)


def _zoned() -> DataSet:
    """Synthetic rows with an amount column, zoned timestamps, no order ids, duplicates kept."""
    raw = generate_transactions(SampleSpec(rows=10_000, customers=600, seed=9))
    frame = raw.select(
        "CustomerID",
        pl.col("InvoiceDate").str.to_datetime("%Y-%m-%d %H:%M:%S", time_zone="UTC"),
        (pl.col("Quantity") * pl.col("UnitPrice")).alias("Amount"),
        "Country",
    )
    config = {
        "input": {
            "columns": {"customer_id": "CustomerID", "order_id": None, "order_date": "InvoiceDate",
                        "amount": "Amount"},
            "attributes": ["Country"],
        },
        "period": {"timezone": "Asia/Tokyo"},  # UTC afternoons are the next day in Tokyo
        "cleaning": {"duplicates": "off", "cancellation_prefix": ""},
    }  # fmt: skip
    return DataSet("zoned", frame, config)


def _half_pennies() -> DataSet:
    """Hand-written lines whose values are exact half pennies (and a float trap, 2.675)."""
    rows = [
        # CustomerID, InvoiceNo, InvoiceDate, Quantity, UnitPrice
        ("c1", "1001", "2024-03-01 10:00:00", 5, 0.011),  # 0.055 -> 0.06
        ("c1", "1002", "2024-03-02 10:00:00", 1, 0.125),  # 0.125 -> 0.12
        ("c2", "1003", "2024-03-02 11:00:00", 3, 0.005),  # 0.015 -> 0.02
        ("c2", "1004", "2024-04-05 11:00:00", 1, 2.675),  # 2.675 -> 2.68 (2.67 in floats)
        ("c2", "C1005", "2024-04-06 11:00:00", -1, 0.125),  # a return, -0.125 -> -0.12
        ("c3", "1006", "2024-04-07 12:00:00", 2, 1.0025),  # 2.005 -> 2.00
        ("c3", "1006", "2024-04-07 12:00:00", 2, 1.0025),  # its exact duplicate
        (None, "1007", "2024-04-07 12:00:00", 1, 1.0),  # no customer
        ("c4", "1008", "2024-04-08 12:00:00", 1, 0.0),  # not positive
    ]
    names = ["CustomerID", "InvoiceNo", "InvoiceDate", "Quantity", "UnitPrice"]
    frame = pl.DataFrame(rows, schema=names, orient="row").with_columns(
        pl.col("InvoiceDate").str.to_datetime("%Y-%m-%d %H:%M:%S")
    )
    config = {
        "input": {
            "columns": {"customer_id": "CustomerID", "order_id": "InvoiceNo",
                        "order_date": "InvoiceDate", "amount": None, "quantity": "Quantity",
                        "unit_price": "UnitPrice"},
        },
        "cleaning": {"returns": "net"},
    }  # fmt: skip
    return DataSet("half_pennies", frame, config)


def _not_money() -> DataSet:
    """Prices and quantities that are not money: NaN, infinity, 1e19, and a product of 1e16."""
    rows = [
        ("c1", "1001", 2.0, 1.5),  # money
        ("c2", "1002", 1.0, float("nan")),
        ("c2", "1003", float("inf"), 2.0),
        ("c3", "1004", 1.0, 1e19),
        ("c3", "1005", 1e8, 1e8),  # each below the limit, the line's value not
    ]
    names = ["CustomerID", "InvoiceNo", "Quantity", "UnitPrice"]
    frame = pl.DataFrame(rows, schema=names, orient="row").with_columns(
        InvoiceDate=pl.datetime(2024, 3, 1)
    )
    return DataSet("not_money", frame, _half_pennies().config)


DATA_SETS = {"uci": _uci, "typed": _typed, "zoned": _zoned, "half_pennies": _half_pennies,
             "not_money": _not_money}  # fmt: skip
# Spark runs the three data sets that differ in how they are read; the typed one adds the
# window and net returns, which the others cover on PostgreSQL and DuckDB.
CASES = [
    (e, d) for e in ENGINES for d in DATA_SETS if d != "not_money" and (e, d) != ("spark", "typed")
]


@pytest.fixture(scope="module")
def data_sets(tmp_path_factory) -> dict[str, tuple[DataSet, Path]]:
    """Every data set, also written to a Parquet file (the embedded engine's input)."""
    folder = tmp_path_factory.mktemp("pushdown")
    out = {}
    for name, make in DATA_SETS.items():
        data = make()
        path = folder / f"{name}.parquet"
        data.frame.write_parquet(path)
        out[name] = (data, path)
    return out


@pytest.fixture(scope="module")
def in_memory(data_sets) -> dict[str, RfmStage]:
    """The embedded engine's stage per data set (computed on first use)."""

    class Lazy(dict):
        def __missing__(self, name: str) -> RfmStage:
            data, path = data_sets[name]
            self[name] = compute_rfm_stage(_config(data, {"path": str(path)}))
            return self[name]

    return Lazy()


def _config(data: DataSet, source: dict):
    config = {**data.config, "input": {**data.config.get("input", {}), **source}}
    return config_from_dict(config, base_dir=REPO)


# --- the engines -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def duckdb_file(tmp_path_factory, data_sets) -> Path:
    """One DuckDB database file holding a table per data set."""
    path = tmp_path_factory.mktemp("duckdb") / "transactions.duckdb"
    with duckdb.connect(str(path)) as con:
        for name, (data, _) in data_sets.items():
            frame = data.frame  # noqa: F841 - read by DuckDB's replacement scan
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")
    return path


@pytest.fixture(scope="module")
def postgres(data_sets):
    """The test PostgreSQL server with a table per data set (dropped afterwards)."""
    if not PG_URL or PG_PASSWORD_ENV not in os.environ:
        _unavailable("PostgreSQL", "REPORTGEN_TEST_PG_URL / REPORTGEN_TEST_PG_PASSWORD are not set")
    try:
        import psycopg
    except ImportError:
        _unavailable("PostgreSQL", "psycopg is not installed (pip install -e '.[database]')")
    schema = f"reportgen_test_{os.getpid()}"
    with psycopg.connect(PG_URL, password=os.environ[PG_PASSWORD_ENV], autocommit=True) as con:
        con.execute(f"CREATE SCHEMA {schema}")
        try:
            for name, (data, _) in data_sets.items():
                _pg_load(con, f"{schema}.{name}", data.frame)
            yield schema
        finally:
            con.execute(f"DROP SCHEMA {schema} CASCADE")


def _pg_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMPTZ" if dtype.time_zone else "TIMESTAMP"
    if isinstance(dtype, pl.Decimal):
        return f"NUMERIC({dtype.precision},{dtype.scale})"
    return {pl.String: "TEXT", pl.Int64: "BIGINT", pl.Float64: "DOUBLE PRECISION"}[dtype]


def _pg_load(con, table: str, frame: pl.DataFrame) -> None:
    columns = ", ".join(f'"{n}" {_pg_type(t)}' for n, t in frame.schema.items())
    con.execute(f"CREATE TABLE {table} ({columns})")
    text = io.BytesIO()
    frame.write_csv(text, null_value=r"\N", float_precision=None)
    with con.cursor().copy(
        f"COPY {table} FROM STDIN (FORMAT csv, HEADER true, NULL '\\N')"
    ) as copy:
        copy.write(text.getvalue())


@pytest.fixture(scope="module")
def spark():
    """One local Spark session for the module (the pushdown reuses it and leaves it running)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        _unavailable("Spark", "pyspark is not installed (pip install -e '.[spark]')")
    for name in ("py4j", "pyspark"):
        logging.getLogger(name).setLevel(logging.ERROR)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("reportgen-tests")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _source(request, data_sets, engine: str, name: str) -> dict:
    """input.database / input.spark reading data set `name` in `engine`."""
    if engine == "duckdb":
        path = request.getfixturevalue("duckdb_file")
        return {"database": {"url": f"duckdb:///{path}", "table": name}}
    if engine == "postgres":
        schema = request.getfixturevalue("postgres")
        return {"database": {"url": PG_URL, "table": f"{schema}.{name}",
                             "password_env": PG_PASSWORD_ENV}}  # fmt: skip
    request.getfixturevalue("spark")
    return {"spark": {"master": "local[2]", "parquet": str(data_sets[name][1])}}


@pytest.fixture(scope="module")
def pushed(request, data_sets):
    """The pushed-down stage of (engine, data set), computed once per module."""
    done: dict[tuple[str, str], RfmStage] = {}

    def stage(engine: str, name: str) -> RfmStage:
        if (engine, name) not in done:
            source = _source(request, data_sets, engine, name)
            done[engine, name] = compute_rfm_stage(_config(data_sets[name][0], source))
        return done[engine, name]

    return stage


# --- equality with the embedded engine ---------------------------------------------------------


def _without_examples(stage: RfmStage):
    rules = [dataclasses.replace(r, examples=[]) for r in stage.audit.rules]
    return dataclasses.replace(stage.audit, rules=rules)


@pytest.mark.parametrize(("engine", "name"), CASES)
def test_pushed_down_stage_equals_the_embedded_engine(engine, name, pushed, in_memory):
    """Period, audit per rule, RFM table (every customer, every column) and EDA are equal."""
    got, expected = pushed(engine, name), in_memory[name]
    assert got.period == expected.period
    assert _without_examples(got) == _without_examples(expected)
    assert all(r.examples == [] for r in got.audit.rules)  # no row-level queries
    assert got.audit.reconciles
    assert_frame_equal(got.rfm.frame, expected.rfm.frame)
    assert_frame_equal(got.eda.monthly, expected.eda.monthly)
    assert got.source.columns == expected.source.columns
    assert got.source.format == ("spark" if engine == "spark" else "database")


@pytest.mark.parametrize("engine", ENGINES)
def test_golden_figures_of_the_sample_hold_when_pushed_down(engine, pushed):
    """DESIGN.md's figures for the UCI sample, from the pushed-down queries alone."""
    stage = pushed(engine, "uci")
    rules = {r.rule: r.rows for r in stage.audit.rules}
    assert (stage.audit.rows_read, rules["duplicate"], stage.audit.rows_kept) == (
        541_909,
        5_268,
        392_692,
    )
    assert stage.audit.revenue_kept_minor == 888_720_889
    assert stage.period.as_of == dt.date(2011, 12, 9)
    scored = stage.rfm.scored
    assert scored.height == 4_338
    assert scored["r_score"].value_counts().sort("r_score")["count"].to_list() == [
        869,
        889,
        866,
        888,
        826,
    ]
    grid = dict(scored["rfm_grid_segment"].value_counts().iter_rows())
    assert (grid["Loyal Customers"], grid["Champions"], grid["New Customers"]) == (826, 600, 35)


@pytest.mark.parametrize("engine", ENGINES)
def test_half_pennies_round_half_to_even_in_every_engine(engine, pushed):
    """Each line is rounded once, half to even, exactly as read.py does (not as floats do)."""
    stage = pushed(engine, "half_pennies")
    frame = stage.rfm.frame.select("customer_id", "monetary_minor", "returned_value_minor")
    assert frame.rows() == [("c1", 18, 0), ("c2", 258, 12), ("c3", 200, 0)]
    rules = {r.rule: (r.rows, r.revenue_minor) for r in stage.audit.rules}
    assert rules["duplicate"] == (1, 200)
    assert rules["missing_customer_id"] == (1, 100)
    assert rules["non_positive"] == (1, 0)
    assert (stage.audit.rows_read, stage.audit.revenue_read_minor) == (9, 18 + 270 - 12 + 400 + 100)


# --- configuration, credentials and errors -----------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_values_that_are_not_money_stop_the_run_in_every_engine(engine, request, data_sets):
    """As from a file (the count), with a customer who has one and a query that finds them."""
    data, path = data_sets["not_money"]
    with pytest.raises(InputDataError) as embedded:
        compute_rfm_stage(_config(data, {"path": str(path)}))
    with pytest.raises(InputDataError) as pushed_down:
        compute_rfm_stage(_config(data, _source(request, data_sets, engine, "not_money")))
    said = "4 values in 'Quantity/UnitPrice' are not numbers that can be money"
    assert said in str(embedded.value)
    assert said in str(pushed_down.value)
    assert "e.g. on a line of customer 'c2'" in str(pushed_down.value)
    if engine == "duckdb":
        query = str(pushed_down.value).split("find them with: ")[1]
        with duckdb.connect(str(request.getfixturevalue("duckdb_file")), read_only=True) as con:
            assert sorted(r[1] for r in con.execute(query).fetchall()) == [
                "1002", "1003", "1004", "1005"
            ]  # fmt: skip


def test_password_only_from_the_named_environment_variable(monkeypatch):
    """A password in the URL is refused without echoing it; an unset variable is named."""
    with pytest.raises(ConfigError) as refused:
        config_from_dict(
            {"input": {"database": {"url": "postgresql://u:s3cr3t@db/x", "table": "t"}}}
        )
    assert "s3cr3t" not in str(refused.value)
    assert "input.database.url: the URL holds a password" in str(refused.value)
    monkeypatch.delenv("REPORTGEN_TEST_UNSET", raising=False)
    config = config_from_dict({
        "input": {"database": {"url": "postgresql://u@127.0.0.1:9/x", "table": "t",
                               "password_env": "REPORTGEN_TEST_UNSET"}},
    })  # fmt: skip
    with pytest.raises(ConfigError, match="environment variable REPORTGEN_TEST_UNSET is not set"):
        compute_rfm_stage(config)


def test_a_wrong_password_is_an_input_error_that_does_not_show_it(monkeypatch, postgres):
    """The server refuses; the message names the database, never the password."""
    monkeypatch.setenv("REPORTGEN_TEST_WRONG", "not-the-password-42")
    data = _uci()
    config = _config(data, {"database": {"url": PG_URL, "table": f"{postgres}.uci",
                                         "password_env": "REPORTGEN_TEST_WRONG"}})  # fmt: skip
    with pytest.raises(InputDataError) as failed:
        compute_rfm_stage(config)
    message = str(failed.value)
    assert message.startswith(f"{PG_URL} (table {postgres}.uci): cannot connect: ")
    assert "not-the-password-42" not in message


def test_missing_table_and_column_are_named(duckdb_file, data_sets):
    """A table the database lacks, and a mapped column the table lacks."""
    data, _ = data_sets["uci"]
    url = f"duckdb:///{duckdb_file}"
    with pytest.raises(InputDataError, match=r"\(table nope\): the schema query failed: .*nope"):
        compute_rfm_stage(_config(data, {"database": {"url": url, "table": "nope"}}))
    source = {"database": {"url": url, "table": "uci"}, "attributes": ["Region"]}
    with pytest.raises(
        InputDataError, match=r"mapped column\(s\) not found: input.attributes\[0\]: 'Region'"
    ):
        compute_rfm_stage(_config(data, source))


def test_a_missing_duckdb_file_says_how_urls_name_paths(data_sets):
    """duckdb:///tmp/x.duckdb is tmp/x.duckdb beside the config (SQLAlchemy's rule)."""
    data, _ = data_sets["uci"]
    source = {"database": {"url": "duckdb:///tmp/shop.duckdb", "table": "uci"}}
    with pytest.raises(InputDataError) as failed:
        compute_rfm_stage(_config(data, source))
    assert f"database file not found: {REPO}/tmp/shop.duckdb (as in SQLAlchemy" in str(failed.value)
    assert "duckdb:////name absolute" in str(failed.value)


def test_column_list_duplicates_are_refused_for_a_database(duckdb_file, data_sets):
    """Keeping the first of several rows needs a row order, which a table does not have."""
    data, _ = data_sets["uci"]
    config = {**data.config, "cleaning": {"duplicates": ["InvoiceNo", "StockCode"]}}
    with pytest.raises(ConfigError, match="cleaning.duplicates: a list of columns"):
        compute_rfm_stage(_config(
            dataclasses.replace(data, config=config),
            {"database": {"url": f"duckdb:///{duckdb_file}", "table": "uci"}},
        ))  # fmt: skip


# --- the SQL stays portable --------------------------------------------------------------------


def _all_queries(data: DataSet, schema: pl.Schema) -> list[str]:
    config = _config(data, {"path": "unused.parquet"})
    src = SqlSource("t", dict(schema), config.input.columns, tuple(config.input.attributes),
                    config.cleaning, 2, "test")  # fmt: skip
    day = dt.date(2024, 1, 31)
    return [canonical_query(src), scan_query(src), rules_query(src, day, day),
            customers_query(src, day, None), months_query(src, None, None),
            *[attribute_query(src, i, day, None) for i in range(len(src.attributes))]]  # fmt: skip


@pytest.mark.parametrize("name", list(DATA_SETS))
def test_queries_use_only_the_portable_subset(name, data_sets):
    """No window functions, LIMIT, dialect casts or functions, backquotes; only SELECT."""
    data, _ = data_sets[name]
    for sql in _all_queries(data, data.frame.schema):
        upper = sql.upper()
        for banned in (" OVER", "LIMIT ", "::", "`", "DATE_TRUNC", "QUALIFY", "ILIKE", "TRY_CAST",
                       "FILTER (", " WITH ", "IFF(", "NVL(", "INTERVAL"):  # fmt: skip
            assert banned not in upper, (banned, sql)
        assert upper.startswith("SELECT ")


# --- other ways to name the rows ---------------------------------------------------------------


def test_a_query_instead_of_a_table_gives_the_same_stage(duckdb_file, data_sets, pushed):
    """input.database.query: the rows of a SELECT (here the whole table, with a trailing ';')."""
    data, _ = data_sets["half_pennies"]
    source = {"database": {"url": f"duckdb:///{duckdb_file}",
                           "query": "SELECT * FROM half_pennies WHERE 1 = 1;"}}  # fmt: skip
    stage = compute_rfm_stage(_config(data, source))
    assert_frame_equal(stage.rfm.frame, pushed("duckdb", "half_pennies").rfm.frame)
    assert stage.source.location == f"duckdb:///{duckdb_file} (query)"


def test_a_spark_catalog_table_and_the_session_left_as_found(spark, data_sets, pushed):
    """input.spark.table reads a catalog table; our session settings and views are undone."""
    data, path = data_sets["half_pennies"]
    spark.read.parquet(str(path)).createOrReplaceTempView("half_pennies_table")
    before = spark.conf.get("spark.sql.ansi.doubleQuotedIdentifiers")
    stage = compute_rfm_stage(_config(data, {"spark": {"table": "half_pennies_table"}}))
    assert_frame_equal(stage.rfm.frame, pushed("spark", "half_pennies").rfm.frame)
    assert spark.conf.get("spark.sql.ansi.doubleQuotedIdentifiers") == before
    views = {t.name for t in spark.catalog.listTables()}
    assert "half_pennies_table" in views
    assert not {"reportgen_transactions", "reportgen_canonical"} & views
