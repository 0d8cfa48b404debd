"""Every class of bad input through `reportgen run`: its exit code, a message naming the file,
column or line at fault, no traceback, and nothing half-written in the output folder."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from click.testing import CliRunner, Result
from filelock import FileLock

import reportgen
from reportgen import clean
from reportgen.cli import cli
from reportgen.rfm_stage import compute_rfm_stage

SLUG = "shop"
HEADER = "customer_id,order_id,order_date,amount\n"
GOOD_ROWS = "a,1,2024-03-01,10.00\nb,2,2024-02-20,5.00\n"


def _crowd_rows(customers: int = 40) -> str:
    """Enough varied customers (before 2024-03-01) for the segmentation of a successful run."""
    lines = []
    for c in range(customers):
        for order in range(1 + c % 5):
            day = 1 + (c * 7 + order * 3) % 28
            lines.append(f"crowd{c:02d},X{c:02d}{order},2024-02-{day:02d},{5 + (c * 37) % 300}.50")
    return "\n".join(lines) + "\n"


CROWD = _crowd_rows()
CROWD_ROWS, CROWD_CUSTOMERS = CROWD.count("\n"), 40


def _write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    """config.yaml in tmp_path: the given sections over a minimal valid config reading tx.csv."""
    data: dict[str, Any] = {"report": {"slug": SLUG}, "input": {"path": "tx.csv"}}
    for section, values in config.items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _run(tmp_path: Path, config: dict[str, Any] | Path, *args: str) -> Result:
    """`reportgen run --config ... --output tmp_path/out`, with the config given or written."""
    path = config if isinstance(config, Path) else _write_config(tmp_path, config)
    out = tmp_path / "out"
    return CliRunner().invoke(cli, ["run", "--config", str(path), "--output", str(out), *args])


def _assert_fails(result: Result, code: int, *words: str) -> str:
    """Exit `code`, one ERROR log line holding every word, no traceback, nothing on stdout."""
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if " ERROR reportgen:" in line]
    assert len(errors) == 1, result.stderr
    message = result.stderr[result.stderr.index(" ERROR reportgen:") :]
    for word in words:
        assert word in message, (word, message)
    return message


def _assert_nothing_written(out: Path) -> None:
    """The output root holds at most the report folder and its lock: no run folder, no temp."""
    if not out.exists():
        return
    found = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    allowed = {SLUG, f"{SLUG}/.lock"}
    assert set(found) <= allowed, found


def _fail_case(tmp_path: Path, config: dict[str, Any], code: int, *words: str) -> str:
    """Run, assert the failure and that nothing was written; return the message."""
    message = _assert_fails(_run(tmp_path, config), code, *words)
    _assert_nothing_written(tmp_path / "out")
    return message


def _csv(tmp_path: Path, text: str, name: str = "tx.csv") -> Path:
    """Write a UTF-8 CSV into tmp_path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the good case, so that the failures below are failures of the input alone -------------------


def test_the_baseline_config_succeeds(tmp_path: Path) -> None:
    """The minimal config of these tests runs: stdout lists the three files written."""
    _csv(tmp_path, HEADER + GOOD_ROWS + CROWD)
    result = _run(tmp_path, {})

    assert result.exit_code == 0, result.stderr
    run_dir = tmp_path / "out" / SLUG / "2024-03-01"
    written = [Path(line) for line in result.stdout.splitlines()]
    assert {p.name for p in written} >= {"segments.parquet", "segments.csv", "summary.json"}
    assert all(p.is_file() and run_dir in p.parents for p in written), written
    assert not list((tmp_path / "out" / SLUG).glob(".tmp-*"))


# --- locating and opening the input --------------------------------------------------------------


def test_missing_input_file(tmp_path: Path) -> None:
    """A path that does not exist: exit 4, the path named."""
    _fail_case(tmp_path, {}, 4, "input.path", "file not found", str(tmp_path / "tx.csv"))


def test_glob_matching_nothing(tmp_path: Path) -> None:
    """A glob with no match: exit 4, the glob named."""
    _fail_case(tmp_path, {"input": {"path": "parts/*.csv"}}, 4, "no file matches",
               str(tmp_path / "parts" / "*.csv"))  # fmt: skip


