"""The summary email: built from the report, written as email.eml, delivered to a real SMTP server.

The server is aiosmtpd in another process (tests/smtp_server.py) on 127.0.0.1, with STARTTLS or
implicit TLS under a certificate signed by a CA made here, and AUTH required. Messages are read
back from what the server recorded and checked part by part.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import ipaddress
import json
import re
import shutil
import ssl
import subprocess
import sys
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import reportgen
from reportgen.cli import cli
from reportgen.config import EmailSection, SmtpOptions
from reportgen.errors import ConfigError, DeliveryError
from reportgen.export import write_exports
from reportgen.mail import (
    CHART_SCALE,
    CHART_WIDTH,
    EML_NAME,
    MARKER_NAME,
    build_message,
    deliver,
    read_eml,
    render_charts,
    send_run,
    write_eml,
)

SERVER_SCRIPT = Path(__file__).with_name("smtp_server.py")
USER, PASSWORD = "reportgen", "s3cret-Pa55:word#1"
PASSWORD_ENV = "REPORTGEN_TEST_SMTP_PASSWORD"
TO = ["analytics@example.com", "ops@example.com"]
CC = ["ceo@example.com"]
BCC = ["audit@example.com"]
EVERYONE = TO + CC + BCC
SAMPLE_INPUT = {
    "path": "sample:online_retail",
    "date_formats": ["%Y-%m-%d %H:%M:%S"],
    "columns": {"customer_id": "CustomerID", "order_id": "InvoiceNo",
                "order_date": "InvoiceDate", "amount": None, "quantity": "Quantity",
                "unit_price": "UnitPrice"},
}  # fmt: skip
FAST_SEGMENTATION = {"k": 4, "stability_seeds": 2, "n_init": 1}
TREE_WITH_PDF = [
    "multipart/mixed",
    [
        ["multipart/alternative",
         ["text/plain",
          ["multipart/related", ["text/html", "image/png", "image/png", "image/png"]]]],
        "application/pdf",
    ],
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The test server and its certificates


def _certificate(subject: str, issuer: str, public_key, signer, extensions):
    """An X.509 certificate valid from an hour ago for a day, signed by `signer`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="session")
