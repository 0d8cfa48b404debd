"""Periodic runs: snapshots, the comparison with the previous run, stable names, the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from reportgen.cli import cli
from reportgen.compare import GONE, NEW

SLUG = "online-retail-customer-segmentation"


def _config(tmp_path: Path, shipped_config_path: Path, **period: object) -> Path:
    data = yaml.safe_load(shipped_config_path.read_text())
    data["period"] = {**data["period"], **period}
    data["output"] = {"dir": str(tmp_path / "out")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(config: Path, *args: str):
    return CliRunner().invoke(cli, ["run", "--config", str(config), *args])


@pytest.fixture(scope="module")
def two_dates(tmp_path_factory, shipped_config_path) -> Path:
    """The sample data with a 180-day window, run at 2011-06-30 and then at 2011-12-09."""
    tmp = tmp_path_factory.mktemp("history")
    config = _config(tmp, shipped_config_path, window_days=180)
    for as_of in ("2011-06-30", "2011-12-09"):
        result = _run(config, "--as-of", as_of)
        assert result.exit_code == 0, result.stderr
    return tmp / "out" / SLUG


def _summary(report_dir: Path, as_of: str) -> dict:
    return json.loads((report_dir / as_of / "summary.json").read_text())


def test_first_run_says_it_is_the_first(two_dates):
    """The first run has no comparison and no moved_into_risk file."""
    first = _summary(two_dates, "2011-06-30")
    assert first["changes"] is None
    assert not (two_dates / "2011-06-30" / "moved_into_risk.csv").exists()
    assert "first run" in first["segmentation"]["naming"]["continuity"]


def test_migration_matrix_sums_to_both_runs(two_dates):
    """Rows sum to the earlier run's customers (plus new), columns to the later's (plus gone)."""
    before = pl.read_parquet(two_dates / "2011-06-30" / "segments.parquet")
    after = pl.read_parquet(two_dates / "2011-12-09" / "segments.parquet")
    migration = pl.DataFrame(_summary(two_dates, "2011-12-09")["changes"]["migration"])
    rows = dict(migration.group_by("from_segment").agg(pl.col("customers").sum()).iter_rows())
    columns = dict(migration.group_by("to_segment").agg(pl.col("customers").sum()).iter_rows())
    new, gone = rows.pop(NEW), columns.pop(GONE)
    assert new > 0 and gone > 0
    before_sizes = dict(before["segment"].value_counts().iter_rows())
    after_sizes = dict(after["segment"].value_counts().iter_rows())
    assert rows == before_sizes
    assert columns == after_sizes
    assert sum(rows.values()) + new == sum(columns.values()) + gone
    assert new == after.filter(~pl.col("customer_id").is_in(before["customer_id"].implode())).height
    assert (
        gone == before.filter(~pl.col("customer_id").is_in(after["customer_id"].implode())).height
    )


def test_matched_segments_keep_their_names(two_dates):
    """Segments whose centres stayed close keep the earlier names; the report says which."""
    later = _summary(two_dates, "2011-12-09")
    naming = later["segmentation"]["naming"]
    kept = naming["kept_names"]
    earlier_names = set(_summary(two_dates, "2011-06-30")["segmentation"]["naming"]["names"])
    assert kept, naming
    assert set(kept) <= earlier_names
    assert set(kept) <= set(naming["names"])
    assert "2011-06-30" in naming["continuity"]


def test_second_summary_shows_the_changes(two_dates):
    """Headlines, per-segment deltas and the moved-into-risk export of the second run."""
    changes = _summary(two_dates, "2011-12-09")["changes"]
    assert changes["previous_as_of"] == "2011-06-30"
    assert any("new in this period" in line for line in changes["headlines"])
    for segment in changes["segments"]:
        assert segment["customers_delta"] == segment["customers_now"] - segment["customers_before"]
    moved = pl.read_csv(two_dates / "2011-12-09" / "moved_into_risk.csv",
                        schema_overrides={"customer_id": pl.String})  # fmt: skip
    assert moved.height == changes["moved_into_risk"] > 0
    risky = {"About To Sleep", "At Risk", "Can't Lose Them", "Hibernating", "Lost"}
    assert set(moved["to_segment"]) <= risky
    assert not set(moved["from_segment"]) & (risky | {NEW})


def test_history_lists_the_runs(two_dates, tmp_path):
    """`reportgen history` prints one line per run with k and the segment sizes."""
    config = yaml.safe_load((two_dates.parent.parent / "config.yaml").read_text())
    result = CliRunner().invoke(
        cli, ["history", "--config", str(two_dates.parent.parent / "config.yaml")]
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["2011-06-30", "2011-12-09"]
    assert all(" k=" in line for line in lines)
    assert config["output"]["dir"].endswith("out")


def test_rerunning_a_date_gives_identical_exports(two_dates, tmp_path):
    """A re-run of 2011-12-09 compares with the same predecessor: identical files."""
    folder = two_dates / "2011-12-09"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    config = two_dates.parent.parent / "config.yaml"
    result = _run(config, "--as-of", "2011-12-09")
    assert result.exit_code == 0, result.stderr
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert before.keys() == after.keys()
    for name, old in before.items():
        if name == "summary.json":
            a, b = json.loads(old), json.loads(after[name])
            a.pop("generated_at"), b.pop("generated_at")
            assert a == b
        elif name.endswith((".html", ".pdf", ".eml")):  # they print the generated-at time
            continue
        else:
            assert old == after[name], name


def test_keep_previous_holds_k(tmp_path, shipped_config_path):
    """k_policy keep_previous reuses the earlier k even when the rule would pick another."""
    config = yaml.safe_load(shipped_config_path.read_text())
    config["output"] = {"dir": str(tmp_path / "out")}
    config["period"]["window_days"] = 180
    config["segmentation"] = {"k": 3}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert _run(path, "--as-of", "2011-06-30").exit_code == 0
    config["segmentation"] = {"k_policy": "keep_previous"}
    path.write_text(yaml.safe_dump(config))
    assert _run(path, "--as-of", "2011-12-09").exit_code == 0
    later = _summary(tmp_path / "out" / SLUG, "2011-12-09")
    assert later["segmentation"]["k_selection"]["k"] == 3
    assert later["changes"]["k_before"] == later["changes"]["k_now"] == 3


def test_two_runs_at_once_one_fails_with_exit_7(tmp_path, shipped_config_path):
    """Two processes on one report: one writes, the other exits 7; the result is whole."""
    config = _config(tmp_path, shipped_config_path)
    command = [sys.executable, "-m", "reportgen.cli", "run", "--config", str(config)]
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    results = [(p.wait(timeout=300), p.stderr.read().decode()) for p in (first, second)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 7], results
    assert any("another reportgen run" in err for code, err in results if code == 7)
    folder = tmp_path / "out" / SLUG / "2011-12-09"
    assert json.loads((folder / "summary.json").read_text())["rfm"]["customers"] == 4338
    assert pl.read_parquet(folder / "segments.parquet").height == 4338
    assert not [p for p in folder.parent.iterdir() if p.name.startswith((".tmp", ".old"))]


def test_second_report_and_email_show_the_changes(two_dates):
    """The HTML, the PDF and the email of the second run carry the headlines; the first says first."""
    from pypdf import PdfReader

    later = _summary(two_dates, "2011-12-09")["changes"]
    headline = later["headlines"][-2]  # "N customers are new in this period and M are gone."
    html = (two_dates / "2011-12-09" / "report.html").read_text()
    assert headline in html
    pdf_text = " ".join(
        page.extract_text() for page in PdfReader(two_dates / "2011-12-09" / "report.pdf").pages
    )
    assert "new in this period" in " ".join(pdf_text.split())
    assert "Changes since the previous report" in pdf_text
    eml = (two_dates / "2011-12-09" / "email.eml").read_bytes()
    from email import policy
    from email.parser import BytesParser

    message = BytesParser(policy=policy.default).parsebytes(eml)
    assert "new in this period" in message.get_body(("plain",)).get_content()
    first_html = (two_dates / "2011-06-30" / "report.html").read_text()
    assert "This is the first report" in first_html
