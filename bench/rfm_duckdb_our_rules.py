#!/usr/bin/env python3
"""DuckDB computing reportgen's definitions, as a benchmark peer: `rfm_duckdb_our_rules.py IN OUT`.

The fair yardstick next to the shared `duckdb` peer: the same SQL as check_rfm.py (whole-row
duplicates over every row, calendar-day recency to the last clean purchase day, exact pence),
so the ratio to it compares engines doing the same job (still without the audit and the EDA,
which reportgen also computes).
"""

from __future__ import annotations

import json
import sys
import time

t_import = time.perf_counter()
import duckdb
from check_rfm import SQL

import_s = time.perf_counter() - t_import


def main(source: str, out: str) -> None:
    start = time.perf_counter()
    reader = "read_csv(?, header=true)" if source.endswith(".csv") else "read_parquet(?)"
    con = duckdb.connect()
    # Integer ids, as the other peers write them: the shared verify_rfm.py sorts the ids before
    # casting them, so text ids of different lengths came out in another order.
    ids = "REPLACE (CAST(customer_id AS BIGINT) AS customer_id)"
    query = f"SELECT * {ids} FROM ({SQL.format(reader=reader)})"
    con.execute(f"COPY ({query}) TO '{out}' (FORMAT parquet)", [source])
    customers = con.execute("SELECT count(*) FROM read_parquet(?)", [out]).fetchone()[0]
    print(json.dumps({"query_s": round(time.perf_counter() - start, 4),
                      "work_s": round(time.perf_counter() - start, 4),
                      "import_s": round(import_s, 4), "customers": customers}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
