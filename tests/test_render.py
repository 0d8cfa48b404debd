"""The HTML report: numbers for people, one typed context, safe templates, offline and small."""

from __future__ import annotations

import dataclasses
import datetime as dt
import html as html_lib
import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from jinja2 import UndefinedError

import reportgen
from reportgen import render
from reportgen.compare import compare_runs
from reportgen.context import SECTIONS, build_context, redact, redact_text
from reportgen.errors import ConfigError
from reportgen.formatting import Formatter, d3_format_locale, d3_time_locale
from reportgen.history import snapshot_of
from reportgen.render import (
    CSP,
    HTML_TEMPLATE,
    html_page,
    make_environment,
    render_html,
    render_page,
    report_templates_dir,
    vega_bundle,
)
from reportgen.sample import SampleSpec, generate_transactions

DATA = Path(__file__).parent / "data" / "reports"
SCRIPT, IMG = "</script><b>x</b>", "<img src=x onerror=alert(1)>"
COLUMNS = {"customer_id": "CustomerID", "order_id": "InvoiceNo", "order_date": "InvoiceDate",
           "amount": None, "quantity": "Quantity", "unit_price": "UnitPrice"}  # fmt: skip


def hostile_config(**report: str) -> reportgen.Config:
    """400 customers, two with script/markup ids, one segment named `</script><b>x</b>`."""
    return reportgen.config_from_dict(
        {"report": {"name": "Segments <Q3> & more", **report},
         "input": {"path": "hostile_transactions.csv", "columns": COLUMNS,
                   "date_formats": ["%Y-%m-%d %H:%M:%S"]},
         "rfm": {"segment_map": "hostile_segment_map.csv"},
         "segmentation": {"stability_seeds": 2}}, DATA)  # fmt: skip


@pytest.fixture(scope="module")
def hostile():
    """The hostile report and its context."""
    report = reportgen.compute_report(hostile_config())
    return report, build_context(report)


@pytest.fixture(scope="module")
def page(hostile):
    """The rendered HTML of the hostile report."""
    return render_html(hostile[1])


# ---------------------------------------------------------------------------------------------
# Numbers for people


def test_money_numbers_dates_in_british_english():
    """GBP in en_GB: symbol first, comma thousands, 2 decimals unless asked; dates d MMM y."""
    f = Formatter("en_GB", "GBP")
    assert f.money(123456789) == "£1,234,567.89"
    assert f.money(123456789, 0) == "£1,234,568"
    assert f.money(-2750) == "-£27.50"
    assert f.money_short(888720889) == "£8.9m"
    assert f.money_short(123456) == "£1,235"
    assert f.number(1234567) == "1,234,567"
    assert f.number(0.3155, 2) == "0.32"
    assert f.percent(0.2534) == "25.3%"
    assert f.date(dt.date(2011, 12, 9)) == "9 Dec 2011"
    assert f.date(dt.date(2011, 12, 9), "long") == "9 December 2011"
    assert f.month(dt.date(2011, 9, 1)) == "Sept 2011"


def test_money_numbers_dates_in_german_and_japanese():
    """EUR in de_DE puts the symbol last with dot thousands; JPY has no minor unit."""
    de = Formatter("de_DE", "EUR")
    assert de.money(123456789) == "1.234.567,89\xa0€"
    assert de.number(1234567) == "1.234.567"
    assert de.percent(0.5) == "50,0\xa0%"
    assert de.date(dt.date(2011, 12, 9)) == "09.12.2011"
    jp = Formatter("ja_JP", "JPY")
    assert jp.digits == 0
    assert jp.money(123456) == "￥123,456"


def test_missing_values_print_as_a_dash():
    """None and NaN never print as 'None' or 'nan'."""
    f = Formatter("en_GB", "GBP")
    assert {f.money(None), f.number(float("nan")), f.percent(None), f.date(None)} == {"\u2013"}


