"""Charts: bounded data per chart at any size, valid Vega-Lite, one colour per segment name."""

from __future__ import annotations

import datetime as dt
import json
import re

import numpy as np
import polars as pl
import pytest

import reportgen
from reportgen import charts as ch
from reportgen.context import build_context
from reportgen.sample import SampleSpec, generate_transactions

COLUMNS = {"customer_id": "CustomerID", "order_id": "InvoiceNo", "order_date": "InvoiceDate",
           "amount": None, "quantity": "Quantity", "unit_price": "UnitPrice"}  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A small synthetic report (1,500 customers), segmented."""
    tmp = tmp_path_factory.mktemp("charts")
    spec = SampleSpec(rows=30_000, customers=1_500, seed=11, start=dt.date(2023, 1, 1),
                      end=dt.date(2024, 6, 30))  # fmt: skip
    generate_transactions(spec).write_parquet(tmp / "tx.parquet")
    config = reportgen.config_from_dict(
        {"input": {"path": "tx.parquet", "columns": COLUMNS},
         "segmentation": {"stability_seeds": 2}}, tmp)  # fmt: skip
    return reportgen.compute_report(config)


def _data_rows(spec: dict) -> int:
    """Rows of inline data in a spec (top-level datasets and every `values` list)."""
    total = sum(len(v) for v in spec.get("datasets", {}).values())

    def walk(node):
        nonlocal total
        if isinstance(node, dict):
            if isinstance(node.get("values"), list):
                total += len(node["values"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk({k: v for k, v in spec.items() if k != "datasets"})
    return total


def test_segment_colors_are_fixed_for_grid_names_and_stable_for_others():
    """The 11 grid names keep their colour; any other name gets the same colour every time."""
    colors = ch.segment_colors(["Lost", "Champions", "VIP <b>"])
    assert colors["Champions"] == "#1a7f4b"
    assert colors["Lost"] == "#98a0a8"
    assert colors["VIP <b>"] == ch.segment_colors(["VIP <b>"])["VIP <b>"]
    assert re.fullmatch(r"#[0-9a-f]{6}", colors["VIP <b>"])


def test_unclustered_customers_get_a_neutral_colour():
    """Density clustering's noise group is grey, not whatever hue its name hashed to (red)."""
    color = ch.segment_colors(["Unclustered"])["Unclustered"]
    red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    assert max(red, green, blue) - min(red, green, blue) <= 0x20


def test_histogram_rows_count_every_value_once_and_cap_the_top_percent():
    """Bins cover every value (the top 1% in the last bin) and their counts add up."""
    values = np.array([0.0] * 50 + list(range(1, 100)) + [10_000.0])
    rows = ch.histogram_rows(values, "linear", bins=10)
    assert sum(r["customers"] for r in rows) == len(values)
    assert rows[-1]["customers"] >= 1  # the 10,000 outlier sits in the last bin
    assert len(rows) <= 12
    assert all(r["start"] < r["end"] for r in rows)


def test_histogram_rows_integer_and_log_bins():
    """Counts use integer bins; money uses log-spaced bins over positive values."""
    counts = ch.histogram_rows(np.array([1.0, 1, 1, 2, 2, 3]), "count")
    assert [(r["start"], r["customers"]) for r in counts[:3]] == [(1.0, 3), (2.0, 2), (3.0, 1)]
    money = ch.histogram_rows(np.geomspace(1, 10_000, 500), "log", bins=20)
    widths = [r["end"] / r["start"] for r in money]
    assert max(widths) == pytest.approx(min(widths))
    assert sum(r["customers"] for r in money) == 500


def test_sample_customers_is_bounded_seeded_and_keeps_small_segments():
    """At most MAX_POINTS rows, the same draw for the same seed, every segment represented."""
    n = 100_000
    frame = pl.DataFrame({"customer_id": [str(i) for i in range(n)],
                          "segment": ["Big"] * (n - 30) + ["Tiny"] * 30})  # fmt: skip
    first = ch.sample_customers(frame, seed=1)
    assert first.height == ch.MAX_POINTS
    assert first.equals(ch.sample_customers(frame, seed=1))
    assert not first.equals(ch.sample_customers(frame, seed=2))
    tiny = first.filter(pl.col("segment") == "Tiny").height
    assert tiny == ch.MIN_POINTS_PER_SEGMENT  # 25, not the 0.3 its share would give


def test_sample_customers_keeps_everyone_below_the_limit():
    """Small tables are drawn whole."""
    frame = pl.DataFrame({"customer_id": ["a", "b"], "segment": ["X", "Y"]})
    assert ch.sample_customers(frame, seed=0).equals(frame)


