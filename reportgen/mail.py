"""The summary email: built from the Report, written as `email.eml`, sent over SMTP.

Build and send are separate steps (STYLE.md 17):

- `build_message(report, pdf)` is a pure function of the report (and the PDF's bytes): the MIME
  message `multipart/mixed[ multipart/alternative[ text/plain, multipart/related[ text/html,
  image/png... ] ], application/pdf ]` (ECOSYSTEM.md section 3). `write_email` writes it into
  every run folder as `email.eml`, sent or not.
- `send_run(folder, config)` reads `email.eml` back, addresses it from the config (Bcc only in
  the envelope) and delivers it with `deliver`, which always verifies the server's certificate
  (smtplib does not unless given a context), retries transient failures with backoff and reports
  refused recipients. The delivery is recorded in `sent.json`; while that file exists a second
  send of the same run needs `force`.

The email shows the summary of the report from the same typed context (`context.build_context`):
period, headline numbers, segment table, the top recommendations with the revenue at stake, what
changed since the previous run, three charts as PNG parts referenced by `cid:` with alt texts that
state their numbers. It never shows a customer id, and the SMTP password (read from the
environment variable named in the config) never reaches a log line, an error or the file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import math
import os
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined

from .config import Config, EmailSection, SmtpOptions
from .errors import ConfigError, DeliveryError, UsageError
from .formatting import Formatter, d3_format_locale, d3_time_locale, register_filters

if TYPE_CHECKING:  # the report's context pulls in the charts (Altair): imported when building
    from .context import Month, Notice, Recommendation, ReportContext, SegmentRow
    from .model import Report

log = logging.getLogger(__name__)

EML_NAME = "email.eml"
MARKER_NAME = "sent.json"
PDF_NAME = "report.pdf"  # written by render.write_reports (render.PDF_NAME)
HTML_TEMPLATE, TEXT_TEMPLATE = "email.html", "email.txt"
CHART_WIDTH = 552  # CSS px: the 600 px card less its padding
CHART_SCALE = 2  # PNG pixels per CSS pixel (sharp on high-density screens)
CHART_FONT_SIZE = 12  # px; smaller labels are hard to read on a phone
MB = 1_000_000
GMAIL_CLIP_BYTES = 102_000  # Gmail cuts off ("[Message clipped]") HTML larger than this


class AlreadySentError(UsageError):
    """The run's email was sent before (sent.json); sending again needs --force (exit 2)."""


# ---------------------------------------------------------------------------------------------
# The typed context of email.html and email.txt


@dataclass(frozen=True)
class EmailChart:
    """A chart as a PNG part of the message, referenced from the HTML by `cid:`."""

    cid: str  # the Content-ID without angle brackets: the HTML says src="cid:{{ cid }}"
    filename: str
    title: str
    alt: str  # states the chart's numbers, for readers with images blocked
    png: bytes = field(repr=False)
    width: int  # CSS pixels; the PNG has CHART_SCALE times as many
    height: int
    note: str = ""  # a line under the chart, e.g. which months the period covers in part


@dataclass(frozen=True)
class PdfNote:
    """The full report: attached, or left out with a sentence saying why and where it is."""

    filename: str  # the attachment's name
    size_bytes: int | None  # None: no PDF was written for this run
    size_text: str  # '1.4 MB', '850 KB' ('' without a PDF)
    attached: bool
    note: str  # shown in the body when not attached ('' when attached)


@dataclass(frozen=True)
class ChangeNote:
    """What changed since the previous run of the report."""

    previous_as_of: dt.date
    headlines: tuple[str, ...]


@dataclass(frozen=True)
class EmailContext:
    """Everything email.html and email.txt show (and nothing else: no customer ids)."""

    locale: str
    currency: str
    minor_digits: int
    subject: str
    preheader: str  # the inbox preview line, hidden in the body
    title: str  # the report's name
    company: str
    accent: str  # '#rrggbb' (checked by context.build_context)
    period: str  # '1 Dec 2010 – 9 Dec 2011'
    as_of: dt.date
    generated_at: dt.datetime
    customers: int
    segmented: int
    orders: int
    revenue_minor: int
    average_order_minor: int | None
    k: int
    fit_words: str
    stable: bool
    segments: tuple[SegmentRow, ...]
    recommendations: tuple[Recommendation, ...]  # the top ones, by revenue at stake
    changes: ChangeNote | None  # None: the first report, a sentence says so
    warnings: tuple[Notice, ...]
    charts: tuple[EmailChart, ...]
    pdf: PdfNote
    data_fingerprint: str