def tls(tmp_path_factory) -> dict[str, Path]:
    """A CA (self-signed) and a server certificate for 127.0.0.1 and localhost signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    no = dict.fromkeys(["content_commitment", "key_encipherment", "data_encipherment",
                        "key_agreement", "encipher_only", "decipher_only"], False)  # fmt: skip
    ca = _certificate("reportgen test CA", "reportgen test CA", ca_key.public_key(), ca_key, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **no), True),
        (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
    ])  # fmt: skip
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    cert = _certificate("127.0.0.1", "reportgen test CA", key.public_key(), ca_key, [
        (x509.SubjectAlternativeName(names), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **no), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
    ])  # fmt: skip
    folder = tmp_path_factory.mktemp("tls")
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    pem = serialization.Encoding.PEM
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["cert"].write_bytes(cert.public_bytes(pem))
    paths["key"].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))  # fmt: skip
    return paths


@dataclass
class SmtpServer:
    """A running tests/smtp_server.py process and the folder it records messages into."""

    process: subprocess.Popen
    port: int
    mode: str
    out: Path

    def received(self) -> list[tuple[dict, EmailMessage]]:
        """(envelope record, parsed message) of every message accepted so far, in order."""
        records = sorted(self.out.glob("*.json"), key=lambda p: int(p.stem))
        return [(json.loads(r.read_text()), _parse(r.with_suffix(".eml").read_bytes()))
                for r in records]  # fmt: skip

    def with_id(self, message_id: str) -> list[tuple[dict, EmailMessage]]:
        return [(env, msg) for env, msg in self.received() if msg["Message-ID"] == message_id]

    def stop(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(folder: Path, tls: dict[str, Path], mode: str, *extra: str) -> SmtpServer:
    out = folder / f"received-{mode}"
    log = (folder / f"server-{mode}.log").open("w")
    command = [sys.executable, str(SERVER_SCRIPT), "--mode", mode, "--cert", str(tls["cert"]),
               "--key", str(tls["key"]), "--user", USER, "--password", PASSWORD, "--out", str(out),
               *extra]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=log, text=True)  # fmt: skip
    line = process.stdout.readline()
    if not line.startswith("READY "):
        process.kill()
        raise RuntimeError(
            f"the SMTP test server did not start: {(folder / f'server-{mode}.log').read_text()}"
        )
    return SmtpServer(process, int(line.split()[1]), mode, out)


@pytest.fixture(scope="module")
def starttls_server(tmp_path_factory, tls):
    server = start_server(tmp_path_factory.mktemp("starttls"), tls, "starttls")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ssl_server(tmp_path_factory, tls):
    server = start_server(tmp_path_factory.mktemp("ssl"), tls, "ssl")
    yield server
    server.stop()


@pytest.fixture
def password(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    return PASSWORD


def _parse(data: bytes) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(data)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Configs, the report and run folders


def smtp_settings(server: SmtpServer | None, tls: dict[str, Path], **overrides) -> dict:
    """The email.smtp section for `server` (None: a closed port)."""
    settings = {
        "host": "127.0.0.1",
        "port": server.port if server else _closed_port(),
        "security": server.mode if server and server.mode != "plain" else "starttls",
        "username": USER,
        "password_env": PASSWORD_ENV,
        "ca_file": str(tls["ca"]),
        "timeout_seconds": 10,
        "retries": 2,
        "retry_backoff_seconds": 0,
    }
    return {**settings, **overrides}


def email_settings(smtp: dict, **overrides) -> dict:
    return {"sender": "reports@example.com", "sender_name": "Customer analytics", "to": TO,
            "cc": CC, "bcc": BCC, "reply_to": "team@example.com", "smtp": smtp,
            **overrides}  # fmt: skip


def write_config(folder: Path, email: dict | None, name: str = "config.yaml") -> Path:
    data = {
        "report": {"name": "Online Retail segmentation"},
        "input": SAMPLE_INPUT,
        "segmentation": FAST_SEGMENTATION,
        "output": {"dir": str(folder / "output")},
        "email": email,
    }
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def tiny_pdf() -> bytes:
    """A real one-page PDF (WeasyPrint), standing in for report.pdf."""
    from weasyprint import HTML

    return HTML(string="<h1>Customer segmentation</h1><p>The full report.</p>").write_pdf()


@pytest.fixture(scope="module")
def report(tmp_path_factory, tls):
    """The sample data's report, with an email section (the server's port is not used)."""
    folder = tmp_path_factory.mktemp("report")
    smtp = smtp_settings(None, tls)
    config = reportgen.load_config(write_config(folder, email_settings(smtp)))
    return reportgen.compute_report(config)


@pytest.fixture(scope="module")
def parts(report):
    """The report's context and the email's rendered charts, built once (they take seconds)."""
    from reportgen.context import build_context

    ctx = build_context(report)
    return {"ctx": ctx, "charts": render_charts(ctx, report, "example.com")}


def build(report, parts, pdf: bytes | None = None, **kwargs) -> EmailMessage:
    """build_message with the module's context and charts."""
    return build_message(report, pdf, ctx=kwargs.get("ctx", parts["ctx"]), charts=parts["charts"])


@pytest.fixture(scope="module")
def message(report, parts) -> EmailMessage:
    """The email of the sample report with a (tiny, real) PDF attached."""
    return build(report, parts, tiny_pdf())


@pytest.fixture(scope="module")
def built_folder(tmp_path_factory, report, parts) -> Path:
    """A complete run folder with report.pdf, its email.eml built with the PDF attached."""
    folder = tmp_path_factory.mktemp("built") / report.config.report.report_slug / report.run_name
    folder.mkdir(parents=True)
    pdf = tiny_pdf()
    (folder / "report.pdf").write_bytes(pdf)
    without_email = report.config.model_copy(update={"email": None})
    write_exports(dataclasses.replace(report, config=without_email), folder)
    write_eml(build(report, parts, pdf), folder / EML_NAME)
    return folder


@pytest.fixture
def run_folder(tmp_path, built_folder) -> Path:
    """A fresh copy of the built run folder (each test may send it)."""
    copy = tmp_path / "output" / built_folder.parent.name / built_folder.name
    shutil.copytree(built_folder, copy)
    return copy


