#!/usr/bin/env python3
"""Clustering at scale: k selection stays flat past its sample, the final fit grows linearly.

    python bench/bench_cluster.py --customers 100000 1000000 5000000

Customers of five planted types (as tests/test_segment.py), scored through the real RFM code;
`segment_customers` runs twice per size: with k chosen automatically (k_range, elbow and
silhouette on the seeded samples) and with that k fixed (the final fit, profiles and names
only). Their difference is the cost of choosing k. Writes bench/results/cluster.json and prints
a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from reportgen.config import RfmSection, SegmentationSection
from reportgen.grid import load_segment_map
from reportgen.rfm import finish_rfm
from reportgen.segment import segment_customers

HERE = Path(__file__).resolve().parent
AS_OF = dt.date(2024, 12, 31)
TYPES = [(0.10, 4, 18, 6000.0), (0.20, 25, 6, 1500.0), (0.20, 12, 1, 120.0),
         (0.35, 220, 1, 150.0), (0.15, 150, 7, 2500.0)]  # fmt: skip


def planted(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    kind = rng.choice(len(TYPES), size=n, p=[t[0] for t in TYPES])
    med = np.array([t[1:] for t in TYPES])[kind]
    noise = rng.normal(0, 0.4, size=(n, 3))
    recency = np.round(np.exp(np.log(med[:, 0] + 1) + noise[:, 0]) - 1).clip(0, 365).astype(int)
    orders = np.maximum(1, np.round(np.exp(np.log(med[:, 1]) + noise[:, 1]))).astype(int)
    spend = np.round(np.exp(np.log(med[:, 2] * 100) + noise[:, 2])).astype(int)
    tenure = recency + rng.integers(0, 300, n)
    as_of = pl.lit(AS_OF, dtype=pl.Date)
    frame = pl.DataFrame({"customer_id": np.arange(n), "frequency": orders,
                          "monetary_minor": spend, "recency": recency, "tenure": tenure})  # fmt: skip
    frame = frame.select(
        pl.format("c{}", pl.col("customer_id").cast(pl.String).str.zfill(8)).alias("customer_id"),
        "frequency", "monetary_minor",
        pl.col("monetary_minor").alias("gross_minor"),
        pl.lit(0, dtype=pl.Int64).alias("returned_value_minor"),
        (as_of - pl.duration(days=pl.col("recency"))).alias("last_order"),
        (as_of - pl.duration(days=pl.col("tenure"))).alias("first_order"),
        pl.lit(True).alias("_in_period"),
        as_of.alias("_as_of"),
    )  # fmt: skip
    return finish_rfm(frame, RfmSection(), load_segment_map("builtin"), 2, None)


def timed(rfm, cfg: SegmentationSection):
    start = time.perf_counter()
    seg = segment_customers(rfm, cfg, {}, 42)
    return seg, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", nargs="+", type=int, default=[100_000, 1_000_000])
    args = parser.parse_args(argv)
    rows = []
    for n in args.customers:
        rfm = planted(n)
        seg, auto_s = timed(rfm, SegmentationSection())
        _, fixed_s = timed(rfm, SegmentationSection(k=seg.k))
        rows.append({"customers": n, "k": seg.k, "auto_s": round(auto_s, 1),
                     "fixed_k_s": round(fixed_s, 1), "choosing_k_s": round(auto_s - fixed_s, 1),
                     "fit_sample": min(n, SegmentationSection().fit_sample_size),
                     "silhouette_sample": SegmentationSection().silhouette_sample_size})  # fmt: skip
        print(rows[-1], flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "cluster.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| customers | k | auto k, s | k fixed (final fit, profiles), s | choosing k, s |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['customers']:,} | {r['k']} | {r['auto_s']} | {r['fixed_k_s']} | {r['choosing_k_s']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