# ---------------------------------------------------------------------------------------------
# Building


def build_message(
    report: Report,
    pdf: bytes | None = None,
    *,
    ctx: ReportContext | None = None,
    charts: Sequence[EmailChart] | None = None,
) -> EmailMessage:
    """The summary email of `report` with the PDF attached (if given and small enough)."""
    from .context import build_context

    email = email_settings(report.config)
    ctx = ctx if ctx is not None else build_context(report)
    domain = _sender_domain(email)
    charts = tuple(charts) if charts is not None else render_charts(ctx, report, domain)
    pdf_note = _pdf_note(report, pdf, email.max_attachment_mb)
    ectx = build_email_context(report, ctx, charts, pdf_note)
    html, text = render_email(ectx, report.config.report.templates_dir)
    message = _headers(ectx.subject, email, report.generated_at, _run_message_id(report, domain))
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    html_part = message.get_body(("html",))  # becomes multipart/related with the images
    assert isinstance(html_part, EmailMessage)
    for chart in charts:
        html_part.add_related(chart.png, "image", "png", cid=f"<{chart.cid}>",
                              filename=chart.filename, disposition="inline")  # fmt: skip
    if pdf is not None and pdf_note.attached:
        message.add_attachment(pdf, "application", "pdf", filename=pdf_note.filename)
    _fix_boundaries(message, report.data_fingerprint)
    return message


def _run_message_id(report: Report, domain: str) -> str:
    """A Message-ID derived from the run, so the same run gives the same .eml bytes."""
    key = f"{report.config.report.report_slug}|{report.period.as_of}|{report.data_fingerprint}"
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:24]}.reportgen@{domain}>"


def _fix_boundaries(message: EmailMessage, seed: str) -> None:
    """Deterministic MIME boundaries (the stdlib draws random ones) for reproducible .eml files."""
    for number, part in enumerate(p for p in message.walk() if p.is_multipart()):
        part.set_boundary(f"=_reportgen_{seed}_{number}")


def email_settings(config: Config) -> EmailSection:
    """The config's email section; ConfigError when it has none."""
    if config.email is None:
        where = f" in {config.source_file}" if config.source_file else ""
        raise ConfigError(
            f"email: the configuration has no email section{where}; add one (sender, to, smtp) "
            "to build and send the summary email"
        )
    return config.email


