"""The PDF report: contents, page numbers, bookmarks, running heads, repeated table headers,
vector charts in the pinned font, and nothing loaded or shown that should not be."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pypdf import PdfReader

import reportgen
import reportgen.pdf
from reportgen.context import SECTIONS, ChartView, build_context
from reportgen.errors import ConfigError
from reportgen.pdf import BlockedURLError, SafeFetcher, chart_images, html_to_pdf
from reportgen.pdf_process import PdfProcess
from reportgen.render import write_reports

DATA = Path(__file__).parent / "data" / "reports"
SCRIPT, IMG = "</script><b>x</b>", "<img src=x onerror=alert(1)>"
PASSWORD_URL = "postgresql://bob:hunter2@db.example/sales"
COLUMNS = {"customer_id": "CustomerID", "order_id": "InvoiceNo", "order_date": "InvoiceDate",
           "amount": None, "quantity": "Quantity", "unit_price": "UnitPrice"}  # fmt: skip


@pytest.fixture(scope="module")
def server():
    """A local HTTP server in its own process, logging every request on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    port = int(re.search(r"port (\d+)", proc.stdout.readline()).group(1))
    yield proc, f"http://127.0.0.1:{port}"
    proc.terminate()


def _requests(proc: subprocess.Popen) -> str:
    proc.terminate()
    return proc.communicate(timeout=10)[1]


@pytest.fixture(scope="module")
def hostile_templates(tmp_path_factory, server):
    """A user template referencing a local file and a URL, next to a secret file."""
    folder = tmp_path_factory.mktemp("templates")
    secret = folder / "secret.txt"
    secret.write_text("TOP-SECRET-42", encoding="utf-8")
    url = server[1]
    (folder / "_changes.html").write_text(
        '<section class="section short"><h2 id="changes">{{ r.section("changes").title }}</h2>'
        f'<p>First report.</p><img src="{secret.as_uri()}"><img src="{url}/logo.png">'
        f'<a rel="attachment" href="{secret.as_uri()}">notes</a>'
        f'<div style="background: url({url}/bg.png)"></div></section>',
        encoding="utf-8",
    )
    return folder


@pytest.fixture(scope="module")
def written(tmp_path_factory, hostile_templates):
    """report.html and report.pdf of a hostile report, written by write_reports.

    400 customers, two with ids `</script><b>x</b>` and `<img ...>`, a segment so named, 20
    examples per cleaning rule (a table longer than a page), a database URL with a password as
    its source, and a templates_dir whose `_changes.html` references a file and a URL."""
    config = reportgen.config_from_dict(
        {"report": {"name": "Segments <Q3> & more", "company": "Acme & Co",
                    "templates_dir": str(hostile_templates)},
         "input": {"path": "hostile_transactions.csv", "columns": COLUMNS,
                   "date_formats": ["%Y-%m-%d %H:%M:%S"]},
         "cleaning": {"examples_per_rule": 20},
         "rfm": {"segment_map": "hostile_segment_map.csv"},
         "segmentation": {"stability_seeds": 2}}, DATA)  # fmt: skip
    report = reportgen.compute_report(config)
    leaky = config.model_copy(
        update={"input": config.input.model_copy(update={"path": PASSWORD_URL})}
    )
    report = dataclasses.replace(
        report, config=leaky, source=dataclasses.replace(report.source, location=PASSWORD_URL)
    )
    folder = tmp_path_factory.mktemp("run")
    paths = write_reports(report, folder)
    return report, paths


