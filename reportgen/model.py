"""The one typed model of a report: everything computed, nothing written yet."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .clean import CleaningAudit
from .compare import Changes
from .comparison import Comparison
from .config import Config
from .eda import Eda
from .fairness import FairnessAudit
from .graph import CustomerGraph
from .grid import SegmentMap
from .period import Period
from .read import Source
from .rfm import RfmTable
from .segment import Segmentation


@dataclass(frozen=True)
class Report:
    """Everything one run computed; the writers only format it."""

    config: Config
    source: Source
    period: Period
    audit: CleaningAudit
    eda: Eda
    rfm: RfmTable
    segment_map: SegmentMap
    segmentation: Segmentation
    data_fingerprint: str
    generated_at: dt.datetime
    versions: dict[str, str]
    changes: Changes | None  # None on the first run of a report
    fairness: FairnessAudit | None = None  # config.fairness.enabled
    graph: CustomerGraph | None = None  # config.graph.enabled
    comparison: Comparison | None = None  # segmentation.compare or a representation is on

    @property
    def run_name(self) -> str:
        """The run folder's name: the as-of date."""
        return self.period.as_of.isoformat()