def test_money_is_exact_for_large_amounts():
    """Minor units are divided exactly: no float rounding on a 2^53-sized amount."""
    f = Formatter("en_GB", "GBP")
    assert f.money(9_007_199_254_740_993) == "£90,071,992,547,409.93"
    assert Decimal("90071992547409.93") * 100 == 9_007_199_254_740_993


def test_chart_locales_follow_the_report_locale():
    """Vega formats numbers and dates with d3 locales built from Babel's data."""
    assert d3_format_locale("de_DE", "EUR") == {
        "decimal": ",", "thousands": ".", "grouping": [3], "currency": ["", "\xa0€"],
        "minus": "\u2212",
    }  # fmt: skip
    assert d3_format_locale("en_GB", "GBP")["currency"] == ["£", ""]
    time_locale = d3_time_locale("fr_FR")
    assert time_locale["months"][0] == "janvier"
    assert time_locale["days"][0] == "dimanche"  # d3 weeks start on Sunday


# ---------------------------------------------------------------------------------------------
# Redaction


def test_redact_hides_credential_keys_and_url_passwords():
    """Values under password/secret/token/user keys and URL credentials are replaced."""
    config = {"email": {"smtp": {"host": "mail.example", "user": "bob", "password": "hunter2",
                                 "api_token": "t0k", "password_env": "SMTP_PASSWORD"}},
              "input": {"path": "postgresql://bob:hunter2@db.example:5432/sales"},
              "report": {"name": "Q3"}}  # fmt: skip
    shown = redact(config)
    assert shown["email"]["smtp"] == {"host": "mail.example", "user": "[redacted]",
                                      "password": "[redacted]", "api_token": "[redacted]",
                                      "password_env": "SMTP_PASSWORD"}  # fmt: skip
    assert shown["input"]["path"] == "postgresql://[redacted]@db.example:5432/sales"
    assert shown["report"] == {"name": "Q3"}
    assert redact_text("see https://token@host/x and s3://bucket/key") == (
        "see https://[redacted]@host/x and s3://bucket/key"
    )


# ---------------------------------------------------------------------------------------------
# Templates


def test_environment_escapes_and_is_strict(hostile):
    """Autoescape is on for every template and a misspelt field raises instead of printing ''."""
    env = make_environment(hostile[1])
    assert env.autoescape is True
    assert env.from_string("{{ v }}").render(v="<b>") == "&lt;b&gt;"
    with pytest.raises(UndefinedError):
        env.from_string("{{ r.summary.no_such_field }}").render(r=hostile[1])


def test_sections_come_in_design_order_with_a_matching_contents(hostile, page):
    """Every section heading, in DESIGN.md order, each listed in the contents with its anchor."""
    ctx = hostile[1]
    headings = re.findall(r'<h2 id="([^"]+)" class="level-1">([^<]+)</h2>', page)
    assert headings == [(i, html_lib.escape(t)) for i, t in SECTIONS]
    toc = re.findall(r'<li class="toc-level-\d"><a href="#([^"]+)">', page)
    assert toc == [e.id for e in ctx.toc]
    for entry in ctx.toc:
        assert f'id="{entry.id}"' in page
    assert [e.title for e in ctx.toc if e.level == 2][: ctx.summary.k] == [
        p.row.name for p in ctx.segments.parts
    ]


def test_every_segment_and_chart_is_in_the_page(hostile, page):
    """Each segment has its part; each chart has a container and its spec in the page."""
    ctx = hostile[1]
    for part in ctx.segments.parts:
        assert f'id="{part.row.anchor}"' in page
        assert html_lib.escape(part.row.name) in page
    specs = json.loads(re.search(r"const specs = (\{.*?\});\n", page).group(1))
    assert set(specs) == {c.id for c in ctx.charts}
    for chart in ctx.charts:
        assert f'<div class="chart" id="{chart.id}"' in page
        assert specs[chart.id]["config"]["font"].startswith("'Liberation Sans'")