def invoke(*args: str) -> tuple[int, list[str], str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout.splitlines(), result.stderr


def tree(part: EmailMessage) -> object:
    """The MIME tree as nested [content type, [children]] lists."""
    if part.is_multipart():
        return [part.get_content_type(), [tree(p) for p in part.iter_parts()]]
    return part.get_content_type()


def bodies(message: EmailMessage) -> str:
    """Every text part of the message, decoded, plus the headers."""
    texts = [str(v) for v in message.values()]
    texts += [p.get_content() for p in message.walk() if p.get_content_maintype() == "text"]
    return "\n".join(texts)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_no_customer_ids(text: str, report) -> None:
    ids = set(report.rfm.frame["customer_id"].to_list())
    found = ids & set(re.findall(r"[A-Za-z0-9_-]+", text))
    assert not found, f"customer ids in the email: {sorted(found)[:5]}"


# ---------------------------------------------------------------------------------------------
# Building the message (no server)


def test_message_tree_headers_and_bcc(report, message):
    """mixed[alternative[plain, related[html, 3 PNG]], pdf]; the headers; no Bcc header."""
    assert tree(message) == TREE_WITH_PDF
    assert message["Subject"] == "Online Retail segmentation: 1 Dec 2010 \u2013 9 Dec 2011"
    assert message["From"] == "Customer analytics <reports@example.com>"
    assert message["To"] == ", ".join(TO)
    assert message["Cc"] == ", ".join(CC)
    assert message["Reply-To"] == "team@example.com"
    assert message["Date"].datetime == report.generated_at
    assert re.fullmatch(r"<[^<>@\s]+@example\.com>", message["Message-ID"])
    assert message["Bcc"] is None
    assert BCC[0] not in message.as_string()


def test_every_cid_resolves_to_a_png_at_twice_the_width(message):
    """Each cid: in the HTML names a PNG part; images are 2x and at most 552 px wide."""
    html = message.get_body(("html",)).get_content()
    cids = re.findall(r'src="cid:([^"]+)"', html)
    parts = {p["Content-ID"]: p for p in message.walk() if p["Content-ID"]}
    assert len(cids) == 3 and {f"<{c}>" for c in cids} == set(parts)
    for cid in cids:
        png = parts[f"<{cid}>"].get_payload(decode=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert CHART_WIDTH * CHART_SCALE - 40 <= width <= CHART_WIDTH * CHART_SCALE
        tag = re.search(rf'<img src="cid:{re.escape(cid)}"[^>]*>', html).group(0)
        assert f'width="{round(width / CHART_SCALE)}"' in tag
        assert f'height="{round(height / CHART_SCALE)}"' in tag


def test_alt_texts_state_the_numbers(report, message):
    """With images blocked the reader still gets each segment's shares and the monthly peak."""
    html = message.get_body(("html",)).get_content()
    alts = re.findall(r'alt="([^"]*)"', html)
    top = max(report.segmentation.profiles, key=lambda p: p.revenue_share)
    assert f"{top.name} {top.share:.1%} of customers, {top.revenue_share:.1%} of revenue" in alts[0]
    monthly = report.eda.monthly.sort("revenue_minor")
    peak = monthly.row(-1, named=True)
    assert f"highest revenue £{round(peak['revenue_minor'] / 100):,} in " in alts[1]
    assert peak["month"].strftime("%b %Y") in alts[1]
    assert "; Dec 2011 (9 of 31 days): " in alts[1]  # the period ends on 9 December 2011
    assert alts[2].startswith("Customers buying per month, first-time (new) and returning")


def test_a_month_partly_in_the_period_is_never_the_lowest(report, parts):
    """Were the 9-day December the weakest month, the alt text still names a full month."""
    ctx = parts["ctx"]
    months = list(ctx.exploration.months)
    assert months[-1].partial and not any(m.partial for m in months[:-1])
    months[-1] = dataclasses.replace(months[-1], revenue_minor=100)
    lowest = min(months[:-1], key=lambda m: m.revenue_minor)
    exploration = dataclasses.replace(ctx.exploration, months=tuple(months))
    charts = render_charts(dataclasses.replace(ctx, exploration=exploration), report, "example.com")
    assert f"lowest £{round(lowest.revenue_minor / 100):,} in {lowest.month:%b %Y}" in charts[1].alt
    assert "; Dec 2011 (9 of 31 days): £1 from " in charts[1].alt


def test_a_month_partly_in_the_period_is_explained_under_its_charts(message):
    """The last bar (9 December) is lighter; the line under both monthly charts says why."""
    html = message.get_body(("html",)).get_content()
    note = "Lighter bars: months only partly in the period (Dec 2011: 9 of 31 days)."
    assert html.count(note) == 2


def test_html_is_inlined_self_contained_and_small(message):
    """Styles inlined (only @media kept), no script, no data: or remote URL, under Gmail's clip."""
    html = message.get_body(("html",)).get_content()
    styles = re.findall(r"<style[^>]*>(.*?)</style>", html, flags=re.DOTALL)
    assert len(styles) == 1 and styles[0].strip().startswith("@media")
    assert 'class="section' in html and 'style="padding:' in html.replace(": ", ":")
    assert "<script" not in html.lower() and "data:" not in html
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)
    assert len(html.encode()) < 102_000
    preheader = re.search(r"<body[^>]*>\s*<div style=\"([^\"]*)\">([^<]*)", html)
    assert "display:none" in preheader.group(1).replace(" ", "")
    assert preheader.group(2).startswith(
        "£8.9m from 4,338 customers, 1 Dec 2010 \u2013 9 Dec 2011."
    )


def test_text_part_has_the_summary(report, message):
    """The plain-text part carries the period, numbers, segments and recommendations."""
    text = message.get_body(("plain",)).get_content()
    summary = report.segmentation
    assert "1 Dec 2010 \u2013 9 Dec 2011" in text
    assert f"Customers        {report.rfm.frame.height:,}" in text
    for profile in summary.profiles:
        assert f"  {profile.name}: {profile.customers:,} customers ({profile.share:.1%})" in text
    first = summary.recommendations[0]
    assert "  1. " in text and f"£{round(first.revenue_at_stake_minor / 100):,} at stake" in text
    assert "This is the first report" in text


def test_no_customer_id_in_the_email(report, message):
    """Neither body nor any header carries a customer id."""
    assert_no_customer_ids(bodies(message), report)


def test_changes_since_the_previous_run_are_listed(report, parts):
    """With a previous run, its date and the change headlines replace the first-report line."""
    from reportgen import context

    changes = context.Changes(
        first_report=False, previous_as_of=dt.date(2011, 11, 30), k_before=4, k_now=4,
        headlines=("Champions grew by 5 customers (+2%) to 300 since 2011-11-30.",
                   "12 customers are new in this period and 3 are gone."),
    )  # fmt: skip
    message = build(report, parts, ctx=dataclasses.replace(parts["ctx"], changes=changes))
    for part in ("plain", "html"):
        body = message.get_body((part,)).get_content()
        assert "Compared with the report as of 30 Nov 2011:" in body
        assert "Champions grew by 5 customers (+2%) to 300 since 2011-11-30." in body
        assert "12 customers are new in this period and 3 are gone." in body
        assert "first report" not in body


def _with_limit(report, megabytes: float):
    email = report.config.email.model_copy(update={"max_attachment_mb": megabytes})
    return dataclasses.replace(report, config=report.config.model_copy(update={"email": email}))


def test_pdf_over_the_limit_is_left_out_with_a_note(report, parts):
    """A PDF above max_attachment_mb is not attached; both bodies say so and where it is."""
    pdf = b"%PDF-1.4\n" + b"0" * 60_000
    kept = build(_with_limit(report, 0.1), parts, pdf)
    assert tree(kept)[1][-1] == "application/pdf"
    left_out = build(_with_limit(report, 0.05), parts, pdf)
    assert tree(left_out)[0] == "multipart/alternative"  # no attachment: no mixed wrapper
    note = ("The full report (PDF, 60 KB) is larger than the 0.05 MB limit for attachments, so "
            "it is not attached: find it in the report folder as "
            f"online-retail-segmentation/{report.run_name}/report.pdf.")  # fmt: skip
    for part in ("plain", "html"):
        assert note in " ".join(left_out.get_body((part,)).get_content().split())


def test_without_a_pdf_the_email_says_so(report, parts):
    """No report.pdf in the run folder: no attachment and a sentence saying why."""
    message = build(report, parts)
    assert "application/pdf" not in str(tree(message))
    assert (
        "The PDF report was not written for this run" in message.get_body(("plain",)).get_content()
    )


# ---------------------------------------------------------------------------------------------
# The email settings


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"to": ["not-an-address"]}, "email.to.0: value is not a valid email address"),
        ({"subject": "{report_name} {when}"},
         "email.subject: unknown placeholder {when}; use {report_name}, {as_of}, {period}"),
        ({"smtp": {"username": "me"}},
         ("email.smtp.password_env: a username needs password_env, the name of the environment "
          "variable holding its password")),
        ({"smtp": {"host": "mail.example.com", "security": "none", "username": "me",
                   "password_env": "P"}},
         ("email.smtp.security: 'none' would send the password of 'me' unencrypted to "
          "mail.example.com; use starttls or ssl (security: none is for a relay on localhost)")),
        ({"smtp": {"password_env": "my password"}}, "email.smtp.password_env: String should match"),
    ],
)  # fmt: skip
def test_email_settings_are_validated(tmp_path, change, expected):
    """Addresses, subject placeholders and unsafe SMTP settings are config errors (exit 3)."""
    email = {"sender": "reports@example.com", "to": ["a@example.com"], **change}
    with pytest.raises(ConfigError) as error:
        reportgen.load_config(write_config(tmp_path, email))
    assert expected in str(error.value)


