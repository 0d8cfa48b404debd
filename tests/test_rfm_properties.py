"""RFM against a naive pure-Python implementation of DESIGN.md section 2 (hypothesis).

Random small transaction tables (CSV or Parquet) with returns, ties, duplicates, missing ids,
non-positive lines and zoned timestamps go through `compute_rfm_stage`; the reference below
recomputes the per-customer table with plain loops and dicts and the two must agree exactly.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reportgen

SEGMENT_MAP = Path(__file__).resolve().parents[1] / "reportgen" / "data" / "rfm_segment_map.csv"
EXCLUDED = "Excluded: non-positive spend"
ZONED_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
NAIVE_FORMATS = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d"]
COMPARED = [
    "customer_id", "recency_days", "frequency", "monetary_minor", "first_order", "last_order",
    "r_score", "f_score", "m_score", "rfm_score", "rfm_grid_segment",
]  # fmt: skip

CUSTOMER_IDS = ["0042", "12", "12.0", "7", "b-3", "Z9", "100", "0101", "X", "55"]  # 12.0 is 12
ORDER_NUMBERS = ["1001", "1002", "1003", "1004", "1005", "1006"]
SKUS = ["A", "B"]  # an unmapped column: rows differing only there are not duplicates
# Around the DST changes: US 2024-03-10 and 2024-11-03, EU 2024-03-31 and 2024-10-27.
BASE_DATES = [dt.date(2024, 3, 6), dt.date(2024, 10, 24)]
HOURS = [0, 1, 2, 3, 12, 21, 22, 23]
OFFSETS = [0, 60, 120, -240, -300, 330, 840, -720]  # minutes east of UTC
TIMEZONES = ["Europe/Berlin", "America/New_York", "UTC", "Asia/Kolkata", "Pacific/Auckland"]

with SEGMENT_MAP.open(encoding="utf-8") as handle:
    GRID = {(int(r["r_score"]), int(r["f_score"]), int(r["m_score"])): r["segment"]
            for r in csv.DictReader(handle)}  # fmt: skip


# --- the generated data ------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One generated transaction line, before it is written in some file format."""

    customer: str | None  # None: missing
    order: str
    wall: dt.datetime  # local wall-clock time of the timestamp
    offset: int | None  # minutes east of UTC; None: a naive timestamp
    quantity: int
    price_milli: int  # thousandths of a pound; amount mode: the line amount, else the unit price
    sku: str

    @property
    def pence(self) -> int:
        """The exact line amount rounded half to even to whole pence."""
        return half_even_division(self.quantity * self.price_milli, 10)


def half_even_division(value: int, divisor: int) -> int:
    """value / divisor rounded half to even, in integers (5.5 -> 6, 10.5 -> 10, -5.5 -> -6)."""
    quotient, rest = divmod(value, divisor)
    if 2 * rest > divisor or (2 * rest == divisor and quotient % 2 == 1):
        quotient += 1
    return quotient


@dataclass(frozen=True)
class Case:
    """A table and the settings it is read with."""

    lines: list[Line]
    file_format: str  # csv | parquet
    amount_mode: str  # amount | quantity
    typed_dates: bool  # parquet: dates stored as Datetime rather than text
    date_only: bool  # naive text dates written as YYYY-MM-DD
    timezone: str
    returns: str
    window_days: int | None
    as_of: dt.date | None


@st.composite
def lines_strategy(draw, zoned: bool, amount_mode: str, customers: list[str]) -> list[Line]:
    """Lines with ties (small pools), returns, non-positive values and missing ids."""
    base = draw(st.sampled_from(BASE_DATES))

    @st.composite
    def one_line(draw) -> Line:
        is_return = draw(st.integers(0, 4)) == 0
        number = draw(st.sampled_from(ORDER_NUMBERS))
        wall = dt.datetime.combine(
            base + dt.timedelta(days=draw(st.integers(0, 25))),
            dt.time(draw(st.sampled_from(HOURS)), draw(st.sampled_from([0, 30]))),
        )
        # Prices with 3 decimals make exact half pennies (5 x 0.011 = 5.5p, 0.105 = 10.5p).
        if amount_mode == "amount":
            quantity = 1
            pool = [-5000, -1250, -55] if is_return else [10000, 2500, 1250, 990, 55, 105, 0, -1000]
            price = draw(st.sampled_from(pool))
        else:
            quantity = draw(st.sampled_from([-2, -1] if is_return else [1, 2, 3, 5, 0, -1]))
            pool = [1250, 990, 11, 21] if is_return else [1250, 990, 10000, 11, 21, 0, -500]
            price = draw(st.sampled_from(pool))
        missing = draw(st.integers(0, 9)) == 0
        return Line(
            customer=None if missing else draw(st.sampled_from(customers)),
            order=("C" if is_return else "") + number,
            wall=wall,
            offset=draw(st.sampled_from(OFFSETS)) if zoned else None,
            quantity=quantity,
            price_milli=price,
            sku=draw(st.sampled_from(SKUS)),
        )

    size = draw(st.integers(1, 40))
    return draw(st.lists(one_line(), min_size=size, max_size=size))


@st.composite
def with_duplicates(draw, lines: list[Line]) -> list[Line]:
    """Insert exact copies of some lines, and copies differing only in the unmapped column."""
    lines = list(lines)
    for _ in range(draw(st.integers(0, 4))):
        copy = lines[draw(st.integers(0, len(lines) - 1))]
        if draw(st.integers(0, 3)) == 0:
            copy = replace(copy, sku="B" if copy.sku == "A" else "A")
        lines.insert(draw(st.integers(0, len(lines))), copy)
    return lines


@st.composite
def cases(
    draw,
    shape: str = "random",
    zoned: bool | None = None,
    window: bool | None = None,
    returns: str | None = None,
) -> Case:
    """A whole case; `shape` is random, single (one customer) or identical (clones)."""
    zoned = draw(st.booleans()) if zoned is None else zoned
    amount_mode = draw(st.sampled_from(["amount", "quantity"]))
    if shape == "random":
        count = draw(st.integers(1, len(CUSTOMER_IDS)))
        customers = draw(st.lists(st.sampled_from(CUSTOMER_IDS), min_size=count,
                                  max_size=count, unique=True))  # fmt: skip
        lines = draw(with_duplicates(draw(lines_strategy(zoned, amount_mode, customers))))
    else:  # one history (with its duplicates) given to every customer
        template = draw(with_duplicates(draw(lines_strategy(zoned, amount_mode, ["T"]))))
        template = [replace(x, customer="T") for x in template]
        count = 1 if shape == "single" else draw(st.integers(2, 4))
        ids = draw(st.lists(st.sampled_from(["0042", "12", "7", "b-3", "Z9"]),
                            min_size=count, max_size=count, unique=True))  # fmt: skip
        lines = [replace(x, customer=c) for c in ids for x in template]
    file_format = draw(st.sampled_from(["csv", "parquet"]))
    use_window = draw(st.booleans()) if window is None else window
    fixed_as_of = draw(st.integers(0, 4)) == 0
    first_day = min(x.wall.date() for x in lines)
    return Case(
        lines=lines,
        file_format=file_format,
        amount_mode=amount_mode,
        typed_dates=file_format == "parquet" and draw(st.booleans()),
        date_only=not zoned and draw(st.integers(0, 4)) == 0,
        timezone=draw(st.sampled_from(TIMEZONES)),
        returns=draw(st.sampled_from(["exclude", "net"])) if returns is None else returns,
        window_days=draw(st.integers(1, 12)) if use_window else None,
        as_of=first_day + dt.timedelta(days=draw(st.integers(0, 27))) if fixed_as_of else None,
    )


# --- writing the case ----------------------------------------------------------------------------


def _money_text(milli: int) -> str:
    """Thousandths of a unit as decimal text ('-1250' -> '-1.250')."""
    sign = "-" if milli < 0 else ""
    return f"{sign}{abs(milli) // 1000}.{abs(milli) % 1000:03d}"


