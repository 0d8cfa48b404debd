#!/usr/bin/env python3
"""The 10M-row file split into a folder of many files: reportgen's RFM stage on each layout.

    python bench/bench_folders.py --files 200 1000 --repeats 3

Exports often arrive as a file a day. This splits bench/data/t10m.parquet (made by run_bench.py)
into N files of equal rows, as Parquet, as Parquet whose second half has one more column (a
schema that changes partway), and as CSV, and times `rfm_reportgen.py` on each, fresh processes
in turn, beside the same rows in one file and DuckDB running our rules on the same files (a
glob; not on the two-schema folder, which it reads only with `union_by_name`). Every folder's
RFM table must equal the one file's. Writes bench/results/folders.json and folders.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
from run_bench import compile_reportgen

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LAYOUTS = ("parquet", "parquet, two schemas", "csv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=HERE / "data")
    args = parser.parse_args(argv)
    single = args.data / "t10m.parquet"
    if not single.exists():
        sys.exit(f"{single} not found: run `python bench/run_bench.py --sizes 10m` first")
    compile_reportgen()
    inputs = {("parquet", 1): str(single), ("csv", 1): str(args.data / "t10m.csv")}
    for files in args.files:
        for layout in LAYOUTS:
            inputs[layout, files] = _split(single, args.data, files, layout)
    rows, failed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        expected = _rfm(single, Path(tmp) / "expected.parquet")
        for (layout, files), source in sorted(inputs.items(), key=lambda i: (i[0][0], i[0][1])):
            engines = {"reportgen": "rfm_reportgen.py"}
            if layout != "parquet, two schemas":
                engines["duckdb_our_rules"] = "rfm_duckdb_our_rules.py"
            timed = {e: [_timed(s, source, Path(tmp)) for _ in range(args.repeats)]
                     for e, s in engines.items()}  # fmt: skip
            same = _rfm(source, Path(tmp) / "folder.parquet").equals(expected)
            failed += not same
            rows.append({"layout": layout, "files": files, "same_rfm": same}
                        | {e: _median(runs) for e, runs in timed.items()})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "folders.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "folders.md").write_text(_table(rows))
    print(_table(rows))
    return 1 if failed else 0


def _split(single: Path, data: Path, files: int, layout: str) -> str:
    """The folder of `files` files holding the single file's rows (made once); its glob."""
    suffix = {"parquet": "files", "parquet, two schemas": "files_2schemas", "csv": "csv"}[layout]
    folder = data / f"t10m_{files}{suffix}"
    pattern = str(folder / ("*.csv" if layout == "csv" else "*.parquet"))
    if folder.is_dir():
        return pattern
    frame = pl.read_parquet(single)
    step = -(-frame.height // files)
    folder.mkdir(parents=True)
    for i in range(files):
        part = frame.slice(i * step, step)
        if layout == "csv":
            part.write_csv(folder / f"part-{i:05d}.csv", datetime_format="%Y-%m-%d %H:%M:%S")
            continue
        if layout == "parquet, two schemas" and i >= files // 2:
            part = part.with_columns(pl.lit("UK").alias("country"))
        part.write_parquet(folder / f"part-{i:05d}.parquet")
    return pattern


def _timed(script: str, source: str, tmp: Path) -> dict:
    run = subprocess.run(["/usr/bin/time", "-f", "__GNUTIME__ %e %M", sys.executable,
                          str(HERE / script), source, str(tmp / "out.parquet")],
                         capture_output=True, text=True, check=True)  # fmt: skip
    wall, rss_kb = run.stderr.rsplit("__GNUTIME__", 1)[1].split()
    return {"wall_s": float(wall), "rss_mb": int(rss_kb) / 1024}


def _median(runs: list[dict]) -> dict:
    return {"wall_s": statistics.median(r["wall_s"] for r in runs),
            "rss_mb": round(max(r["rss_mb"] for r in runs))}  # fmt: skip


def _rfm(source: str | Path, out: Path) -> pl.DataFrame:
    subprocess.run([sys.executable, str(HERE / "rfm_reportgen.py"), str(source), str(out)],
                   check=True, capture_output=True)  # fmt: skip
    return pl.read_parquet(out)


def _table(rows: list[dict]) -> str:
    lines = [
        "10M rows in one file or a folder (medians; peak RSS the largest)\n",
        "| layout | files | reportgen s | peak MB | DuckDB our rules s | ratio | same RFM |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ours, duck = r["reportgen"], r.get("duckdb_our_rules")
        ratio = f"{ours['wall_s'] / duck['wall_s']:.2f}" if duck else "-"
        lines.append(f"| {r['layout']} | {r['files']:,} | {ours['wall_s']:.2f} | "
                     f"{ours['rss_mb']:,} | {duck['wall_s'] if duck else '-'} | {ratio} | "
                     f"{'yes' if r['same_rfm'] else 'NO'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
