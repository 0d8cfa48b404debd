#!/usr/bin/env python3
"""One command for the benchmark: generate data, time reportgen beside the peers, check it.

    python bench/run_bench.py --sizes 1m 10m 50m --formats parquet csv --repeats 3 --end-to-end

- data: ../shared/bench/gen_transactions.py (seed 42; 1m = 1M rows / 50k customers, 10m = 10M /
  500k, 50m = 50M / 2.5M) into bench/data/ (kept between runs);
- timing: ../shared/bench/run_rfm_bench.py runs every engine as a fresh process, interleaved and
  rotated per repeat, with peak memory from GNU time; reportgen (rfm_reportgen.py) and DuckDB
  computing our definitions (rfm_duckdb_our_rules.py) are registered as two more peers;
- correctness: reportgen's table is checked against an independent DuckDB computation of our
  definitions (check_rfm.py);
- end to end (--end-to-end): `reportgen run` on each Parquet size (HTML, PDF, exports, email
  file), wall time, peak memory of its processes together (it writes the PDF in a second
  process: GNU time would give the larger one's), the stages' times from its log;
- output: bench/results/*.json, and bench/results/latest.md with the tables (ratios to both
  DuckDB yardsticks) and the scaling table, drawn in bench/results/scaling.svg.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "bench"
RESULTS = HERE / "results"
SIZES = {"1m": (1_000_000, 50_000), "10m": (10_000_000, 500_000), "50m": (50_000_000, 2_500_000)}
PEERS = ["duckdb", "duckdb_our_rules", "polars_streaming", "pandas_vectorised", "pandas_tutorial",
         "reportgen"]  # fmt: skip
OURS = {"reportgen": "rfm_reportgen.py", "duckdb_our_rules": "rfm_duckdb_our_rules.py"}


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: the peers live in the shared folder beside the repository")
    sys.path.insert(0, str(SHARED))
    import run_rfm_bench  # the shared runner

    for name, script in OURS.items():
        run_rfm_bench.PEERS[name] = [str(HERE / script)]
    compile_reportgen()
    failed = 0
    for size in args.sizes:
        for fmt in [] if args.end_to_end_only else args.formats:
            source = _generate(size, fmt, args.data)
            failed += _check(source)
            out = RESULTS / f"rfm_{size}_{fmt}.json"
            run_rfm_bench.main(["--data", str(args.data), "--size", size, "--format", fmt,
                                "--repeats", str(args.repeats), "--out", str(out),
                                "--peers", *args.peers])  # fmt: skip
        if args.end_to_end or args.end_to_end_only:
            _end_to_end(size, _generate(size, "parquet", args.data), args.repeats)
    report = _report()
    (RESULTS / "latest.md").write_text(report, encoding="utf-8")
    _scaling_chart(RESULTS / "scaling.svg")
    print(report)
    return 1 if failed else 0


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1m", "10m"], choices=sorted(SIZES))
    parser.add_argument("--formats", nargs="+", default=["parquet"], choices=["parquet", "csv"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", nargs="+", default=PEERS)
    parser.add_argument("--end-to-end", action="store_true", help="also time `reportgen run`")
    parser.add_argument(
        "--end-to-end-only",
        action="store_true",
        help="time only `reportgen run` (the RFM tables keep their last results)",
    )
    parser.add_argument("--data", type=Path, default=HERE / "data")
    return parser.parse_args(argv)


def compile_reportgen() -> None:
    """Byte-compile reportgen's modules, as installing it from a wheel does (and as the peers'
    libraries are): a checkout run with PYTHONDONTWRITEBYTECODE=1, as on the benchmark machine,
    would compile the source at every start, about 0.1 s of each timed run."""
    compileall.compile_dir(HERE.parent / "reportgen", quiet=1)


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
        check = [sys.executable, str(HERE / "check_rfm.py"), str(source), str(out)]
        return subprocess.run(check, check=False).returncode


# --- end to end --------------------------------------------------------------------------------

E2E_CONFIG = """report: {{name: Benchmark {size}}}
input:
  path: {source}
  columns: {{customer_id: customer_id, order_id: invoice_id, order_date: invoice_date, amount: amount}}
output: {{dir: {out}}}
"""
# a stage starts at each log line: reportgen's stage names and its writers' "wrote FILE" lines
_STAGE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO reportgen[\w.]*: (.*)$")


def _end_to_end(size: str, source: Path, repeats: int) -> None:
    """`reportgen run` as a user runs it: a fresh process, every output written; the run with
    the median time is kept (all times listed)."""
    runs = sorted((_run_once(size, source) for _ in range(repeats)), key=lambda r: r["wall_s"])
    result = runs[len(runs) // 2] | {"walls_s": [r["wall_s"] for r in runs]}
    (RESULTS / f"e2e_{size}.json").write_text(json.dumps(result, indent=2) + "\n")


def _run_once(size: str, source: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(E2E_CONFIG.format(size=size, source=source, out=Path(tmp) / "out"))
        reportgen = Path(sys.executable).with_name("reportgen")
        wall, peak, returncode, log = _timed([str(reportgen), "run", "--config", str(config)])
    if returncode:
        sys.exit(f"reportgen run failed on {source}:\n{log[-3000:]}")
    print(f"[{size} end to end] wall={wall:.2f}s rss={peak / 2**20:.0f}MB", flush=True)
    return {"size": size, "source": str(source), "wall_s": round(wall, 2),
            "rss_max_mb": round(peak / 2**20), "stages": _stage_times(log)}  # fmt: skip


def _timed(command: list[str]) -> tuple[float, int, int, str]:
    """Wall seconds, peak memory, exit code and stderr of `command`. The peak is the larger of
    the summed RSS of the process and its children, sampled every 20 ms, and the exact peak of
    the largest one alone (wait4's ru_maxrss, what GNU time reports)."""
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, text=True)
        sampled = 0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            sampled = max(sampled, _tree_rss(process.pid))
            time.sleep(0.02)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return wall, max(sampled, usage.ru_maxrss * 1024), process.returncode, err.read()