def test_folder_where_a_file_is_expected(tmp_path: Path) -> None:
    """tx.csv is a folder (without data files): exit 4, the folder named."""
    (tmp_path / "tx.csv").mkdir()
    _fail_case(tmp_path, {}, 4, "input.path", str(tmp_path / "tx.csv"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc/self/mem")
def test_file_that_fails_to_read(tmp_path: Path) -> None:
    """A file whose read fails (EIO, even for root): exit 4, 'cannot read' and the file named."""
    (tmp_path / "tx.csv").symlink_to("/proc/self/mem")
    _fail_case(tmp_path, {}, 4, "cannot read", str(tmp_path / "tx.csv"))


def test_unknown_format(tmp_path: Path) -> None:
    """A .json file: exit 4, the suffix named and the known formats listed."""
    (tmp_path / "tx.json").write_text("[]")
    _fail_case(tmp_path, {"input": {"path": "tx.json"}}, 4, "cannot tell the format",
               "tx.json", "'.json'", ".csv", ".parquet", ".xlsx", "input.format")  # fmt: skip


def test_file_that_is_not_what_its_suffix_says(tmp_path: Path) -> None:
    """Text in a .parquet file: exit 4, the file named."""
    (tmp_path / "tx.parquet").write_text(HEADER + GOOD_ROWS)
    _fail_case(tmp_path, {"input": {"path": "tx.parquet"}}, 4, str(tmp_path / "tx.parquet"))


def test_text_among_parquet_files_in_a_folder(tmp_path: Path) -> None:
    """A folder of Parquet files, one of them text: exit 4, the folder named."""
    (tmp_path / "parts").mkdir()
    pl.DataFrame(
        {"customer_id": ["a"], "order_id": ["1"], "order_date": [dt.date(2024, 3, 1)],
         "amount": [1.0]}
    ).write_parquet(tmp_path / "parts" / "a.parquet")  # fmt: skip
    (tmp_path / "parts" / "b.parquet").write_text(HEADER + GOOD_ROWS)
    _fail_case(tmp_path, {"input": {"path": "parts"}}, 4, "parts", "parquet")


def test_corrupt_excel_file(tmp_path: Path) -> None:
    """A .xlsx that is not a workbook: exit 4, the file named."""
    (tmp_path / "tx.xlsx").write_text("not a zip archive")
    _fail_case(tmp_path, {"input": {"path": "tx.xlsx"}}, 4, str(tmp_path / "tx.xlsx"))


def test_empty_csv_file(tmp_path: Path) -> None:
    """A 0-byte CSV: exit 4, the file named."""
    path = _csv(tmp_path, "")
    _fail_case(tmp_path, {}, 4, str(path))


def test_empty_csv_file_in_a_folder(tmp_path: Path) -> None:
    """A 0-byte CSV among others: exit 4, that file named, not the folder."""
    (tmp_path / "parts").mkdir()
    _csv(tmp_path / "parts", HEADER + "a,1,2024-03-01,1.00\n", name="p1.csv")
    empty = _csv(tmp_path / "parts", "", name="p2.csv")
    message = _fail_case(tmp_path, {"input": {"path": "parts"}}, 4, f"{empty} is empty")
    assert "parts is empty" not in message


def _workbook(path: Path) -> None:
    pl.DataFrame(
        {"customer_id": ["a"], "order_id": ["1"], "order_date": [dt.datetime(2024, 3, 1)],
         "amount": [1.0]}
    ).write_excel(path, worksheet="Tx")  # fmt: skip


def _titled_workbook(path: Path, title_cell: str, header_cell: str) -> None:
    """A sheet with a title above the good rows' header."""
    import xlsxwriter

    frame = pl.read_csv(io.StringIO(HEADER + GOOD_ROWS + CROWD), infer_schema=False)
    with xlsxwriter.Workbook(path) as workbook:
        sheet = workbook.add_worksheet()
        sheet.write(title_cell, "Sales export, March 2024")
        frame.write_excel(workbook, worksheet=sheet, position=header_cell)


@pytest.mark.parametrize(("title_cell", "header_cell", "row"), [("A1", "A3", 3), ("B2", "A5", 5)])
def test_title_above_the_header_says_which_row_to_set(
    tmp_path: Path, title_cell: str, header_cell: str, row: int
) -> None:
    """A sheet with a title above the header (also from its second row): exit 4 and the row
    that holds the mapped names; with input.header_row set, the run succeeds."""
    _titled_workbook(tmp_path / "tx.xlsx", title_cell, header_cell)
    _fail_case(tmp_path, {"input": {"path": "tx.xlsx"}}, 4, "Sales export, March 2024",
               f"The mapped names are on row {row} of {tmp_path / 'tx.xlsx'}: set "
               f"input.header_row: {row}")  # fmt: skip
    result = _run(tmp_path, {"input": {"path": "tx.xlsx", "header_row": row}})
    assert result.exit_code == 0, result.stderr


def test_rows_of_a_sheet_with_a_header_row_are_the_sheet_rows(tmp_path: Path) -> None:
    """Header on row 3: the bad amount of the second data row is on sheet row 5."""
    import xlsxwriter

    frame = pl.read_csv(io.StringIO(HEADER + "a,1,2024-03-01,1.00\nb,2,2024-03-01,ten\n"))
    with xlsxwriter.Workbook(tmp_path / "tx.xlsx") as workbook:
        sheet = workbook.add_worksheet()
        sheet.write("A1", "Sales export, March 2024")
        frame.write_excel(workbook, worksheet=sheet, position="A3")
    _fail_case(tmp_path, {"input": {"path": "tx.xlsx", "header_row": 3}}, 4,
               "1 value in 'amount'", "(first rows: 5)")  # fmt: skip


def _sheet_with_blank_rows(path: Path, rows: str) -> None:
    """Rows 1-2 blank, the header on row 3, then `rows` with a blank row after the first."""
    import xlsxwriter

    first, *rest = rows.splitlines(keepends=True)
    with xlsxwriter.Workbook(path) as workbook:
        sheet = workbook.add_worksheet()
        for position, lines in (("A3", HEADER + first), ("A6", HEADER + "".join(rest))):
            frame = pl.read_csv(io.StringIO(lines), infer_schema=False)
            frame.write_excel(
                workbook, worksheet=sheet, position=position, include_header=position == "A3"
            )


def test_rows_of_a_sheet_with_blank_rows_are_the_sheet_rows(tmp_path: Path) -> None:
    """Blank rows above the header (found without input.header_row) and between the data rows
    are counted in the rows named: 'ten' is on sheet row 6."""
    _sheet_with_blank_rows(tmp_path / "tx.xlsx", "a,1,2024-03-01,1.00\nb,2,2024-03-01,ten\n")
    _fail_case(tmp_path, {"input": {"path": "tx.xlsx"}}, 4, "1 value in 'amount'",
               "(first rows: 6)")  # fmt: skip


def test_blank_rows_of_a_sheet_are_not_transactions(tmp_path: Path) -> None:
    _sheet_with_blank_rows(tmp_path / "tx.xlsx", GOOD_ROWS + CROWD)
    config = reportgen.config_from_dict({"input": {"path": "tx.xlsx"}}, base_dir=tmp_path)
    audit = compute_rfm_stage(config).audit
    assert audit.rows_read == audit.rows_kept == 2 + CROWD_ROWS  # the blank row is not read


def test_title_lines_above_a_csv_header_are_skipped_and_lines_still_named(tmp_path: Path) -> None:
    """input.header_row: 3 reads the header on line 3 (the title holds the separator's look-alike
    ';'); errors name the file's own lines."""
    title = "Sales export;March 2024\n\n"
    cases = {
        "good": GOOD_ROWS,
        "not_money": "a,1,2024-03-01,ten\n",
        "quote": GOOD_ROWS + 'c,3,2024-03-01,"5.00\n',
        "ragged": GOOD_ROWS + "c,3,2024-03-01,5.00,extra\n",
    }
    for name, rows in cases.items():
        (tmp_path / name).mkdir()
        _csv(tmp_path / name, title + HEADER + rows + CROWD)
    skip = {"input": {"header_row": 3}}
    _fail_case(
        tmp_path / "good", {}, 4, "The mapped names are on line 3", "set input.header_row: 3"
    )
    assert _run(tmp_path / "good", skip).exit_code == 0
    _fail_case(tmp_path / "not_money", skip, 4, "1 value in 'amount'", "first lines: 4")
    _fail_case(tmp_path / "quote", skip, 4, "tx.csv:6: a field opened with a quote")
    _fail_case(tmp_path / "ragged", skip, 4, "tx.csv:6: this line has more fields")


@pytest.mark.parametrize(
    ("column", "key", "what"),
    [("customer_id", "customer_id", "customer"), ("order_id", "order_id", "order")],
)
def test_an_id_column_of_true_false_is_the_wrong_column(
    tmp_path: Path, column: str, key: str, what: str
) -> None:
    """A Boolean id column (a flag mapped by mistake) would make customers 'true' and 'false':
    exit 4, the key and the type named."""
    frame = pl.read_csv(io.StringIO(HEADER + GOOD_ROWS)).with_columns(pl.lit(True).alias(column))
    frame.write_parquet(tmp_path / "tx.parquet")
    _fail_case(tmp_path, {"input": {"path": "tx.parquet"}}, 4,
               f"column '{column}' (input.columns.{key}) has type Boolean, which cannot hold ids",
               f"map the column that identifies each {what}")  # fmt: skip


def test_a_date_column_of_true_false_is_the_wrong_column(tmp_path: Path) -> None:
    """A Boolean order_date column: exit 4 naming its type, not 'dates match no format'."""
    frame = pl.read_csv(io.StringIO(HEADER + GOOD_ROWS)).with_columns(order_date=pl.lit(True))
    frame.write_parquet(tmp_path / "tx.parquet")
    _fail_case(tmp_path, {"input": {"path": "tx.parquet"}}, 4,
               "column 'order_date' (input.columns.order_date) has type Boolean, which cannot "
               "hold dates")  # fmt: skip


def test_a_categorical_date_column_is_read_as_text(tmp_path: Path) -> None:
    """Dates in a Categorical column (pandas' category dtype in Parquet) read as their text."""
    day = pl.col("order_date").cast(pl.Categorical)
    frame = pl.read_csv(io.StringIO(HEADER + GOOD_ROWS + CROWD)).with_columns(day)
    frame.write_parquet(tmp_path / "tx.parquet")
    result = _run(tmp_path, {"input": {"path": "tx.parquet"}})
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(("name", "where"), [("tx.csv", "line"), ("tx.xlsx", "row")])
def test_header_row_past_the_end_of_the_file(tmp_path: Path, name: str, where: str) -> None:
    """input.header_row: 10 on a file of three rows: exit 4, the key and the file named."""
    frame = pl.read_csv(io.StringIO(HEADER + GOOD_ROWS))
    if name.endswith(".csv"):
        frame.write_csv(tmp_path / name)
    else:
        frame.write_excel(tmp_path / name)
    _fail_case(tmp_path, {"input": {"path": name, "header_row": 10}}, 4,
               f"input.header_row: {tmp_path / name} has nothing on or after {where} 10")  # fmt: skip


def test_header_row_of_a_parquet_file_is_refused(tmp_path: Path) -> None:
    """Parquet names its columns without a header row: exit 4, the key to remove."""
    pl.read_csv(io.StringIO(HEADER + GOOD_ROWS)).write_parquet(tmp_path / "tx.parquet")
    _fail_case(tmp_path, {"input": {"path": "tx.parquet", "header_row": 2}}, 4,
               "input.header_row:", "is Parquet", "remove input.header_row")  # fmt: skip


def test_header_of_other_names_gets_no_title_hint(tmp_path: Path) -> None:
    """Several named columns, none mapped: the columns are listed, no guess about a title."""
    _csv(tmp_path, "id,number,day,total\na,1,2024-03-01,1.00\n")
    message = _fail_case(tmp_path, {}, 4, "The data has: id, number, day, total")
    assert "title" not in message, message


@pytest.mark.parametrize("sheet", ["Nope", 3])
def test_excel_sheet_that_does_not_exist(tmp_path: Path, sheet: str | int) -> None:
    """A sheet name or position the workbook lacks: exit 4, the file named."""
    _workbook(tmp_path / "tx.xlsx")
    config = {"input": {"path": "tx.xlsx", "excel": {"sheet": sheet}}}
    _fail_case(tmp_path, config, 4, str(tmp_path / "tx.xlsx"), "sheet")


@pytest.mark.parametrize("sheet", ["Nope", 3])
def test_excel_missing_sheet_message_names_the_setting_and_the_sheets(
    tmp_path: Path, sheet: str | int
) -> None:
    """The message names input.excel.sheet and lists the workbook's sheets."""
    _workbook(tmp_path / "tx.xlsx")
    config = {"input": {"path": "tx.xlsx", "excel": {"sheet": sheet}}}
    message = _fail_case(tmp_path, config, 4, "input.excel.sheet", "Tx")
    assert "sheet_id" not in message


def test_csv_with_more_fields_than_the_header(tmp_path: Path) -> None:
    """A ragged line: exit 4, the file named."""
    path = _csv(tmp_path, HEADER + GOOD_ROWS + "c,3,2024-03-01,1.00,oops\n")
    _fail_case(tmp_path, {}, 4, str(path))


@pytest.fixture(params=["parsed once", "in batches"])
def csv_reading(request, monkeypatch) -> None:
    """Both ways a CSV file is read: parsed once (small files), or for a file too large for that
    in batches, two rows at a time, so that the fault is in a later batch."""
    if request.param == "in batches":
        monkeypatch.setattr(clean, "CSV_PARSED_ONCE_MAX_BYTES", 0)
        monkeypatch.setattr(clean, "FIRST_PASS_CHUNK_ROWS", 2)


@pytest.mark.usefixtures("csv_reading")
def test_csv_with_more_fields_than_the_header_names_the_line(tmp_path: Path) -> None:
    """A ragged line: the message names file:line."""
    path = _csv(tmp_path, HEADER + GOOD_ROWS + "c,3,2024-03-01,1.00,oops\n")
    _fail_case(tmp_path, {}, 4, f"{path}:4")


# --- columns and values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "missing"),
    [
        ({"columns": {"amount": "Betrag"}}, "input.columns.amount", "'Betrag'"),
        ({"columns": {"customer_id": "CustomerID"}}, "input.columns.customer_id", "'CustomerID'"),
        ({"attributes": ["Country"]}, "input.attributes[0]", "'Country'"),
    ],
)
def test_mapped_column_that_does_not_exist(
    tmp_path: Path, section: dict, key: str, missing: str
) -> None:
    """A mapped column not in the data: exit 4, the key, the column and the columns there are."""
    _csv(tmp_path, HEADER + GOOD_ROWS)
    _fail_case(tmp_path, {"input": section}, 4, "not found", key, missing,
               "The data has: customer_id, order_id, order_date, amount")  # fmt: skip


def test_mapped_column_in_another_case_or_spacing_is_suggested(tmp_path: Path) -> None:
    """'Customer ID' and 'amount ' in the header: each mapped name gets its likely column;
    a merely similar name ('order_dat') is not offered, as it could be meant for another key."""
    _csv(tmp_path, "Customer ID,order_id,order_dat,amount \na,1,2024-03-01,1.00\n")
    message = _fail_case(tmp_path, {}, 4, "'customer_id' (did you mean 'Customer ID'?)",
                         "'amount' (did you mean 'amount '?)")  # fmt: skip
    assert "'order_date' (did you mean" not in message, message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        # read with the default ',' the file is one column named after the whole header
        (
            HEADER.replace(",", ";") + "a;1;2024-03-01;1.00\n",
            ["not found", "Is the separator ';'? Set input.csv.separator: \";\""],
        ),
        (HEADER.replace(",", "\t") + "a\t1\t2024-03-01\t1.00\n", ['input.csv.separator: "\\t"']),
        # a binary file's "header": control characters escaped, not written to the terminal
        ("garbage\x01\x02\n", ["The data has: 'garbage\\x01\\x02'"]),
        # two columns named amount: polars would read the first and rename the second
        (
            HEADER.strip() + ",amount\na,1,2024-03-01,1.00,2.00\n",
            ["more than once", "input.columns.amount: 'amount'", "rename the copies"],
        ),
    ],
    ids=["semicolons", "tabs", "binary", "repeated-name"],
)
def test_header_that_does_not_fit_the_mapping(tmp_path: Path, text: str, words: list[str]) -> None:
    """A header read wrongly or ambiguously: exit 4, what is wrong and the setting to change."""
    _csv(tmp_path, text)
    message = _fail_case(tmp_path, {}, 4, *words)
    assert "\x01" not in message, message


