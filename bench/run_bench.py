#!/usr/bin/env python3
"""One command for the RFM benchmark: generate data, time reportgen beside the peers, check it.

    python bench/run_bench.py --sizes 1m 10m --formats parquet csv --repeats 3

- data: ../shared/bench/gen_transactions.py (seed 42; 1m = 1M rows / 50k customers, 10m = 10M /
  500k, 50m = 50M / 2.5M) into bench/data/ (kept between runs);
- timing: ../shared/bench/run_rfm_bench.py runs every engine as a fresh process, interleaved and
  rotated per repeat, with peak memory from GNU time; reportgen is registered as one more peer;
- correctness: reportgen's table is checked against an independent DuckDB computation of our
  definitions (check_rfm.py);
- output: bench/results/rfm_<size>_<format>.json and a Markdown table with ratios to DuckDB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "bench"
SIZES = {"1m": (1_000_000, 50_000), "10m": (10_000_000, 500_000), "50m": (50_000_000, 2_500_000)}
PEERS = ["duckdb", "polars_streaming", "pandas_vectorised", "pandas_tutorial", "reportgen"]


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: the peers live in the shared folder beside the repository")
    sys.path.insert(0, str(SHARED))
    import run_rfm_bench  # the shared runner

    run_rfm_bench.PEERS["reportgen"] = [str(HERE / "rfm_reportgen.py")]
    failed = 0
    for size in args.sizes:
        for fmt in args.formats:
            source = _generate(size, fmt, args.data)
            failed += _check(source)
            out = HERE / "results" / f"rfm_{size}_{fmt}.json"
            run_rfm_bench.main(["--data", str(args.data), "--size", size, "--format", fmt,
                                "--repeats", str(args.repeats), "--out", str(out),
                                "--peers", *args.peers])  # fmt: skip
            print(_table(json.loads(out.read_text())))
    return 1 if failed else 0


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1m", "10m"], choices=sorted(SIZES))
    parser.add_argument("--formats", nargs="+", default=["parquet"], choices=["parquet", "csv"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", nargs="+", default=PEERS)
    parser.add_argument("--data", type=Path, default=HERE / "data")
    return parser.parse_args(argv)


def _generate(size: str, fmt: str, data: Path) -> Path:
    target = data / f"t{size}.{fmt}"
    if not target.exists():
        data.mkdir(parents=True, exist_ok=True)
        rows, customers = SIZES[size]
        extra = ["--csv", "--no-parquet"] if fmt == "csv" else []
        subprocess.run([sys.executable, str(SHARED / "gen_transactions.py"), str(rows),
                        str(customers), "42", str(data / f"t{size}"), *extra], check=True)  # fmt: skip
    return target


def _check(source: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "reportgen.parquet"
        subprocess.run([sys.executable, str(HERE / "rfm_reportgen.py"), str(source), str(out)],
                       check=True, capture_output=True)  # fmt: skip
        return subprocess.run([sys.executable, str(HERE / "check_rfm.py"), str(source), str(out)]).returncode


def _table(result: dict) -> str:
    summary = result["summary"]
    duckdb = summary.get("duckdb", {}).get("wall_median_s")
    lines = [
        f"\n{result['size']} rows, {result['format']} ({result['repeats']} repeats, medians)\n",
        "| engine | wall s | work s | peak RSS MB | wall / DuckDB |",
        "|---|---:|---:|---:|---:|",
    ]
    for peer, s in sorted(summary.items(), key=lambda item: item[1].get("wall_median_s", 1e9)):
        if "wall_median_s" not in s:
            lines.append(f"| {peer} | failed | | | |")
            continue
        ratio = f"{s['wall_median_s'] / duckdb:.2f}" if duckdb else "-"
        lines.append(f"| {peer} | {s['wall_median_s']:.2f} | {s['work_median_s']:.2f} | "
                     f"{s['rss_max_mb']:,} | {ratio} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
