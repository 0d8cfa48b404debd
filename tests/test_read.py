"""Reading: CSV, Parquet and Excel sources mapped to the canonical schema, checked through RFM.

Every test writes a tiny hand-made source into `tmp_path`, runs `compute_rfm_stage` (nothing is
written) and compares the per-customer RFM values with the exact figures worked out by hand.
"""

from __future__ import annotations

import datetime as dt
import itertools
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import xlsxwriter

import reportgen
from reportgen import clean

UTC = dt.UTC
RFM_COLUMNS = ["customer_id", "frequency", "monetary_minor", "first_order", "last_order",
               "recency_days", "tenure_days"]  # fmt: skip


def _config(tmp_path: Path, path: str, **sections: Any) -> reportgen.Config:
    """A config reading `path` (relative to tmp_path); `input_` keys extend the input section."""
    input_section = {"path": path, **sections.pop("input_", {})}
    return reportgen.config_from_dict({"input": input_section, **sections}, base_dir=tmp_path)


def _rows(report: reportgen.Report, *extra: str) -> list[tuple]:
    """The RFM table's key columns (plus `extra`) as tuples, in customer_id order."""
    return report.rfm.frame.select(*RFM_COLUMNS, *extra).rows()


def _rule(report: reportgen.Report, name: str) -> tuple[int, int]:
    """(rows, revenue_minor) a cleaning rule dropped; (0, 0) when it is not listed."""
    found = [(r.rows, r.revenue_minor) for r in report.audit.rules if r.rule == name]
    return found[0] if found else (0, 0)


def _d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


# --- CSV ---------------------------------------------------------------------------------------

GERMAN_CSV = (
    "Kunde;Rechnung;Datum;Betrag;Land\n"
    "00123;A1;01/02/2024 10:00;12,50;{name}\n"
    "00123;A2;2024-02-03;7,25;{name}\n"
    "17850.0;A3;2024-02-05;100,00;Österreich\n"
)
GERMAN_INPUT = {
    "csv": {"separator": ";", "decimal": ","},
    "date_formats": ["%d/%m/%Y %H:%M", "%Y-%m-%d"],
    "columns": {"customer_id": "Kunde", "order_id": "Rechnung", "order_date": "Datum",
                "amount": "Betrag"},
    "attributes": ["Land"],
}  # fmt: skip


@pytest.mark.parametrize(
    ("encoding", "name"), [("latin-1", "España"), ("cp1252", "Œland €"), ("utf-8", "日本")]
)
def test_csv_separator_encoding_decimal_comma_and_date_formats(
    tmp_path: Path, encoding: str, name: str
) -> None:
    """`;`, a non-UTF-8 encoding, `12,50` and two date formats read to exact RFM values."""
    (tmp_path / "tx.csv").write_bytes(GERMAN_CSV.format(name=name).encode(encoding))
    options = GERMAN_INPUT | {"csv": GERMAN_INPUT["csv"] | {"encoding": encoding}}
    report = reportgen.compute_rfm_stage(_config(tmp_path, "tx.csv", input_=options))

    assert report.period.as_of == _d("2024-02-05")
    assert _rows(report, "Land") == [
        # 01/02/2024 is the 1st of February: day first, as the first format says
        ("00123", 2, 1975, _d("2024-02-01"), _d("2024-02-03"), 2, 4, name),
        ("17850", 1, 10000, _d("2024-02-05"), _d("2024-02-05"), 0, 0, "Österreich"),
    ]
    assert report.audit.rows_read == 3
    assert report.audit.revenue_read_minor == 11975