BAD_DATES = HEADER + (
    "a,1,2024-03-01,10.00\n"
    "b,2,01/03/2024,5.00\n"  # line 3
    "c,3,2024-02-20,5.00\n"
    "d,4,March 1st,7.00\n"  # line 5
)


@pytest.mark.usefixtures("csv_reading")
def test_dates_matching_no_format(tmp_path: Path) -> None:
    """Two unparseable dates: exit 4, their count, the column, the formats and the lines."""
    _csv(tmp_path, BAD_DATES)
    message = _fail_case(tmp_path, {"input": {"date_formats": ["%Y-%m-%d"]}}, 4,
                         "2 dates in 'order_date'", "%Y-%m-%d", "first lines: 3, 5",
                         "cleaning.unparseable_dates")  # fmt: skip
    assert str(tmp_path / "tx.csv") in message


def test_dates_matching_no_format_dropped_when_asked(tmp_path: Path) -> None:
    """With cleaning.unparseable_dates: drop the run succeeds and the audit counts the rows."""
    _csv(tmp_path, BAD_DATES + CROWD)
    config = {"input": {"date_formats": ["%Y-%m-%d"]}, "cleaning": {"unparseable_dates": "drop"}}
    result = _run(tmp_path, config)

    assert result.exit_code == 0, result.stderr
    summary = json.loads((tmp_path / "out" / SLUG / "2024-03-01" / "summary.json").read_text())
    rules = {r["rule"]: r for r in summary["audit"]["rules"]}
    assert (rules["unparseable_date"]["rows"], rules["unparseable_date"]["revenue"]) == (2, 12.0)
    assert [e["line"] for e in rules["unparseable_date"]["examples"]] == [3, 5]
    assert summary["audit"]["rows_kept"] == 2 + CROWD_ROWS
    assert summary["audit"]["reconciles"] is True
    assert summary["rfm"]["customers"] == 2 + CROWD_CUSTOMERS