def _zone(offset: int) -> dt.timezone:
    return dt.timezone(dt.timedelta(minutes=offset))


def _date_value(line: Line, case: Case):
    """The order date exactly as stored in the file."""
    if line.offset is not None:
        if case.typed_dates:
            return line.wall.replace(tzinfo=_zone(line.offset)).astimezone(dt.UTC)
        sign = "+" if line.offset >= 0 else "-"
        hours, minutes = divmod(abs(line.offset), 60)
        return f"{line.wall:%Y-%m-%dT%H:%M:%S}{sign}{hours:02d}:{minutes:02d}"
    if case.typed_dates:
        return line.wall
    return f"{line.wall:%Y-%m-%d}" if case.date_only else f"{line.wall:%Y-%m-%d %H:%M:%S}"


def _money_columns(case: Case) -> list[str]:
    return ["amount"] if case.amount_mode == "amount" else ["quantity", "unit_price"]


def source_row(line: Line, case: Case) -> tuple:
    """The row as stored: what the exact-duplicate rule compares."""
    if case.amount_mode == "amount":
        money = (_money_text(line.price_milli),)
    else:
        money = (str(line.quantity), _money_text(line.price_milli))
    return (line.customer, line.order, _date_value(line, case), *money, line.sku)


def write_case(case: Case, folder: Path) -> Path:
    """Write the case as CSV or Parquet and return the file."""
    names = ["customer_id", "order_id", "order_date", *_money_columns(case), "sku"]
    rows = [source_row(x, case) for x in case.lines]
    if case.file_format == "csv":
        path = folder / "tx.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(names)
            writer.writerows(["" if v is None else v for v in row] for row in rows)
        return path
    path = folder / "tx.parquet"
    data = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    for name in _money_columns(case):
        data[name] = [float(v) for v in data[name]]
    zoned = case.lines[0].offset is not None
    date_type = pl.Datetime("us", "UTC" if zoned else None) if case.typed_dates else pl.String
    schema = {name: pl.String for name in names} | {"order_date": date_type}
    schema |= {name: pl.Float64 for name in _money_columns(case)}
    pl.DataFrame(data, schema=schema).write_parquet(path)
    return path


def config_for(case: Case, path: Path) -> reportgen.Config:
    """The config dict of a case (columns left at their defaults where possible)."""
    columns = {"customer_id": "customer_id", "order_id": "order_id", "order_date": "order_date"}
    if case.amount_mode == "amount":
        columns["amount"] = "amount"
    else:
        columns |= {"amount": None, "quantity": "quantity", "unit_price": "unit_price"}
    zoned = case.lines[0].offset is not None
    period = {"timezone": case.timezone, "window_days": case.window_days}
    if case.as_of is not None:
        period["as_of"] = case.as_of.isoformat()
    data = {
        "input": {
            "path": path.name,
            "columns": columns,
            "date_formats": [ZONED_FORMAT] if zoned else NAIVE_FORMATS,
        },
        "period": period,
        "cleaning": {"returns": case.returns},
    }
    return reportgen.config_from_dict(data, base_dir=path.parent)


# --- the naive reference -----------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What the reference computes: the as_of, the kept lines and the customer rows."""

    as_of: dt.date
    rows_kept: int
    revenue_kept: int
    customers: list[dict]


def local_date(line: Line, timezone: str) -> dt.date:
    """The calendar day of a line in the report's time zone (zoneinfo does the conversion)."""
    if line.offset is None:
        return line.wall.date()
    aware = line.wall.replace(tzinfo=_zone(line.offset))
    return aware.astimezone(ZoneInfo(timezone)).date()


def customer_key(raw: str) -> str:
    """Ids read as text; '12.0' is shown as '12'."""
    return re.sub(r"^(\d+)\.0+$", r"\1", raw)