def test_transcoded_copy_is_removed_after_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a latin-1 CSV leaves no temporary copy of the data behind."""
    (tmp_path / "tx.csv").write_bytes(GERMAN_CSV.format(name="España").encode("latin-1"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    options = GERMAN_INPUT | {"csv": GERMAN_INPUT["csv"] | {"encoding": "latin-1"}}
    report = reportgen.compute_rfm_stage(_config(tmp_path, "tx.csv", input_=options))

    assert report.rfm.frame.height == 2
    assert list(scratch.iterdir()) == []


def test_csv_date_formats_are_tried_in_order(tmp_path: Path) -> None:
    """A value matching the first format is read with it; the second only catches the rest."""
    (tmp_path / "tx.csv").write_text(
        "customer_id,order_id,order_date,amount\n"
        "a,1,03/04/2024,1.00\n"  # both formats match: the first wins, 3 April
        "b,2,04/13/2024,1.00\n"  # only %m/%d/%Y matches: 13 April
    )
    config = _config(tmp_path, "tx.csv", input_={"date_formats": ["%d/%m/%Y", "%m/%d/%Y"]})
    frame = reportgen.compute_rfm_stage(config).rfm.frame

    assert frame.select("customer_id", "last_order").rows() == [
        ("a", _d("2024-04-03")),
        ("b", _d("2024-04-13")),
    ]


def test_csv_ids_keep_leading_zeros_and_lose_float_suffix(tmp_path: Path) -> None:
    """'00123' stays '00123', '17850.0' becomes '17850', and they are distinct from '123'."""
    (tmp_path / "tx.csv").write_text(
        "customer_id,order_id,order_date,amount\n"
        "00123,1,2024-01-01,1.00\n"
        "123,2,2024-01-01,2.00\n"
        "17850.0,3,2024-01-01,3.00\n"
        "17850,4,2024-01-01,4.00\n"
        " 0042 ,5,2024-01-01,5.00\n"
    )
    frame = reportgen.compute_rfm_stage(_config(tmp_path, "tx.csv")).rfm.frame

    assert frame.select("customer_id", "frequency", "monetary_minor").rows() == [
        ("00123", 1, 100),
        ("0042", 1, 500),
        ("123", 1, 200),
        ("17850", 2, 700),
    ]
    assert frame.schema["customer_id"] == pl.String


def test_csv_glob_reads_every_file_as_one_table(tmp_path: Path) -> None:
    """A glob over CSV files (same columns) reads them as one table."""
    header = "customer_id,order_id,order_date,amount\n"
    (tmp_path / "jan.csv").write_text(header + "a,1,2024-01-05,1.00\nb,2,2024-01-06,2.00\n")
    (tmp_path / "feb.csv").write_text(header + "a,3,2024-02-01,4.00\n")
    report = reportgen.compute_rfm_stage(_config(tmp_path, "*.csv"))

    assert len(report.source.files) == 2
    assert _rows(report) == [
        ("a", 2, 500, _d("2024-01-05"), _d("2024-02-01"), 0, 27),
        ("b", 1, 200, _d("2024-01-06"), _d("2024-01-06"), 26, 26),
    ]


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
@pytest.mark.parametrize("later_header", ["same", "reordered"])
@pytest.mark.parametrize("batches", [False, True])
def test_csv_files_name_the_file_and_line_of_an_example(
    tmp_path: Path, monkeypatch, encoding: str, later_header: str, batches: bool
) -> None:
    """CSV files are read as one scan per run of files with one header (reordered: jan.csv, then
    feb.csv and mar.csv with the columns in another order); transcoded or not, parsed once or
    (large files) in batches, an example row names its own file and line, and the table is the
    same."""
    if batches:
        monkeypatch.setattr(clean, "CSV_PARSED_ONCE_MAX_BYTES", 0)
        monkeypatch.setattr(clean, "FIRST_PASS_CHUNK_ROWS", 2)
    header, reordered = "customer_id,order_id,order_date,amount\n", later_header == "reordered"
    lines = {
        "jan": ["a,1,2024-01-05,1.00", "b,2,2024-01-06,2.00"],
        "feb": ["a,3,2024-02-01,4.00", ",4,2024-02-02,8.00", "ñ,5,2024-02-03,1.00"],
        "mar": [",6,2024-03-01,16.00", "b,7,2024-03-02,3.00"],
    }
    for name, rows in lines.items():
        if name != "jan" and reordered:  # amount first: the files' columns differ in order
            rows = [",".join([r.split(",")[3], *r.split(",")[:3]]) for r in rows]
        text = ("amount,customer_id,order_id,order_date\n" if name != "jan" and reordered
                else header) + "\n".join(rows) + "\n"  # fmt: skip
        (tmp_path / f"{name}.csv").write_bytes(text.encode(encoding))
    config = _config(tmp_path, "*.csv", input_={"csv": {"encoding": encoding}})
    report = reportgen.compute_rfm_stage(config)

    [missing] = [r for r in report.audit.rules if r.rule == "missing_customer_id"]
    examples = [(Path(e["file"]).name, e["line"]) for e in missing.examples]
    assert sorted(Path(f).name for f in report.source.files) == ["feb.csv", "jan.csv", "mar.csv"]
    assert examples == [("feb.csv", 3), ("mar.csv", 2)]
    assert (missing.rows, missing.revenue_minor) == (2, 2400)
    assert _rows(report) == [
        ("a", 2, 500, _d("2024-01-05"), _d("2024-02-01"), 30, 57),
        ("b", 2, 500, _d("2024-01-06"), _d("2024-03-02"), 0, 56),
        ("ñ", 1, 100, _d("2024-02-03"), _d("2024-02-03"), 28, 28),
    ]


def test_csv_zoned_timestamps_are_converted_to_the_period_timezone(tmp_path: Path) -> None:
    """'2024-01-01T23:30:00+0000' is a purchase on 2 January in Europe/Berlin."""
    (tmp_path / "tx.csv").write_text(
        "customer_id,order_id,order_date,amount\n"
        "a,1,2024-01-01T23:30:00+0000,1.00\n"
        "b,2,2024-01-03T10:00:00+0000,1.00\n"
    )
    config = _config(
        tmp_path, "tx.csv",
        input_={"date_formats": ["%Y-%m-%dT%H:%M:%S%z"]},
        period={"timezone": "Europe/Berlin"},
    )  # fmt: skip
    frame = reportgen.compute_rfm_stage(config).rfm.frame

    assert frame.select("customer_id", "last_order", "recency_days").rows() == [
        ("a", _d("2024-01-02"), 1),
        ("b", _d("2024-01-03"), 0),
    ]


# --- Parquet -----------------------------------------------------------------------------------


def _parquet_frame() -> pl.DataFrame:
    """Float64 customer ids, a naive timestamp column, amounts as floats."""
    return pl.DataFrame(
        {
            "customer_id": [17850.0, 17850.0, 12345.0, 12345.0],
            "order_id": ["1", "2", "3", "3"],
            "order_date": [
                dt.datetime(2024, 3, 1, 9),
                dt.datetime(2024, 3, 10, 18),
                dt.datetime(2024, 3, 5, 8),
                dt.datetime(2024, 3, 5, 8, 1),
            ],
            "amount": [10.0, 2.5, 0.1, 0.2],
        }
    )


PARQUET_EXPECTED = [
    ("12345", 1, 30, _d("2024-03-05"), _d("2024-03-05"), 5, 5),
    ("17850", 2, 1250, _d("2024-03-01"), _d("2024-03-10"), 0, 9),
]


def test_parquet_single_file_with_float_customer_ids(tmp_path: Path) -> None:
    """A Float64 id column reads as '17850', not '17850.0'; 0.1 + 0.2 sums to exactly 30."""
    _parquet_frame().write_parquet(tmp_path / "tx.parquet")
    report = reportgen.compute_rfm_stage(_config(tmp_path, "tx.parquet"))

    assert report.source.format == "parquet"
    assert _rows(report) == PARQUET_EXPECTED


def test_parquet_float_ids_just_below_2_to_the_53_are_exact(tmp_path: Path) -> None:
    """2^53 - 1 is still exact in a Float64: it reads as '9007199254740991'."""
    frame = _parquet_frame().with_columns(
        pl.Series("customer_id", [2.0**53 - 1, 2.0**53 - 1, 1.0, 1.0])
    )
    frame.write_parquet(tmp_path / "tx.parquet")
    report = reportgen.compute_rfm_stage(_config(tmp_path, "tx.parquet"))

    assert report.rfm.frame["customer_id"].to_list() == ["1", "9007199254740991"]


@pytest.mark.parametrize("path", ["parts", "parts/*.parquet", "parts/**/*.parquet"])
def test_parquet_folder_and_glob_read_every_file(tmp_path: Path, path: str) -> None:
    """A folder (searched recursively) or a glob reads all its files as one table."""
    frame = _parquet_frame()
    (tmp_path / "parts" / "2024").mkdir(parents=True)
    frame.head(1).write_parquet(tmp_path / "parts" / "a.parquet")
    frame.slice(1, 2).write_parquet(tmp_path / "parts" / "b.parquet")
    frame.tail(1).write_parquet(tmp_path / "parts" / "2024" / "c.parquet")
    (tmp_path / "parts" / "notes.txt").write_text("not data")
    report = reportgen.compute_rfm_stage(_config(tmp_path, path))

    expected_files = 3 if path != "parts/*.parquet" else 2
    assert len(report.source.files) == expected_files
    if expected_files == 3:
        assert _rows(report) == PARQUET_EXPECTED
    else:  # the nested file is not matched by a flat glob: customer 12345 has 0.1 only
        assert _rows(report) == [
            ("12345", 1, 10, _d("2024-03-05"), _d("2024-03-05"), 5, 5),
            PARQUET_EXPECTED[1],
        ]


@pytest.mark.parametrize(
    "chunk_rows",
    [
        5_000_000,  # one chunk: the four files as one scan
        2,  # a, b + c, d: runs of whole files
        3,  # a + b, c + d: a run of two files from the third file on
        5,  # a + b + c + the first row of d, then d's second row: a run and a slice
    ],
)
def test_parquet_files_of_one_schema_name_the_file_and_row_of_an_example(
    tmp_path: Path, monkeypatch, chunk_rows: int
) -> None:
    """Files of one schema are read as one scan (a chunk of the first pass reads its whole
    files as one): a row's file and row within it still come out right, in the audit's
    examples, and the RFM table is the one of the same rows in one file."""
    frame = pl.concat([_parquet_frame(), _parquet_frame().head(2)]).with_columns(
        pl.Series("customer_id", [1.0, 2.0, 3.0, None, None, 4.0])  # no customer: c 1, d 1
    )
    (tmp_path / "parts").mkdir()
    sizes = {"a": 2, "b": 1, "c": 1, "d": 2}
    for name, start in zip(sizes, itertools.accumulate([0, *sizes.values()]), strict=False):
        frame.slice(start, sizes[name]).write_parquet(tmp_path / "parts" / f"{name}.parquet")
    frame.write_parquet(tmp_path / "whole.parquet")
    whole = reportgen.compute_rfm_stage(_config(tmp_path, "whole.parquet"))
    monkeypatch.setattr(clean, "FIRST_PASS_CHUNK_ROWS", chunk_rows)
    report = reportgen.compute_rfm_stage(_config(tmp_path, "parts"))

    [missing] = [r for r in report.audit.rules if r.rule == "missing_customer_id"]
    examples = [(Path(e["file"]).name, e["line"]) for e in missing.examples]
    assert examples == [("c.parquet", 1), ("d.parquet", 1)]
    assert report.rfm.frame.equals(whole.rfm.frame)
    assert report.audit.rows_read == 6


def test_parquet_files_that_differ_read_in_chunks_as_one_table(tmp_path: Path, monkeypatch):
    """Files whose columns differ in type (integer and float customer ids and amounts) or are
    missing (a Country in one file only) form one table, also when the first pass reads them
    in chunks of two rows sliced out of each file: the same RFM table, countries and audit."""
    frame = _parquet_frame().with_columns(pl.Series("Country", ["UK", "UK", "FR", "FR"]))
    (tmp_path / "parts").mkdir()
    frame.head(3).write_parquet(tmp_path / "parts" / "a.parquet")
    frame.tail(1).drop("Country").with_columns(
        pl.col("customer_id").cast(pl.Int64), pl.lit(20, dtype=pl.Int64).alias("amount")
    ).write_parquet(tmp_path / "parts" / "b.parquet")
    config = _config(tmp_path, "parts", input_={"attributes": ["Country"]})
    whole = reportgen.compute_rfm_stage(config)
    monkeypatch.setattr(clean, "FIRST_PASS_CHUNK_ROWS", 2)
    chunks = []
    real = clean._read_chunk
    monkeypatch.setattr(clean, "_read_chunk", lambda *a: chunks.append(a) or real(*a))
    chunked = reportgen.compute_rfm_stage(config)

    assert len(chunks) == 2
    assert _rows(whole, "Country") == [
        ("12345", 1, 2010, _d("2024-03-05"), _d("2024-03-05"), 5, 5, "FR"),
        ("17850", 2, 1250, _d("2024-03-01"), _d("2024-03-10"), 0, 9, "UK"),
    ]
    assert chunked.rfm.frame.equals(whole.rfm.frame)
    assert chunked.audit == whole.audit


@pytest.mark.parametrize("chunk_rows", [5_000_000, 2, 3])
def test_parquet_files_whose_schema_changes_are_read_in_runs(
    tmp_path: Path, monkeypatch, chunk_rows: int
) -> None:
    """Files a and b (integer ids, no Country) and c and d (float ids, a Country) are read as
    two runs of one schema, also in chunks that split a run or span both: each example row
    names its file and row, and the table is the one of the same rows in one file."""
    frame = pl.concat([_parquet_frame(), _parquet_frame().head(2)]).with_columns(
        pl.Series("customer_id", [1.0, None, 3.0, None, 2.0, 4.0]),  # no customer: b 1, c 1
        pl.Series("Country", ["UK", "UK", "FR", "FR", "DE", "DE"]),
    )
    (tmp_path / "parts").mkdir()
    old = frame.drop("Country").with_columns(pl.col("customer_id").cast(pl.Int64))
    for name, rows in [("a", old.head(1)), ("b", old.slice(1, 2)), ("c", frame.slice(3, 1)),
                       ("d", frame.tail(2))]:  # fmt: skip
        rows.write_parquet(tmp_path / "parts" / f"{name}.parquet")
    frame.with_columns(
        pl.when(pl.int_range(pl.len()) >= 3).then(pl.col("Country")).alias("Country")
    ).write_parquet(tmp_path / "whole.parquet")
    config = {"input_": {"attributes": ["Country"]}}
    whole = reportgen.compute_rfm_stage(_config(tmp_path, "whole.parquet", **config))
    monkeypatch.setattr(clean, "FIRST_PASS_CHUNK_ROWS", chunk_rows)
    report = reportgen.compute_rfm_stage(_config(tmp_path, "parts", **config))

    [missing] = [r for r in report.audit.rules if r.rule == "missing_customer_id"]
    examples = [(Path(e["file"]).name, e["line"]) for e in missing.examples]
    assert examples == [("b.parquet", 1), ("c.parquet", 1)]
    assert report.rfm.frame.equals(whole.rfm.frame)
    assert report.rfm.frame["Country"].to_list() == [None, "DE", None, "DE"]


def _zoned_frame(time_zone: str | None) -> pl.DataFrame:
    """Customer a buys at 2024-01-01 23:30, customer b at 2024-01-02 10:00 (in `time_zone`)."""
    stamps = [dt.datetime(2024, 1, 1, 23, 30), dt.datetime(2024, 1, 2, 10, 0)]
    return pl.DataFrame(
        {"customer_id": ["a", "b"], "order_id": ["1", "2"], "amount": [5.0, 7.0]}
    ).with_columns(pl.Series("order_date", stamps, dtype=pl.Datetime("us", time_zone)))


@pytest.mark.parametrize(
    ("timezone", "a_day", "a_recency"),
    [("UTC", "2024-01-01", 1), ("Europe/Berlin", "2024-01-02", 0)],
)
def test_parquet_zoned_datetimes_are_converted_to_the_period_timezone(
    tmp_path: Path, timezone: str, a_day: str, a_recency: int
) -> None:
    """23:30 UTC on 1 January is 00:30 on 2 January in Berlin: dates and recency follow."""
    _zoned_frame("UTC").write_parquet(tmp_path / "tx.parquet")
    config = _config(tmp_path, "tx.parquet", period={"timezone": timezone})
    report = reportgen.compute_rfm_stage(config)

    assert report.period.as_of == _d("2024-01-02")
    assert report.rfm.frame.select(
        "customer_id", "first_order", "last_order", "recency_days"
    ).rows() == [
        ("a", _d(a_day), _d(a_day), a_recency),
        ("b", _d("2024-01-02"), _d("2024-01-02"), 0),
    ]


def test_parquet_zoned_datetimes_in_another_zone(tmp_path: Path) -> None:
    """A column stored in America/New_York is converted too (18:30 NY = 00:30 Berlin)."""
    frame = pl.DataFrame({"customer_id": ["a"], "order_id": ["1"], "amount": [5.0]}).with_columns(
        pl.Series("order_date", [dt.datetime(2024, 1, 1, 18, 30)]).dt.replace_time_zone(
            "America/New_York"
        )
    )
    frame.write_parquet(tmp_path / "tx.parquet")
    config = _config(tmp_path, "tx.parquet", period={"timezone": "Europe/Berlin"})

    assert reportgen.compute_rfm_stage(config).rfm.frame["last_order"].to_list() == [
        _d("2024-01-02")
    ]


def test_parquet_naive_timestamps_are_taken_as_in_the_period_timezone(tmp_path: Path) -> None:
    """Naive 00:30 on 2 January stays on 2 January in New York (not shifted as if UTC)."""
    frame = _zoned_frame(None).with_columns(
        pl.Series("order_date", [dt.datetime(2024, 1, 2, 0, 30), dt.datetime(2024, 1, 2, 23, 59)])
    )
    frame.write_parquet(tmp_path / "tx.parquet")
    config = _config(tmp_path, "tx.parquet", period={"timezone": "America/New_York"})
    report = reportgen.compute_rfm_stage(config)

    assert report.period.as_of == _d("2024-01-02")
    assert report.rfm.frame.select("customer_id", "last_order", "recency_days").rows() == [
        ("a", _d("2024-01-02"), 0),
        ("b", _d("2024-01-02"), 0),
    ]


def test_parquet_date_column(tmp_path: Path) -> None:
    """A Date column (no time of day) is read as it is."""
    pl.DataFrame(
        {
            "customer_id": ["a", "a"],
            "order_id": ["1", "2"],
            "order_date": [dt.date(2024, 5, 1), dt.date(2024, 5, 31)],
            "amount": [1.0, 2.0],
        }
    ).write_parquet(tmp_path / "tx.parquet")
    report = reportgen.compute_rfm_stage(_config(tmp_path, "tx.parquet"))

    assert _rows(report) == [("a", 2, 300, _d("2024-05-01"), _d("2024-05-31"), 0, 30)]


def test_parquet_dates_stored_as_integers_read_with_a_format(tmp_path: Path) -> None:
    """An Int64 column of 20240501-style dates is parsed with input.date_formats."""
    pl.DataFrame(
        {
            "customer_id": ["a", "a"],
            "order_id": ["1", "2"],
            "order_date": [20240501, 20240531],
            "amount": [1.0, 2.0],
        }
    ).write_parquet(tmp_path / "tx.parquet")
    config = _config(tmp_path, "tx.parquet", input_={"date_formats": ["%Y%m%d"]})
    report = reportgen.compute_rfm_stage(config)

    assert _rows(report) == [("a", 2, 300, _d("2024-05-01"), _d("2024-05-31"), 0, 30)]


# --- Excel -------------------------------------------------------------------------------------


def _write_workbook(path: Path, data: pl.DataFrame) -> None:
    """A workbook whose first sheet is a note and whose second sheet, 'Tx', holds `data`."""
    with xlsxwriter.Workbook(path) as workbook:
        pl.DataFrame({"note": ["exported by the shop"]}).write_excel(
            workbook=workbook, worksheet="Notes"
        )
        data.write_excel(workbook=workbook, worksheet="Tx")


EXCEL_DATA = pl.DataFrame(
    {
        "Customer": ["00123", "00123", "42"],
        "Invoice": ["A1", "A2", "A3"],
        "Date": [dt.datetime(2024, 2, 1, 10), dt.datetime(2024, 2, 3), dt.datetime(2024, 2, 5)],
        "Qty": [2, 1, 4],
        "Price": [6.25, 7.25, 25.0],
        "Country": ["España", "España", "Österreich"],
    }
)
EXCEL_INPUT = {
    "columns": {"customer_id": "Customer", "order_id": "Invoice", "order_date": "Date",
                "amount": None, "quantity": "Qty", "unit_price": "Price"},
    "attributes": ["Country"],
}  # fmt: skip


@pytest.mark.parametrize("sheet", ["Tx", 1])
def test_excel_sheet_by_name_and_by_position(tmp_path: Path, sheet: str | int) -> None:
    """The sheet is chosen by name or by 0-based position; text ids keep leading zeros."""
    _write_workbook(tmp_path / "tx.xlsx", EXCEL_DATA)
    options = EXCEL_INPUT | {"excel": {"sheet": sheet}}
    report = reportgen.compute_rfm_stage(_config(tmp_path, "tx.xlsx", input_=options))

    assert report.source.format == "excel"
    assert _rows(report, "Country") == [
        ("00123", 2, 1975, _d("2024-02-01"), _d("2024-02-03"), 2, 4, "España"),
        ("42", 1, 10000, _d("2024-02-05"), _d("2024-02-05"), 0, 0, "Österreich"),
    ]


def test_excel_numeric_ids_read_without_a_decimal_suffix(tmp_path: Path) -> None:
    """Ids stored as numbers in a workbook (read back as floats) are shown as '17850'."""
    data = EXCEL_DATA.with_columns(pl.Series("Customer", [17850, 17850, 42]))
    _write_workbook(tmp_path / "tx.xlsx", data)
    options = EXCEL_INPUT | {"excel": {"sheet": "Tx"}}
    frame = reportgen.compute_rfm_stage(_config(tmp_path, "tx.xlsx", input_=options)).rfm.frame

    assert frame.select("customer_id", "monetary_minor").rows() == [
        ("17850", 1975),
        ("42", 10000),
    ]


# --- amount and orders ---------------------------------------------------------------------------

LINES_CSV = (
    "cust,day,qty,price,total\n"
    "a,2024-06-01 09:00:00,3,0.10,0.30\n"
    "a,2024-06-01 17:45:00,2,1.25,2.50\n"
    "a,2024-06-03 12:00:00,1,4.00,4.00\n"
    "b,2024-06-01 10:00:00,10,0.99,9.90\n"
)


@pytest.mark.parametrize(
    "amount_columns",
    [{"amount": "total"}, {"amount": None, "quantity": "qty", "unit_price": "price"}],
    ids=["amount-column", "quantity-x-unit-price"],
)
def test_amount_column_or_quantity_times_unit_price_without_order_ids(
    tmp_path: Path, amount_columns: dict
) -> None:
    """Both ways give the same exact pence; without order ids an order is a customer's day."""
    (tmp_path / "tx.csv").write_text(LINES_CSV)
    columns = {"customer_id": "cust", "order_id": None, "order_date": "day", **amount_columns}
    report = reportgen.compute_rfm_stage(_config(tmp_path, "tx.csv", input_={"columns": columns}))

    # a: two lines on 1 June are one order (30 + 250), 3 June is the second (400)
    assert _rows(report, "avg_order_value_minor") == [
        ("a", 2, 680, _d("2024-06-01"), _d("2024-06-03"), 0, 2, 340),
        ("b", 1, 990, _d("2024-06-01"), _d("2024-06-01"), 2, 2, 990),
    ]
    assert report.audit.revenue_kept_minor == 1670
    assert report.audit.reconciles