def test_mix_of_zoned_and_naive_timestamps(tmp_path: Path) -> None:
    """Some dates with an offset, some without: exit 4, both counts and the lines."""
    _csv(tmp_path, HEADER + (
        "a,1,2024-03-01T10:00:00+0100,10.00\n"
        "b,2,2024-03-01 10:00:00,5.00\n"
        "c,3,2024-03-02T10:00:00+0000,5.00\n"
    ))  # fmt: skip
    formats = ["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S"]
    _fail_case(tmp_path, {"input": {"date_formats": formats}}, 4, "'order_date'", "mixes",
               "time zone (2)", "without one (1)", "first lines: 2, 4")  # fmt: skip


def test_mix_of_zoned_and_naive_message_reads_well(tmp_path: Path) -> None:
    """The message has no stray count in front of 'column'."""
    _csv(tmp_path, HEADER + "a,1,2024-03-01T10:00:00+0100,10.00\nb,2,2024-03-01 10:00:00,5.00\n")
    formats = ["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S"]
    message = _fail_case(tmp_path, {"input": {"date_formats": formats}}, 4, "mixes")
    assert not re.search(r": \d+ column", message), message


@pytest.mark.usefixtures("csv_reading")
def test_undecodable_byte_in_a_utf8_csv(tmp_path: Path) -> None:
    """A latin-1 byte in a file read as UTF-8: exit 4, the file and line named, a hint."""
    path = tmp_path / "tx.csv"
    path.write_bytes(
        HEADER.replace("amount", "amount,name").encode()
        + b"a,1,2024-03-01,10.00,Anna\n"
        + b"b,2,2024-03-01,10.00,Ren\xe9\n"  # line 3
        + b"c,3,2024-03-01,10.00,Zo\xeb\n"
    )
    _fail_case(tmp_path, {}, 4, f"{path}:3", "UTF-8", "input.csv.encoding")