def valid_lines(case: Case) -> list[tuple[str, str, dt.date, int, bool]]:
    """Deduplicated lines that survive the content rules: (customer, order, day, pence, return)."""
    seen, out = set(), []
    for line in case.lines:
        row = source_row(line, case)
        if row in seen:
            continue
        seen.add(row)
        if line.customer is None:
            continue
        is_return = line.order.startswith("C")
        if is_return and case.returns == "exclude":
            continue
        if not is_return and (line.quantity <= 0 or line.price_milli <= 0):
            continue
        day = local_date(line, case.timezone)
        out.append((customer_key(line.customer), line.order, day, line.pence, is_return))
    return out


def score(value, values: list, worse) -> int:
    """1 + floor(5 L / n), L = how many customers have a strictly worse value."""
    worse_count = sum(1 for other in values if worse(other, value))
    return 1 + (5 * worse_count) // len(values)


def reference(case: Case) -> Expected | None:
    """The RFM table from the definitions, with loops and dicts; None when nothing is left."""
    lines = valid_lines(case)
    purchase_days = [day for _, _, day, _, is_return in lines if not is_return]
    as_of = case.as_of or max(purchase_days, default=None)
    if as_of is None:
        return None
    start = as_of - dt.timedelta(days=case.window_days - 1) if case.window_days else None
    kept = [x for x in lines if x[2] <= as_of and (start is None or x[2] >= start)]
    if not kept:
        return None
    first: dict[str, dt.date] = {}
    for customer, _, day, _, is_return in lines:  # all history up to as_of
        if not is_return and day <= as_of:
            first[customer] = min(day, first.get(customer, day))
    orders: dict[tuple[str, str], int] = defaultdict(int)
    last: dict[str, dt.date] = {}
    for customer, order, day, pence, is_return in kept:
        orders[customer, order] += pence
        if not is_return:
            last[customer] = max(day, last.get(customer, day))
    table = {}
    for customer in sorted({x[0] for x in kept}):
        values = [v for (c, _), v in orders.items() if c == customer]
        table[customer] = {
            "customer_id": customer,
            "recency_days": (as_of - last[customer]).days if customer in last else None,
            "frequency": sum(1 for v in values if v > 0),
            "monetary_minor": sum(values),
            "first_order": first.get(customer),
            "last_order": last.get(customer),
        }
    _add_scores(table)
    return Expected(as_of, len(kept), sum(x[3] for x in kept), list(table.values()))


def _add_scores(table: dict[str, dict]) -> None:
    scored = [row for row in table.values() if row["monetary_minor"] > 0]
    recencies = [row["recency_days"] for row in scored]
    frequencies = [row["frequency"] for row in scored]
    monetaries = [row["monetary_minor"] for row in scored]
    for row in table.values():
        if row["monetary_minor"] <= 0:
            row |= {"r_score": None, "f_score": None, "m_score": None, "rfm_score": None,
                    "rfm_grid_segment": EXCLUDED}  # fmt: skip
            continue
        r = score(row["recency_days"], recencies, lambda other, mine: other > mine)
        f = score(row["frequency"], frequencies, lambda other, mine: other < mine)
        m = score(row["monetary_minor"], monetaries, lambda other, mine: other < mine)
        row |= {"r_score": r, "f_score": f, "m_score": m, "rfm_score": f"{r}{f}{m}",
                "rfm_grid_segment": GRID[r, f, m]}  # fmt: skip


# --- the comparison ----------------------------------------------------------------------------


def check_against_reference(case: Case) -> Expected | None:
    """Run compute_rfm_stage on the case in its own folder and compare with the reference."""
    expected = reference(case)
    with tempfile.TemporaryDirectory() as folder:
        config = config_for(case, write_case(case, Path(folder)))
        if expected is None:
            with pytest.raises(reportgen.InputDataError):
                reportgen.compute_rfm_stage(config)
            return None
        report = reportgen.compute_rfm_stage(config)
    assert report.period.as_of == expected.as_of
    assert report.audit.rows_read == len(case.lines)
    assert report.audit.rows_kept == expected.rows_kept
    assert report.audit.revenue_kept_minor == expected.revenue_kept
    assert report.audit.reconciles
    assert report.rfm.frame.select(COMPARED).to_dicts() == expected.customers
    return expected


PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


@PROPERTY
@given(cases())
def test_rfm_matches_the_naive_reference(case):
    """Any mix of returns, ties, duplicates, zones, windows and as-of dates: same table."""
    check_against_reference(case)


@settings(PROPERTY, max_examples=40)
@given(cases(returns="net"))
def test_net_returns_match_the_reference(case):
    """Under `returns: net`, monetary is purchases minus returns, frequency positive orders."""
    check_against_reference(case)


@settings(PROPERTY, max_examples=40)
@given(cases(zoned=True))
def test_zoned_timestamps_match_the_reference(case):
    """Timestamps with UTC offsets fall on the calendar day of `period.timezone`."""
    check_against_reference(case)


@settings(PROPERTY, max_examples=40)
@given(cases(window=True))
def test_window_matches_the_reference(case):
    """With window_days, F and M count only the window; first_order looks at all history."""
    check_against_reference(case)


@settings(PROPERTY, max_examples=25)
@given(cases(shape="single"))
def test_single_customer_matches_the_reference(case):
    """One customer: scores 1 1 1 (nobody is strictly worse), or excluded."""
    expected = check_against_reference(case)
    if expected is not None:
        assert len(expected.customers) == 1
        assert expected.customers[0]["r_score"] in (1, None)


@settings(PROPERTY, max_examples=25)
@given(cases(shape="identical"))
def test_identical_customers_share_every_score(case):
    """Customers with identical histories tie everywhere, so all get the same scores."""
    expected = check_against_reference(case)
    if expected is not None:
        codes = {row["rfm_score"] for row in expected.customers}
        assert codes <= {"111", None} and len(codes) == 1


# --- fixed examples of the same definitions ------------------------------------------------------


def _run_csv(folder: Path, text: str, input_: dict, **sections: dict) -> pl.DataFrame:
    (folder / "tx.csv").write_text(text, encoding="utf-8")
    data = {"input": {"path": "tx.csv", "date_formats": ["%Y-%m-%d"], **input_}, **sections}
    return reportgen.compute_rfm_stage(reportgen.config_from_dict(data, folder)).rfm.frame


def test_reference_scores_ties_by_the_strict_worse_rule():
    """A hand-checked example of the reference's score rule (ties share, scores skip)."""
    values = [1, 1, 1, 2, 5]
    assert [score(v, values, lambda other, mine: other < mine) for v in values] == [1, 1, 1, 4, 5]


def test_net_return_of_a_whole_order(tmp_path):
    """Under net, return orders subtract from monetary but are not orders; net <= 0 is excluded."""
    text = (
        "customer_id,order_id,order_date,amount\n"
        "1,A,2024-01-01,10.00\n"
        "1,B,2024-01-02,4.00\n"
        "1,CA,2024-01-03,-10.00\n"
        "2,D,2024-01-03,5.00\n"
        "3,E,2024-01-03,2.00\n"
        "3,CE,2024-01-03,-3.00\n"
    )
    frame = _run_csv(tmp_path, text, {}, cleaning={"returns": "net"})
    rows = frame.select("customer_id", "frequency", "monetary_minor", "rfm_grid_segment").rows()
    assert rows[0][:3] == ("1", 2, 400)
    assert rows[1][:3] == ("2", 1, 500)
    assert rows[2] == ("3", 1, -100, EXCLUDED)


def test_quantity_times_price_rounds_exact_half_pennies_to_even(tmp_path):
    """Line amounts are exact: 5 x 0.011 = 5.5p -> 6p and 5 x 0.021 = 10.5p -> 10p (half even)."""
    text = (
        "customer_id,order_id,order_date,quantity,unit_price\n"
        "1,A,2024-01-01,5,0.011\n"
        "2,B,2024-01-01,5,0.021\n"
    )
    columns = {"amount": None, "quantity": "quantity", "unit_price": "unit_price"}
    frame = _run_csv(tmp_path, text, {"columns": columns})
    assert frame["monetary_minor"].to_list() == [6, 10]
