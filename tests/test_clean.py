"""Cleaning: exact duplicates settled after the main pass, with the audit and attributes exact.

The engine counts every row in its group first and moves the copies out afterwards
(clean.settle_duplicates); these hand-made tables check the counts, the example lines and the
attribute values against what the rules say row by row, from a CSV file and from Parquet (whose
rows the first pass groups, unless copies may differ in an attribute). The engine's other paths
(a CSV parsed once and held in memory, a larger one grouped in batches as it is parsed, Parquet
rows grouped in a second read, the line queries streamed one at a time, the rows grouped a slice
of customers at a time) must give the same stage.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

import reportgen
from reportgen import clean, rfm_stage
from reportgen.read import sample_data_path
from reportgen.rfm_stage import compute_rfm_stage

# line 2..11 of the file; the expected verdicts are in the comments (duplicates: all / subset)
ROWS = """customer,invoice,date,amount,country,sku
C1,I1,2024-01-05,10.00,UK,A
C1,I1,2024-01-05,10.00,UK,A
,I2,2024-01-06,5.00,UK,A
,I2,2024-01-06,5.00,UK,A
C2,I3,2024-01-07,7.00,FR,A
C2,I3,2024-01-07,7.00,DE,B
,I4,2024-01-08,3.00,UK,A
C1,I1,2024-01-05,10.00,UK,A
C3,I5,2024-01-09,4.00,DE,A
C3,C6,2024-01-09,-4.00,DE,A
"""
# line 2 kept; 3 copy of 2; 4 no customer; 5 copy of 4 (a copy whatever else is wrong);
# 6 kept; 7 differs from 6 in country and sku: kept (all) / copy of 6 (subset);
# 8 no customer; 9 copy of 2; 10 kept; 11 cancellation.
SUBSET = ["customer", "invoice", "date", "amount"]


COLUMNS = {"customer_id": "customer", "order_id": "invoice", "order_date": "date",
           "amount": "amount"}  # fmt: skip


def _source(tmp_path: Path, rows: str, fmt: str) -> str:
    """`rows` written as a CSV file, a Parquet file (the same text, as text) or a folder of two
    Parquet files (the first four rows, then the others); returns the input path."""
    (tmp_path / "t.csv").write_text(rows, encoding="utf-8")
    text = pl.read_csv(tmp_path / "t.csv", infer_schema=False)
    if fmt == "parquet":
        text.write_parquet(tmp_path / "t.parquet")
    if fmt == "folder":
        (tmp_path / "parts").mkdir(exist_ok=True)
        text.head(4).write_parquet(tmp_path / "parts" / "a.parquet")
        text.tail(-4).write_parquet(tmp_path / "parts" / "b.parquet")
    return "parts" if fmt == "folder" else f"t.{fmt}"


def _stage(tmp_path: Path, duplicates: object, fmt: str = "csv"):
    config = reportgen.config_from_dict(
        {
            "input": {"path": _source(tmp_path, ROWS, fmt), "columns": COLUMNS,
                      "attributes": ["country"]},
            "period": {"as_of": "2024-01-31"},
            "cleaning": {"duplicates": duplicates, "examples_per_rule": 2},
        },
        base_dir=tmp_path,
    )  # fmt: skip
    return compute_rfm_stage(config)


def _rules(stage) -> dict[str, tuple[int, int, list[int]]]:
    header = 1 if stage.source.format == "parquet" else 0  # Parquet rows count from 1
    return {
        r.rule: (r.rows, r.revenue_minor, [e["line"] + header for e in r.examples])
        for r in stage.audit.rules
        if r.rows
    }


FORMATS = pytest.mark.parametrize("fmt", ["csv", "parquet"])


@FORMATS
def test_copies_of_any_row_are_duplicates_and_leave_their_group(tmp_path: Path, fmt) -> None:
    stage = _stage(tmp_path, "all", fmt)
    assert _rules(stage) == {
        "duplicate": (3, 2500, [3, 5]),
        "missing_customer_id": (2, 800, [4, 8]),
        "cancellation": (1, -400, [11]),
    }
    assert stage.audit.reconciles and stage.audit.rows_kept == 4
    table = stage.rfm.frame.select("customer_id", "frequency", "monetary_minor", "country")
    assert table.rows() == [("C1", 1, 1000, "UK"), ("C2", 1, 1400, "DE"), ("C3", 1, 400, "DE")]


@FORMATS
def test_compared_columns_decide_and_a_copys_attribute_does_not_count(tmp_path: Path, fmt):
    """With a subset of columns compared, line 7 is a copy of line 6: its money leaves the
    order and its country (DE) is not the customer's (FR, from line 6)."""
    stage = _stage(tmp_path, SUBSET, fmt)
    assert _rules(stage)["duplicate"] == (4, 3200, [3, 5])
    table = stage.rfm.frame.select("customer_id", "frequency", "monetary_minor", "country")
    assert table.rows() == [("C1", 1, 1000, "UK"), ("C2", 1, 700, "FR"), ("C3", 1, 400, "DE")]


