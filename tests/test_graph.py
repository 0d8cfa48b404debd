"""The customer graph: shared products, sparsified links, communities and the missing extra."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import sparse

import reportgen
from reportgen.config import GraphSection
from reportgen.errors import ConfigError, InputDataError
from reportgen.graph import (
    EXTRA_HINT,
    build_customer_graph,
    customer_product_matrix,
    detect_communities,
    missing_extra_message,
    similarity_edges,
)
from reportgen.sample import SampleSpec, write_sample

nx = pytest.importorskip("networkx", reason="the optional graph extra is not installed")

COLUMNS = {"customer_id": "CustomerID", "order_id": "InvoiceNo", "order_date": "InvoiceDate",
           "amount": None, "quantity": "Quantity", "unit_price": "UnitPrice",
           "product_id": "StockCode"}  # fmt: skip
POSTAGE = ["POST", "DOT", "M", "C2", "BANK CHARGES", "AMAZONFEE", "PADS", "CRUK", "D", "S", "B"]


def _pairs(baskets: dict[str, list[str]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(c, p) for c, products in baskets.items() for p in products],
        schema={"customer_id": pl.String, "product_id": pl.String},
        orient="row",
    )


# Two groups that never buy each other's products; one shared best seller ("tea") that the
# popularity cap removes, and a product one customer alone bought ("odd").
TWO_GROUPS = _pairs({
    "a1": ["cake", "tin", "tea"], "a2": ["cake", "tin", "tea"], "a3": ["cake", "tin"],
    "a4": ["cake", "tin", "odd"],
    "b1": ["lamp", "bulb", "tea"], "b2": ["lamp", "bulb", "tea"], "b3": ["lamp", "bulb", "tea"],
    "b4": ["lamp", "bulb"],
})  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Building blocks on a hand-made table


def test_matrix_drops_products_that_link_everyone_or_no_one():
    matrix = customer_product_matrix(TWO_GROUPS, exclude=["bulb"], max_share=0.6)
    assert matrix.customers == ["a1", "a2", "a3", "a4", "b1", "b2", "b3", "b4"]
    assert matrix.products == ["cake", "lamp", "odd", "tea", "tin"]
    assert matrix.excluded == 1
    assert matrix.too_common == 1  # tea: 5 of 8 customers, above 60%
    assert matrix.linking.shape == (8, 3)  # cake, lamp, tin ('odd' has one buyer)
    norms = np.sqrt(np.asarray(matrix.linking.multiply(matrix.linking).sum(axis=1)).ravel())
    np.testing.assert_allclose(norms, 1.0)


def test_two_obvious_communities_are_found_exactly():
    matrix = customer_product_matrix(TWO_GROUPS, exclude=[], max_share=0.6)
    rows, cols, weights = similarity_edges(matrix.linking, k=3)
    # each customer's 3 neighbours are the rest of its group (similarity 1), nobody else
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [
        (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3),
        (4, 5), (4, 6), (4, 7), (5, 6), (5, 7), (6, 7),
    ]  # fmt: skip
    np.testing.assert_allclose(weights, 1.0)
    labels, modularity = detect_communities(nx, 8, rows, cols, weights, 1.0, seed=1)
    assert labels.tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert modularity == pytest.approx(0.5)


def test_top_k_agrees_with_a_brute_force_ranking():
    rng = np.random.default_rng(3)
    dense = (rng.random((60, 25)) < 0.15) * rng.integers(1, 4, (60, 25))
    matrix = sparse.csr_matrix(dense.astype(float))
    k = 4
    rows, cols, weights = similarity_edges(matrix, k)
    got = {(int(i), int(j)): w for i, j, w in zip(rows, cols, weights, strict=True)}
    sims = dense @ dense.T
    expected = {}
    for i in range(60):
        ranked = sorted((j for j in range(60) if j != i and sims[i, j] > 0),
                        key=lambda j: (-sims[i, j], j))[:k]  # fmt: skip
        for j in ranked:
            expected[(min(i, j), max(i, j))] = float(sims[i, j])
    assert got.keys() == expected.keys()
    for edge, weight in expected.items():
        assert got[edge] == pytest.approx(weight)


@pytest.mark.parametrize("customers", [500, 2_000])
def test_sparsification_keeps_edges_linear_in_customers(customers):
    rng = np.random.default_rng(customers)
    products = 300
    bought = sparse.random(customers, products, density=0.05, random_state=rng, format="csr")
    bought.data[:] = 1.0
    k = 7
    rows, cols, _ = similarity_edges(bought, k)
    assert rows.size <= k * customers
    assert rows.size >= k * customers / 2  # each customer's k links, shared at most by two
    degree = np.bincount(np.concatenate([rows, cols]), minlength=customers)
    assert degree.min() >= k  # everyone keeps its own k (dense enough to have them)
    assert np.all(rows < cols)


# ---------------------------------------------------------------------------------------------
# The optional extra


def test_missing_extra_gives_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "networkx", None)  # `import networkx` now fails
    message = missing_extra_message()
    assert message == (
        "the customer graph needs the optional graph extra (networkx), which is not installed: "
        "pip install 'reportgen[graph]', or set graph.enabled: false"
    )
    assert EXTRA_HINT == "pip install 'reportgen[graph]'"
    with pytest.raises(ConfigError) as info:
        reportgen.config_from_dict(
            {"input": {"path": "x.csv", "columns": COLUMNS}, "graph": {"enabled": True}}, tmp_path
        )
    assert f"graph: {message}" in str(info.value)
    with pytest.raises(ConfigError, match=r"graph\.enabled: the customer graph needs"):
        build_customer_graph(TWO_GROUPS, None, None, None, GraphSection(enabled=True), 1)


def test_graph_needs_a_product_column(tmp_path):
    columns = {k: v for k, v in COLUMNS.items() if k != "product_id"}
    with pytest.raises(ConfigError) as info:
        reportgen.config_from_dict(
            {"input": {"path": "x.csv", "columns": columns}, "graph": {"enabled": True}}, tmp_path
        )
    assert "graph: enabled, but input.columns.product_id is not mapped" in str(info.value)


# ---------------------------------------------------------------------------------------------
# End to end


def sample_config(folder: Path, **graph: object) -> reportgen.Config:
    if not (folder / "sample.parquet").exists():
        write_sample(SampleSpec(rows=20_000, customers=1_000, seed=4), folder / "sample.parquet")
    return reportgen.config_from_dict(
        {"input": {"path": "sample.parquet", "columns": COLUMNS},
         "segmentation": {"k": 4, "stability_seeds": 2},
         "graph": {"enabled": True, "description_column": "Description", **graph}},
        folder,
    )  # fmt: skip


def test_numbers_in_summary_json_and_communities_csv(tmp_path):
    result = reportgen.run(sample_config(tmp_path, min_community_size=5), output=tmp_path / "out")
    graph = result.report.graph
    summary = json.loads((result.folder / "summary.json").read_text())["graph"]
    assert summary["customers"] == graph.customers == 1_000
    assert summary["edges"] == graph.edges <= summary["max_edges"] == 10 * 1_000
    assert len(summary["communities"]) == len(graph.communities) >= 2
    first = summary["communities"][0]
    assert first["community"] == 1 and first["customers"] == graph.communities[0].customers
    assert sum(first["segment_mix"].values()) == first["customers"]
    assert len(first["top_products"]) == 5 and first["top_products"][0]["description"]
    assert -1 <= summary["agreement"]["adjusted_rand_index"] <= 1
    communities = pl.read_csv(
        result.folder / "communities.csv", schema_overrides={"customer_id": pl.String}
    )
    assert communities.columns == ["customer_id", "community"]
    assert communities.height == graph.customers
    assert communities["customer_id"].is_sorted()
    sizes = communities.drop_nulls().group_by("community").len()
    assert dict(sizes.iter_rows())[1] == graph.communities[0].customers


def test_same_data_same_communities(tmp_path):
    config = sample_config(tmp_path)
    first = reportgen.compute_report(config).graph.assignments
    second = reportgen.compute_report(config).graph.assignments
    assert first.equals(second)


def test_an_unknown_description_column_is_named(tmp_path):
    with pytest.raises(InputDataError, match="graph.description_column 'Desc' is not a column"):
        reportgen.compute_report(sample_config(tmp_path, description_column="Desc"))


def test_uci_sample_graph_is_built_and_timed(record_property):
    """On the shipped UCI data (4,338 customers, ~3,700 products): measured, not asserted."""
    config = reportgen.config_from_dict(
        {"input": {"path": "sample:online_retail", "columns": COLUMNS,
                   "date_formats": ["%Y-%m-%d %H:%M:%S"]},
         "segmentation": {"k": 5, "stability_seeds": 2},
         "graph": {"enabled": True, "exclude_products": POSTAGE}})  # fmt: skip
    stage = reportgen.compute_rfm_stage(config)
    from reportgen.segment import segment_customers

    seg = segment_customers(stage.rfm, config.segmentation, config.playbook, config.seed)
    started = time.perf_counter()
    graph = build_customer_graph(stage.purchases["graph_pairs"], None, seg, stage.rfm,
                                 config.graph, config.seed)  # fmt: skip
    seconds = time.perf_counter() - started
    record_property("uci_graph_seconds", round(seconds, 2))
    print(f"UCI customer graph: {graph.customers} customers, {graph.edges} edges, "
          f"{len(graph.communities)} communities in {seconds:.1f} s")  # fmt: skip
    assert graph.customers >= 4_330
    assert graph.edges <= config.graph.neighbours * graph.customers
    assert len(graph.communities) >= 5
    assert graph.modularity is not None and graph.modularity > 0.3
