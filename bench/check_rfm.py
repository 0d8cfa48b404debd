#!/usr/bin/env python3
"""Check reportgen's RFM table against an independent DuckDB computation of our definitions.

Usage: check_rfm.py INPUT REPORTGEN_OUTPUT.parquet   (INPUT: a file of ../shared/bench's
generator: customer_id, invoice_id, invoice_date, amount). Exit code 1 on any difference.

The shared peers are timing yardsticks, not references: they count recency from timestamps
and the day after the latest purchase. Here recency is in calendar days to as_of (the last day
with a clean purchase), money is summed in exact pence, and duplicates are whole rows.
"""

from __future__ import annotations

import sys

import duckdb

SQL = """
WITH source AS (
  SELECT * FROM {reader}
), deduplicated AS (
  SELECT DISTINCT * FROM source
), clean AS (
  SELECT CAST(customer_id AS VARCHAR) AS customer_id, invoice_id,
         CAST(invoice_date AS DATE) AS day,
         CAST(round_even(CAST(amount AS DECIMAL(18, 6)) * 100, 0) AS BIGINT) AS pence
  FROM deduplicated
  WHERE customer_id IS NOT NULL AND NOT starts_with(invoice_id, 'C') AND amount > 0
)
SELECT customer_id,
       date_diff('day', max(day), (SELECT max(day) FROM clean)) AS recency,
       count(DISTINCT invoice_id) AS frequency,
       sum(pence) / 100 AS monetary
FROM clean GROUP BY customer_id ORDER BY customer_id
"""


def main(source: str, ours: str) -> int:
    reader = "read_csv(?, header=true)" if source.endswith(".csv") else "read_parquet(?)"
    con = duckdb.connect()
    expected = con.execute(SQL.format(reader=reader), [source]).fetchall()
    got = con.execute(
        "SELECT CAST(customer_id AS VARCHAR), recency, frequency, monetary "
        "FROM read_parquet(?) ORDER BY 1", [ours]
    ).fetchall()  # fmt: skip
    problems = []
    if [row[0] for row in expected] != [row[0] for row in got]:
        problems.append(f"customer sets differ ({len(expected)} vs {len(got)})")
    else:
        for index, column in enumerate(("recency", "frequency", "monetary"), start=1):
            differ = sum(
                abs(float(e[index]) - float(g[index])) > 1e-9
                for e, g in zip(expected, got, strict=True)
            )
            if differ:
                problems.append(f"{column}: {differ} customers differ")
    print(f"{ours}: " + ("; ".join(problems) or f"OK, {len(got)} customers identical"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
