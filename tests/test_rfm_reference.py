"""RFM on the shipped sample against the golden figures and an independent DuckDB computation.

The DuckDB query is written from the definitions in DESIGN.md section 2, straight from the
sample's Parquet file and the segment map CSV; it calls no reportgen code.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import reportgen

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.yaml"
SAMPLE = ROOT / "reportgen" / "data" / "online_retail.parquet"
SEGMENT_MAP = ROOT / "reportgen" / "data" / "rfm_segment_map.csv"

GRID_SIZES = {
    "Loyal Customers": 826,
    "Lost": 685,
    "Champions": 600,
    "At Risk": 589,
    "Potential Loyalist": 496,
    "Hibernating": 408,
    "About To Sleep": 357,
    "Need Attention": 179,
    "Promising": 87,
    "Can't Lose Them": 76,
    "New Customers": 35,
}
COMPARED = [
    "customer_id",
    "recency_days",
    "frequency",
    "monetary_minor",
    "first_order",
    "last_order",
    "tenure_days",
    "r_score",
    "f_score",
    "m_score",
    "rfm_score",
    "rfm_grid_segment",
]

# Every step follows DESIGN.md section 2 with the shipped config's settings (duplicates: all,
# cancellation prefix C, returns: exclude, all history, naive times taken as Europe/London).
# Prices have at most 3 decimals: DECIMAL(18, 3) holds them exactly, so the line amount in pence
# is exact and round_even rounds it half to even (DuckDB's round() rounds half away from zero).
REFERENCE_SQL = """
WITH src AS (
    SELECT * FROM read_parquet($sample)
),
dedup AS (
    SELECT DISTINCT * FROM src
),
lines AS (
    SELECT
        CAST(CAST(CustomerID AS BIGINT) AS VARCHAR) AS customer_id,
        InvoiceNo AS order_id,
        CAST(strptime(InvoiceDate, '%Y-%m-%d %H:%M:%S') AS DATE) AS order_date,
        CAST(round_even(Quantity * CAST(UnitPrice AS DECIMAL(18, 3)) * 100, 0) AS BIGINT)
            AS amount_minor
    FROM dedup
    WHERE CustomerID IS NOT NULL
      AND NOT starts_with(InvoiceNo, 'C')
      AND Quantity > 0
      AND UnitPrice > 0
),
as_of AS (
    SELECT max(order_date) AS as_of FROM lines
),
customers AS (
    SELECT
        customer_id,
        count(DISTINCT order_id) AS frequency,
        sum(amount_minor) AS monetary_minor,
        min(order_date) AS first_order,
        max(order_date) AS last_order
    FROM lines
    GROUP BY customer_id
),
measured AS (
    SELECT
        c.*,
        date_diff('day', c.last_order, a.as_of) AS recency_days,
        date_diff('day', c.first_order, a.as_of) AS tenure_days,
        count(*) OVER () AS n,
        rank() OVER (ORDER BY date_diff('day', c.last_order, a.as_of) DESC) - 1 AS worse_r,
        rank() OVER (ORDER BY c.frequency ASC) - 1 AS worse_f,
        rank() OVER (ORDER BY c.monetary_minor ASC) - 1 AS worse_m
    FROM customers c CROSS JOIN as_of a
),
scored AS (
    SELECT
        *,
        1 + (5 * worse_r) // n AS r_score,
        1 + (5 * worse_f) // n AS f_score,
        1 + (5 * worse_m) // n AS m_score
    FROM measured
),
grid AS (
    SELECT CAST(r_score AS BIGINT) AS r, CAST(f_score AS BIGINT) AS f,
           CAST(m_score AS BIGINT) AS m, segment
    FROM read_csv($segment_map, header = true, all_varchar = true)
)
SELECT
    s.customer_id,
    s.recency_days,
    s.frequency,
    s.monetary_minor,
    s.first_order,
    s.last_order,
    s.tenure_days,
    s.r_score,
    s.f_score,
    s.m_score,
    CAST(s.r_score AS VARCHAR) || CAST(s.f_score AS VARCHAR) || CAST(s.m_score AS VARCHAR)
        AS rfm_score,
    g.segment AS rfm_grid_segment