def test_undecodable_byte_in_the_header_line(tmp_path: Path) -> None:
    """A latin-1 byte in the header of a UTF-8 CSV: exit 4, line 1 named."""
    path = tmp_path / "tx.csv"
    path.write_bytes(b"customer_id,order_id,order_date,amount,Stra\xdfe\na,1,2024-03-01,1.00,x\n")
    _fail_case(tmp_path, {}, 4, f"{path}:1")


@pytest.mark.usefixtures("csv_reading")
def test_undecodable_byte_in_a_declared_encoding(tmp_path: Path) -> None:
    """Byte 0x81 (undefined in cp1252) on line 4: exit 4, file:line, the byte and encoding."""
    path = tmp_path / "tx.csv"
    path.write_bytes(
        HEADER.encode() + b"a,1,2024-03-01,10.00\nb,2,2024-03-01,5.00\nc\x81,3,2024-03-01,1.00\n"
    )
    _fail_case(tmp_path, {"input": {"csv": {"encoding": "cp1252"}}}, 4, f"{path}:4", "0x81",
               "cp1252")  # fmt: skip


@pytest.mark.parametrize(
    ("section", "text", "words"),
    [
        (
            {},
            "a,1,2024-03-01,abc\nb,2,2024-03-01,5.00\nc,3,2024-03-01,1.2.3\n",
            ["2 values in 'amount' are not numbers", "first lines: 2, 4"],
        ),
        # a decimal comma in a file configured with the default '.': the hint names the setting
        (
            {},
            'a,1,2024-03-01,"12,50"\n',
            ["1 value", "'amount'", "first lines: 2", "input.csv.decimal"],
        ),
    ],
    ids=["garbage", "decimal-comma"],
)
def test_non_numeric_amounts(tmp_path: Path, section: dict, text: str, words: list[str]) -> None:
    """Amounts that are not numbers: exit 4, their count, the column and the first lines."""
    _csv(tmp_path, HEADER + text)
    _fail_case(tmp_path, {"input": section}, 4, *words)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e19, -2e15], ids=str)
