"""The monthly EDA table, read off the per-order aggregate, and recounted from the lines when
an order has purchases in two months."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

import reportgen
from reportgen import rfm_stage
from reportgen.eda import month_coverage, month_start
from reportgen.rfm_stage import compute_rfm_stage

ROWS = """customer,invoice,date,amount
C1,I1,2024-01-31,10.00
C1,I1,2024-02-01,5.00
C2,I2,2024-02-03,7.00
C2,I1,2024-02-04,1.00
"""


def test_an_order_spanning_months_counts_in_both(tmp_path: Path) -> None:
    """I1 of C1 has lines in January and February; I1 is also C2's order id (one order id)."""
    (tmp_path / "t.csv").write_text(ROWS, encoding="utf-8")
    config = reportgen.config_from_dict(
        {"input": {"path": "t.csv", "columns": {"customer_id": "customer", "order_id": "invoice",
                                                "order_date": "date", "amount": "amount"}}},
        base_dir=tmp_path,
    )  # fmt: skip
    monthly = compute_rfm_stage(config).eda.monthly
    shown = monthly.select("month", "revenue_minor", "orders", "customers", "new_customers")
    assert shown.rows() == [
        (dt.date(2024, 1, 1), 1000, 1, 1, 1),
        (dt.date(2024, 2, 1), 1300, 2, 2, 1),
    ]


# Order ids shared by customers within a month (I2 in February, I4 in March), none spanning two.
SHARED_IDS = """customer,invoice,date,amount
C1,I1,2024-01-31,10.00
C6,I6,2024-01-02,9.00
C2,I2,2024-02-03,7.00
C2,I1,2024-02-04,1.00
C7,I2,2024-02-10,6.00
C3,I3,2024-03-05,3.00
C4,I4,2024-03-05,4.00
C4,I5,2024-03-05,-1.00
C5,I1,2024-03-09,2.50
C8,I4,2024-03-06,8.00
"""


@pytest.mark.parametrize("order_ids", [True, False])
def test_large_inputs_computed_in_slices_give_the_same_tables(tmp_path, monkeypatch, order_ids):
    """Past SLICE_GROUPS groups the orders and the monthly counts are computed a slice of
    customers (of order ids) at a time; order ids shared across slices still count once."""
    (tmp_path / "t.csv").write_text(SHARED_IDS, encoding="utf-8")
    columns = {"customer_id": "customer", "order_id": "invoice" if order_ids else None,
               "order_date": "date", "amount": "amount"}  # fmt: skip
    config = reportgen.config_from_dict({"input": {"path": "t.csv", "columns": columns}},
                                        base_dir=tmp_path)  # fmt: skip
    whole = compute_rfm_stage(config)
    monkeypatch.setattr(rfm_stage, "SLICE_GROUPS", 1)  # one group a slice: every id in its own
    sliced = compute_rfm_stage(config)
    assert sliced.eda.monthly.equals(whole.eda.monthly)
    assert sliced.rfm.frame.equals(whole.rfm.frame)
    assert whole.eda.monthly["orders"].to_list() == ([2, 2, 3] if order_ids else [2, 3, 4])


def test_sample_data_in_slices_gives_the_same_tables(monkeypatch, shipped_config_path):
    config = reportgen.load_config(shipped_config_path)
    whole = compute_rfm_stage(config)
    monkeypatch.setattr(rfm_stage, "SLICE_GROUPS", 5_000)
    sliced = compute_rfm_stage(config)
    assert sliced.eda.monthly.equals(whole.eda.monthly)
    assert sliced.rfm.frame.equals(whole.rfm.frame)


@pytest.mark.parametrize(
    ("month", "span", "expected"),
    [
        (dt.date(2011, 12, 1), (dt.date(2010, 12, 1), dt.date(2011, 12, 9)), (9, 31)),
        (dt.date(2010, 12, 1), (dt.date(2010, 12, 1), dt.date(2011, 12, 9)), (31, 31)),
        (dt.date(2011, 3, 1), (dt.date(2011, 3, 15), dt.date(2011, 12, 9)), (17, 31)),
        (dt.date(2024, 2, 1), (dt.date(2024, 1, 1), dt.date(2024, 2, 29)), (29, 29)),  # leap
        (dt.date(2023, 2, 1), (dt.date(2023, 2, 10), dt.date(2023, 2, 10)), (1, 28)),
        (dt.date(2024, 5, 1), (dt.date(2024, 1, 1), dt.date(2024, 3, 31)), (0, 31)),  # outside
    ],
)
def test_month_coverage_counts_the_days_in_the_period(month, span, expected) -> None:
    """Days of the month within first..last (both included), and the month's length."""
    assert month_coverage(month, span) == expected


@pytest.mark.parametrize(
    "dates",
    [
        # every day of three years (a leap day, month and year ends) backwards, and a null
        [dt.date(2025, 1, 1) - dt.timedelta(days=d) for d in range(1100)] + [None],
        [dt.date(1970, 3, 1) - dt.timedelta(days=d) for d in range(120)],  # before 1970 too
        [dt.date(1, 1, 1), dt.date(9999, 12, 31)],  # a calendar too long to look up
        [None, None],
        [],
    ],
)  # fmt: skip
def test_month_start_looked_up_agrees_with_polars(dates) -> None:
    column = pl.Series("first_purchase", dates, dtype=pl.Date)
    assert month_start(column).equals(column.dt.month_start())
