"""Templates and the HTML writer; `write_reports` writes report.html and report.pdf.

One Jinja environment per report: autoescape forced on for every template (ECOSYSTEM.md section
4: `select_autoescape()` misses `.j2` names), StrictUndefined so a misspelt field fails loudly,
and the number filters of `formatting.py`. Templates load from `report.templates_dir` first (a
user's overrides, any file by name) and fall back to the built-in ones, which ship in the
package (`reportgen/templates` is the repository's `templates/` folder).

The HTML is one self-contained file: the Vega bundle inlined once, every spec embedded with
`|tojson` (which escapes `<`, `>`, `&` and `'`, so customer data cannot close the script), the
"open in editor" action off (it would post the data to an external site) and a Content Security
Policy that forbids every network request.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import altair as alt
from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateSyntaxError,
    UndefinedError,
)
from markupsafe import Markup

from . import charts as ch
from .context import ReportContext, build_context
from .errors import ConfigError
from .formatting import Formatter, d3_format_locale, d3_time_locale, register_filters
from .model import Report
from .pdf_process import PdfProcess

log = logging.getLogger(__name__)

HTML_NAME, PDF_NAME = "report.html", "report.pdf"
HTML_TEMPLATE, PDF_TEMPLATE = "report.html", "report_pdf.html"
CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
)  # Vega compiles expressions with Function(): 'unsafe-eval' is needed (ECOSYSTEM.md section 1)
EMBED_ACTIONS = {"export": True, "source": False, "compiled": False, "editor": False}


def vl_version() -> str:
    """The Vega-Lite version Altair targets, as vl-convert names it ('6.4')."""
    return ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])


@functools.lru_cache(maxsize=1)
def vega_bundle() -> Markup:
    """Vega, Vega-Lite and Vega-Embed in one script (about 0.9 MB), checked safe to inline.

    vl-convert bundles and minifies it on every call (2-10 s on this machine, the largest cost
    of report.html), so the result is kept in the user's cache folder, keyed by the vl-convert
    and Vega-Lite versions; a cache that cannot be read or written is simply not used.
    """
    path = bundle_cache_path()
    js = _read_cache(path)
    if js is None:
        import vl_convert

        js = vl_convert.javascript_bundle(vl_version=vl_version())  # type: ignore[call-arg]
        _write_cache(path, js)
    lowered = js.lower()
    if "</script" in lowered or "<!--" in lowered:  # would end or confuse the <script> element
        raise RuntimeError("the Vega bundle cannot be inlined in a <script> element")
    return Markup(js)


def bundle_cache_path() -> Path:
    """Where the Vega bundle is cached: $XDG_CACHE_HOME (or ~/.cache)/reportgen/."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    version = metadata.version("vl-convert-python")
    return Path(base) / "reportgen" / f"vega-bundle-vlc{version}-vl{vl_version()}.js"