def test_float_amounts_that_cannot_be_money(tmp_path: Path, bad: float) -> None:
    """NaN, infinity or a float too large for exact sums in a Parquet amount column: exit 4, the
    row named; not a polars cast error."""
    pl.DataFrame(
        {
            "customer_id": ["a", "b", "c"],
            "order_id": ["1", "2", "3"],
            "order_date": [dt.datetime(2024, 3, 1)] * 3,
            "amount": [1.0, bad, 3.0],
        }
    ).write_parquet(tmp_path / "tx.parquet")
    message = _fail_case(tmp_path, {"input": {"path": "tx.parquet"}}, 4, "1 value in 'amount'",
                         "NaN, infinity", "first rows: 2")  # fmt: skip
    assert "decimal" not in message and "conversion" not in message, message


def test_dates_stored_as_epoch_seconds(tmp_path: Path) -> None:
    """An integer date column that no format reads (seconds since 1970): exit 4, the rows and
    what to do, not a polars planning error."""
    pl.DataFrame(
        {
            "customer_id": ["a", "b"],
            "order_id": ["1", "2"],
            "order_date": [1709251200, 1709337600],
            "amount": [1.0, 2.0],
        }
    ).write_parquet(tmp_path / "tx.parquet")
    _fail_case(tmp_path, {"input": {"path": "tx.parquet"}}, 4, "2 dates in 'order_date'",
               "holds numbers (Int64)", "'%Y%m%d'", "exported as dates", "first rows: 1, 2")  # fmt: skip


def test_quantity_times_price_too_large_for_money(tmp_path: Path) -> None:
    """Each factor below the limit, their product not: the line is named, nothing overflows."""
    _csv(tmp_path, "customer_id,order_id,order_date,qty,price\n"
                   "a,1,2024-03-01,2,1.00\nb,2,2024-03-01,900000000000000,900000000000000\n"
                   "c,3,2024-03-01,NaN,1.00\n")  # fmt: skip
    columns = {"amount": None, "quantity": "qty", "unit_price": "price"}
    _fail_case(tmp_path, {"input": {"columns": columns}}, 4, "2 values in 'qty/price'",
               "first lines: 3, 4")  # fmt: skip


def test_bad_value_in_the_second_of_several_files_names_that_file(tmp_path: Path) -> None:
    """A bad amount on line 2 of p2.csv is reported as p2.csv line 2, not line 5 of the glob."""
    _csv(tmp_path, HEADER + "a,1,2024-03-01,1.00\nb,2,2024-03-01,2.00\nc,3,2024-03-01,3.00\n",
         name="p1.csv")  # fmt: skip
    second = _csv(tmp_path, HEADER + "d,4,2024-03-01,abc\n", name="p2.csv")
    message = _fail_case(tmp_path, {"input": {"path": "p*.csv"}}, 4, "'amount'", str(second))
    assert "lines: 5" not in message, message


def test_unclosed_quote_in_the_second_of_several_files_names_that_file(tmp_path: Path) -> None:
    """A quote that never closes in p2.csv: exit 4, p2.csv and its line named, not the glob."""
    _csv(tmp_path, HEADER + "a,1,2024-03-01,1.00\n", name="p1.csv")
    second = _csv(tmp_path, HEADER + 'b,"2,2024-03-01,2.00\nc,3,2024-03-01,3.00\n', name="p2.csv")
    _fail_case(tmp_path, {"input": {"path": "p*.csv"}}, 4, f"{second}:2:", "never closed")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        # the quote swallows every line after it: polars shows them all as one field
        (
            'b,"2,2024-03-01,2.00\nc,3,2024-03-01,3.00\nd,4,2024-03-01,4.00\n',
            3,
            ["never closed", "close it or remove the quote"],
        ),
        ('b,"2"x,2024-03-01,2.00\nc,3,2024-03-01,3.00\n', 3, ["written twice"]),
    ],
    ids=["never-closed", "text-after-closing-quote"],
)
def test_broken_quoting_names_the_line(
    tmp_path: Path, text: str, line: int, words: list[str]
) -> None:
    """A field whose quoting is broken: exit 4, file:line where the field starts, the fix."""
    path = _csv(tmp_path, HEADER + "a,1,2024-03-01,1.00\n" + text)
    message = _fail_case(tmp_path, {}, 4, f"{path}:{line}:", *words)
    assert "2024-03-01,3.00" not in message, message  # not polars' swallowed lines


def test_non_numeric_quantity_or_price(tmp_path: Path) -> None:
    """quantity x unit_price with a bad quantity: exit 4, both columns named, the line."""
    _csv(tmp_path, "customer_id,order_id,order_date,qty,price\n"
                   "a,1,2024-03-01,2,1.00\nb,2,2024-03-01,two,1.00\n")  # fmt: skip
    columns = {"amount": None, "quantity": "qty", "unit_price": "price"}
    _fail_case(tmp_path, {"input": {"columns": columns}}, 4, "'qty/price'", "first lines: 3")


