"""The PDF writer (WeasyPrint) and the URL fetcher that keeps it from reading anything but ours.

WeasyPrint's default fetcher follows `file://` and `http(s)://` references, and embeds
`<link rel=attachment>` files into the PDF (ECOSYSTEM.md section 4, reproduced). `SafeFetcher`
serves only the report's own in-memory assets (`asset:NAME`: the chart SVGs) and `data:` URIs
(the logo); every other URL is refused and logged, so a reference in a user template or in
data can neither read a local file nor reach the network.

Charts become SVG with vl-convert (no external data: `allowed_base_urls=[]`) in the pinned font
"Liberation Sans", which is installed (fonts-liberation), so WeasyPrint draws the labels with
the metrics vl-convert laid them out with: nothing is clipped. Dense point clouds become PNG
(see DENSE_CHART_ROWS).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weasyprint.urls import URLFetcher, URLFetcherResponse

from . import charts as ch
from .context import ReportContext
from .formatting import d3_format_locale, d3_time_locale
from .pdf_process import REFUSED, PdfWritten, log_written
from .render import PDF_TEMPLATE, Page, make_environment, render_page, vl_version

log = logging.getLogger(__name__)

ASSET_SCHEME = "asset:"


class BlockedURLError(ValueError):
    """A URL the report may not load (WeasyPrint logs it and goes on without the resource)."""


class SafeFetcher(URLFetcher):
    """A WeasyPrint URL fetcher for in-memory assets and `data:` URIs only."""

    def __init__(self, assets: Mapping[str, tuple[bytes, str]]):
        super().__init__(allowed_protocols={"data"}, allow_redirects=False)
        self.assets = dict(assets)  # name -> (body, content type)
        self.refused: list[str] = []

    def fetch(self, url: str, headers: Mapping[str, str] | None = None) -> URLFetcherResponse:
        """Serve `asset:NAME` from memory and `data:` URIs; refuse anything else."""
        if url.startswith(ASSET_SCHEME) and url[len(ASSET_SCHEME) :] in self.assets:
            body, content_type = self.assets[url[len(ASSET_SCHEME) :]]
            return URLFetcherResponse(url, body, {"Content-Type": content_type})
        if url.startswith("data:"):
            return super().fetch(url, headers)
        self.refused.append(url)
        log.warning(REFUSED, url[:200])
        raise BlockedURLError(f"blocked: {url[:200]}")


# A chart drawing more data points than this goes into the PDF as a PNG at twice the size: every
# point is an SVG path WeasyPrint draws in Python (the two scatter plots alone took 4 of the 9 s
# of the layout), while the picture of a point cloud gains nothing from being vector.
DENSE_CHART_ROWS = 500
PNG_SCALE = 2


def chart_images(ctx: ReportContext) -> dict[str, tuple[bytes, str]]:
    """Every chart as an image in the pinned font and the report's locale (no external data):
    SVG, or PNG for a dense point cloud; by asset name."""
    images = {}
    for chart in ctx.charts:
        if _data_rows(chart.spec) > DENSE_CHART_ROWS:
            images[f"{chart.id}.png"] = (_convert(ctx, chart.spec, "png"), "image/png")
        else:
            images[f"{chart.id}.svg"] = (_convert(ctx, chart.spec, "svg"), "image/svg+xml")
    return images


def _convert(ctx: ReportContext, spec: dict, fmt: str) -> bytes:
    import vl_convert

    options: dict[str, Any] = {
        "vl_version": vl_version(),
        "allowed_base_urls": [],
        "format_locale": d3_format_locale(ctx.locale, ctx.currency),
        "time_format_locale": d3_time_locale(ctx.locale),
    }
    spec = ch.with_font(spec, ch.PDF_FONT)
    if fmt == "png":
        return vl_convert.vegalite_to_png(spec, scale=PNG_SCALE, **options)
    return vl_convert.vegalite_to_svg(spec, **options).encode("utf-8")


def _data_rows(spec: object) -> int:
    """How many inline data rows a spec holds, in all its layers and views."""
    if isinstance(spec, dict):
        values = spec.get("values")
        own = len(values) if isinstance(values, list) else 0
        return own + sum(_data_rows(v) for k, v in spec.items() if k != "values")
    if isinstance(spec, list):
        return sum(_data_rows(v) for v in spec)
    return 0


def render_pdf_html(
    ctx: ReportContext, templates_dir: str | Path | None = None
) -> tuple[str, dict[str, tuple[bytes, str]]]:
    """The print document and the assets it references."""
    assets = chart_images(ctx)
    page = Page(
        output="pdf",
        report=ctx,
        chart_images={name.rsplit(".", 1)[0]: f"{ASSET_SCHEME}{name}" for name in assets},
    )
    return render_page(make_environment(ctx, templates_dir), PDF_TEMPLATE, page), assets


def html_to_pdf(html: str, assets: Mapping[str, tuple[bytes, str]], path: Path) -> SafeFetcher:
    """Lay out `html` with WeasyPrint into `path`; only `assets` and data: URIs load."""
    from weasyprint import HTML

    fetcher = SafeFetcher(assets)
    HTML(string=html, base_url=None, url_fetcher=fetcher).write_pdf(path)
    return fetcher


def write_pdf(ctx: ReportContext, path: Path, templates_dir: str | Path | None = None) -> Path:
    """Write report.pdf; return its path."""
    log_written(path, write_pdf_timed(ctx, path, templates_dir))
    return path


def write_pdf_timed(ctx: ReportContext, path: Path, templates_dir: str | Path | None) -> PdfWritten:
    started = time.perf_counter()
    html, assets = render_pdf_html(ctx, templates_dir)
    charted = time.perf_counter()
    fetcher = html_to_pdf(html, assets, path)
    return PdfWritten(charted - started, time.perf_counter() - charted, fetcher.refused)
