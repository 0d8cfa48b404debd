"""The package's public names, imported from their modules on first use (reportgen/__init__.py)."""

from __future__ import annotations

import importlib
import subprocess
import sys

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
    code = "import sys, reportgen; print(sorted(m for m in sys.modules if m.startswith('reportgen.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