def test_float_customer_id_beyond_2_to_the_53(tmp_path: Path) -> None:
    """A Float64 id >= 2^53 in Parquet has lost digits: exit 4, the column and the rows named."""
    pl.DataFrame(
        {
            "customer_id": [17850.0, 2.0**53, 12345.0, 2.0**60],
            "order_id": ["1", "2", "3", "4"],
            "order_date": [dt.datetime(2024, 3, 1)] * 4,
            "amount": [1.0, 2.0, 3.0, 4.0],
        }
    ).write_parquet(tmp_path / "tx.parquet")
    _fail_case(tmp_path, {"input": {"path": "tx.parquet"}}, 4, "2 customer ids",
               "'customer_id'", "2^53", "first rows: 2, 4")  # fmt: skip


def test_more_than_one_currency(tmp_path: Path) -> None:
    """A currency column holding GBP and EUR: exit 4, both currencies named."""
    _csv(tmp_path, "customer_id,order_id,order_date,amount,cur\n"
                   "a,1,2024-03-01,1.00,GBP\nb,2,2024-03-01,1.00,EUR\n")  # fmt: skip
    _fail_case(tmp_path, {"input": {"columns": {"currency": "cur"}}}, 4,
               "more than one currency (EUR, GBP)")  # fmt: skip


@pytest.mark.parametrize("currencies", [["GBP", "EUR"], ["EUR"]], ids=["mixed", "other"])
def test_currency_messages_name_the_file_and_column(tmp_path: Path, currencies: list) -> None:
    """Both currency errors name the file and the currency column."""
    rows = "".join(f"{i},{i},2024-03-01,1.00,{c}\n" for i, c in enumerate(currencies))
    path = _csv(tmp_path, "customer_id,order_id,order_date,amount,cur\n" + rows)
    message = _fail_case(tmp_path, {"input": {"columns": {"currency": "cur"}}}, 4, str(path))
    assert re.search(r"\bcur\b", message), message


def test_currency_other_than_the_reports(tmp_path: Path) -> None:
    """Data in EUR with report.currency GBP: exit 4, both named and the setting."""
    _csv(tmp_path, "customer_id,order_id,order_date,amount,cur\na,1,2024-03-01,1.00,EUR\n")
    _fail_case(tmp_path, {"input": {"columns": {"currency": "cur"}}}, 4, "EUR", "GBP",
               "report.currency")  # fmt: skip


# --- empty and stale -----------------------------------------------------------------------------


def test_empty_table(tmp_path: Path) -> None:
    """A CSV with a header only: exit 4, 'no rows' and the file named."""
    path = _csv(tmp_path, HEADER)
    _fail_case(tmp_path, {}, 4, "no rows", str(path))


def test_table_empty_after_cleaning(tmp_path: Path) -> None:
    """Only cancellation lines: exit 4, 'no transaction is left after cleaning'."""
    _csv(tmp_path, HEADER + "a,C1,2024-03-01,-10.00\nb,C2,2024-03-02,-5.00\n")
    _fail_case(tmp_path, {}, 4, "no transaction is left after cleaning")


def test_table_empty_after_cleaning_names_the_rules(tmp_path: Path) -> None:
    """The message names the rule that dropped every row and its count."""
    _csv(tmp_path, HEADER + "a,C1,2024-03-01,-10.00\nb,C2,2024-03-02,-5.00\n")
    message = _fail_case(tmp_path, {}, 4, "cancellation")
    assert re.search(r"cancellation\W*2\b", message), message


def test_table_empty_after_cleaning_with_a_fixed_as_of(tmp_path: Path) -> None:
    """Every order after the as-of date: exit 4, the as-of date named."""
    _csv(tmp_path, HEADER + GOOD_ROWS)
    _fail_case(tmp_path, {"period": {"as_of": "2024-01-31"}}, 4,
               "no transaction is left after cleaning", "2024-01-31")  # fmt: skip


def test_stale_data(tmp_path: Path) -> None:
    """The latest transaction 30 days before as_of with max_staleness_days 5: exit 4, 'stale'."""
    _csv(tmp_path, HEADER + GOOD_ROWS)
    period = {"as_of": "2024-03-31", "max_staleness_days": 5}
    _fail_case(tmp_path, {"period": period}, 4, "stale", "2024-03-01", "30 days",
               "2024-03-31", "max_staleness_days: 5")  # fmt: skip


def test_stale_data_from_the_as_of_flag(tmp_path: Path) -> None:
    """--as-of 30 days after the data with max_staleness_days 5: exit 4, 'stale'."""
    _csv(tmp_path, HEADER + GOOD_ROWS)
    result = _run(tmp_path, {"period": {"max_staleness_days": 5}}, "--as-of", "2024-03-31")
    _assert_fails(result, 4, "stale", "30 days")
    _assert_nothing_written(tmp_path / "out")


def test_staleness_at_the_limit_is_accepted(tmp_path: Path) -> None:
    """Exactly max_staleness_days old is not stale: the run succeeds."""
    _csv(tmp_path, HEADER + GOOD_ROWS + CROWD)
    result = _run(tmp_path, {"period": {"as_of": "2024-03-06", "max_staleness_days": 5}})

    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out" / SLUG / "2024-03-06" / "summary.json").is_file()


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment_map", "words"),
    [
        ({"Champions": ["5**"]}, ["segment map refused", "100 score codes have no segment",
                                  "111"]),
        ({"Everyone": ["*"], "Best": ["555"]}, ["segment map refused",
                                                 "1 score code has more than one segment",
                                                 "555 -> Best / Everyone"]),
    ],
    ids=["gap", "overlap"],
)  # fmt: skip
def test_invalid_segment_map(tmp_path: Path, segment_map: dict, words: list[str]) -> None:
    """A segment map with a gap or an overlap: exit 3, the codes named, the key located."""
    _csv(tmp_path, HEADER + GOOD_ROWS)
    _fail_case(tmp_path, {"rfm": {"segment_map": segment_map}}, 3, "rfm.segment_map", *words)