def _headers(subject: str, email: EmailSection, date: dt.datetime, message_id: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    _address(message, email)
    message["Date"] = format_datetime(date)
    message["Message-ID"] = message_id
    message["X-Mailer"] = "reportgen"
    return message


def _address(message: EmailMessage, email: EmailSection) -> None:
    """From, To, Cc and Reply-To from the config (Bcc never: it stays in the envelope)."""
    for name in ("From", "To", "Cc", "Reply-To", "Bcc"):
        del message[name]
    message["From"] = Address(display_name=_one_line(email.sender_name), addr_spec=email.sender)
    message["To"] = ", ".join(email.to)
    if email.cc:
        message["Cc"] = ", ".join(email.cc)
    if email.reply_to:
        message["Reply-To"] = email.reply_to


def _one_line(text: str) -> str:
    """Header text on one line (a line break in a header would start a new header)."""
    return " ".join(text.split())


def build_email_context(
    report: Report, ctx: ReportContext, charts: Sequence[EmailChart], pdf: PdfNote
) -> EmailContext:
    """The email's content, from the report's context."""
    email = email_settings(report.config)
    fmt = _formatter(ctx)
    summary = ctx.summary
    period = _period_text(fmt, ctx.cover.period_start, ctx.cover.as_of)
    subject = email.subject.format(
        report_name=ctx.branding.title, as_of=fmt.date(ctx.cover.as_of), period=period
    )
    return EmailContext(
        locale=ctx.locale, currency=ctx.currency, minor_digits=ctx.minor_digits,
        subject=_one_line(subject), preheader=_preheader(fmt, summary, period),
        title=ctx.branding.title, company=ctx.branding.company, accent=ctx.branding.accent,
        period=period, as_of=ctx.cover.as_of, generated_at=ctx.cover.generated_at,
        customers=summary.customers, segmented=summary.segmented, orders=summary.orders,
        revenue_minor=summary.revenue_minor, average_order_minor=summary.average_order_minor,
        k=summary.k, fit_words=summary.fit_words, stable=summary.stable,
        segments=summary.segments, recommendations=summary.recommendations,
        changes=_change_note(ctx),
        warnings=summary.warnings, charts=tuple(charts), pdf=pdf,
        data_fingerprint=ctx.cover.data_fingerprint,
    )  # fmt: skip


def _change_note(ctx: ReportContext) -> ChangeNote | None:
    changes = ctx.changes
    if changes.first_report or changes.previous_as_of is None:
        return None
    return ChangeNote(changes.previous_as_of, tuple(changes.headlines))


def _formatter(ctx: ReportContext | EmailContext) -> Formatter:
    return Formatter(ctx.locale, ctx.currency, ctx.minor_digits)


def _period_text(fmt: Formatter, start: dt.date | None, end: dt.date) -> str:
    return f"{fmt.date(start)} \u2013 {fmt.date(end)}" if start else f"to {fmt.date(end)}"


def _preheader(fmt: Formatter, summary: Any, period: str) -> str:
    text = (f"{fmt.money_short(summary.revenue_minor)} from {fmt.number(summary.customers)} "
            f"customers, {period}.")  # fmt: skip
    if summary.recommendations:
        top = summary.recommendations[0]
        text += (f" Top action: {top.kind} {top.segment} "
                 f"({fmt.money_short(top.revenue_at_stake_minor)} at stake).")  # fmt: skip
    return text


def _pdf_note(report: Report, pdf: bytes | None, max_mb: float) -> PdfNote:
    name = f"{report.config.report.report_slug}-{report.run_name}.pdf"
    where = f"{report.config.report.report_slug}/{report.run_name}/{PDF_NAME}"
    if pdf is None:
        return PdfNote(name, None, "", False, "The PDF report was not written for this run, so "
                       "it is not attached.")  # fmt: skip
    size = len(pdf)
    size_text = f"{size / MB:.1f} MB" if size >= MB else f"{max(1, round(size / 1000))} KB"
    if size > max_mb * MB:
        return PdfNote(name, size, size_text, False, (
            f"The full report (PDF, {size_text}) is larger than the {max_mb:g} MB limit for "
            f"attachments, so it is not attached: find it in the report folder as {where}."
        ))  # fmt: skip
    return PdfNote(name, size, size_text, True, "")


# ---------------------------------------------------------------------------------------------
# Rendering the bodies


def email_environment(
    ctx: EmailContext, templates_dir: str | Path | None, html: bool
) -> Environment:
    """A Jinja environment for email.html (autoescape on) or email.txt (off), strict, with the
    report's number filters; a user's templates_dir overrides ours by file name."""
    from .render import builtin_templates_dir

    if templates_dir is not None and not Path(templates_dir).is_dir():
        raise ConfigError(f"report.templates_dir: {templates_dir} is not a folder")
    folders = [Path(templates_dir)] if templates_dir is not None else []
    loader = ChoiceLoader([FileSystemLoader(str(f)) for f in [*folders, builtin_templates_dir()]])
    env = Environment(loader=loader, autoescape=html, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)  # fmt: skip
    register_filters(env, _formatter(ctx))
    return env


def render_email(ctx: EmailContext, templates_dir: str | Path | None = None) -> tuple[str, str]:
    """The HTML body (CSS inlined) and the plain-text body."""
    import css_inline

    html = email_environment(ctx, templates_dir, True).get_template(HTML_TEMPLATE).render(e=ctx)
    inliner = css_inline.CSSInliner(
        keep_style_tags=False, keep_at_rules=True, load_remote_stylesheets=False
    )
    html = inliner.inline(html)
    text = email_environment(ctx, templates_dir, False).get_template(TEXT_TEMPLATE).render(e=ctx)
    if len(html.encode()) > GMAIL_CLIP_BYTES:
        log.warning("the email's HTML is %s bytes: Gmail shows only the first ~102 KB",
                    f"{len(html.encode()):,}")  # fmt: skip
    return html, text


# ---------------------------------------------------------------------------------------------
# Charts: the report's own specs, fitted to the email's width and rendered as PNG


def email_charts(report: Report, ctx: ReportContext) -> tuple[EmailChart, ...] | None:
    """The email's charts for `write_email` (None when the config has no email section)."""
    if report.config.email is None:
        return None
    return render_charts(ctx, report, _sender_domain(report.config.email))


def _sender_domain(email: EmailSection) -> str:
    """The sender's domain: it names the charts' Content-IDs and the Message-ID."""
    return email.sender.rsplit("@", 1)[1]


def render_charts(ctx: ReportContext, report: Report, domain: str) -> tuple[EmailChart, ...]:
    """The email's charts (segment shares, revenue and orders by month, new and returning
    customers by month) as PNG parts, each with an alt text stating its numbers."""
    fmt = _formatter(ctx)
    partial = _partial_months_note(fmt, ctx)
    picks = (
        (ctx.summary.share_chart, _share_alt(fmt, ctx), ""),
        (ctx.exploration.monthly_chart, _monthly_alt(fmt, ctx), partial),
        (ctx.exploration.new_returning_chart, _new_returning_alt(fmt, ctx), partial),
    )
    tag = f"{report.run_name}.{report.data_fingerprint}"
    charts = []
    for view, alt, note in picks:
        name = view.id.removeprefix("chart-")
        png = chart_png(view.spec, ctx.locale, ctx.currency)
        width, height = _png_size(png)
        charts.append(EmailChart(
            cid=f"{name}.{tag}@{domain}", filename=f"{name}.png", title=view.title, alt=alt,
            png=png, width=round(width / CHART_SCALE), height=round(height / CHART_SCALE),
            note=note,
        ))  # fmt: skip
    return tuple(charts)


def chart_png(spec: dict[str, Any], locale: str, currency: str, width: int = CHART_WIDTH) -> bytes:
    """The chart at most `width` CSS px wide (axes and legend included) at CHART_SCALE, with
    text at least CHART_FONT_SIZE px, as an optimised PNG.

    The total width is linear in the plot widths (axes and legend do not change), so when the
    chart is too wide one more rendering at half the widths gives the factor that fits."""
    from . import charts as ch
    from .render import vl_version

    opts = {"vl_version": vl_version(), "allowed_base_urls": [],
            "format_locale": d3_format_locale(locale, currency),
            "time_format_locale": d3_time_locale(locale)}  # fmt: skip
    base = ch.with_font(_larger_text(spec), ch.PDF_FONT)
    factor, png = 1.0, _png(base, 1.0, opts)
    got = _png_size(png)[0] / CHART_SCALE
    if got > width:
        slope = max((got - _svg_width(base, 0.5, opts)) / 0.5, 1.0)
        for _ in range(3):  # one step when the width is exactly linear; floors may need more
            factor = max(0.1, factor - (got - width) / slope)
            png = _png(base, factor, opts)
            got = _png_size(png)[0] / CHART_SCALE
            if got <= width:
                break
    return _quantized(png)


def _vl() -> Any:
    import vl_convert

    return vl_convert


def _png(spec: dict[str, Any], factor: float, opts: dict[str, Any]) -> bytes:
    return _vl().vegalite_to_png(_scaled_widths(spec, factor), scale=CHART_SCALE, **opts)


def _svg_width(spec: dict[str, Any], factor: float, opts: dict[str, Any]) -> float:
    import re

    svg = _vl().vegalite_to_svg(_scaled_widths(spec, factor), **opts)
    match = re.search(r'<svg[^>]*\swidth="([0-9.]+)"', svg)
    return float(match.group(1)) if match else 0.0


def _scaled_widths(spec: Any, factor: float) -> Any:
    """A copy of `spec` with every fixed plot width times `factor` (data left alone)."""
    if isinstance(spec, list):
        return [_scaled_widths(item, factor) for item in spec]
    if not isinstance(spec, dict):
        return spec
    out = {}
    for key, value in spec.items():
        if key in ("data", "datasets", "values"):
            out[key] = value
        elif key == "width" and isinstance(value, int | float) and factor != 1.0:
            out[key] = max(20, math.floor(value * factor))
        else:
            out[key] = _scaled_widths(value, factor)
    return out


def _larger_text(spec: Any) -> Any:
    """A copy of `spec` with every font size (marks, axes, legends) at least CHART_FONT_SIZE."""
    if isinstance(spec, list):
        return [_larger_text(item) for item in spec]
    if not isinstance(spec, dict):
        return spec
    out = {}
    for key, value in spec.items():
        if key in ("data", "datasets", "values"):
            out[key] = value
        elif key.lower().endswith("fontsize") and isinstance(value, int | float):
            out[key] = max(CHART_FONT_SIZE, value)
        else:
            out[key] = _larger_text(value)
    return out


def _quantized(png: bytes) -> bytes:
    """A palette PNG: about a fifth of the bytes, no visible change (ECOSYSTEM.md section 3)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        small = image.convert("RGB").quantize(colors=128)
        out = io.BytesIO()
        small.save(out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(png) else png


def _png_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _share_alt(fmt: Formatter, ctx: ReportContext) -> str:
    parts = [f"{r.name} {fmt.percent(r.share)} of customers, {fmt.percent(r.revenue_share)} of "
             "revenue" for r in ctx.summary.segments]  # fmt: skip
    return "Share of customers and of revenue per segment: " + "; ".join(parts) + "."


def _monthly_alt(fmt: Formatter, ctx: ReportContext) -> str:
    months = ctx.exploration.months
    if not months:
        return "Revenue and orders per month: no months."
    full = [m for m in months if not m.partial] or months  # a 9-day month is no "lowest"
    top = max(full, key=lambda m: m.revenue_minor)
    low = min(full, key=lambda m: m.revenue_minor)
    last = months[-1]
    days = f" ({_days_text(last)})" if last.partial else ""
    return (f"Revenue and orders per month, {fmt.month(months[0].month)} to "
            f"{fmt.month(last.month)}: highest revenue {fmt.money(top.revenue_minor, 0)} in "
            f"{fmt.month(top.month)}, lowest {fmt.money(low.revenue_minor, 0)} in "
            f"{fmt.month(low.month)}; {fmt.month(last.month)}{days}: "
            f"{fmt.money(last.revenue_minor, 0)} from {fmt.number(last.orders)} "
            "orders.")  # fmt: skip


def _partial_months_note(fmt: Formatter, ctx: ReportContext) -> str:
    """Which months the period covers only in part (drawn lighter), with their days."""
    parts = [f"{fmt.month(m.month)}: {_days_text(m)}" for m in ctx.exploration.months if m.partial]
    if not parts:
        return ""
    return f"Lighter bars: months only partly in the period ({'; '.join(parts)})."


def _days_text(month: Month) -> str:
    return f"{month.days_covered} of {month.days_in_month} days"


def _new_returning_alt(fmt: Formatter, ctx: ReportContext) -> str:
    months = ctx.exploration.months
    if not months:
        return "New and returning customers per month: no months."
    parts = [f"{fmt.month(m.month)} {fmt.number(m.new_customers)} new, "
             f"{fmt.number(m.returning_customers)} returning" for m in months[-6:]]  # fmt: skip
    return (
        "Customers buying per month, first-time (new) and returning"
        + (", the last six months" if len(months) > 6 else "")
        + ": "
        + "; ".join(parts)
        + "."
    )


# ---------------------------------------------------------------------------------------------
# The .eml file


def write_email(
    report: Report, folder: Path, ctx: ReportContext | None = None,
    charts: Sequence[EmailChart] | None = None,
) -> list[Path]:  # fmt: skip
    """Write email.eml into the run folder (with report.pdf attached if it is there already);
    nothing when the config has no email section. Call it after the report writers. `charts`:
    `email_charts`, when rendered before (while the PDF was written)."""
    if report.config.email is None:
        return []
    started = time.perf_counter()
    pdf_path = Path(folder) / PDF_NAME
    pdf = pdf_path.read_bytes() if pdf_path.is_file() else None
    message = build_message(report, pdf, ctx=ctx, charts=charts)
    path = write_eml(message, Path(folder) / EML_NAME)
    log.info("wrote %s (%s bytes) in %.1f s", path, f"{path.stat().st_size:,}",
             time.perf_counter() - started)  # fmt: skip
    return [path]


def write_eml(message: EmailMessage, path: Path) -> Path:
    """Write the message as an .eml file (opens in any mail program); return its path."""
    Path(path).write_bytes(message.as_bytes(policy=policy.default))
    return Path(path)


def read_eml(path: Path) -> EmailMessage:
    """Parse an .eml file back into a message."""
    with open(path, "rb") as handle:
        return BytesParser(policy=policy.default).parse(handle)


# ---------------------------------------------------------------------------------------------
# Sending


@dataclass(frozen=True)
class Delivery:
    """The outcome of one send: who accepted it, who refused it and why."""

    message_id: str
    sent_at: dt.datetime
    server: str  # 'host:port (security)'
    accepted: tuple[str, ...]
    refused: dict[str, str]  # address -> the server's reply ('550 5.1.1 no such user')
    attempts: int


SmtpFactory = Callable[..., smtplib.SMTP]
Sleep = Callable[[float], None]


def send_password(config: Config) -> str | None:
    """The SMTP password from the environment variable the config names (None: no login);
    ConfigError naming what is missing. Checked before a run starts any work."""
    smtp = email_settings(config).smtp
    if smtp.ca_file and not Path(smtp.ca_file).is_file():
        raise ConfigError(f"email.smtp.ca_file: {smtp.ca_file} is not a file; set it to the PEM "
                          "file of the CA that signed the mail server's certificate")  # fmt: skip
    if not smtp.username:
        return None
    password = os.environ.get(smtp.password_env or "")
    if not password:
        state = "is empty" if smtp.password_env in os.environ else "is not set"
        raise ConfigError(
            f"email.smtp.password_env: the environment variable {smtp.password_env} {state}; "
            f"set it to the SMTP password of {smtp.username!r} before sending"
        )
    return password


def envelope_recipients(email: EmailSection) -> list[str]:
    """To, Cc and Bcc, each address once (case-insensitively), in that order."""
    seen: set[str] = set()
    out = []
    for address in [*email.to, *email.cc, *email.bcc]:
        if address.lower() not in seen:
            seen.add(address.lower())
            out.append(address)
    return out


def send_run(
    folder: Path,
    config: Config,
    *,
    force: bool = False,
    dry_run: bool = False,
    password: str | None = None,
    smtp_class: SmtpFactory | None = None,
    sleep: Sleep = time.sleep,
    now: dt.datetime | None = None,
) -> list[Path]:
    """Send the run folder's email.eml to the configured recipients and write sent.json.

    Refused with AlreadySentError (exit 2) when sent.json says it was sent, unless `force`;
    DeliveryError (exit 5) when it could not be delivered (every file stays in place). Returns
    the files written (sent.json), or on a dry run the .eml that would be sent."""
    folder = Path(folder)
    email = email_settings(config)
    eml = folder / EML_NAME
    if not eml.is_file():
        raise UsageError(f"{folder} holds no {EML_NAME}: give a run folder written by `reportgen "
                         "run` with an email section in the config")  # fmt: skip
    _check_same_report(folder, config, force)
    previous = read_marker(folder)
    recipients = envelope_recipients(email)
    if dry_run:
        _log_dry_run(eml, email, recipients, previous)
        return [eml]
    if previous is not None and not force:
        raise AlreadySentError(_already_sent_text(folder, previous))
    if password is None:
        password = send_password(config)
    message = prepare_message(read_eml(eml), email, now, resend=previous is not None)
    try:
        delivery = deliver(message, email, password, smtp_class=smtp_class, sleep=sleep)
    except DeliveryError as exc:
        raise DeliveryError(f"{exc}; the report files are in {folder}") from None
    marker = write_marker(folder, delivery)
    _check_refused(delivery, folder, len(recipients))
    return [marker]


def _check_same_report(folder: Path, config: Config, force: bool) -> None:
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        slug = summary["report"]["slug"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if slug != config.report.report_slug and not force:
        raise UsageError(
            f"{folder} is a run of report {slug!r} but the config is for "
            f"{config.report.report_slug!r}: give the config of that report (--config), or "
            "--force to send it with this config's recipients"
        )


def _log_dry_run(
    eml: Path, email: EmailSection, recipients: list[str], previous: dict | None
) -> None:
    smtp = email.smtp
    log.info("dry run: not sending %s (%s bytes) to %s via %s:%s (%s)", eml,
             f"{eml.stat().st_size:,}", ", ".join(recipients), smtp.host, smtp.effective_port,
             smtp.security)  # fmt: skip
    if smtp.username and not os.environ.get(smtp.password_env or ""):
        log.warning("dry run: the environment variable %s (the SMTP password) is not set; a real "
                    "send would stop", smtp.password_env)  # fmt: skip
    if previous is not None:
        log.warning("dry run: %s", _already_sent_text(eml.parent, previous))


def _already_sent_text(folder: Path, previous: dict[str, Any]) -> str:
    accepted = previous.get("accepted") or []
    return (f"the email of {folder} was already sent at {previous.get('sent_at', '?')} to "
            f"{len(accepted)} recipient{'s' if len(accepted) != 1 else ''} "
            f"({folder / MARKER_NAME}); "
            "not sent again: pass --force to send it again")  # fmt: skip


def _check_refused(delivery: Delivery, folder: Path, total: int) -> None:
    if not delivery.refused:
        return
    refused = "; ".join(f"{a} ({why})" for a, why in list(delivery.refused.items())[:5])
    raise DeliveryError(
        f"sent to {len(delivery.accepted)} of {total} recipients; refused: {refused}; fix the "
        f"addresses in email.to/cc/bcc, then `reportgen send {folder} --force` sends to everyone "
        "again (the report files are in place)"
    )


def prepare_message(
    message: EmailMessage, email: EmailSection, now: dt.datetime | None = None, resend: bool = False
) -> EmailMessage:
    """The message as sent: addressed from the config, dated now; a resend gets a new
    Message-ID (mail programs drop a second message with the same id)."""
    _address(message, email)
    del message["Date"]
    message["Date"] = format_datetime(now or dt.datetime.now(dt.UTC).replace(microsecond=0))
    if resend or message["Message-ID"] is None:
        del message["Message-ID"]
        message["Message-ID"] = make_msgid("reportgen", _sender_domain(email))
    return message


def deliver(
    message: EmailMessage,
    email: EmailSection,
    password: str | None,
    *,
    smtp_class: SmtpFactory | None = None,
    sleep: Sleep = time.sleep,
) -> Delivery:
    """Send `message` to every envelope recipient; retry transient failures with backoff.

    Raises DeliveryError naming the failure and the setting to fix (never the password) when it
    was delivered to nobody; recipients refused for good are in the result."""
    smtp = email.smtp
    context = _tls_context(smtp)
    pending, accepted, refused = envelope_recipients(email), [], {}
    delay, attempt = smtp.retry_backoff_seconds, 0
    while True:
        attempt += 1
        try:
            rejected = _send_once(message, email, pending, password, context, smtp_class)
        except Exception as exc:  # noqa: BLE001 - every failure is classified below
            transient, text = _failure(exc, smtp)
            text = _scrub(text, password)
            if not transient or attempt > smtp.retries:
                tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                raise DeliveryError(f"email not sent: {text}{tries}") from None
            log.warning("email attempt %d failed: %s; retrying in %g s", attempt, text, delay)
        else:
            accepted += [r for r in pending if r not in rejected]
            later = {r: v for r, v in rejected.items() if 400 <= v[0] < 500}
            refused.update({r: _reply(v, password) for r, v in rejected.items() if r not in later})
            if not later or attempt > smtp.retries:
                refused.update({r: _reply(v, password) for r, v in later.items()})
                break
            pending = list(later)
            first = _reply(next(iter(later.values())), password)
            log.warning("email attempt %d: %d recipients deferred (%s); retrying in %g s",
                        attempt, len(later), first, delay)  # fmt: skip
        sleep(delay)
        delay *= 2
    return _delivered(message, smtp, accepted, refused, attempt)


def _delivered(message: EmailMessage, smtp: SmtpOptions, accepted: list[str],
               refused: dict[str, str], attempts: int) -> Delivery:  # fmt: skip
    if not accepted:
        listed = "; ".join(f"{a} ({why})" for a, why in list(refused.items())[:5])
        raise DeliveryError(f"email not sent: every recipient was refused: {listed}; check "
                            "email.to/cc/bcc")  # fmt: skip
    delivery = Delivery(
        message_id=str(message["Message-ID"]),
        sent_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
        server=f"{smtp.host}:{smtp.effective_port} ({smtp.security})",
        accepted=tuple(accepted),
        refused=refused,
        attempts=attempts,
    )
    log.info("email sent to %d recipient%s via %s, %s", len(accepted),
             "" if len(accepted) == 1 else "s", delivery.server, delivery.message_id)  # fmt: skip
    return delivery


def _tls_context(smtp: SmtpOptions) -> ssl.SSLContext | None:
    """Certificate and host name checks always on; the configured CA replaces the system's."""
    if smtp.security == "none":
        return None
    try:
        return ssl.create_default_context(cafile=smtp.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"email.smtp.ca_file: cannot load {smtp.ca_file} as PEM certificates "
                          f"({getattr(exc, 'reason', None) or exc})") from None  # fmt: skip


def _send_once(
    message: EmailMessage,
    email: EmailSection,
    recipients: list[str],
    password: str | None,
    context: ssl.SSLContext | None,
    smtp_class: SmtpFactory | None,
) -> dict[str, tuple[int, bytes]]:
    """One connection: TLS, login, send; the recipients refused (address -> code, reply)."""
    smtp = email.smtp
    host, port, timeout = smtp.host, smtp.effective_port, smtp.timeout_seconds
    if smtp.security == "ssl":
        client = (smtp_class or smtplib.SMTP_SSL)(host, port, timeout=timeout, context=context)
    else:
        client = (smtp_class or smtplib.SMTP)(host, port, timeout=timeout)
    with client:
        if smtp.security == "starttls":
            client.ehlo()
            client.starttls(context=context)
            client.ehlo()
        if smtp.username:
            client.login(smtp.username, password or "")
        try:
            return client.send_message(message, from_addr=email.sender, to_addrs=recipients)
        except smtplib.SMTPRecipientsRefused as exc:
            return dict(exc.recipients)


def _failure(exc: BaseException, smtp: SmtpOptions) -> tuple[bool, str]:
    """(transient?, what happened and what to change) for a failed attempt."""
    where = f"{smtp.host}:{smtp.effective_port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False, _certificate_text(exc, smtp, where)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return False, (f"{where} refused the login of {smtp.username!r} ({_reply_of(exc)}); check "
                       f"the password in the environment variable {smtp.password_env}")  # fmt: skip
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return False, _unsupported_text(exc, smtp, where)
    if isinstance(exc, smtplib.SMTPResponseException):
        transient = 400 <= exc.smtp_code < 500
        hint = ("; if the message is too large for the server, lower email.max_attachment_mb so "
                "the PDF is left out") if exc.smtp_code in (552, 554) else ""  # fmt: skip
        return transient, f"{where} answered {_reply_of(exc)}{hint}"
    if isinstance(exc, ssl.SSLError):
        return False, (f"the TLS handshake with {where} failed ({exc.reason or exc}); check "
                       "email.smtp.security and port: ssl for 465, starttls for 587")  # fmt: skip
    if isinstance(exc, socket.gaierror):
        return False, (f"cannot resolve the host name {smtp.host!r} ({exc.strerror}); check "
                       "email.smtp.host")  # fmt: skip
    if isinstance(exc, smtplib.SMTPServerDisconnected | OSError):
        return True, f"cannot talk to {where} ({_os_text(exc)}); check email.smtp.host and port"
    raise exc  # a bug, not a delivery failure: let the CLI report it as one


