"""The PDF writer (WeasyPrint) and the URL fetcher that keeps it from reading anything but ours.

WeasyPrint's default fetcher follows `file://` and `http(s)://` references, and embeds
`<link rel=attachment>` files into the PDF (ECOSYSTEM.md section 4, reproduced). `SafeFetcher`
serves only the report's own in-memory assets (`asset:NAME`: the chart SVGs) and `data:` URIs
(the logo); every other URL is refused and logged, so a reference in a user template or in
data can neither read a local file nor reach the network.

Charts become SVG with vl-convert (no external data: `allowed_base_urls=[]`) in the pinned font
"Liberation Sans", which is installed (fonts-liberation), so WeasyPrint draws the labels with
the metrics vl-convert laid them out with: nothing is clipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

from weasyprint.urls import URLFetcher, URLFetcherResponse  # type: ignore[import-untyped]

from . import charts as ch
from .context import ReportContext
from .formatting import d3_format_locale, d3_time_locale
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
        log.warning("PDF: refused to load %s (the report loads only its own assets)", url[:200])
        raise BlockedURLError(f"blocked: {url[:200]}")


def chart_svgs(ctx: ReportContext) -> dict[str, str]:
    """Every chart as SVG in the pinned font and the report's locale (no external data)."""
    import vl_convert

    version = vl_version()
    number_locale = d3_format_locale(ctx.locale, ctx.currency)
    time_locale = d3_time_locale(ctx.locale)
    return {
        c.id: vl_convert.vegalite_to_svg(
            ch.with_font(c.spec, ch.PDF_FONT),
            vl_version=version,
            allowed_base_urls=[],
            format_locale=number_locale,
            time_format_locale=time_locale,
        )
        for c in ctx.charts
    }


def render_pdf_html(
    ctx: ReportContext, templates_dir: str | Path | None = None
) -> tuple[str, dict[str, tuple[bytes, str]]]:
    """The print document and the assets it references."""
    svgs = chart_svgs(ctx)
    assets = {f"{cid}.svg": (svg.encode("utf-8"), "image/svg+xml") for cid, svg in svgs.items()}
    page = Page(
        output="pdf",
        report=ctx,
        chart_images={cid: f"{ASSET_SCHEME}{cid}.svg" for cid in svgs},
    )
    return render_page(make_environment(ctx, templates_dir), PDF_TEMPLATE, page), assets


def html_to_pdf(html: str, assets: Mapping[str, tuple[bytes, str]], path: Path) -> SafeFetcher:
    """Lay out `html` with WeasyPrint into `path`; only `assets` and data: URIs load."""
    from weasyprint import HTML  # type: ignore[import-untyped]

    fetcher = SafeFetcher(assets)
    HTML(string=html, base_url=None, url_fetcher=fetcher).write_pdf(path)
    return fetcher


def write_pdf(ctx: ReportContext, path: Path, templates_dir: str | Path | None = None) -> Path:
    """Write report.pdf; return its path."""
    started = time.perf_counter()
    html, assets = render_pdf_html(ctx, templates_dir)
    charted = time.perf_counter()
    html_to_pdf(html, assets, path)
    log.info("wrote %s (%s bytes): charts %.1f s, layout %.1f s", path, f"{path.stat().st_size:,}",
             charted - started, time.perf_counter() - charted)  # fmt: skip
    return path