def test_invalid_segment_map_file(tmp_path: Path) -> None:
    """A segment map CSV missing a score code: exit 3."""
    _csv(tmp_path, HEADER + GOOD_ROWS)
    rows = [f"{r},{f},{m},Everyone" for r in "12345" for f in "12345" for m in "12345"]
    (tmp_path / "map.csv").write_text("r_score,f_score,m_score,segment\n" + "\n".join(rows[1:]))
    _fail_case(tmp_path, {"rfm": {"segment_map": "map.csv"}}, 3, "rfm.segment_map",
               "1 score code has no segment (e.g. 111)")  # fmt: skip


def test_bad_config_values_are_all_reported_with_their_lines(tmp_path: Path) -> None:
    """Two bad values: exit 3, each with file:line and dotted key, and the count."""
    _csv(tmp_path, HEADER + GOOD_ROWS)
    config = tmp_path / "config.yaml"
    config.write_text(
        "report:\n"
        "  slug: shop\n"
        "input:\n"
        "  path: tx.csv\n"
        "cleaning:\n"
        "  returns: maybe\n"
        "period:\n"
        "  window_days: 0\n"
    )
    _assert_fails(_run(tmp_path, config), 3, "invalid configuration",
                  f"{config}:6: cleaning.returns", "'maybe'",
                  f"{config}:8: period.window_days", "2 problems")  # fmt: skip
    _assert_nothing_written(tmp_path / "out")


def test_unknown_config_key(tmp_path: Path) -> None:
    """A misspelt key: exit 3, the key named."""
    _csv(tmp_path, HEADER + GOOD_ROWS)
    _fail_case(tmp_path, {"period": {"windows_days": 30}}, 3, "period.windows_days",
               "unknown key")  # fmt: skip


def test_bad_as_of_flag_is_a_usage_error(tmp_path: Path) -> None:
    """--as-of that is no date nor keyword: exit 2, the value named."""
    _csv(tmp_path, HEADER + GOOD_ROWS)
    result = _run(tmp_path, {}, "--as-of", "31/03/2024")

    assert result.exit_code == 2
    assert "'31/03/2024'" in result.stderr and "YYYY-MM-DD" in result.stderr
    assert "Traceback" not in result.stderr
    _assert_nothing_written(tmp_path / "out")


# --- output --------------------------------------------------------------------------------------


def test_output_folder_under_a_regular_file(tmp_path: Path) -> None:
    """--output below a regular file: exit 6, the folder named, the file untouched."""
    _csv(tmp_path, HEADER + GOOD_ROWS)
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    config = _write_config(tmp_path, {})
    out = blocker / "out"
    result = CliRunner().invoke(cli, ["run", "--config", str(config), "--output", str(out)])

    _assert_fails(result, 6, "not writable", str(out / SLUG), "--output")
    assert blocker.read_text() == "keep me"


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_run_while_another_holds_the_lock(tmp_path: Path) -> None:
    """A held lock: exit 7, and the earlier run folder and the holder's temp folder untouched."""
    _csv(tmp_path, HEADER + GOOD_ROWS + CROWD)
    assert _run(tmp_path, {}).exit_code == 0
    report_dir = tmp_path / "out" / SLUG
    earlier = _snapshot(report_dir / "2024-03-01")
    holders_tmp = report_dir / ".tmp-999999"  # what the lock holder is writing right now
    holders_tmp.mkdir()
    (holders_tmp / "summary.json").write_text("{}")
    _csv(tmp_path, HEADER + GOOD_ROWS + CROWD + "c,3,2024-03-01,99.00\n")  # new data, same as_of

    with FileLock(report_dir / ".lock", timeout=0):
        result = _run(tmp_path, {})
        _assert_fails(result, 7, "another reportgen run", str(report_dir), ".lock")

    assert _snapshot(report_dir / "2024-03-01") == earlier
    assert (holders_tmp / "summary.json").read_text() == "{}"
    assert sorted(p.name for p in report_dir.iterdir() if p.is_dir()) == [
        ".tmp-999999", "2024-03-01",
    ]  # fmt: skip


def test_duplicate_key_naming_a_missing_column(tmp_path: Path) -> None:
    """cleaning.duplicates listing a column the data lacks: exit 4, the column named."""
    _csv(tmp_path, HEADER + GOOD_ROWS)
    _fail_case(tmp_path, {"cleaning": {"duplicates": ["order_id", "sku"]}}, 4,
               "cleaning.duplicates", "sku", "The data has: customer_id")  # fmt: skip


def test_console_entry_point_keeps_exit_code_and_output(tmp_path):
    """The entry point exits without tearing the interpreter down: what it printed to a pipe
    still arrives, and the exit code is the documented one."""
    import subprocess

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", "from reportgen.cli import main; main()", *args]
        return subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp_path)

    version = run("--version")
    assert version.returncode == 0 and "version" in version.stdout
    missing = run("run", "-c", "absent.yaml")
    assert missing.returncode == 3
    assert "absent.yaml: config file not found" in missing.stderr
    usage = run("run", "--no-such-option")
    assert usage.returncode == 2 and "No such option" in usage.stderr
