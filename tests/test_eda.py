"""The monthly EDA table, read off the per-order aggregate, and recounted from the lines when
an order has purchases in two months."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import reportgen
from reportgen.pipeline import compute_rfm_stage

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