def test_missing_password_variable_stops_before_any_work(tmp_path, tls, monkeypatch):
    """run --send without the password variable: exit 3 naming it, nothing computed or written."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    config = write_config(tmp_path, email_settings(smtp_settings(None, tls)))
    code, stdout, stderr = invoke("run", "--config", config, "--send")
    assert code == 3
    assert (f"email.smtp.password_env: the environment variable {PASSWORD_ENV} is not set; set it "
            f"to the SMTP password of '{USER}' before sending") in stderr  # fmt: skip
    assert stdout == [] and not (tmp_path / "output").exists()


def test_tls_context_always_verifies(report):
    """The injected SMTP client gets a context that checks the certificate and the host name."""
    calls = []

    class FakeSMTP:
        def __init__(self, host, port, timeout):
            calls.append(("connect", host, port, timeout))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            calls.append(("quit",))

        def ehlo(self):
            calls.append(("ehlo",))

        def starttls(self, context):
            calls.append(("starttls", context.verify_mode, context.check_hostname))

        def login(self, user, password):
            calls.append(("login", user, password == PASSWORD))

        def send_message(self, message, from_addr, to_addrs):
            calls.append(("send", from_addr, tuple(to_addrs)))
            return {}

    email = EmailSection(sender="reports@example.com", to=TO, cc=CC, bcc=BCC + [TO[0].upper()],
                         smtp=SmtpOptions(host="mail.example.com", username=USER,
                                          password_env=PASSWORD_ENV))  # fmt: skip
    delivery = deliver(EmailMessage(), email, PASSWORD, smtp_class=FakeSMTP, sleep=pytest.fail)
    assert calls == [
        ("connect", "mail.example.com", 587, 30), ("ehlo",),
        ("starttls", ssl.CERT_REQUIRED, True), ("ehlo",), ("login", USER, True),
        ("send", "reports@example.com", tuple(EVERYONE)), ("quit",),
    ]  # fmt: skip
    assert delivery.accepted == tuple(EVERYONE) and delivery.refused == {}


# ---------------------------------------------------------------------------------------------
# Delivery to a real server


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tls, starttls_server):
    """`reportgen run --send` on the sample data, delivering over STARTTLS."""
    folder = tmp_path_factory.mktemp("cli-run")
    config = write_config(folder, email_settings(smtp_settings(starttls_server, tls)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PASSWORD_ENV, PASSWORD)
        code, stdout, stderr = invoke("run", "--config", config, "--send")
    return {"code": code, "stdout": stdout, "stderr": stderr, "config": config}


def test_run_send_delivers_to_every_recipient_over_starttls(cli_run, starttls_server, report):
    """run --send: exit 0, one message for To+Cc+Bcc, logged in over TLS, sent.json written."""
    assert cli_run["code"] == 0, cli_run["stderr"]
    folder = Path(cli_run["stdout"][0]).parent
    assert [Path(p).name for p in cli_run["stdout"]][-2:] == [EML_NAME, MARKER_NAME]
    marker = json.loads((folder / MARKER_NAME).read_text())
    received = starttls_server.with_id(marker["message_id"])
    assert len(received) == 1
    envelope, message = received[0]
    assert envelope == {"mail_from": "reports@example.com", "rcpt_tos": EVERYONE, "login": USER,
                        "authenticated": True, "tls": True}  # fmt: skip
    assert marker["accepted"] == EVERYONE and marker["refused"] == {} and marker["attempts"] == 1
    assert marker["server"] == f"127.0.0.1:{starttls_server.port} (starttls)"
    assert message["Bcc"] is None and BCC[0] not in str(message)
    html = message.get_body(("html",)).get_content()
    cids = {f"<{c}>" for c in re.findall(r'src="cid:([^"]+)"', html)}
    assert len(cids) == 3 and cids == {p["Content-ID"] for p in message.walk() if p["Content-ID"]}
    assert_no_customer_ids(bodies(message), report)
    eml = (folder / EML_NAME).read_bytes()
    assert PASSWORD.encode() not in eml and PASSWORD not in cli_run["stderr"]


def test_send_over_ssl_with_the_pdf_attached(run_folder, tls, ssl_server, password, report):
    """`reportgen send RUN_FOLDER` over implicit TLS: the tree with the PDF, which opens."""
    from pypdf import PdfReader

    config = write_config(run_folder.parents[2], email_settings(smtp_settings(ssl_server, tls)))
    code, stdout, stderr = invoke("send", run_folder, "--config", config)
    assert code == 0, stderr
    assert stdout == [str(run_folder / MARKER_NAME)]
    marker = json.loads((run_folder / MARKER_NAME).read_text())
    [(envelope, message)] = ssl_server.with_id(marker["message_id"])
    assert envelope["tls"] and envelope["authenticated"] and envelope["rcpt_tos"] == EVERYONE
    assert tree(message) == TREE_WITH_PDF
    attachment = next(message.iter_attachments())
    assert attachment.get_filename() == f"online-retail-segmentation-{report.run_name}.pdf"
    pdf = PdfReader(io.BytesIO(attachment.get_payload(decode=True)))
    assert len(pdf.pages) == 1 and "Customer segmentation" in pdf.pages[0].extract_text()
    assert_no_customer_ids(bodies(message), report)


def test_self_signed_certificate_is_refused_without_the_ca_file(run_folder, tls, starttls_server,
                                                                password):  # fmt: skip
    """Without email.smtp.ca_file the server's certificate fails: exit 5, files untouched."""
    smtp = smtp_settings(starttls_server, tls, ca_file=None)
    config = write_config(run_folder.parents[2], email_settings(smtp))
    before = files_of(run_folder)
    code, stdout, stderr = invoke("send", run_folder, "--config", config)
    assert code == 5 and stdout == []
    assert (f"email not sent: the TLS certificate of 127.0.0.1:{starttls_server.port} could not "
            "be verified (unable to get local issuer certificate); if the server uses a "
            "private or self-signed certificate, set email.smtp.ca_file to the PEM file of the CA "
            f"that signed it; the report files are in {run_folder}") in stderr  # fmt: skip
    assert files_of(run_folder) == before and not (run_folder / MARKER_NAME).exists()