def _certificate_text(exc: ssl.SSLCertVerificationError, smtp: SmtpOptions, where: str) -> str:
    why = exc.verify_message or exc.reason or str(exc)
    if smtp.ca_file:
        fix = (f"check that email.smtp.ca_file ({smtp.ca_file}) holds the CA that signed the "
               f"server's certificate and that email.smtp.host ({smtp.host}) is a name in "
               "it")  # fmt: skip
    else:
        fix = ("if the server uses a private or self-signed certificate, set email.smtp.ca_file "
               "to the PEM file of the CA that signed it")  # fmt: skip
    return f"the TLS certificate of {where} could not be verified ({why}); {fix}"


def _unsupported_text(exc: smtplib.SMTPNotSupportedError, smtp: SmtpOptions, where: str) -> str:
    text = str(exc)
    if "STARTTLS" in text:
        return (f"{where} does not offer STARTTLS; use security: ssl (port 465) if it speaks TLS "
                "from the start")  # fmt: skip
    if "AUTH" in text:
        return (f"{where} offers no login on this connection; leave email.smtp.username out, or "
                "use security: starttls or ssl (many servers offer login only over "
                "TLS)")  # fmt: skip
    return f"{where}: {text}"


def _reply_of(exc: smtplib.SMTPResponseException) -> str:
    return _reply((exc.smtp_code, exc.smtp_error), None)