def test_order_ids_count_distinct_orders(tmp_path: Path) -> None:
    """With order ids, two invoices on the same day are two orders, two lines of one are one."""
    (tmp_path / "tx.csv").write_text(
        "customer_id,order_id,order_date,amount\n"
        "a,X1,2024-06-01,1.00\n"
        "a,X1,2024-06-01,2.00\n"
        "a,X2,2024-06-01,3.00\n"
    )
    report = reportgen.compute_rfm_stage(_config(tmp_path, "tx.csv"))

    assert _rows(report) == [("a", 2, 600, _d("2024-06-01"), _d("2024-06-01"), 0, 0)]


# --- period ------------------------------------------------------------------------------------

PERIOD_CSV = (
    "customer_id,order_id,order_date,amount\n"
    "a,1,2024-01-10,10.00\n"
    "a,2,2024-03-01,20.00\n"
    "a,3,2024-03-20,30.00\n"
    "b,4,2024-02-15,5.00\n"
    "c,5,2024-03-31,7.00\n"
    "c,6,2024-04-02,9.00\n"
)


def _period_report(tmp_path: Path, period: dict, **kwargs: Any) -> reportgen.Report:
    (tmp_path / "tx.csv").write_text(PERIOD_CSV)
    return reportgen.compute_rfm_stage(_config(tmp_path, "tx.csv", period=period), **kwargs)