def test_wrong_password_exits_5_without_showing_it(run_folder, tls, starttls_server, monkeypatch):
    """A refused login names the user and the variable to fix, never the password tried."""
    wrong = "wrong-Pa55word-xyz"
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    config = write_config(
        run_folder.parents[2], email_settings(smtp_settings(starttls_server, tls))
    )
    before = files_of(run_folder)
    code, _, stderr = invoke("send", run_folder, "--config", config)
    assert code == 5
    assert (f"email not sent: 127.0.0.1:{starttls_server.port} refused the login of '{USER}' "
            "(535 5.7.8 Authentication credentials invalid); check the password in the "
            f"environment variable {PASSWORD_ENV}") in stderr  # fmt: skip
    assert wrong not in stderr and PASSWORD not in stderr
    assert files_of(run_folder) == before
    assert wrong.encode() not in b"".join(before.values())


def test_refused_recipient_is_reported(tmp_path, run_folder, tls, password):
    """A recipient refused for good: the others get the message; exit 5 names the refusal."""
    server = start_server(tmp_path, tls, "starttls", "--refuse", "nobody@example.com")
    try:
        email = email_settings(smtp_settings(server, tls), to=[*TO, "nobody@example.com"])
        config = write_config(tmp_path, email)
        code, _, stderr = invoke("send", run_folder, "--config", config)
        received = server.received()
    finally:
        server.stop()
    assert code == 5
    assert ("sent to 4 of 5 recipients; refused: nobody@example.com (550 5.1.1 "
            "<nobody@example.com>: no such user here); fix the addresses in email.to/cc/bcc, then "
            f"`reportgen send {run_folder} --force` sends to everyone again") in stderr  # fmt: skip
    assert [env["rcpt_tos"] for env, _ in received] == [EVERYONE]
    marker = json.loads((run_folder / MARKER_NAME).read_text())
    assert marker["accepted"] == EVERYONE
    assert marker["refused"] == {
        "nobody@example.com": "550 5.1.1 <nobody@example.com>: no such user here"
    }