def test_example_positions_are_lines_of_a_csv_file_and_rows_otherwise(hostile, page):
    """The examples' column says what their numbers count: a CSV file's lines, or rows."""
    report, _ = hostile
    assert "<th>File, line</th>" in page
    source = dataclasses.replace(report.source, format="parquet")
    as_parquet = render_html(build_context(dataclasses.replace(report, source=source)))
    assert "<th>File, row</th>" in as_parquet


def test_page_is_self_contained_and_offline(page):
    """One inlined Vega bundle, a CSP that forbids the network, no external reference."""
    bundle = str(vega_bundle())
    assert page.count(bundle) == 1
    meta = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert html_lib.unescape(meta.group(1)) == CSP
    assert "default-src 'none'" in CSP and "img-src data:" in CSP
    outside = page.replace(bundle, "")
    assert not re.search(
        r"<(script|link|img|iframe)[^>]*\s(src|href)=\"?(https?:|//|file:)", outside
    )
    assert "<link" not in outside
    urls = set(re.findall(r"https?://[^\s\"'<>]+", outside))
    assert urls == {"https://vega.github.io/schema/vega-lite/v6.4.1.json"}  # specs' $schema only


def test_vega_bundle_is_cached_per_version(monkeypatch, tmp_path):
    """The bundle is read from the cache folder when there, and written there whole."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = render.bundle_cache_path()
    assert path.parent == tmp_path / "reportgen" and "-vl6." in path.name
    path.parent.mkdir()
    path.write_text("window.vegaEmbed = function () {};", encoding="utf-8")
    render.vega_bundle.cache_clear()
    try:
        assert str(render.vega_bundle()) == "window.vegaEmbed = function () {};"
        path.write_text("</script><b>x</b>", encoding="utf-8")
        render.vega_bundle.cache_clear()
        with pytest.raises(RuntimeError, match="cannot be inlined"):
            render.vega_bundle()
    finally:
        render.vega_bundle.cache_clear()
    render._write_cache(tmp_path / "new" / "b.js", "js")
    assert (tmp_path / "new" / "b.js").read_text(encoding="utf-8") == "js"
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["b.js"]


def test_embed_options_turn_the_editor_off_and_tooltips_on(hostile):
    """Export stays; source, compiled and the editor (which posts the data away) are off."""
    options = html_page(hostile[1]).embed_options
    assert options["actions"] == {"export": True, "source": False, "compiled": False,
                                  "editor": False}  # fmt: skip
    assert options["tooltip"] is True and options["renderer"] == "svg"


def test_customer_data_cannot_inject_markup_or_script(hostile, page):
    """Ids `</script><b>x</b>` and `<img ...>` and the segment so named appear only escaped."""
    report, ctx = hostile
    assert SCRIPT in ctx.summary.segments[-1].name  # the data really carry the payloads
    assert set(report.segmentation.assignments["customer_id"]) >= {SCRIPT, IMG}
    assert SCRIPT not in page and IMG not in page
    assert "Segments &lt;Q3&gt; &amp; more" in page
    assert html_lib.escape(SCRIPT) in page  # the segment name, as text in headings and tables
    escaped_json = json.dumps(SCRIPT).replace("<", "\\u003c").replace(">", "\\u003e")
    assert escaped_json in page  # the customer id, inside the chart data (|tojson)
    assert page.count("</script>") == page.count(
        "<script>"
    )  # every script closes where we close it


def test_changes_since_the_previous_report_are_shown(hostile):
    """With a previous run: headlines in the summary, the size table and the migration chart."""
    report, _ = hostile
    earlier = reportgen.compute_report(hostile_config(), as_of="2024-03-31")
    changes = compare_runs(snapshot_of(earlier), snapshot_of(report), ["At Risk"], "")
    ctx = build_context(dataclasses.replace(report, changes=changes))
    assert not ctx.summary.first_report and ctx.summary.change_headlines == changes.headlines
    assert [d.segment for d in ctx.changes.segments] == [s.segment for s in changes.segments]
    assert ctx.changes.migration_chart in ctx.charts
    text = render_html(ctx)
    assert "Compared with the report as of 31 Mar 2024" in text
    assert "This is the first report" not in text
    assert html_lib.escape(changes.headlines[-1]) in text
    assert '<div class="chart" id="chart-migration"' in text
    counts = [sum(row) for _, row in ctx.changes.matrix]
    assert sum(counts) == changes.migration["customers"].sum()


def test_templates_dir_overrides_one_template_and_keeps_the_rest(hostile, tmp_path):
    """A user's `_changes.html` replaces ours; every other template still comes from us."""
    (tmp_path / "_changes.html").write_text(
        '<section class="section"><h2 id="changes">{{ r.section("changes").title }}</h2>'
        "<p>Our own words for {{ r.branding.title }}</p></section>",
        encoding="utf-8",
    )
    text = render_html(hostile[1], templates_dir=tmp_path)
    assert "<p>Our own words for Segments &lt;Q3&gt; &amp; more</p>" in text
    assert "This is the first report for" not in text
    assert 'id="summary"' in text and 'id="appendix"' in text