def test_latest_as_of_is_the_last_transaction_date(tmp_path: Path) -> None:
    """By default as_of is the date of the latest kept transaction."""
    report = _period_report(tmp_path, {})

    assert report.period.as_of == _d("2024-04-02")
    assert report.period.latest_transaction == _d("2024-04-02")
    assert report.period.window_start is None
    assert _rule(report, "after_as_of") == (0, 0)


def test_explicit_as_of_ignores_later_orders(tmp_path: Path) -> None:
    """Orders after an explicit as_of are dropped and counted under `after_as_of`."""
    report = _period_report(tmp_path, {"as_of": "2024-03-20"})

    assert report.period.as_of == _d("2024-03-20")
    assert report.period.latest_transaction == _d("2024-03-20")
    assert _rule(report, "after_as_of") == (2, 1600)
    assert _rows(report) == [
        ("a", 3, 6000, _d("2024-01-10"), _d("2024-03-20"), 0, 70),
        ("b", 1, 500, _d("2024-02-15"), _d("2024-02-15"), 34, 34),
    ]
    assert report.audit.rows_kept == 4
    assert report.audit.reconciles


def test_window_days_keeps_recent_orders_but_tenure_uses_all_history(tmp_path: Path) -> None:
    """window_days 30 ending 2024-03-31 keeps 2 March on; first_order still looks further back."""
    report = _period_report(tmp_path, {"as_of": "2024-03-31", "window_days": 30})

    assert report.period.window_start == _d("2024-03-02")
    assert _rule(report, "before_window") == (3, 3500)  # a on 10 Jan and 1 Mar, b on 15 Feb
    assert _rule(report, "after_as_of") == (1, 900)
    assert _rows(report) == [  # b bought only before the window: not a customer of this period
        ("a", 1, 3000, _d("2024-01-10"), _d("2024-03-20"), 11, 81),
        ("c", 1, 700, _d("2024-03-31"), _d("2024-03-31"), 0, 0),
    ]
    assert report.audit.reconciles