def _tree_rss(pid: int) -> int:
    import psutil  # ../shared/bench/requirements.txt

    total = 0
    try:
        process = psutil.Process(pid)
        for each in [process, *process.children(recursive=True)]:
            total += each.memory_info().rss
    except psutil.Error:  # a process ended while counted
        pass
    return total


def _stage_times(log: str) -> dict[str, float]:
    """Seconds between log lines: a stage runs until the next line; once the run folder is
    being written, each interval is named after the file whose "wrote" line ends it."""
    marks = [(dt.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f"), m[2])
             for m in map(_STAGE.match, log.splitlines()) if m]  # fmt: skip
    times = {}
    for (at, name), (nxt, following) in itertools.pairwise(marks):
        wrote = re.match(r"wrote \S*/([^/\s]+) ", following)
        times[f"until {wrote[1]} written" if wrote else name] = round((nxt - at).total_seconds(), 1)
    return times


# --- reporting ---------------------------------------------------------------------------------


def _report() -> str:
    parts = [_rfm_table(json.loads(p.read_text())) for p in sorted(RESULTS.glob("rfm_*.json"))]
    return "\n\n".join([*parts, _scaling_table()]) + "\n"


def _rfm_table(result: dict) -> str:
    summary = result["summary"]
    duckdb = summary.get("duckdb", {}).get("wall_median_s")
    same = summary.get("duckdb_our_rules", {}).get("wall_median_s")
    lines = [
        f"{result['size']} rows, {result['format']} ({result['repeats']} repeats, medians)\n",
        "| engine | wall s | work s | peak RSS MB | wall / DuckDB | wall / DuckDB, our rules |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for peer, s in sorted(summary.items(), key=lambda item: item[1].get("wall_median_s", 1e9)):
        if "wall_median_s" not in s:
            lines.append(f"| {peer} | failed | | | | |")
            continue
        wall = s["wall_median_s"]
        ratios = [f"{wall / base:.2f}" if base else "-" for base in (duckdb, same)]
        lines.append(f"| {peer} | {wall:.2f} | {s['work_median_s']:.2f} | {s['rss_max_mb']:,} | "
                     f"{ratios[0]} | {ratios[1]} |")  # fmt: skip
    return "\n".join(lines)


def _scaling_rows() -> list[dict]:
    rows = []
    for size in SIZES:
        rfm = RESULTS / f"rfm_{size}_parquet.json"
        if rfm.exists():
            for peer, s in json.loads(rfm.read_text())["summary"].items():
                if "wall_median_s" in s:
                    rows.append({"size": size, "rows": SIZES[size][0], "engine": peer,
                                 "wall_s": s["wall_median_s"], "rss_mb": s["rss_max_mb"]})  # fmt: skip
        e2e = RESULTS / f"e2e_{size}.json"
        if e2e.exists():
            e = json.loads(e2e.read_text())
            rows.append({"size": size, "rows": SIZES[size][0], "engine": "reportgen run (end to end)",
                         "wall_s": e["wall_s"], "rss_mb": e["rss_max_mb"]})  # fmt: skip
    return rows


def _scaling_table() -> str:
    rows = _scaling_rows()
    engines = sorted({r["engine"] for r in rows})
    sizes = [s for s in SIZES if any(r["size"] == s for r in rows)]
    cell = {(r["engine"], r["size"]): f"{r['wall_s']:.1f} s / {r['rss_mb']:,} MB" for r in rows}
    lines = ["How cost grows (Parquet; wall time / peak RSS)\n",
             "| engine | " + " | ".join(sizes) + " |", "|---|" + "---:|" * len(sizes)]  # fmt: skip
    lines += [
        f"| {e} | " + " | ".join(cell.get((e, s), "-") for s in sizes) + " |" for e in engines
    ]
    return "\n".join(lines)


def _scaling_chart(path: Path) -> None:
    import altair as alt
    import vl_convert

    data = alt.Data(values=_scaling_rows())
    base = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X("rows:Q", scale=alt.Scale(type="log"), title="rows"),
            color=alt.Color("engine:N", title=None),
        )
    )
    wall = base.encode(y=alt.Y("wall_s:Q", scale=alt.Scale(type="log"), title="wall time (s)"))
    rss = base.encode(y=alt.Y("rss_mb:Q", scale=alt.Scale(type="log"), title="peak RSS (MB)"))
    chart = alt.hconcat(
        wall.properties(width=300, height=220), rss.properties(width=300, height=220)
    )
    path.write_text(vl_convert.vegalite_to_svg(chart.to_dict(), allowed_base_urls=[]))


if __name__ == "__main__":
    sys.exit(main())
