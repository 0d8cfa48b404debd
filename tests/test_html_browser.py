"""report.html in headless Chromium with the network blocked: every chart draws, nothing is
loaded from outside, and customer data never becomes markup."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

import reportgen
from reportgen.charts import MAX_POINTS
from reportgen.context import build_context
from reportgen.render import write_html

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run)")

DATA = Path(__file__).parent / "data" / "reports"
SCRIPT, IMG = "</script><b>x</b>", "<img src=x onerror=alert(1)>"
COLUMNS = {"customer_id": "CustomerID", "order_id": "InvoiceNo", "order_date": "InvoiceDate",
           "amount": None, "quantity": "Quantity", "unit_price": "UnitPrice"}  # fmt: skip
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip


class Dom(HTMLParser):
    """The dumped DOM: per chart container, its mark items; every tag, attribute and text."""

    def __init__(self, chart_ids: set[str]):
        super().__init__(convert_charrefs=True)
        self.chart_ids = chart_ids
        self.stack: list[tuple[str, str | None, bool]] = []  # tag, chart id, inside a mark group
        self.marks: Counter[str] = Counter()  # chart id -> drawn mark items
        self.svgs: Counter[str] = Counter()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        chart, in_marks = (self.stack[-1][1], self.stack[-1][2]) if self.stack else (None, False)
        if attributes.get("id") in self.chart_ids:
            chart = attributes["id"]
        classes = (attributes.get("class") or "").split()
        if "chart-error" in classes:
            self.errors.append(attributes.get("id") or "?")
        if chart and tag == "svg":
            self.svgs[chart] += 1
        if chart and in_marks and tag in ("path", "text", "line", "rect", "circle"):
            self.marks[chart] += 1
        if tag not in VOID:
            self.stack.append((tag, chart, in_marks or "role-mark" in classes))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        if self.stack and self.stack[-1][0] not in ("script", "style"):
            self.texts.append(data)


def _render_in_chromium(page: Path, tmp_path: Path) -> str:
    """The DOM after the page's scripts ran, with every host name unresolvable."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _open(report, tmp_path: Path) -> tuple[Dom, object]:
    ctx = build_context(report)
    page = write_html(ctx, tmp_path / "report.html")
    dom = Dom({c.id for c in ctx.charts})
    dom.feed(_render_in_chromium(page, tmp_path))
    return dom, ctx


@pytest.fixture(scope="module")
def sample(tmp_path_factory, shipped_config_path):
    """The shipped config's report, opened in Chromium."""
    report = reportgen.compute_report(reportgen.load_config(shipped_config_path))
    return _open(report, tmp_path_factory.mktemp("sample"))


def test_every_chart_draws_offline(sample):
    """Each chart container holds an SVG with drawn marks, and no chart reported an error."""
    dom, ctx = sample
    assert dom.errors == []
    for chart in ctx.charts:
        assert dom.svgs[chart.id] >= 1, chart.id
        assert dom.marks[chart.id] >= 5, chart.id
    points = len(ctx.segments.scatter_chart.spec["data"]["values"])
    assert MAX_POINTS - 5 <= points <= MAX_POINTS
    assert dom.marks["chart-scatter"] >= 3 * points  # three panels, one dot per sampled customer


def test_page_references_nothing_outside_itself(sample):
    """After the scripts ran, every src and href is a fragment or an inline data/blob URL."""
    dom, _ = sample
    for tag, attributes in dom.tags:
        for name in ("src", "href", "xlink:href", "action"):
            value = (attributes.get(name) or "").strip()
            assert value == "" or value.startswith(("#", "data:", "blob:")), (tag, name, value)
    assert any(
        tag == "meta" and a.get("http-equiv") == "Content-Security-Policy" for tag, a in dom.tags
    )


def test_contents_link_every_heading(sample):
    """The contents sidebar links each section and subsection anchor of the page."""
    dom, ctx = sample
    ids = {a.get("id") for _, a in dom.tags}
    links = [
        a["href"][1:] for tag, a in dom.tags if tag == "a" and (a.get("href") or "").startswith("#")
    ]
    for entry in ctx.toc:
        assert entry.id in ids and entry.id in links


def test_script_and_markup_in_customer_data_stay_text(tmp_path):
    """Customer ids `</script><b>x</b>` and `<img src=x onerror=...>` and a segment so named:
    the page still draws every chart, shows the name as text and holds no <b> or <img> element."""
    config = reportgen.config_from_dict(
        {"input": {"path": "hostile_transactions.csv", "columns": COLUMNS,
                   "date_formats": ["%Y-%m-%d %H:%M:%S"]},
         "rfm": {"segment_map": "hostile_segment_map.csv"},
         "segmentation": {"stability_seeds": 2}}, DATA)  # fmt: skip
    report = reportgen.compute_report(config)
    assert {SCRIPT, IMG} <= set(report.segmentation.assignments["customer_id"])
    dom, ctx = _open(report, tmp_path)
    assert dom.errors == []
    assert all(dom.marks[c.id] >= 5 for c in ctx.charts)
    tags = Counter(tag for tag, _ in dom.tags)
    assert tags["b"] == 0 and tags["img"] == 0
    assert any(text.strip() == SCRIPT for text in dom.texts)  # the segment's heading, as text