@FORMATS
def test_without_the_rule_every_copy_counts(tmp_path: Path, fmt) -> None:
    stage = _stage(tmp_path, "off", fmt)
    assert "duplicate" not in _rules(stage)
    assert stage.rfm.frame.filter(customer_id="C1")["monetary_minor"].item() == 3000


@pytest.mark.parametrize("period", [{}, {"as_of": "2010-12-20", "window_days": 10}])
def test_csv_parsed_once_gives_what_reading_it_in_batches_gives(
    tmp_path: Path, monkeypatch, period
) -> None:
    """A small CSV source is parsed once and both passes read it from memory; the audit (with
    its example lines), the months and the RFM table equal those of a file too large for that,
    grouped in batches as it is parsed (three here) and read again for the example rows and
    the duplicate candidates."""
    rows = pl.read_parquet(sample_data_path("online_retail"), n_rows=60_000)
    rows.write_csv(tmp_path / "t.csv", datetime_format="%Y-%m-%d %H:%M:%S")
    columns = {"customer_id": "CustomerID", "order_id": "InvoiceNo", "order_date": "InvoiceDate",
               "amount": None, "quantity": "Quantity", "unit_price": "UnitPrice"}  # fmt: skip
    config = reportgen.config_from_dict(
        {"input": {"path": "t.csv", "columns": columns, "attributes": ["Country"]},
         "period": period, "cleaning": {"returns": "net"}},
        base_dir=tmp_path,
    )  # fmt: skip
    chunks = []
    real = clean._read_chunk
    monkeypatch.setattr(clean, "_read_chunk", lambda *a: chunks.append(a[1]) or real(*a))
    once = compute_rfm_stage(config)
    monkeypatch.setattr(clean, "CSV_PARSED_ONCE_MAX_BYTES", 0)
    monkeypatch.setattr(clean, "FIRST_PASS_CHUNK_ROWS", 20_000)
    batched = compute_rfm_stage(config)
    assert [grouped is not None for grouped in chunks] == [False, True, True, True]
    assert once.audit == batched.audit and once.period == batched.period
    assert once.eda.monthly.equals(batched.eda.monthly)
    assert once.rfm.frame.equals(batched.rfm.frame)
    assert {r.rule for r in once.audit.rules if r.rows} >= {"duplicate", "missing_customer_id"}
    assert once.audit.returns_netted_rows > 0


def test_the_large_input_path_gives_the_same_stage(monkeypatch, shipped_config_path) -> None:
    """Past SHARED_SCAN_MAX_ROWS the queries over the purchase lines (customer graph, extended
    features) stream one at a time: the sample's frames are unchanged."""
    config = reportgen.load_config(shipped_config_path)
    config = config.model_copy(update={
        "graph": config.graph.model_copy(update={"enabled": True}),
        "representation": config.representation.model_copy(update={"features": "extended"}),
    })  # fmt: skip
    shared = compute_rfm_stage(config)
    monkeypatch.setattr(rfm_stage, "SHARED_SCAN_MAX_ROWS", 0)
    streamed = compute_rfm_stage(config)
    assert shared.purchases and shared.extras
    for name, frame in [*shared.purchases.items(), *shared.extras.items()]:
        other = {**streamed.purchases, **streamed.extras}[name]
        assert other.sort(other.columns).equals(frame.sort(frame.columns)), name
    assert streamed.audit == shared.audit
    assert streamed.rfm.frame.equals(shared.rfm.frame)


