"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shipped_config_path() -> Path:
    """The repository's config.yaml (runs on the built-in sample data)."""
    return REPO / "config.yaml"
