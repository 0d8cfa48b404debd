"""End to end: the CLI on the built-in sample data, and reproducible exports."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from reportgen.cli import cli

SLUG = "online-retail-customer-segmentation"
EXPORTS = (
    "segments.parquet", "segments.csv", "summary.json", "snapshot.json", "snapshot_customers.parquet",
    "report.html", "report.pdf", "email.eml",
)  # fmt: skip


def _run(config: Path, output: Path, *extra: str) -> tuple[int, list[str], str]:
    result = CliRunner().invoke(
        cli, ["run", "--config", str(config), "--output", str(output), *extra]
    )
    return result.exit_code, result.stdout.splitlines(), result.stderr


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, shipped_config_path) -> tuple[Path, Path, list[str]]:
    """The shipped config run twice into two output roots."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    code, stdout, stderr = _run(shipped_config_path, first)
    assert code == 0, stderr
    code2, _, stderr2 = _run(shipped_config_path, second)
    assert code2 == 0, stderr2
    return first / SLUG / "2011-12-09", second / SLUG / "2011-12-09", stdout


def test_stdout_lists_only_the_paths_written(two_runs):
    """stdout carries exactly the exported files, nothing else."""
    folder, _, stdout = two_runs
    assert stdout == [str(folder / name) for name in EXPORTS]
    assert sorted(p.name for p in folder.iterdir()) == sorted(EXPORTS)


def test_exports_are_byte_identical_across_runs(two_runs):
    """Same data and config: identical exports, summary identical but for generated_at."""
    first, second, _ = two_runs
    for name in ("segments.parquet", "segments.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    a, b = (json.loads((d / "summary.json").read_text()) for d in (first, second))
    a.pop("generated_at"), b.pop("generated_at")
    assert a == b
    text_a = (first / "summary.json").read_text().splitlines()
    text_b = (second / "summary.json").read_text().splitlines()
    differing = [x for x, y in zip(text_a, text_b, strict=True) if x != y]
    assert all('"generated_at"' in line for line in differing)


def test_source_date_epoch_pins_generated_at(tmp_path, shipped_config_path, monkeypatch):
    """SOURCE_DATE_EPOCH makes even summary.json byte-identical."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    for name in ("a", "b"):
        assert _run(shipped_config_path, tmp_path / name)[0] == 0
    a, b = (tmp_path / n / SLUG / "2011-12-09" / "summary.json" for n in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    assert json.loads(a.read_text())["generated_at"] == "2023-11-14T22:13:20+00:00"


def test_exports_agree_with_the_summary(two_runs):
    """segments.csv, segments.parquet and summary.json tell the same numbers."""
    folder, _, _ = two_runs
    table = pl.read_parquet(folder / "segments.parquet")
    csv = pl.read_csv(folder / "segments.csv", schema_overrides={"customer_id": pl.String})
    summary = json.loads((folder / "summary.json").read_text())
    assert table["customer_id"].to_list() == sorted(table["customer_id"].to_list())
    assert csv["customer_id"].to_list() == table["customer_id"].to_list()
    assert table.height == summary["rfm"]["customers"] == 4338
    assert str(table["monetary"].sum()) == "8887208.89"
    assert summary["audit"]["revenue_kept"] == 8887208.89
    grid = dict(table["rfm_grid_segment"].value_counts().iter_rows())
    assert {g["segment"]: g["customers"] for g in summary["rfm"]["grid_segments"]} == grid
    assert summary["audit"]["reconciles"] is True


def test_money_is_exported_as_exact_decimals(two_runs):
    """monetary is a Decimal column with two places, never a float."""
    folder, _, _ = two_runs
    schema = pl.read_parquet_schema(folder / "segments.parquet")
    assert schema["monetary"] == pl.Decimal(38, 2)
    first_line = (folder / "segments.csv").read_text().splitlines()[1]
    assert first_line.startswith("12346,325,1,77183.60,")


def test_rerun_replaces_the_run_folder(tmp_path, shipped_config_path):
    """A re-run of the same as_of replaces the folder as a whole and leaves no temporaries."""
    assert _run(shipped_config_path, tmp_path)[0] == 0
    stray = tmp_path / SLUG / "2011-12-09" / "stray.txt"
    stray.write_text("from an older run")
    assert _run(shipped_config_path, tmp_path)[0] == 0
    assert not stray.exists()
    leftovers = [p.name for p in (tmp_path / SLUG).iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []
