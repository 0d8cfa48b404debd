"""Representations beyond RFM: extended features (exact values), the lazy per-customer queries,
the autoencoder, clustering in another space, and the comparison section on the sample data."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shutil
from html import unescape

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sklearn.metrics import adjusted_rand_score

import reportgen
from reportgen import ConfigError, config_from_dict
from reportgen.comparison import PROJECTION_POINTS, compare_segmentations, comparison_summary
from reportgen.config import EmbeddingOptions, RfmSection
from reportgen.context import build_context
from reportgen.export import build_summary, dumps_json, write_exports
from reportgen.grid import load_segment_map
from reportgen.pipeline import compute_report
from reportgen.purchase_lines import BASKET, SHARE_PREFIX
from reportgen.render import render_html
from reportgen.representation import (
    Space,
    build_representation,
    extended_features,
    spend_shares,
    standardized_space,
    train_embedding,
)
from reportgen.rfm import RfmTable, finish_rfm
from reportgen.rfm_stage import compute_rfm_stage
from reportgen.sample import SampleSpec, write_sample
from reportgen.segment import segment_customers

AS_OF = dt.date(2024, 12, 31)

# A tiny transaction log: customer, invoice, day, quantity, price, product, country.
LINES = [
    ("1", "A1", "2024-06-01", 1, "10.00", "P1", "UK"),
    ("1", "A1", "2024-06-01", 2, "5.00", "P2", "UK"),
    ("1", "A1", "2024-06-01", 1, "1.00", "P2", "UK"),  # the same product again: still 2 products
    ("1", "A2", "2024-12-01", 1, "30.00", "P3", "France"),
    ("2", "B1", "2024-12-31", 4, "25.00", "P1", "France"),
    ("3", "D1", "2024-03-01", 1, "8.00", "P4", "Spain"),
    ("3", "D1", "2024-03-01", 1, "2.00", "P5", "Spain"),
    ("3", "D2", "2024-09-01", 1, "10.00", "P4", "Spain"),
    ("3", "D9", "2024-10-01", -1, "8.00", "P4", "Spain"),  # not positive: dropped
]


def _tiny_config(tmp_path, **representation) -> reportgen.Config:
    path = tmp_path / "tx.csv"
    rows = ["customer,invoice,day,qty,price,product,country"]
    rows += [",".join(str(v) for v in line) for line in LINES]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return config_from_dict(
        {
            "input": {
                "path": str(path),
                "date_formats": ["%Y-%m-%d"],
                "columns": {
                    "customer_id": "customer",
                    "order_id": "invoice",
                    "order_date": "day",
                    "amount": None,
                    "quantity": "qty",
                    "unit_price": "price",
                    "product_id": "product",
                },
                "attributes": ["country"],
            },
            "representation": {"features": "extended", "share_top": 2, **representation},
        }
    )


# ---------------------------------------------------------------------------------------------
# The lazy queries and the extended features (exact values)


def test_queries_collect_basket_sizes_and_spend_shares(tmp_path):
    """Distinct products per order and spend per country, from the pipeline's single collect."""
    facts = compute_rfm_stage(_tiny_config(tmp_path), as_of="2024-12-31")
    basket = facts.extras[BASKET].sort("customer_id")
    assert basket.rows() == [("1", 1.5), ("2", 1.0), ("3", 1.5)]  # orders of 2+1, 1, 2+1 products
    spend = facts.extras[SHARE_PREFIX + "country"].sort("customer_id", "value")
    assert spend.rows() == [
        ("1", "France", 3000),
        ("1", "UK", 2100),
        ("2", "France", 10000),
        ("3", "Spain", 2000),
    ]


def test_extended_features_from_the_tiny_log(tmp_path):
    """Every extended feature of the three customers, by hand."""
    config = _tiny_config(tmp_path)
    facts = compute_rfm_stage(config, as_of="2024-12-31")
    frame = extended_features(facts.rfm, facts.extras, config).sort("customer_id")
    expected = pl.DataFrame(
        {
            "customer_id": ["1", "2", "3"],
            "recency_days": [30.0, 0.0, 121.0],
            "frequency": [2.0, 1.0, 2.0],
            "monetary": [51.0, 100.0, 20.0],
            "tenure_days": [213.0, 0.0, 305.0],
            "avg_order_value": [25.5, 100.0, 10.0],
            "days_between_orders": [213.0, 0.0, 305.0],  # tenure / (orders - 1); one order: tenure
            "return_rate": [0.0, 0.0, 0.0],
            "basket_size": [1.5, 1.0, 1.5],
            # the two countries with the most spend (France 130, UK 21) and the rest (Spain 20)
            "share_country=France": [30 / 51, 1.0, 0.0],
            "share_country=UK": [21 / 51, 0.0, 0.0],
            "share_country=other": [0.0, 0.0, 1.0],
        }
    )
    assert_frame_equal(frame, expected, check_exact=False, rel_tol=1e-12)


def test_spend_shares_keep_the_top_values_and_pool_the_rest():
    long = pl.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b", "c"],
            "value": ["X", "Y", None, "Y", "Z"],
            "spend_minor": [600, 300, 100, 50, 10],
        }
    )
    shares = spend_shares(long, pl.Series(["a", "b"]), "g", top=1).sort("customer_id")
    assert shares.rows() == [("a", 0.6, 0.4), ("b", 0.0, 1.0)]  # c is not a customer asked for
    assert shares.columns == ["customer_id", "share_g=X", "share_g=other"]


def test_standardized_space_logs_skewed_features_and_drops_constant_ones():
    features = pl.DataFrame(
        {
            "customer_id": ["a", "b", "c"],
            "frequency": [0.0, math.e - 1, 0.0],
            "return_rate": [0.5, 0.5, 0.5],
            "share_x=y": [0.0, 0.5, 1.0],
        }
    )
    space, dropped = standardized_space(features)
    assert dropped == ("return_rate",) and space.columns == ("frequency", "share_x=y")
    np.testing.assert_allclose(space.coords.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(space.coords.std(axis=0), 1.0)
    # log1p(e - 1) = 1 against 0, 0: z-scores of (0, 1, 0)
    np.testing.assert_allclose(
        space.coords[:, 0], [-1 / math.sqrt(2), math.sqrt(2), -1 / math.sqrt(2)]
    )


# ---------------------------------------------------------------------------------------------
# The autoencoder and clustering in another space


TYPES = {  # (share, median recency days, median orders, median spend in pounds)
    "champions": (0.25, 3, 20, 8000.0),
    "loyal": (0.25, 30, 6, 1500.0),
    "new": (0.25, 8, 1, 80.0),
    "lapsed": (0.25, 250, 2, 300.0),
}


def _planted(n: int, seed: int) -> tuple[RfmTable, np.ndarray]:
    """Planted customer types (log-normal, sd 0.12) through the real scoring and grid."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(len(TYPES), size=n, p=[t[0] for t in TYPES.values()])
    med = np.array([t[1:] for t in TYPES.values()])[kind]
    z = rng.normal(0, 0.12, size=(n, 4))
    recency = np.round(np.exp(np.log(med[:, 0] + 1) + z[:, 0]) - 1).clip(0, 365)
    orders = np.maximum(1, np.round(np.exp(np.log(med[:, 1]) + z[:, 1])))
    spend = np.round(np.exp(np.log(med[:, 2] * 100) + z[:, 2]))
    tenure = recency + np.round(np.exp(np.log(200) + z[:, 3]))
    aggregates = pl.DataFrame(
        {
            "customer_id": [f"c{i:05d}" for i in range(n)],
            "frequency": orders.astype(int),
            "monetary_minor": spend.astype(int),
            "gross_minor": spend.astype(int),
            "returned_value_minor": [0] * n,
            "last_order": [AS_OF - dt.timedelta(days=int(r)) for r in recency],
            "first_order": [AS_OF - dt.timedelta(days=int(t)) for t in tenure],
            "_in_period": [True] * n,
            "_as_of": [AS_OF] * n,
        }
    )
    return finish_rfm(aggregates, RfmSection(), load_segment_map("builtin"), 2, None), kind


@pytest.fixture(scope="module")
def planted():
    return _planted(1000, seed=3)


def _config(**representation) -> reportgen.Config:
    return config_from_dict({"input": {"path": "x.csv"}, "representation": representation})


def test_embedding_is_seeded_and_reproduces_its_input(planted):
    """Same seed, same coordinates; the bottleneck keeps most of the 7 features (R^2 > 0.7)."""
    rfm, _ = planted
    space, _ = standardized_space(extended_features(rfm, {}, _config(features="extended")))
    a, b = (
        train_embedding(space, EmbeddingOptions(enabled=True, dimensions=2), 42) for _ in range(2)
    )
    assert np.array_equal(a.space.coords, b.space.coords) and a.space.coords.shape == (1000, 2)
    assert a.space.columns == ("embedding_1", "embedding_2") and a.inputs == space.columns
    assert a.reconstruction_r2 > 0.7 and a.trained_on == 1000


def test_embedding_must_compress(planted):
    """A bottleneck as wide as the input is refused, naming the key and the features."""
    space = Space("rfm", ("a", "b"), np.zeros((10, 2)), "two features")
    with pytest.raises(
        ConfigError,
        match=r"representation.embedding.dimensions is 3, but the "
        r"embedding compresses only 2 features \(a, b\): set it below 2",
    ):
        train_embedding(space, EmbeddingOptions(enabled=True, dimensions=3), 42)


@pytest.mark.parametrize("cluster_on", ["extended", "embedding"])
def test_segments_clustered_in_another_space_recover_the_types(planted, cluster_on):
    """cluster_on moves the clustering; segments are still named and described in RFM."""
    rfm, kind = planted
    config = _config(
        features="extended",
        cluster_on=cluster_on,
        embedding={"enabled": cluster_on == "embedding", "dimensions": 2},
    )
    rep = build_representation(rfm, {}, config)
    seg = segment_customers(rfm, config.segmentation, {}, 42, space=rep.clustered)
    assert rep.clustered.name == cluster_on and seg.algorithm == "kmeans"
    assert rep.clustered.description in seg.algorithm_note
    assert adjusted_rand_score(kind, seg.assignments["label"].to_numpy()) >= 0.9
    assert set(seg.profiles[0].features) >= {"recency_days", "frequency", "monetary"}


def test_nothing_is_built_when_off(planted):
    rfm, _ = planted
    assert build_representation(rfm, {}, _config()) is None


def test_space_comparison_on_planted_types(planted):
    """K-Means in RFM and in the extended features agree on clear types; both silhouettes shown."""
    rfm, _ = planted
    config = _config(features="extended")
    rep = build_representation(rfm, {}, config)
    seg = segment_customers(rfm, config.segmentation, {}, 42)
    comp = compare_segmentations(rfm, seg, config, rep)
    assert comp.methods == () and comp.representation.space == "extended"
    spaces = comp.representation
    assert spaces.k == seg.k == 4 and spaces.ari >= 0.9
    assert set(spaces.silhouette) == {"rfm", "extended"}
    assert sum(sum(row) for row in spaces.crosstab) == 1000
    assert [p.customers for p in spaces.rfm_profiles] == [p.customers for p in seg.profiles]
    again = compare_segmentations(rfm, seg, config, rep)
    assert json.dumps(comparison_summary(comp, 2)) == json.dumps(comparison_summary(again, 2))


# ---------------------------------------------------------------------------------------------
# Whole runs on a synthetic log (reportgen.sample): defaults, and the exports of other algorithms


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """20,000 synthetic lines of 800 customers, and a config reading them."""
    folder = tmp_path_factory.mktemp("synthetic")
    write_sample(SampleSpec(rows=20_000, customers=800, seed=5), folder / "tx.csv")
    return {
        "input": {
            "path": str(folder / "tx.csv"),
            "date_formats": ["%Y-%m-%d %H:%M:%S"],
            "columns": {
                "customer_id": "CustomerID",
                "order_id": "InvoiceNo",
                "order_date": "InvoiceDate",
                "amount": None,
                "quantity": "Quantity",
                "unit_price": "UnitPrice",
                "product_id": "StockCode",
            },
            "attributes": ["Country"],
        },
        "output": {"dir": str(folder / "output")},
    }


def test_default_run_has_no_comparison(synthetic):
    """Everything off by default: no comparison in the Report or in summary.json."""
    report = compute_report(config_from_dict(synthetic))
    assert report.comparison is None and report.segmentation.algorithm == "kmeans"
    assert build_summary(report)["comparison"] is None


def test_hdbscan_exports_the_unclustered_group(synthetic, tmp_path):
    """segments.csv and .parquet carry Unclustered; summary.json reports it as a segment."""
    config = config_from_dict({**synthetic, "segmentation": {"algorithm": "hdbscan"}})
    write_exports(compute_report(config), tmp_path)
    csv = pl.read_csv(tmp_path / "segments.csv", schema_overrides={"customer_id": pl.String})
    parquet = pl.read_parquet(tmp_path / "segments.parquet")
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    noise = {s["segment"]: s["customers"] for s in summary["segmentation"]["segments"]}[
        "Unclustered"
    ]
    assert noise > 0
    assert csv.filter(pl.col("segment") == "Unclustered").height == noise
    assert parquet.filter(pl.col("segment") == "Unclustered").height == noise
    assert summary["segmentation"]["method"]["algorithm_name"] == "hdbscan"


@pytest.fixture(scope="module")
def gmm_report(synthetic):
    return compute_report(config_from_dict({**synthetic, "segmentation": {"algorithm": "gmm"}}))


def test_report_names_the_algorithm_that_made_the_segments(gmm_report, synthetic):
    """The segments section, the method and the definitions name the Gaussian mixture (they
    said K-Means whatever clustered), and how k was chosen once; a K-Means report names K-Means
    and its features."""
    text = _visible_text(render_html(build_context(gmm_report)))
    assert "found by Gaussian mixture clustering" in text
    assert f"Segments: {gmm_report.segmentation.algorithm_note}" in text
    assert "Gaussian mixture clusters of the transformed features" in text
    assert "The evidence on k below comes from K-Means" in text
    assert text.count("has the lowest BIC of the Gaussian mixtures") == 1  # said once, at k
    assert "found by K-Means" not in text and "K-Means clusters" not in text
    kmeans = _visible_text(render_html(build_context(compute_report(config_from_dict(synthetic)))))
    assert "found by K-Means on their days since last order, orders and spend;" in kmeans
    assert "K-Means clusters of the transformed features" in kmeans
    assert "Segments:" not in kmeans and "Gaussian" not in kmeans


def _visible_text(html: str) -> str:
    """The page's words with tags and line breaks gone (scripts and styles dropped)."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.DOTALL)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def test_gmm_exports_soft_membership(gmm_report, tmp_path):
    """segments.csv and .parquet gain one membership column per segment; rows sum to 1."""
    report = gmm_report
    write_exports(report, tmp_path)
    for table in (
        pl.read_csv(tmp_path / "segments.csv"),
        pl.read_parquet(tmp_path / "segments.parquet"),
    ):
        soft = [c for c in table.columns if c.startswith("membership_")]
        assert len(soft) == report.segmentation.k >= 2
        scored = table.filter(~pl.col("segment").str.starts_with("Excluded"))
        assert scored.select(pl.sum_horizontal(soft)).to_series().is_between(0.99999, 1.00001).all()


# ---------------------------------------------------------------------------------------------
# The sample data, with every method compared and the embedding on


COMPARED = ["kmeans", "gmm", "hdbscan", "agglomerative", "spectral"]


@pytest.fixture(scope="module")
def sample_report(shipped_config_path):
    config = reportgen.load_config(shipped_config_path)
    config = config.model_copy(
        update={
            "segmentation": config.segmentation.model_copy(
                update={"compare": COMPARED, "stability_seeds": 2}
            ),
            "representation": _config(
                features="extended", embedding={"enabled": True}
            ).representation,
        }
    )
    return compute_report(config)


def test_sample_comparison_numbers_are_in_the_summary(sample_report):
    """summary.json holds every method's k, scores, stability, agreement and sizes."""
    summary = json.loads(dumps_json(build_summary(sample_report)))
    part = summary["comparison"]
    assert [m["method"] for m in part["methods"]] == COMPARED
    customers = sample_report.segmentation.customers
    for m in part["methods"]:
        scores = m["shared_space"]
        assert m["k"] >= 2 and -1 <= scores["silhouette"] <= 1, m["method"]
        assert scores["davies_bouldin"] > 0 and scores["calinski_harabasz"] > 0
        assert len(m["stability"]["ari"]) == 2 and -1 <= m["ari_vs_kmeans"] <= 1
        assert sum(s["customers"] for s in m["segments"]) == customers
        assert m["own_space"] is None  # clustered in the shared space
    kmeans = part["methods"][0]
    assert kmeans["chosen"] and kmeans["ari_vs_kmeans"] == 1.0
    hdbscan = part["methods"][2]
    assert hdbscan["unclustered"] > 0
    assert {"segment": "Unclustered", "customers": hdbscan["unclustered"]}.items() <= next(
        s for s in hdbscan["segments"] if s["segment"] == "Unclustered"
    ).items()
    rep = part["representation"]
    assert rep["space"] == "embedding" and rep["embedding"]["dimensions"] == 3
    assert rep["k"] == sample_report.segmentation.k and 0 <= rep["ari_vs_rfm"] <= 1
    assert "basket_size" in rep["inputs"] and "share_Country=United Kingdom" in rep["inputs"]


def test_sample_comparison_section_renders_in_html(sample_report):
    """The section, its table rows and its three charts are in the HTML page."""
    from reportgen.context import build_context
    from reportgen.render import render_html

    ctx = build_context(sample_report)
    assert [e.id for e in ctx.toc if e.id.startswith("comparison")] == [
        "comparison",
        "comparison-methods",
        "comparison-representation",
    ]
    html = render_html(ctx)
    assert '<h2 id="comparison" class="level-1">Beyond K-Means</h2>' in html
    for chart in (
        "chart-comparison-sizes",
        "chart-comparison-projection",
        "chart-comparison-crosstab",
    ):
        assert f'id="{chart}"' in html
    assert html.count("<td>Gaussian mixture") == 1 and "Agglomerative (Ward)" in html


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run)")
def test_sample_comparison_charts_draw_in_chromium(sample_report, tmp_path):
    """The section's charts draw offline: one dot per sampled customer and method, no errors."""
    from test_html_browser import Dom, _render_in_chromium

    from reportgen.context import build_context
    from reportgen.render import write_html

    ctx = build_context(sample_report)
    dom = Dom({c.id for c in ctx.charts})
    dom.feed(_render_in_chromium(write_html(ctx, tmp_path / "report.html"), tmp_path))
    assert dom.errors == []
    points = sample_report.comparison.projection.height
    assert points == PROJECTION_POINTS
    assert dom.marks["chart-comparison-projection"] == len(COMPARED) * points
    assert dom.marks["chart-comparison-crosstab"] >= 2 * 5 * 5  # a cell and a count per pair
    assert dom.marks["chart-comparison-sizes"] >= len(COMPARED) * 2
