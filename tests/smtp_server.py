"""A real SMTP server for the email tests, run in its own process (aiosmtpd on 127.0.0.1).

    python tests/smtp_server.py --mode starttls --cert server.pem --key server.key \
        --user reportgen --password secret --out DIR [--fail-data N] [--refuse ADDR] [--defer ADDR]

It prints `READY <port>` once it accepts connections, and stops when its standard input is
closed. Every accepted message is recorded as DIR/<n>.eml (the bytes received) with DIR/<n>.json
(envelope sender and recipients, the login used, whether the session was encrypted).

- mode `starttls`: plain connection, STARTTLS required before MAIL and AUTH (port 587 style);
  `ssl`: TLS from the first byte (465 style); `plain`: no TLS (AUTH then allowed in clear).
- `--fail-data N`: the first N messages get `451 4.3.0` after DATA (a transient failure).
- `--refuse ADDR`: RCPT TO ADDR gets `550 5.1.1` (a permanent refusal), every time.
- `--defer ADDR`: RCPT TO ADDR gets `450 4.2.1` the first time, then is accepted.

The tests run it in a separate process because vl-convert (used when the report's email is
built) can deadlock with a server thread in the same process (ECOSYSTEM.md section 4).
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import threading
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Recorder:
    """The aiosmtpd handler: refuses or defers what it was told to, records the rest."""

    def __init__(self, out: Path, mode: str, fail_data: int, refuse: list[str], defer: list[str]):
        self.out, self.mode, self.fail_data = out, mode, fail_data
        self.refuse = {a.lower() for a in refuse}
        self.defer = {a.lower() for a in defer}
        self.count = 0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        """Refuse, defer once, or accept a recipient."""
        if address.lower() in self.refuse:
            return f"550 5.1.1 <{address}>: no such user here"
        if address.lower() in self.defer:
            self.defer.discard(address.lower())
            return f"450 4.2.1 <{address}>: mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        """Fail the first --fail-data messages with a 451, record the others."""
        with self.lock:
            if self.fail_data > 0:
                self.fail_data -= 1
                return "451 4.3.0 temporary local problem, try again later"
            self.count += 1
            number = self.count
        content = envelope.original_content or envelope.content
        (self.out / f"{number}.eml").write_bytes(content)
        login = session.auth_data.login.decode() if session.authenticated else None
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "login": login,
            "authenticated": bool(session.authenticated),
            "tls": self.mode == "ssl" or session.ssl is not None,
        }
        tmp = self.out / f".{number}.json.tmp"
        tmp.write_text(json.dumps(record), encoding="utf-8")
        tmp.replace(self.out / f"{number}.json")  # the .json appears complete, after the .eml
        return "250 2.0.0 Message accepted for delivery"


def authenticator(user: str, password: str):
    """Accept exactly one login; a wrong one is refused with 535 (handled=False: the server
    replies; with the default handled=True the client would wait for ever)."""

    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        return (
            AuthResult(success=True, auth_data=auth_data)
            if ok
            else AuthResult(success=False, handled=False)
        )

    return check


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["starttls", "ssl", "plain"], required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fail-data", type=int, default=0)
    parser.add_argument("--refuse", action="append", default=[])
    parser.add_argument("--defer", action="append", default=[])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    handler = Recorder(args.out, args.mode, args.fail_data, args.refuse, args.defer)
    options: dict = {
        "authenticator": authenticator(args.user, args.password),
        "auth_required": True,
    }
    if args.mode != "plain":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        if args.mode == "starttls":
            options.update(tls_context=context, require_starttls=True)
        else:
            options.update(ssl_context=context, auth_require_tls=False)
    else:
        options.update(auth_require_tls=False)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(),
                            server_hostname="mail.test", **options)  # fmt: skip
    controller.start()
    print(f"READY {controller.port}", flush=True)
    try:
        sys.stdin.read()  # until the test closes our standard input
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