@pytest.mark.parametrize("duplicates", ["all", SUBSET])
def test_rows_grouped_in_slices_of_customers_give_the_same_stage(
    tmp_path: Path, monkeypatch, duplicates
) -> None:
    """Past GROUPBY_SLICE_ROWS the rows are grouped a slice of customers at a time (three here,
    with guest rows and copies among them): the audit and the RFM table are unchanged."""
    whole = _stage(tmp_path, duplicates)
    monkeypatch.setattr(rfm_stage, "GROUPBY_SLICE_ROWS", 4)
    sliced = _stage(tmp_path, duplicates)
    assert sliced.audit == whole.audit
    assert sliced.rfm.frame.equals(whole.rfm.frame)
    assert sliced.eda.monthly.equals(whole.eda.monthly)


def test_sample_rows_grouped_in_slices_give_the_same_stage(monkeypatch, shipped_config_path):
    config = reportgen.load_config(shipped_config_path)
    whole = compute_rfm_stage(config)
    monkeypatch.setattr(clean, "_groups_in_first_pass", lambda *_: False)  # in the second read
    monkeypatch.setattr(rfm_stage, "GROUPBY_SLICE_ROWS", 100_000)  # six slices
    sliced = compute_rfm_stage(config)
    assert sliced.audit == whole.audit
    assert sliced.rfm.frame.equals(whole.rfm.frame)
    assert sliced.eda.monthly.equals(whole.eda.monthly)


@pytest.mark.parametrize(
    "update",
    [
        {},
        {"period": {"as_of": "2011-06-30", "window_days": 90}},
        {"cleaning": {"returns": "net", "duplicates": "off"}},
        {"cleaning": {"duplicates": ["InvoiceNo", "StockCode", "CustomerID"]},
         "input": {"attributes": []}},
    ],
    ids=["default", "window", "net-no-duplicates", "subset"],
)  # fmt: skip
def test_rows_grouped_in_the_first_pass_give_what_a_second_read_gives(
    monkeypatch, shipped_config_path, update
) -> None:
    """Parquet rows are grouped as the first pass reads them, in one chunk or in several,
    their period rules applied per group by its day: the audit (with its example lines), the
    period, the months and the RFM table equal those of grouping the rows in a second read."""
    config = reportgen.load_config(shipped_config_path)
    config = config.model_copy(update={
        section: getattr(config, section).model_copy(update=values)
        for section, values in update.items()
    })  # fmt: skip
    grouped_first = []
    real = clean._groups_in_first_pass
    monkeypatch.setattr(
        clean, "_groups_in_first_pass", lambda *a: grouped_first.append(real(*a)) or real(*a)
    )
    first = compute_rfm_stage(config)
    monkeypatch.setattr(clean, "FIRST_PASS_CHUNK_ROWS", 100_000)  # six chunks
    chunks = compute_rfm_stage(config)
    monkeypatch.setattr(clean, "_groups_in_first_pass", lambda *_: False)
    second = compute_rfm_stage(config)
    # with some columns compared, the groups must be whole (one chunk): read again in chunks
    subset = isinstance(update.get("cleaning", {}).get("duplicates"), list)
    assert grouped_first == [True, not subset]
    for stage in (first, chunks):
        assert stage.audit == second.audit and stage.period == second.period
        assert stage.eda.monthly.equals(second.eda.monthly)
        assert stage.rfm.frame.equals(second.rfm.frame)
    dropped = {r.rule for r in first.audit.rules if r.rows}
    if "period" in update:  # the period rules judged the groups
        assert {"after_as_of", "before_window"} <= dropped