def test_templates_dir_from_the_config_is_used(hostile, tmp_path):
    """report.templates_dir in the config is the folder write_reports loads templates from."""
    (tmp_path / "_appendix.html").write_text("<p>custom appendix</p>", encoding="utf-8")
    report, ctx = hostile
    config = hostile_config(templates_dir=str(tmp_path))
    assert config.report.templates_dir == str(tmp_path)
    folder = report_templates_dir(dataclasses.replace(report, config=config))
    assert folder == str(tmp_path)
    env = make_environment(ctx, folder)
    assert "<p>custom appendix</p>" in render_page(env, HTML_TEMPLATE, html_page(ctx))
    assert report_templates_dir(report) is None


def test_a_broken_user_template_is_a_config_error_naming_file_and_line(hostile, tmp_path):
    """A syntax error or an unknown field in a user template says where, not a traceback."""
    (tmp_path / "_changes.html").write_text("<p>\n{% if %}</p>", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"report.templates_dir: .*_changes.html:2: "):
        render_html(hostile[1], templates_dir=tmp_path)
    (tmp_path / "_changes.html").write_text("<p>{{ r.no_such_thing }}</p>", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"uses something the report does not have"):
        render_html(hostile[1], templates_dir=tmp_path)


def test_a_missing_templates_dir_is_a_config_error(hostile, tmp_path):
    """A templates_dir that is not a folder says which key and path."""
    with pytest.raises(ConfigError, match=r"report.templates_dir: .*nowhere is not a folder"):
        make_environment(hostile[1], tmp_path / "nowhere")


def test_html_stays_under_5_mb_for_100k_customers(tmp_path):
    """Charts bin, aggregate or sample, so 100,000 customers make a page of about 1.3 MB."""
    spec = SampleSpec(rows=800_000, customers=100_000, seed=3, start=dt.date(2023, 1, 1),
                      end=dt.date(2024, 12, 31))  # fmt: skip
    generate_transactions(spec).write_parquet(tmp_path / "tx.parquet")
    config = reportgen.config_from_dict(
        {"input": {"path": "tx.parquet", "columns": COLUMNS},
         "segmentation": {"k": 5, "fit_sample_size": 5_000, "silhouette_sample_size": 2_000,
                          "stability_seeds": 2}}, tmp_path)  # fmt: skip
    report = reportgen.compute_report(config)
    assert report.segmentation.customers > 99_000
    size = len(render_html(build_context(report)).encode("utf-8"))
    assert size < 5_000_000
    assert size < len(str(vega_bundle())) + 1_000_000  # the data add well under 1 MB