def test_window_edge_day_is_inside(tmp_path: Path) -> None:
    """The window [as_of - window_days + 1, as_of] includes its first day."""
    report = _period_report(tmp_path, {"as_of": "2024-03-31", "window_days": 31})

    assert report.period.window_start == _d("2024-03-01")
    assert report.rfm.frame.filter(pl.col("customer_id") == "a")["frequency"].to_list() == [2]
    assert _rule(report, "before_window") == (2, 1500)


@pytest.mark.parametrize(
    ("asked", "now", "timezone", "as_of"),
    [
        ("yesterday", dt.datetime(2024, 3, 21, 12, 0, tzinfo=UTC), "UTC", "2024-03-20"),
        # 23:30 UTC on 20 March is already 21 March in Berlin: yesterday is 20 March there
        ("yesterday", dt.datetime(2024, 3, 20, 23, 30, tzinfo=UTC), "Europe/Berlin", "2024-03-20"),
        ("yesterday", dt.datetime(2024, 3, 20, 23, 30, tzinfo=UTC), "UTC", "2024-03-19"),
        ("last_month_end", dt.datetime(2024, 3, 10, 8, 0, tzinfo=UTC), "UTC", "2024-02-29"),
        ("last_month_end", dt.datetime(2024, 4, 1, 0, 30, tzinfo=UTC), "UTC", "2024-03-31"),
        # 00:30 UTC on 1 April is still 31 March in New York: last month end is 29 February
        (
            "last_month_end",
            dt.datetime(2024, 4, 1, 0, 30, tzinfo=UTC),
            "America/New_York",
            "2024-02-29",
        ),
    ],
)
def test_clock_keywords_use_now_in_the_period_timezone(
    tmp_path: Path, asked: str, now: dt.datetime, timezone: str, as_of: str
) -> None:
    """`yesterday` and `last_month_end` are days of the clock `now` in period.timezone."""
    report = _period_report(tmp_path, {"as_of": asked, "timezone": timezone}, now=now)

    assert report.period.as_of == _d(as_of)
    assert report.period.asked == asked
    last = report.rfm.frame.select(pl.col("last_order").max()).item()
    assert last <= _d(as_of)