@pytest.mark.parametrize("fmt", ["parquet", "folder", "csv"])
@pytest.mark.parametrize("duplicates", ["all", "off"])
def test_groups_and_copies_split_across_chunks_give_the_same_stage(
    tmp_path: Path, monkeypatch, duplicates, fmt
) -> None:
    """Chunks of three rows split order I1 and its copies, and line 9 copies line 2 two chunks
    later (in another file, for a folder): the counts, examples and attributes equal those of
    one chunk (for CSV: of the file parsed once, against batches of a file too large for it)."""
    whole = _stage(tmp_path, duplicates, fmt)
    monkeypatch.setattr(clean, "FIRST_PASS_CHUNK_ROWS", 3)
    monkeypatch.setattr(clean, "CSV_PARSED_ONCE_MAX_BYTES", 0)
    batches = []
    real = clean._read_chunk
    monkeypatch.setattr(clean, "_read_chunk", lambda *a: batches.append(a) or real(*a))
    chunks = _stage(tmp_path, duplicates, fmt)
    assert len(batches) == 4  # ten rows, three at a time
    assert chunks.audit == whole.audit
    assert chunks.rfm.frame.equals(whole.rfm.frame)
    assert chunks.eda.monthly.equals(whole.eda.monthly)


def test_a_large_csv_compared_on_some_columns_is_grouped_in_a_second_read(
    tmp_path: Path, monkeypatch
) -> None:
    """With `duplicates` naming some columns the copies' groups must be whole, which batches of
    a CSV file too large to parse once cannot promise: its rows are grouped in a second read,
    and the stage equals that of the file parsed once."""
    once = _stage(tmp_path, SUBSET)
    monkeypatch.setattr(clean, "CSV_PARSED_ONCE_MAX_BYTES", 0)
    monkeypatch.setattr(clean, "FIRST_PASS_CHUNK_ROWS", 3)
    grouped_first = []
    real = clean._groups_in_first_pass
    monkeypatch.setattr(
        clean, "_groups_in_first_pass", lambda *a: grouped_first.append(real(*a)) or real(*a)
    )
    read_twice = _stage(tmp_path, SUBSET)
    assert grouped_first == [False]
    assert read_twice.audit == once.audit
    assert read_twice.rfm.frame.equals(once.rfm.frame)
    assert read_twice.eda.monthly.equals(once.eda.monthly)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_with_as_of_latest_the_lines_after_the_last_purchase_are_shown(tmp_path: Path, fmt):
    """`as_of: latest` without a window: the first pass keeps only the rows that can be shown
    (no kept purchase is after the last one); a return dated after it is still an example."""
    rows = "customer,invoice,date,amount\n" + "\n".join([
        "C1,I1,2024-01-05,10.00",   # line 2: kept
        "C1,C2,2024-01-09,-5.00",   # line 3: a return after the last purchase: after_as_of
        ",I3,2024-01-04,3.00",      # line 4: no customer
        "C2,I4,2024-01-06,7.00",    # line 5: kept, the last purchase (as_of)
        "C2,C5,2024-01-06,-7.00",   # line 6: a return on as_of: netted
    ])  # fmt: skip
    config = reportgen.config_from_dict(
        {"input": {"path": _source(tmp_path, rows + "\n", fmt), "columns": COLUMNS},
         "cleaning": {"returns": "net"}},
        base_dir=tmp_path,
    )  # fmt: skip
    stage = compute_rfm_stage(config)
    assert stage.period.as_of.isoformat() == "2024-01-06"
    assert _rules(stage) == {"missing_customer_id": (1, 300, [4]), "after_as_of": (1, -500, [3])}
    assert stage.audit.returns_netted_rows == 1