def _reply(value: tuple[int, bytes | str], password: str | None) -> str:
    code, text = value
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return _scrub(f"{code} {' '.join(text.split())}", password)


def _os_text(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _scrub(text: str, password: str | None) -> str:
    """`text` without the password (a server could echo what it was sent)."""
    return text.replace(password, "[redacted]") if password else text


# ---------------------------------------------------------------------------------------------
# sent.json


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The sent.json of a run folder, or None when its email has not been sent."""
    path = Path(folder) / MARKER_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s cannot be read (%s): taken as sent", path, exc)
        return {"sent_at": "an unknown time"}
    return data if isinstance(data, dict) else {"sent_at": "an unknown time"}


def write_marker(folder: Path, delivery: Delivery) -> Path:
    """Record a delivery in sent.json; a resend keeps the earlier ones under `previous`."""
    path = Path(folder) / MARKER_NAME
    earlier = read_marker(folder)
    data: dict[str, Any] = {
        "message_id": delivery.message_id,
        "sent_at": delivery.sent_at.isoformat(),
        "server": delivery.server,
        "accepted": list(delivery.accepted),
        "refused": delivery.refused,
        "attempts": delivery.attempts,
        "eml_sha256": hashlib.sha256((Path(folder) / EML_NAME).read_bytes()).hexdigest(),
    }
    if earlier is not None:
        data["previous"] = [*earlier.pop("previous", []), earlier]
    tmp = path.with_name(f".{MARKER_NAME}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def keep_marker(marker: dict[str, Any] | None, folder: Path) -> None:
    """Put back the sent.json of a run folder that a re-run of the same as-of replaced."""
    if marker is None:
        return
    path = Path(folder) / MARKER_NAME
    path.write_text(json.dumps(marker, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log.info("kept %s: this run's email was already sent", path)
