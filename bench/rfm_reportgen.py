#!/usr/bin/env python3
"""reportgen's RFM stage as a benchmark peer: `rfm_reportgen.py INPUT OUTPUT`.

Follows the contract of ../shared/bench/peers (one row per customer: customer_id, recency,
frequency, monetary; one JSON line of phase timings on stdout) so the shared runner can time it
side by side with the peers. The stage is the engine's whole job on the transactions: read,
clean (with the per-rule audit), aggregate and score (a Parquet file is read once in chunks,
then only its example rows and duplicate candidates again: see bench/README.md, "Where the time
goes").
"""

from __future__ import annotations

import json
import sys
import time

t_import = time.perf_counter()
import polars as pl

import reportgen
from reportgen.rfm_stage import compute_rfm_stage

import_s = time.perf_counter() - t_import


def main(source: str, out: str) -> None:
    start = time.perf_counter()
    config = reportgen.config_from_dict(
        {
            "input": {
                "path": source,
                "columns": {"customer_id": "customer_id", "order_id": "invoice_id",
                            "order_date": "invoice_date", "amount": "amount"},
            }
        }
    )  # fmt: skip
    stage = compute_rfm_stage(config)
    query_s = time.perf_counter() - start
    table = stage.rfm.frame.select(
        pl.col("customer_id").cast(pl.Int64),
        pl.col("recency_days").alias("recency"),
        "frequency",
        (pl.col("monetary_minor") / 100).alias("monetary"),
    )
    table.write_parquet(out)
    print(json.dumps({
        "query_s": round(query_s, 4),
        "write_s": round(time.perf_counter() - start - query_s, 4),
        "work_s": round(time.perf_counter() - start, 4),
        "import_s": round(import_s, 4),
        "customers": table.height,
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
