"""The package as a whole: its public names, imported from their modules on first use
(reportgen/__init__.py), and the lint rules and type check of pyproject.toml."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import reportgen


def test_every_public_name_resolves_and_is_listed():
    """__all__ (written out for linters) and the lazy table name the same objects."""
    assert sorted(reportgen.__all__) == sorted(reportgen._HOME)
    for name in reportgen.__all__:
        home = importlib.import_module(f"reportgen.{reportgen._HOME[name]}")
        assert getattr(reportgen, name) is getattr(home, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        reportgen.nope  # noqa: B018


def test_importing_the_package_loads_no_stage():
    """`import reportgen` alone imports none of the stages (the CLI's --help pays nothing)."""
    code = (
        "import sys, reportgen; print(sorted(m for m in sys.modules if m.startswith('reportgen.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_the_code_base_passes_the_lint_rules_and_is_formatted(command: list[str]) -> None:
    """`ruff check` with the rules that pyproject.toml selects, and `ruff format` (line length
    100): run both before committing (the version is pinned in the test extra)."""
    root = Path(__file__).resolve().parents[1]
    ruff = [sys.executable, "-m", "ruff", *command, "--no-cache", "reportgen", "tests", "bench"]
    out = subprocess.run(ruff, cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_package_passes_the_type_check():
    """mypy with pyproject.toml's settings (every function typed; the version is pinned there)."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "mypy"], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