def test_principal_axes_of_points_on_a_line():
    """Points along (1, 1) have that direction as first axis, holding all the variance."""
    t = np.linspace(-1, 1, 50)
    axes, explained = ch.principal_axes(np.column_stack([t, t]))
    assert np.allclose(np.abs(axes[0]), [2**-0.5, 2**-0.5])
    assert explained[0] == pytest.approx(1.0)


def test_every_chart_is_valid_vega_lite_with_inline_bounded_data(report):
    """All charts validate against the Vega-Lite schema, load no URL and stay small."""
    ctx = build_context(report)
    assert len(ctx.charts) == 15
    for chart in ctx.charts:
        text = json.dumps(chart.spec)
        assert '"url"' not in text, chart.id
        assert _data_rows(chart.spec) <= 2 * ch.MAX_POINTS, chart.id
    seg = report.segmentation
    for build in (lambda: ch.scatter_chart(report.rfm, seg, 1), lambda: ch.elbow_chart(seg),
                  lambda: ch.silhouette_samples_chart(seg),
                  lambda: ch.monthly_chart(report.eda, 2, "#123456"),
                  lambda: ch.new_returning_chart(report.eda)):  # fmt: skip
        ch.to_spec(build(), validate=True)  # raises on a schema error


def test_only_months_the_period_covers_in_part_are_marked(report):
    """The monthly chart's rows flag the months not wholly in the period (drawn lighter); this
    period runs over whole months, so none is flagged and the caption says nothing of it
    (test_mail has a period ending on 9 December)."""
    ctx = build_context(report)
    months = ctx.exploration.months
    start, end = report.audit.first_date, report.period.as_of

    def last_day(month: dt.date) -> dt.date:
        return (month + dt.timedelta(days=31)).replace(day=1) - dt.timedelta(days=1)

    assert [m.partial for m in months] == [
        m.month < start or end < last_day(m.month) for m in months
    ]
    values = ctx.exploration.monthly_chart.spec["data"]["values"]
    assert [r["partial"] for r in values] == [m.partial for m in months]
    assert (start, end) == (dt.date(2023, 1, 1), dt.date(2024, 6, 30))
    assert not any(m.partial for m in months)
    assert "lighter" not in ctx.exploration.monthly_chart.caption


def test_scatter_draws_a_bounded_sample_of_real_customers(report):
    """1,500 customers give a 1,000-point sample of real ids, every segment in it."""
    seg = report.segmentation
    assert seg.customers == 1_500 > ch.MAX_POINTS
    spec = ch.to_spec(ch.scatter_chart(report.rfm, seg, 1))
    rows = spec["data"]["values"]
    assert len(rows) == ch.MAX_POINTS
    assert {r["customer_id"] for r in rows} <= set(seg.assignments["customer_id"])
    assert {r["segment"] for r in rows} == set(seg.names)


def test_boxplots_come_from_quantiles_not_customers(report):
    """One row of quantiles per segment and feature, in segment order, ordered p5 <= ... <= p95."""
    seg = report.segmentation
    spec = ch.to_spec(ch.boxplot_chart(report.rfm, seg))
    assert _data_rows(spec) == 3 * seg.k
    frame = ch.segment_feature_frame(report.rfm, seg)
    rows = ch._quantile_rows(frame, "frequency", seg.names)
    assert [r["segment"] for r in rows] == list(seg.names)
    for r in rows:
        assert r["p5"] <= r["q1"] <= r["median"] <= r["q3"] <= r["p95"]
    assert sum(r["customers"] for r in rows) == seg.customers


def test_elbow_marks_the_knee_and_the_chosen_k(report):
    """The elbow chart carries one point per k, the chosen one flagged, and the knee rule."""
    seg = report.segmentation
    spec = ch.to_spec(ch.elbow_chart(seg))
    layers = spec["layer"]
    points = layers[0]["data"]["values"] if "data" in layers[0] else spec["data"]["values"]
    assert [p["k"] for p in points] == [e.k for e in seg.evidence]
    assert [p["k"] for p in points if p["status"] == "chosen"] == [seg.k]
    knee = seg.choice.best.get("knee")
    if knee is not None:
        labels = [lay["data"]["values"][0]["label"] for lay in layers[2:]]
        assert labels[0] == f"knee: k={knee}"


def test_pinned_font_is_set_per_output():
    """with_font sets config.font and leaves the rest of the spec alone."""
    spec = {"mark": "bar", "config": {"axis": {"labelFontSize": 11}}}
    pdf = ch.with_font(spec, ch.PDF_FONT)
    assert pdf["config"] == {"axis": {"labelFontSize": 11}, "font": "Liberation Sans"}
    assert "font" not in spec["config"]