def _plain_email(port: int, tls: dict[str, Path], backoff: float) -> EmailSection:
    smtp = SmtpOptions(host="127.0.0.1", port=port, username=USER, password_env=PASSWORD_ENV,
                       ca_file=str(tls["ca"]), retries=3,
                       retry_backoff_seconds=backoff)  # fmt: skip
    return EmailSection(sender="reports@example.com", to=TO, cc=CC, smtp=smtp)


def _small_message(subject: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"], message["Message-ID"] = subject, f"<{subject}@example.com>"
    message.set_content("hello")
    return message


def test_transient_failures_are_retried_with_backoff(tmp_path, tls):
    """451 after DATA twice: retried after 0.5 s then 1 s (doubling), delivered once."""
    server = start_server(tmp_path, tls, "starttls", "--fail-data", "2")
    try:
        waits: list[float] = []
        delivery = deliver(_small_message("retry"), _plain_email(server.port, tls, 0.5), PASSWORD,
                           sleep=waits.append)  # fmt: skip
        received = server.received()
    finally:
        server.stop()
    assert waits == [0.5, 1.0]
    assert delivery.attempts == 3 and delivery.refused == {}
    assert delivery.accepted == (*TO, *CC)
    assert [env["rcpt_tos"] for env, _ in received] == [[*TO, *CC]]


def test_deferred_recipient_gets_it_on_the_retry(tmp_path, tls):
    """RCPT answered 450 for one recipient: the others get it at once, that one on the retry."""
    server = start_server(tmp_path, tls, "starttls", "--defer", CC[0])
    try:
        waits: list[float] = []
        delivery = deliver(_small_message("defer"), _plain_email(server.port, tls, 0.5), PASSWORD,
                           sleep=waits.append)  # fmt: skip
        received = server.received()
    finally:
        server.stop()
    assert waits == [0.5] and delivery.attempts == 2
    assert delivery.accepted == (*TO, *CC) and delivery.refused == {}
    assert [env["rcpt_tos"] for env, _ in received] == [TO, CC]


def test_unreachable_server_is_retried_then_exit_5(run_folder, tls, password):
    """Connection refused on every attempt: 1 + retries attempts, exit 5, files in place."""
    config = write_config(run_folder.parents[2], email_settings(smtp_settings(None, tls)))
    port = yaml.safe_load(config.read_text())["email"]["smtp"]["port"]
    before = files_of(run_folder)
    code, _, stderr = invoke("send", run_folder, "--config", config)
    assert code == 5
    assert stderr.count("retrying in 0 s") == 2
    assert (f"email not sent: cannot talk to 127.0.0.1:{port} (Connection refused); check "
            f"email.smtp.host and port (after 3 attempts); the report files are in {run_folder}"
            ) in stderr  # fmt: skip
    assert files_of(run_folder) == before


def test_backoff_doubles_between_attempts(tls):
    """The waits before the retries of an unreachable server: backoff, then doubled each time."""
    smtp = SmtpOptions(host="127.0.0.1", port=_closed_port(), retries=3, retry_backoff_seconds=2,
                       ca_file=str(tls["ca"]))  # fmt: skip
    waits: list[float] = []
    with pytest.raises(DeliveryError, match=r"\(after 4 attempts\)$"):
        deliver(EmailMessage(), EmailSection(sender="r@example.com", to=TO, smtp=smtp), None,
                sleep=waits.append)  # fmt: skip
    assert waits == [2, 4, 8]


def test_dry_run_writes_nothing_and_sends_nothing(run_folder, tls, starttls_server, password):
    """send --dry-run: prints the .eml that would go, connects to nobody, writes no sent.json."""
    config = write_config(
        run_folder.parents[2], email_settings(smtp_settings(starttls_server, tls))
    )
    before, count = files_of(run_folder), len(starttls_server.received())
    code, stdout, stderr = invoke("send", run_folder, "--config", config, "--dry-run")
    assert code == 0, stderr
    assert stdout == [str(run_folder / EML_NAME)]
    assert f"dry run: not sending {run_folder / EML_NAME}" in stderr
    assert f"to {', '.join(EVERYONE)} via 127.0.0.1:{starttls_server.port} (starttls)" in stderr
    assert files_of(run_folder) == before and len(starttls_server.received()) == count


def test_second_send_needs_force(run_folder, tls, starttls_server, password):
    """A sent run is refused (exit 2, nothing sent); --force sends it again with a new id."""
    config = write_config(
        run_folder.parents[2], email_settings(smtp_settings(starttls_server, tls))
    )
    assert invoke("send", run_folder, "--config", config)[0] == 0
    first = json.loads((run_folder / MARKER_NAME).read_text())
    count = len(starttls_server.received())

    code, stdout, stderr = invoke("send", run_folder, "--config", config)
    assert code == 2 and stdout == []
    assert (
        f"the email of {run_folder} was already sent at {first['sent_at']} to 4 recipients "
        f"({run_folder / MARKER_NAME}); not sent again: pass --force to send it again"
    ) in stderr
    assert len(starttls_server.received()) == count

    code, _, stderr = invoke("send", run_folder, "--config", config, "--force")
    assert code == 0, stderr
    second = json.loads((run_folder / MARKER_NAME).read_text())
    assert second["message_id"] != first["message_id"]
    assert second["previous"] == [first]
    assert len(starttls_server.with_id(second["message_id"])) == 1


def test_send_refuses_a_run_of_another_report(run_folder, tls, starttls_server, password):
    """The config's report differs from the run folder's: exit 2 before connecting."""
    config = write_config(
        run_folder.parents[2], email_settings(smtp_settings(starttls_server, tls))
    )
    data = yaml.safe_load(config.read_text())
    data["report"]["name"] = "Wholesale segmentation"
    config.write_text(yaml.safe_dump(data))
    code, _, stderr = invoke("send", run_folder, "--config", config)
    assert code == 2
    assert (
        f"{run_folder} is a run of report 'online-retail-segmentation' but the config is for "
        "'wholesale-segmentation'"
    ) in stderr
    assert not (run_folder / MARKER_NAME).exists()


def test_rerun_dry_run_keeps_the_marker_and_needs_no_password(cli_run, starttls_server,
                                                             monkeypatch):  # fmt: skip
    """run --dry-run of an as-of already sent: a new email.eml, sent.json kept, nothing sent,
    no password needed."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    folder = Path(cli_run["stdout"][0]).parent
    marker, eml = (folder / MARKER_NAME).read_text(), (folder / EML_NAME).read_bytes()
    count = len(starttls_server.received())
    code, stdout, stderr = invoke("run", "--config", cli_run["config"], "--dry-run")
    assert code == 0, stderr
    assert str(folder / EML_NAME) in stdout and str(folder / MARKER_NAME) not in stdout
    assert (folder / MARKER_NAME).read_text() == marker
    assert (folder / EML_NAME).read_bytes() != eml  # rebuilt: a new Message-ID
    assert f"the environment variable {PASSWORD_ENV} (the SMTP password) is not set" in stderr
    assert "dry run: the email of" in stderr and "was already sent at" in stderr
    assert len(starttls_server.received()) == count


def test_send_run_api_with_an_injected_client(run_folder, report):
    """send_run takes the SMTP client class, so a notebook or a test can send without a server."""
    sent = []

    class Recording:
        def __init__(self, host, port, timeout):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def ehlo(self):
            return None

        def starttls(self, context):
            return None

        def login(self, user, password):
            return None

        def send_message(self, message, from_addr, to_addrs):
            sent.append((message, list(to_addrs)))
            return {}

    paths = send_run(run_folder, report.config, password=PASSWORD, smtp_class=Recording)
    assert paths == [run_folder / MARKER_NAME]
    [(message, recipients)] = sent
    assert recipients == EVERYONE and tree(message) == TREE_WITH_PDF
    assert message["Subject"] == read_eml(run_folder / EML_NAME)["Subject"]


def test_templates_use_only_documented_fields():
    """email.html and email.txt read only fields of EmailContext (StrictUndefined fails the rest
    at render time; this names a misspelt field before any render)."""
    from reportgen.mail import EmailContext
    from reportgen.render import builtin_templates_dir

    fields = {f.name for f in dataclasses.fields(EmailContext)}
    for name in ("email.html", "email.txt"):
        source = (builtin_templates_dir() / name).read_text(encoding="utf-8")
        used = set(re.findall(r"\be\.([a-z_]+)", source))
        assert used and used <= fields, (name, sorted(used - fields))