def _read_cache(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8") or None
    except (OSError, UnicodeDecodeError):
        return None


def _write_cache(path: Path, js: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(js, encoding="utf-8")
        os.replace(tmp, path)  # whole or not at all, even with two runs at once
    except OSError as exc:
        log.debug("Vega bundle not cached at %s: %s", path, exc)
        tmp.unlink(missing_ok=True)


def builtin_templates_dir() -> Path:
    """The built-in templates: shipped in the package, else the repository's folder."""
    packaged = Path(str(resources.files("reportgen") / "templates"))
    if (packaged / HTML_TEMPLATE).is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


def make_environment(ctx: ReportContext, templates_dir: str | Path | None = None) -> Environment:
    """The Jinja environment: user templates first, then ours; autoescape on; strict."""
    loaders = []
    if templates_dir is not None:
        folder = Path(templates_dir)
        if not folder.is_dir():
            raise ConfigError(f"report.templates_dir: {folder} is not a folder")
        loaders.append(FileSystemLoader(str(folder)))
    loaders.append(FileSystemLoader(str(builtin_templates_dir())))
    env = Environment(
        loader=ChoiceLoader(loaders),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    register_filters(env, Formatter(ctx.locale, ctx.currency, ctx.minor_digits))
    return env


@dataclass(frozen=True)
class Page:
    """What an output template gets: the report's content and this output's own settings."""

    output: str  # "html" or "pdf"
    report: ReportContext
    csp: str = ""
    vega_js: Markup = field(default_factory=Markup)
    embed_options: dict[str, Any] = field(default_factory=dict)
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)  # chart id -> Vega-Lite spec
    chart_images: dict[str, str] = field(default_factory=dict)  # chart id -> asset URL (PDF)


def render_page(env: Environment, template: str, page: Page) -> str:
    """Render one output template with its page (`page`, and `r` for the report content).

    A broken user template (report.templates_dir) is a configuration error naming the file and
    line; an error in our own templates is a bug and propagates as is.
    """
    user = _user_folder(env)
    try:
        return env.get_template(template).render(page=page, r=page.report)
    except TemplateSyntaxError as exc:
        if user is None or not str(exc.filename or "").startswith(user):
            raise
        raise ConfigError(
            f"report.templates_dir: {exc.filename}:{exc.lineno}: {exc.message}"
        ) from None
    except UndefinedError as exc:
        if user is None:
            raise
        raise ConfigError(
            f"report.templates_dir {user}: a template uses something the report does not have "
            f"({exc.message}); see the built-in templates in {builtin_templates_dir()}"
        ) from None


def _user_folder(env: Environment) -> str | None:
    """The user's templates folder of an environment made by make_environment, if any."""
    loaders = getattr(env.loader, "loaders", [])
    if len(loaders) < 2:
        return None
    return str(Path(loaders[0].searchpath[0]))


def embed_options(ctx: ReportContext) -> dict[str, Any]:
    """vega-embed options: SVG, tooltips, no editor or source actions, the report's locale."""
    return {
        "actions": EMBED_ACTIONS,
        "renderer": "svg",
        "tooltip": True,
        "formatLocale": d3_format_locale(ctx.locale, ctx.currency),
        "timeFormatLocale": d3_time_locale(ctx.locale),
    }


def html_page(ctx: ReportContext) -> Page:
    """The interactive page's settings."""
    return Page(
        output="html",
        report=ctx,
        csp=CSP,
        vega_js=vega_bundle(),
        embed_options=embed_options(ctx),
        specs={c.id: ch.with_font(c.spec, ch.SCREEN_FONT) for c in ctx.charts},
    )


def render_html(ctx: ReportContext, templates_dir: str | Path | None = None) -> str:
    """The interactive report as one HTML document."""
    return render_page(make_environment(ctx, templates_dir), HTML_TEMPLATE, html_page(ctx))


def write_html(ctx: ReportContext, path: Path, templates_dir: str | Path | None = None) -> Path:
    """Write report.html; return its path."""
    started = time.perf_counter()
    text = render_html(ctx, templates_dir)
    path.write_text(text, encoding="utf-8")
    log.info("wrote %s (%s bytes) in %.1f s", path, f"{path.stat().st_size:,}",
             time.perf_counter() - started)  # fmt: skip
    return path


def report_templates_dir(report: Report) -> str | None:
    """The user's template folder of a report (report.templates_dir), if it has one."""
    return getattr(report.config.report, "templates_dir", None)


def write_reports(
    report: Report, folder: Path, segmentation: Any | None = None, ctx: ReportContext | None = None
) -> list[Path]:
    """Write report.html and report.pdf into `folder` from one context; return their paths."""
    if ctx is None:
        started = time.perf_counter()
        ctx = build_context(report, segmentation)
        log.info("report content and charts built in %.1f s", time.perf_counter() - started)
    return start_reports(report, folder, ctx)()


def start_reports(
    report: Report, folder: Path, ctx: ReportContext, pdf_process: PdfProcess | None = None
) -> Callable[[], list[Path]]:
    """Hand report.pdf to `pdf_process` (when started; else it is written at the wait), write
    report.html; the function returned waits for the PDF and gives both paths."""
    templates_dir = report_templates_dir(report)
    pdf = (pdf_process or PdfProcess()).write(ctx, Path(folder) / PDF_NAME, templates_dir)
    html = write_html(ctx, Path(folder) / HTML_NAME, templates_dir)
    return lambda: [html, pdf()]