@pytest.mark.parametrize("attributes", [(), ("country",)], ids=["no-attributes", "country"])
def test_runs_start_on_the_first_row_and_wherever_any_key_changes(monkeypatch, attributes) -> None:
    """A run starts on the first row even when all its keys are missing, and wherever one key
    changes, the return flag alone included; summed per key, the runs give the groups."""
    day = dt.date(2024, 1, 2)
    rows = pl.DataFrame(
        {"customer_id": [None, None, 1, 1, 1, 1], "order_id": [None, None, "A", "A", "A", "A"],
         "order_date": [None, None, day, day, day, day], clean.REASON: [None] * 6,
         clean.IS_RETURN: [None, None, False, True, False, False],
         "amount_minor": [100, None, 10, -5, 7, 50], "country": ["FR", "DE", "UK", "UK", "IE", "UK"]},
        schema_overrides={"customer_id": pl.Int64, "order_date": pl.Date,
                          clean.REASON: clean.REASON_DTYPE, "amount_minor": pl.Int64},
    ).select("customer_id", "order_id", "order_date", clean.REASON, clean.IS_RETURN,
             "amount_minor", *attributes)  # fmt: skip
    tx = SimpleNamespace(has_order_id=True, attributes=attributes)
    monkeypatch.setattr(clean, "MAX_RUNS_PER_ROW", 1.0)  # 4 runs in 6 rows: summed as runs
    keys = clean._group_keys(tx)
    runs = clean._grouped_runs(rows, tx, runs=True)
    by_key = clean._grouped_by_key(rows, tx)
    assert runs["rows"].to_list() == [2, 1, 1, 2]  # in file order
    summed = runs.group_by(keys).agg(pl.col("rows", "amount_minor").sum(), pl.col(attributes).min())
    assert summed.sort("rows", "amount_minor").equals(by_key.sort("rows", "amount_minor"))


@pytest.mark.parametrize("attributes", [[], ["Country"]], ids=["no-attributes", "country"])
@pytest.mark.parametrize("shuffled", [True, False], ids=["shuffled", "in-order"])
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_rows_summed_as_runs_give_what_grouping_by_key_gives(
    tmp_path: Path, monkeypatch, fmt, shuffled, attributes
) -> None:
    """Consecutive rows with the same keys are summed as runs (clean._grouped_runs): summing
    runs (always), grouping by key (never) and the default choice give the same stage, in one
    chunk and in several. The sample lists an order's lines together, so by default its rows
    are summed as runs; shuffled, an order's lines are scattered over many runs, and by default
    they are grouped by key. Runs are summed between their starts, or with attributes (their
    smallest value per run) grouped by run number."""
    rows = pl.read_parquet(sample_data_path("online_retail"), n_rows=30_000)
    if shuffled:
        rows = rows.sample(fraction=1.0, shuffle=True, seed=7)
    path = tmp_path / f"t.{fmt}"
    if fmt == "csv":
        rows.write_csv(path, datetime_format="%Y-%m-%d %H:%M:%S")
    else:
        rows.write_parquet(path)
    columns = {"customer_id": "CustomerID", "order_id": "InvoiceNo", "order_date": "InvoiceDate",
               "amount": None, "quantity": "Quantity", "unit_price": "UnitPrice"}  # fmt: skip
    config = reportgen.config_from_dict(
        {"input": {"path": path.name, "columns": columns, "attributes": attributes},
         "cleaning": {"returns": "net"}},
        base_dir=tmp_path,
    )  # fmt: skip
    grouped = []  # per call: rows in, groups or runs out
    real = clean._grouped_runs

    def counted(rows: pl.DataFrame, *args) -> pl.DataFrame:
        out = real(rows, *args)
        grouped.append((rows.height, out.height))
        return out

    monkeypatch.setattr(clean, "_grouped_runs", counted)
    stages = {}
    shares, chunks = (clean.MAX_RUNS_PER_ROW, 0.0, 1.0), (clean.FIRST_PASS_CHUNK_ROWS, 7_000)
    for share in shares:
        monkeypatch.setattr(clean, "MAX_RUNS_PER_ROW", share)
        for chunk_rows in chunks:
            monkeypatch.setattr(clean, "FIRST_PASS_CHUNK_ROWS", chunk_rows)
            stages[share, chunk_rows] = compute_rfm_stage(config)
    assert [rows for rows, _ in grouped] == [30_000, 7_000, 7_000, 7_000, 7_000, 2_000] * 3
    default, by_key, as_runs = (grouped[i * 6][1] for i in range(3))
    if shuffled:
        assert default == by_key < as_runs / 2  # summed as runs, most orders would be split
    else:
        assert default == as_runs < shares[0] * rows.height
    reference = stages.pop((0.0, chunks[0]))
    for stage in stages.values():
        assert stage.audit == reference.audit and stage.period == reference.period
        assert stage.eda.monthly.equals(reference.eda.monthly)
        assert stage.rfm.frame.equals(reference.rfm.frame)
    assert reference.audit.returns_netted_rows > 0