@pytest.fixture(scope="module")
def pdf(written):
    """The PDF: reader, text per page (pdftotext; pypdf takes ~2 s a chart page) and context."""
    report, paths = written
    text = subprocess.run(["pdftotext", "-layout", str(paths[1]), "-"], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    pages = text.split("\f")[:-1]
    return PdfReader(paths[1]), pages, build_context(report)


def _flat(text: str) -> str:
    """Text with every run of whitespace made one space (pdftotext puts table cells on lines)."""
    return " ".join(text.split())


def _toc(pages: list[str]) -> list[tuple[str, int]]:
    """(title, page number) of every contents line (page 2)."""
    found = re.findall(r"^\s*(.+?)\s*\.{3,}\s*(\d+)\s*$", pages[1], re.MULTILINE)
    return [(title, int(number)) for title, number in found]


def _outline(reader: PdfReader) -> list[tuple[int, str, int]]:
    """(level, title, page number) of every bookmark."""
    found = []

    def walk(items, level):
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
            else:
                found.append((level, item.title, reader.get_destination_page_number(item) + 1))

    walk(reader.outline, 1)
    return found


def test_write_reports_writes_the_html_and_the_pdf(written):
    """Both files, in that order, in the folder given."""
    _, paths = written
    assert [p.name for p in paths] == ["report.html", "report.pdf"]
    assert paths[1].read_bytes().startswith(b"%PDF-")


def test_text_has_every_section_segment_the_chosen_k_and_the_silhouette(pdf):
    """Section titles, segment names, 'k = K' and the silhouette are in the PDF's text."""
    _, pages, ctx = pdf
    text = "\n".join(pages)
    for _, title in SECTIONS:
        assert title in text
    for part in ctx.segments.parts:
        assert part.row.name in text
    assert f"k = {ctx.summary.k}." in text
    assert f"Mean silhouette {ctx.method.silhouette:.3f}" in _flat(text)


def test_contents_page_numbers_are_where_the_headings_are(pdf):
    """Every contents line lists its heading, and the page printed is the page it starts on."""
    _, pages, ctx = pdf
    toc = _toc(pages)
    assert [t for t, _ in toc] == [e.title for e in ctx.toc]
    for title, number in toc:
        lines = [line.strip() for line in pages[number - 1].splitlines()]
        assert title in lines, (title, number)  # a line of its own: the heading, not a mention
    assert [n for _, n in toc] == sorted(n for _, n in toc)


def test_bookmarks_mirror_the_contents(pdf):
    """Sections are top-level bookmarks, segments and method parts nested, on the same pages."""
    reader, pages, ctx = pdf
    outline = _outline(reader)
    assert [(lvl, t) for lvl, t, _ in outline] == [(e.level, e.title) for e in ctx.toc]
    assert [n for _, _, n in outline] == [n for _, n in _toc(pages)]


def test_running_head_and_page_n_of_m_on_every_page_but_the_cover(pdf):
    """'Page i of N' and the report title on pages 2..N; the cover has neither."""
    reader, pages, ctx = pdf
    total = len(reader.pages)
    assert "Page 1 of" not in pages[0]
    for number, text in enumerate(pages[1:], start=2):
        assert f"Page {number} of {total}" in text
        assert ctx.branding.title in text
        assert "Acme & Co" in text


def test_page_count_is_what_the_content_needs(pdf):
    """No blank page: every page carries body text, the last holds the end of the appendix,
    and the appendix starts on the page the contents say."""
    reader, pages, ctx = pdf
    total = len(reader.pages)
    assert len(pages) == total
    chrome = {ctx.branding.title, ctx.branding.company} | {e.title for e in ctx.toc}
    for number, text in enumerate(pages, start=1):
        body = [line for line in map(_flat, text.splitlines())
                if line and line not in chrome and "Page " not in line]  # fmt: skip
        assert len(body) >= 3, f"page {number} is blank"
    assert "End of report." in pages[-1]
    assert sum("End of report." in p for p in pages) == 1
    appendix = dict(_toc(pages))["Appendix"]
    assert appendix <= total <= appendix + 2  # a config dump and a versions table


def test_table_headers_repeat_across_pages(pdf):
    """The 60-odd example rows run over a page break, and each page repeats the header row."""
    _, pages, _ = pdf
    header = "Rule File, line Customer Order Date Amount"
    holding = [i for i, p in enumerate(pages) if "hostile_transactions.csv:" in p]
    assert len(holding) >= 2
    for i in holding:
        assert header in _flat(pages[i])


def test_charts_are_vector_text_in_the_pinned_font(written, pdf):
    """Chart labels are real text, and every font in the PDF is Liberation (nothing fell back)."""
    _, pages, _ = pdf
    text = "\n".join(pages)
    assert "Days since last order (median)" in text  # a chart's axis title, from the SVG
    fonts = subprocess.run(["pdffonts", str(written[1][1])], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    names = [line.split()[0] for line in fonts.splitlines()[2:]]
    assert any("Liberation-Sans" in n for n in names)
    assert all("Liberation" in n for n in names), names


def test_customer_data_is_only_ever_text(written, pdf):
    """The payload segment name prints literally; ids in examples are masked; the HTML
    carries neither payload raw."""
    _, pages, _ = pdf
    text = "\n".join(pages)
    assert SCRIPT in text  # the segment name, as text (as markup it would print 'x')
    assert IMG not in text  # customer ids are never printed whole in the PDF
    page = written[1][0].read_text(encoding="utf-8")
    assert SCRIPT not in page and IMG not in page


def test_a_template_reference_to_a_file_or_a_url_is_refused(written, pdf, server, tmp_path):
    """The user template's file and URL references are neither fetched nor embedded; the same
    references with WeasyPrint's default fetcher do reach the server (control)."""
    from weasyprint import HTML

    _, paths = written
    reader = PdfReader(paths[1])
    assert list(reader.attachments) == []
    assert b"TOP-SECRET-42" not in paths[1].read_bytes()
    assert "TOP-SECRET-42" not in "".join(pdf[1])
    proc, url = server
    HTML(string=f'<img src="{url}/control.png">').write_pdf(tmp_path / "control.pdf")
    log = _requests(proc)
    assert "GET /control.png" in log
    assert "/logo.png" not in log and "/bg.png" not in log


def test_safe_fetcher_serves_only_assets_and_data_uris(caplog):
    """Assets by name and data: URIs load; file:, http: and unknown assets are refused and logged."""
    fetcher = SafeFetcher({"a.svg": (b"<svg/>", "image/svg+xml")})
    assert fetcher.fetch("asset:a.svg").read() == b"<svg/>"
    assert fetcher.fetch("data:text/plain;base64,aGk=").read() == b"hi"
    with caplog.at_level(logging.WARNING, logger="reportgen.pdf"):
        for url in ("file:///etc/hostname", "http://127.0.0.1:9/x.png", "asset:other.svg"):
            with pytest.raises(BlockedURLError):
                fetcher.fetch(url)
    assert fetcher.refused == [
        "file:///etc/hostname",
        "http://127.0.0.1:9/x.png",
        "asset:other.svg",
    ]
    assert "refused to load file:///etc/hostname" in caplog.text


def test_refused_references_leave_the_rest_of_the_page(tmp_path):
    """A blocked image does not stop the PDF: the text around it is there."""
    path = tmp_path / "x.pdf"
    fetcher = html_to_pdf('<p>before</p><img src="file:///etc/hostname"><p>after</p>', {}, path)
    assert fetcher.refused == ["file:///etc/hostname"]
    assert "before" in PdfReader(path).pages[0].extract_text()


def test_database_password_never_appears_in_either_output(written, pdf):
    """The source URL's password is redacted on the cover and in the appendix of both files."""
    _, paths = written
    _, pages, _ = pdf
    text = "\n".join(pages)
    assert "hunter2" not in text and b"hunter2" not in paths[1].read_bytes()
    assert "hunter2" not in paths[0].read_text(encoding="utf-8")
    assert "postgresql://[redacted]@db.example/sales" in _flat(text)


def test_chart_conversion_loads_no_external_data(pdf):
    """vl-convert runs with no allowed base URL: a spec with data.url fails instead of fetching."""
    _, _, ctx = pdf
    remote = ChartView("chart-remote", "Remote", "", {"mark": "bar",
                       "data": {"url": "http://127.0.0.1:9/data.csv"},
                       "encoding": {"x": {"field": "a", "type": "nominal"}}})  # fmt: skip
    with pytest.raises(Exception, match="(?i)not allowed"):
        chart_images(dataclasses.replace(ctx, charts=(remote,)))


def _pdf_text(path: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip


def _not_here(*args, **kwargs):
    raise AssertionError("the PDF was written in this process")


def test_the_pdf_process_writes_the_same_pdf_as_this_process(written, tmp_path, monkeypatch,
                                                             caplog):  # fmt: skip
    """`reportgen run`'s second process writes what write_reports writes here (this process's
    writer is broken by the test, which the spawned process does not see), and the URLs it
    refused reach this process's log."""
    report, paths = written
    ctx = build_context(report)
    monkeypatch.setattr(reportgen.pdf, "write_pdf_timed", _not_here)
    with caplog.at_level(logging.INFO, logger="reportgen.pdf"), PdfProcess() as process:
        process.start()
        wait = process.write(ctx, tmp_path / "report.pdf", report.config.report.templates_dir)
        path = wait()
    assert _pdf_text(path) == _pdf_text(paths[1])
    assert "refused to load file://" in caplog.text
    assert f"wrote {path} (" in caplog.text
    assert not [p for p in multiprocessing.active_children() if p.name == "reportgen-pdf"]


def test_a_broken_user_template_in_the_pdf_process_is_a_config_error(written, tmp_path):
    """An error the PDF's process meets is raised here: a broken user template says where."""
    report, _ = written
    (tmp_path / "_changes.html").write_text("<p>\n{% if %}</p>", encoding="utf-8")
    with PdfProcess() as process:
        process.start()
        wait = process.write(build_context(report), tmp_path / "report.pdf", tmp_path)
        with pytest.raises(ConfigError, match=r"report.templates_dir: .*_changes.html:2: "):
            wait()


def test_without_its_process_the_pdf_is_written_here(written, tmp_path, monkeypatch):
    """A process that was not started (or could not start) leaves the PDF to this one."""
    report, _ = written
    calls = []
    real = reportgen.pdf.write_pdf_timed
    monkeypatch.setattr(reportgen.pdf, "write_pdf_timed", lambda *a: calls.append(a) or real(*a))
    with PdfProcess() as process:
        path = process.write(build_context(report), tmp_path / "report.pdf")()
    assert len(calls) == 1 and path.read_bytes().startswith(b"%PDF-")


def test_leaving_stops_a_pdf_process_that_got_no_pdf():
    """A run that fails before its PDF (bad data, say) does not leave its process behind."""
    with PdfProcess() as process:
        process.start()
    assert not [p for p in multiprocessing.active_children() if p.name == "reportgen-pdf"]
