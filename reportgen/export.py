"""Exports for the people who act on the segments: segments.parquet/.csv and summary.json.

Money leaves as exact decimals (from integer minor units), rows are sorted by customer_id and
summary.json holds no NaN, so two runs on the same data give byte-identical files (but the
`generated_at` field).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, cast

import polars as pl

from .comparison import comparison_summary
from .fairness import fairness_frame, fairness_summary
from .graph import communities_frame, graph_summary
from .history import snapshot_of, write_snapshot
from .model import Report
from .rfm import RfmTable
from .segment import segment_columns, segmentation_summary

log = logging.getLogger(__name__)

SUMMARY_SCHEMA_VERSION = 1
_EXPORT_COLUMNS = [
    "customer_id", "recency_days", "frequency", "monetary", "first_order", "last_order",
    "tenure_days", "avg_order_value", "returned_value", "return_rate",
    "r_score", "f_score", "m_score", "rfm_score", "rfm_grid_segment", "segment", "outlier",
]  # fmt: skip


def write_exports(report: Report, folder: Path) -> list[Path]:
    """Write every export of the report into `folder`; return the paths."""
    segments = segment_columns(report.segmentation, report.rfm)
    table = export_table(report.rfm, segments, report.config.input.attributes)
    parquet, csv, summary = (
        folder / "segments.parquet",
        folder / "segments.csv",
        folder / "summary.json",
    )
    table.write_parquet(parquet, statistics=False)
    _write_csv(table, csv, bom=report.config.output.csv_bom)
    summary.write_text(dumps_json(build_summary(report)) + "\n", encoding="utf-8")
    written = [parquet, csv, summary, *write_snapshot(snapshot_of(report), folder)]
    if report.changes is not None:
        moved = folder / "moved_into_risk.csv"
        _write_csv(_money_columns(report.changes.moved_into_risk, report.rfm.minor_digits), moved,
                   bom=report.config.output.csv_bom)  # fmt: skip
        written.append(moved)
    written += _write_extensions(report, folder)
    return written


def _write_extensions(report: Report, folder: Path) -> list[Path]:
    """fairness.csv and communities.csv, when those sections are on."""
    written = []
    bom = report.config.output.csv_bom
    if report.fairness is not None:
        _write_csv(fairness_frame(report.fairness), folder / "fairness.csv", bom=bom)
        written.append(folder / "fairness.csv")
    if report.graph is not None:
        _write_csv(communities_frame(report.graph), folder / "communities.csv", bom=bom)
        written.append(folder / "communities.csv")
    return written


def _money_columns(frame: pl.DataFrame, digits: int) -> pl.DataFrame:
    """*_minor integer columns as exact decimals under the name without the suffix."""
    money = pl.Decimal(38, digits)
    return frame.with_columns(
        (pl.col(c).cast(money) / 10**digits).cast(money).alias(c.removesuffix("_minor"))
        for c in frame.columns
        if c.endswith("_minor")
    ).drop(c for c in frame.columns if c.endswith("_minor"))


def export_table(rfm: RfmTable, segments: pl.DataFrame, attributes: list[str]) -> pl.DataFrame:
    """The per-customer export: money as exact decimals, sorted by customer_id."""
    frame = rfm.frame.join(segments, on="customer_id", how="left").drop("gross_minor")
    frame = _money_columns(frame, rfm.minor_digits).with_columns(pl.col("return_rate").round(6))
    soft = [c for c in segments.columns if c.startswith("membership_")]  # GMM chosen: per segment
    return frame.select(*_EXPORT_COLUMNS, *attributes, *soft).sort("customer_id")


def _write_csv(table: pl.DataFrame, path: Path, bom: bool) -> None:
    with open(path, "wb") as handle:
        if bom:
            handle.write("\ufeff".encode())
        table.write_csv(handle)


def build_summary(report: Report) -> dict[str, Any]:
    """Every number of the report, machine-readable."""
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "generated_at": report.generated_at.isoformat(),
        "report": _report_part(report),
        "source": {
            "location": report.source.location,
            "format": report.source.format,
            "columns": list(report.source.columns),
            "fingerprint": report.data_fingerprint,
        },
        "period": _period_part(report),
        "audit": _audit_part(report),
        "eda": {"monthly": _monthly_part(report)},
        "rfm": _rfm_part(report.rfm),
        "segmentation": segmentation_summary(report.segmentation),
        "changes": _changes_part(report),
        "fairness": fairness_summary(report.fairness) if report.fairness is not None else None,
        "graph": graph_summary(report.graph) if report.graph is not None else None,
        "comparison": (
            comparison_summary(report.comparison, report.rfm.minor_digits)
            if report.comparison is not None
            else None
        ),
        "versions": report.versions,
    }


def _report_part(report: Report) -> dict[str, Any]:
    cfg = report.config.report
    return {
        "name": cfg.name,
        "slug": cfg.report_slug,
        "company": cfg.company,
        "currency": cfg.currency,
        "locale": cfg.locale,
    }


def _period_part(report: Report) -> dict[str, Any]:
    period = report.period
    return {
        "as_of": period.as_of,
        "as_of_asked": period.asked,
        "window_start": period.window_start,
        "window_days": report.config.period.window_days,
        "timezone": period.timezone,
        "latest_transaction": period.latest_transaction,
        "staleness_days": period.staleness_days,
    }


def _audit_part(report: Report) -> dict[str, Any]:
    audit, digits = report.audit, report.rfm.minor_digits

    def money(minor: int) -> float:
        return _money(minor, digits)

    return {
        "rows_read": audit.rows_read,
        "revenue_read": money(audit.revenue_read_minor),
        "rules": [
            {
                "rule": r.rule,
                "description": r.description,
                "rows": r.rows,
                "revenue": money(r.revenue_minor),
                "examples": r.examples,
            }
            for r in audit.rules
        ],
        "rows_kept": audit.rows_kept,
        "revenue_kept": money(audit.revenue_kept_minor),
        "returns_netted_rows": audit.returns_netted_rows,
        "returns_netted": money(audit.returns_netted_minor),
        "reconciles": audit.reconciles,
        "first_date": audit.first_date,
        "last_date": audit.last_date,
        "missing_values": audit.missing_values,
        "returns_policy": report.config.cleaning.returns,
    }


def _changes_part(report: Report) -> dict[str, Any] | None:
    changes, digits = report.changes, report.rfm.minor_digits
    if changes is None:
        return None
    return {
        "previous_as_of": changes.previous_as_of,
        "k_before": changes.k_before,
        "k_now": changes.k_now,
        "notes": list(changes.notes),
        "headlines": list(changes.headlines),
        "new_customers": changes.new_customers,
        "gone_customers": changes.gone_customers,
        "moved_into_risk": changes.moved_into_risk.height,
        "segments": [
            {
                "segment": c.segment,
                "customers_before": c.customers_before,
                "customers_now": c.customers_now,
                "customers_delta": c.customers_delta,
                "revenue_before": _money(c.revenue_before_minor, digits),
                "revenue_now": _money(c.revenue_now_minor, digits),
                "revenue_delta": _money(c.revenue_delta_minor, digits),
            }
            for c in changes.segments
        ],
        "migration": changes.migration.to_dicts(),
    }


def _monthly_part(report: Report) -> list[dict[str, Any]]:
    digits = report.rfm.minor_digits
    rows = report.eda.monthly.to_dicts()
    for row in rows:
        row["revenue"] = _money(row.pop("revenue_minor"), digits)
    return rows


def _rfm_part(rfm: RfmTable) -> dict[str, Any]:
    frame, scored = rfm.frame, rfm.scored
    scale = 10**rfm.minor_digits
    features = {
        "recency_days": scored["recency_days"],
        "frequency": scored["frequency"],
        "monetary": scored["monetary_minor"] / scale,
    }
    return {
        "customers": frame.height,
        "scored_customers": scored.height,
        "excluded_customers": frame.height - scored.height,
        "orders": int(frame["frequency"].sum()),
        "revenue": _money(int(frame["monetary_minor"].sum()), rfm.minor_digits),
        "monetary_definition": rfm.monetary_definition,
        "repeat_customer_share": _share(scored["frequency"] > 1),
        "distributions": {name: _distribution(values) for name, values in features.items()},
        "score_counts": {s: _score_counts(scored[s]) for s in ("r_score", "f_score", "m_score")},
        "score_ranges": _score_ranges(scored, scale),
        "grid_segments": _grid_sizes(frame, rfm.minor_digits),
    }


def _share(mask: pl.Series) -> float | None:
    return cast(float, mask.mean()) if len(mask) else None


def _distribution(values: pl.Series) -> dict[str, Any]:  # numbers, None for no values
    if values.is_empty():
        return {}
    q = {f"p{p}": values.quantile(p / 100, interpolation="linear") for p in (5, 25, 50, 75, 95)}
    return {"min": values.min(), "mean": values.mean(), **q, "max": values.max()}


def _score_counts(scores: pl.Series) -> dict[str, int]:
    counts = dict(zip(*scores.value_counts().sort(scores.name).to_dict().values(), strict=True))
    return {str(s): counts.get(s, 0) for s in range(1, 6)}


def _score_ranges(scored: pl.DataFrame, scale: int) -> dict[str, list[dict]]:
    """The feature values each score covers: the thresholds users ask to see."""
    out = {}
    for score, feature in (("r_score", "recency_days"), ("f_score", "frequency"),
                           ("m_score", "monetary_minor")):  # fmt: skip
        divisor = scale if feature == "monetary_minor" else 1
        ranges = scored.group_by(score).agg(
            (pl.col(feature).min() / divisor).alias("min"),
            (pl.col(feature).max() / divisor).alias("max"),
            pl.len().alias("customers"),
        )
        out[score] = ranges.sort(score).rename({score: "score"}).to_dicts()
    return out


def _grid_sizes(frame: pl.DataFrame, digits: int) -> list[dict[str, Any]]:
    total = frame.height
    sizes = frame.group_by("rfm_grid_segment").agg(
        pl.len().alias("customers"), pl.col("monetary_minor").sum().alias("revenue_minor")
    )
    revenue_total = int(frame["monetary_minor"].sum()) or 1
    return [
        {
            "segment": row["rfm_grid_segment"],
            "customers": row["customers"],
            "share": row["customers"] / total,
            "revenue": _money(row["revenue_minor"], digits),
            "revenue_share": row["revenue_minor"] / revenue_total,
        }
        for row in sizes.sort(
            ["customers", "rfm_grid_segment"], descending=[True, False]
        ).iter_rows(named=True)
    ]


def _money(minor: int, digits: int) -> float:
    """Minor units as a JSON number; correctly rounded division prints the exact decimals."""
    return minor / 10**digits


def dumps_json(data: Any) -> str:
    """JSON with dates as ISO strings and NaN/inf as null (summary.json must stay valid JSON)."""
    return json.dumps(_clean(data), indent=2, ensure_ascii=False, allow_nan=False)


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
