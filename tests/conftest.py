"""Shared fixtures."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shipped_config_path() -> Path:
    """The repository's config.yaml (runs on the built-in sample data)."""
    return REPO / "config.yaml"


@pytest.fixture(autouse=True)
def _restore_reportgen_logger():
    """The CLI reconfigures the `reportgen` logger (handler, no propagation); undo it per test."""
    logger = logging.getLogger("reportgen")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