def test_yesterday_rows_and_recency(tmp_path: Path) -> None:
    """`yesterday` with now on 2024-03-21 gives as_of 2024-03-20 and exact RFM values."""
    now = dt.datetime(2024, 3, 21, 12, 0, tzinfo=UTC)
    report = _period_report(tmp_path, {"as_of": "yesterday"}, now=now)

    assert _rule(report, "after_as_of") == (2, 1600)
    assert _rows(report) == [
        ("a", 3, 6000, _d("2024-01-10"), _d("2024-03-20"), 0, 70),
        ("b", 1, 500, _d("2024-02-15"), _d("2024-02-15"), 34, 34),
    ]


@pytest.mark.parametrize("override", [dt.date(2024, 3, 1), "2024-03-01"])
def test_as_of_override_replaces_the_configured_as_of(
    tmp_path: Path, override: dt.date | str
) -> None:
    """compute_rfm_stage(as_of=...) (the CLI's --as-of) wins over period.as_of."""
    report = _period_report(tmp_path, {"as_of": "2024-03-31"}, as_of=override)

    assert report.period.as_of == _d("2024-03-01")
    assert report.period.asked == "2024-03-01"
    assert _rule(report, "after_as_of") == (3, 4600)
    assert _rows(report) == [
        ("a", 2, 3000, _d("2024-01-10"), _d("2024-03-01"), 0, 51),
        ("b", 1, 500, _d("2024-02-15"), _d("2024-02-15"), 15, 15),
    ]


def test_as_of_override_keyword_with_now(tmp_path: Path) -> None:
    """A keyword override (`yesterday`) is resolved with `now`, over a date in the config."""
    now = dt.datetime(2024, 2, 16, 6, 0, tzinfo=UTC)
    report = _period_report(tmp_path, {"as_of": "2024-03-31"}, as_of="yesterday", now=now)

    assert report.period.as_of == _d("2024-02-15")
    assert report.rfm.frame["customer_id"].to_list() == ["a", "b"]
    assert report.rfm.frame["recency_days"].to_list() == [36, 0]
