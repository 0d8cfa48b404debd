"""Run history: the versioned snapshot each run stores, and finding the previous one.

A snapshot lives in its run folder: `snapshot.json` (as-of date, k, names, centroids in original
units with the transform that produced them, config hash, data fingerprint, versions) and
`snapshot_customers.parquet` (customer -> segment and RFM values). The next run compares with
the latest snapshot whose as-of date is earlier than its own, so re-running a date compares
with the same predecessor and gives the same outputs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1
SNAPSHOT_FILE = "snapshot.json"
CUSTOMERS_FILE = "snapshot_customers.parquet"
_CUSTOMER_COLUMNS = ["customer_id", "segment", "recency_days", "frequency", "monetary_minor"]


@dataclass(frozen=True)
class Snapshot:
    """What a later run needs to know about an earlier one."""

    as_of: dt.date
    k: int
    names: tuple[str, ...]  # by label
    centroids: tuple[tuple[float, ...], ...]  # by label, original units of `features`
    features: tuple[str, ...]
    sizes: dict[str, int]  # segment -> customers (clustered segments and Excluded groups)
    revenue_minor: dict[str, int]  # segment -> revenue
    config_hash: str
    data_fingerprint: str
    versions: dict[str, str]
    customers: pl.DataFrame  # customer_id, segment, recency_days, frequency, monetary_minor


def snapshot_of(report: Any) -> Snapshot:
    """The snapshot of a computed Report."""
    seg = report.segmentation
    customers = report.rfm.frame.join(
        seg.assignments.select("customer_id", "segment"), on="customer_id", how="left"
    ).with_columns(pl.col("segment").fill_null(pl.col("rfm_grid_segment")))
    sizes = customers.group_by("segment").agg(
        pl.len().alias("customers"), pl.col("revenue_minor").sum().alias("revenue")
    )
    return Snapshot(
        as_of=report.period.as_of,
        k=seg.k,
        names=tuple(seg.names),
        centroids=tuple(tuple(map(float, p.centroid)) for p in seg.profiles),
        features=tuple(seg.transform.features),
        sizes={r["segment"]: r["customers"] for r in sizes.iter_rows(named=True)},
        revenue_minor={r["segment"]: r["revenue"] for r in sizes.iter_rows(named=True)},
        config_hash=config_hash(report.config),
        data_fingerprint=report.data_fingerprint,
        versions=dict(report.versions),
        customers=customers.select(_CUSTOMER_COLUMNS).sort("customer_id"),
    )


def config_hash(config: Any) -> str:
    """A hash of the settings that shape the numbers (not where files go)."""
    settings = config.model_dump(mode="json", exclude={"output", "report"})
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def write_snapshot(snapshot: Snapshot, folder: Path) -> list[Path]:
    """Write the snapshot files into a run folder."""
    meta = {
        "snapshot_version": SNAPSHOT_VERSION,
        "as_of": snapshot.as_of.isoformat(),
        "k": snapshot.k,
        "names": list(snapshot.names),
        "centroids": [list(c) for c in snapshot.centroids],
        "features": list(snapshot.features),
        "sizes": snapshot.sizes,
        "revenue_minor": snapshot.revenue_minor,
        "config_hash": snapshot.config_hash,
        "data_fingerprint": snapshot.data_fingerprint,
        "versions": snapshot.versions,
    }
    meta_path, customers_path = folder / SNAPSHOT_FILE, folder / CUSTOMERS_FILE
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    snapshot.customers.write_parquet(customers_path, statistics=False)
    return [meta_path, customers_path]


def read_snapshot(folder: Path) -> Snapshot:
    """Read a run folder's snapshot; ValueError when it is missing, damaged or too new."""
    try:
        meta = json.loads((folder / SNAPSHOT_FILE).read_text(encoding="utf-8"))
        if meta.get("snapshot_version") != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {meta.get('snapshot_version')} is not supported")
        customers = pl.read_parquet(folder / CUSTOMERS_FILE)
        return Snapshot(
            as_of=dt.date.fromisoformat(meta["as_of"]),
            k=meta["k"],
            names=tuple(meta["names"]),
            centroids=tuple(tuple(c) for c in meta["centroids"]),
            features=tuple(meta["features"]),
            sizes=meta["sizes"],
            revenue_minor=meta["revenue_minor"],
            config_hash=meta["config_hash"],
            data_fingerprint=meta["data_fingerprint"],
            versions=meta["versions"],
            customers=customers,
        )
    except (OSError, KeyError, TypeError, ValueError, pl.exceptions.PolarsError) as exc:
        raise ValueError(f"{folder}: unreadable snapshot ({exc})") from None


def run_folders(report_dir: Path) -> list[Path]:
    """The run folders of a report that hold a snapshot, oldest first."""
    if not report_dir.is_dir():
        return []
    folders = [p.parent for p in report_dir.glob(f"*/{SNAPSHOT_FILE}") if _is_date(p.parent.name)]
    return sorted(folders, key=lambda p: p.name)


def previous_snapshot(report_dir: Path, as_of: dt.date) -> Snapshot | None:
    """The latest readable snapshot strictly before `as_of`, or None for a first run."""
    for folder in reversed(run_folders(report_dir)):
        if dt.date.fromisoformat(folder.name) >= as_of:
            continue
        try:
            return read_snapshot(folder)
        except ValueError as exc:
            log.warning("skipping %s", exc)
    return None


def _is_date(name: str) -> bool:
    try:
        dt.date.fromisoformat(name)
    except ValueError:
        return False
    return True