FROM scored s
LEFT JOIN grid g ON g.r = s.r_score AND g.f = s.f_score AND g.m = s.m_score
ORDER BY s.customer_id
"""


@pytest.fixture(scope="module")
def report() -> reportgen.Report:
    """The report computed once on the built-in sample with the shipped config."""
    return reportgen.compute_rfm_stage(reportgen.load_config(CONFIG))


@pytest.fixture(scope="module")
def reference() -> pl.DataFrame:
    """The per-customer table computed independently in DuckDB."""
    con = duckdb.connect()
    try:
        params = {"sample": str(SAMPLE), "segment_map": str(SEGMENT_MAP)}
        cursor = con.execute(REFERENCE_SQL, params)
        names = [d[0] for d in cursor.description]
        return pl.DataFrame(cursor.fetchall(), schema=names, orient="row", infer_schema_length=None)
    finally:
        con.close()


def _rule(report: reportgen.Report, name: str):
    return next(r for r in report.audit.rules if r.rule == name)


def _counts(frame: pl.DataFrame, column: str) -> dict:
    return dict(frame[column].value_counts().iter_rows())


def test_rows_read_duplicates_and_lines_kept(report):
    """541,909 rows read, 5,268 exact duplicates, 392,692 lines kept."""
    assert report.audit.rows_read == 541_909
    assert _rule(report, "duplicate").rows == 5_268
    assert report.audit.rows_kept == 392_692


def test_customers_revenue_and_as_of(report):
    """4,338 customers, revenue kept £8,887,208.89, as_of 2011-12-09."""
    assert report.rfm.frame.height == 4_338
    assert report.rfm.frame["customer_id"].n_unique() == 4_338
    assert report.audit.revenue_kept_minor == 888_720_889
    assert int(report.rfm.frame["monetary_minor"].sum()) == 888_720_889
    assert report.period.as_of == dt.date(2011, 12, 9)
    assert report.rfm.as_of == dt.date(2011, 12, 9)


def test_audit_reconciles_to_the_penny(report):
    """Revenue read = revenue kept + revenue of every rule, and rows likewise (integers)."""
    audit = report.audit
    assert isinstance(audit.revenue_read_minor, int)
    assert all(isinstance(r.revenue_minor, int) for r in audit.rules)
    dropped = sum(r.revenue_minor for r in audit.rules)
    assert audit.revenue_read_minor == audit.revenue_kept_minor + dropped
    assert audit.rows_read == audit.rows_kept + sum(r.rows for r in audit.rules)
    assert audit.reconciles


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("r_score", [869, 889, 866, 888, 826]),
        ("f_score", [1_493, 835, 508, 802, 700]),
        ("m_score", [868, 868, 867, 868, 867]),
    ],
)
def test_score_distributions(report, column, expected):
    """Customers per score 1-5 match the published figures."""
    assert _counts(report.rfm.frame, column) == dict(zip(range(1, 6), expected, strict=True))


def test_rfm_grid_sizes(report):
    """The 11 RFM grid segments have the published sizes."""
    assert _counts(report.rfm.frame, "rfm_grid_segment") == GRID_SIZES


def test_reference_reproduces_the_golden_figures(reference):
    """The independent DuckDB table itself gives the published figures (it is a valid oracle)."""
    assert reference.height == 4_338
    assert int(reference["monetary_minor"].sum()) == 888_720_889
    assert _counts(reference, "r_score") == {1: 869, 2: 889, 3: 866, 4: 888, 5: 826}
    assert _counts(reference, "f_score") == {1: 1_493, 2: 835, 3: 508, 4: 802, 5: 700}
    assert _counts(reference, "m_score") == {1: 868, 2: 868, 3: 867, 4: 868, 5: 867}
    assert _counts(reference, "rfm_grid_segment") == GRID_SIZES


def test_every_customer_matches_the_duckdb_reference(report, reference):
    """Every customer's R, F, M, dates, scores and grid segment equal the DuckDB computation."""
    ours = report.rfm.frame.select(COMPARED).with_columns(
        pl.col("r_score", "f_score", "m_score").cast(pl.Int64)
    )
    theirs = reference.select(COMPARED).with_columns(
        pl.col("recency_days", "frequency", "monetary_minor", "tenure_days").cast(pl.Int64),
        pl.col("r_score", "f_score", "m_score").cast(pl.Int64),
    )
    assert ours["customer_id"].to_list()[:2] == ["12346", "12347"]
    assert_frame_equal(ours, theirs)
