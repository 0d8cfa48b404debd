"""reportgen: customer segmentation reports (RFM, clustering, HTML/PDF/email) from transactions.

The pipeline's stages are usable alone, e.g. in a notebook::

    import reportgen
    config = reportgen.load_config("config.yaml")
    report = reportgen.compute_report(config)          # nothing written
    report.rfm.frame                                   # one row per customer
    result = reportgen.run(config)                     # writes the run folder (result.paths)
"""

from __future__ import annotations

from .clean import CleaningAudit, annotate
from .config import Config, config_from_dict, load_config
from .errors import (
    ConfigError,
    InputDataError,
    LockedError,
    OutputError,
    ReportgenError,
)
from .grid import SegmentMap, load_segment_map
from .model import Report
from .period import Period, request_period
from .pipeline import RfmStage, RunResult, compute_report, compute_rfm_stage, run
from .read import Transactions, read_transactions
from .rfm import RfmTable

__all__ = [
    "CleaningAudit",
    "Config",
    "ConfigError",
    "InputDataError",
    "LockedError",
    "OutputError",
    "Period",
    "Report",
    "ReportgenError",
    "RfmStage",
    "RfmTable",
    "RunResult",
    "SegmentMap",
    "Transactions",
    "annotate",
    "compute_report",
    "compute_rfm_stage",
    "config_from_dict",
    "load_config",
    "load_segment_map",
    "read_transactions",
    "request_period",
    "run",
]
