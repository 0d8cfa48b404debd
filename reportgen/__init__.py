"""reportgen: customer segmentation reports (RFM, clustering, HTML/PDF/email) from transactions.

The pipeline's stages are usable alone, e.g. in a notebook::

    import reportgen
    config = reportgen.load_config("config.yaml")
    report = reportgen.compute_report(config)          # nothing written
    report.rfm.frame                                   # one row per customer
    result = reportgen.run(config)                     # writes the run folder (result.paths)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each name is imported from its module when first used (PEP 562): importing every stage up
# front cost ~0.5 s, which `reportgen --help`, a config check or the RFM stage alone need not pay.
_HOME = {
    "CleaningAudit": "clean",
    "annotate": "clean",
    "Config": "config",
    "config_from_dict": "config",
    "load_config": "config",
    "ConfigError": "errors",
    "InputDataError": "errors",
    "LockedError": "errors",
    "OutputError": "errors",
    "ReportgenError": "errors",
    "SegmentMap": "grid",
    "load_segment_map": "grid",
    "Report": "model",
    "Period": "period",
    "request_period": "period",
    "RunResult": "pipeline",
    "compute_report": "pipeline",
    "run": "pipeline",
    "Transactions": "read",
    "read_transactions": "read",
    "RfmTable": "rfm",
    "RfmStage": "rfm_stage",
    "compute_rfm_stage": "rfm_stage",
}

__all__ = [  # the names of _HOME, written out so that linters and editors can read them
    "CleaningAudit", "Config", "ConfigError", "InputDataError", "LockedError", "OutputError",
    "Period", "Report", "ReportgenError", "RfmStage", "RfmTable", "RunResult", "SegmentMap",
    "Transactions", "annotate", "compute_report", "compute_rfm_stage", "config_from_dict",
    "load_config", "load_segment_map", "read_transactions", "request_period", "run",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'reportgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from .clean import CleaningAudit, annotate
    from .config import Config, config_from_dict, load_config
    from .errors import ConfigError, InputDataError, LockedError, OutputError, ReportgenError
    from .grid import SegmentMap, load_segment_map
    from .model import Report
    from .period import Period, request_period
    from .pipeline import RunResult, compute_report, run
    from .read import Transactions, read_transactions
    from .rfm import RfmTable
    from .rfm_stage import RfmStage, compute_rfm_stage
