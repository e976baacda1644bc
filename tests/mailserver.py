"""A real SMTP server on loopback for the sending tests (aiosmtpd), recording what it
receives (the envelope, the MAIL FROM parameters and the raw bytes of DATA), optionally
refusing recipients, speaking STARTTLS/SMTPS, requiring AUTH, or not offering SMTPUTF8.

No free-port race: the listening socket is bound to port 0 first and handed to asyncio's
``create_server(sock=...)``, which serves aiosmtpd's ``SMTP`` protocol in a thread."""
from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port where nothing listens, for as long as the block runs: the socket is
    bound (so no one else gets the port) but never listens, so connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    #: The DATA bytes exactly as they came over the wire (dot-unstuffed, CRLF line ends).
    raw: bytes = b""
    #: The MAIL FROM parameters (``SMTPUTF8``, ``BODY=8BITMIME`` ...).
    mail_options: list[str] = field(default_factory=list)


@dataclass
class RecordingHandler:
    """Accepts mail (recording it) except for addresses in ``refuse``."""

    refuse: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Called (in the server's thread) when DATA has arrived, before the server answers.
    on_data: Callable[[], None] | None = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if address in self.refuse:
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.on_data is not None:
            self.on_data()
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), parsed,  # type: ignore[arg-type]
                                          envelope.original_content, list(envelope.mail_options)))
        return "250 2.0.0 Ok: queued"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login.decode(), auth_data.password.decode()
            self.logins.append((login, password))
            if (login, password) == ("crm@example.com", "p:ss/w@rd"):
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


class FlakyHandler(RecordingHandler):
    """Answers ``451`` to the first ``defer`` DATA commands (or to all, with ``defer=-1``),
    then accepts; records when each accepted message arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.defer = 0
        self.data_commands = 0
        self.arrivals: list[tuple[float, list[str]]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.data_commands += 1
            if self.defer != 0:
                self.defer -= 1
                return "451 4.3.0 Temporary local problem, try again later"
            self.arrivals.append((time.monotonic(), list(envelope.rcpt_tos)))
        return await super().handle_DATA(server, session, envelope)


class MailServer:
    """Start/stop wrapper; ``url`` is the MAILTRACK_SMTP_URL that reaches it. With
    ``smtputf8=False`` the server does not offer SMTPUTF8 and refuses ``MAIL FROM ... SMTPUTF8``."""

    def __init__(self, handler: RecordingHandler, *, scheme: str = "smtp", cert: tuple[str, str] | None = None,
                 auth: bool = False, smtputf8: bool = True) -> None:
        self.handler = handler
        self.scheme = scheme
        self.cert = cert
        self.ssl_context: ssl.SSLContext | None = None
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": smtputf8, "hostname": "mx.test"}
        if cert is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*cert)
            if scheme == "smtps":
                self.ssl_context = ctx
            else:
                kwargs["tls_context"] = ctx
                kwargs["require_starttls"] = True
        if auth:
            kwargs["authenticator"] = handler.authenticate
            kwargs["auth_required"] = True
        self.smtp_kwargs = kwargs
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None

    def url(self, userinfo: str = "") -> str:
        query = f"?cafile={self.cert[0]}&timeout=10" if self.cert else "?timeout=10"
        at = f"{userinfo}@" if userinfo else ""
        return f"{self.scheme}://{at}127.0.0.1:{self.port}{query}"

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(self.loop.create_server(
            lambda: SMTP(self.handler, **self.smtp_kwargs), sock=self.sock, ssl=self.ssl_context))
        ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(server.wait_closed())
            self.loop.close()

    def __enter__(self) -> MailServer:
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        if not ready.wait(30):
            raise RuntimeError("the test SMTP server did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(30)


def self_signed_cert(directory: Path) -> tuple[str, str] | None:
    """(cert, key) for 127.0.0.1 made with the openssl CLI, or ``None`` without it."""
    if shutil.which("openssl") is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


# -- fixtures of a server that can defer or refuse: a module takes them with
#    ``from mailserver import flaky_smtp, flaky_handler  # noqa: F401`` and asks for ``smtp``
#    and ``handler`` (which then stand for this server in that module) ----------------------


@pytest.fixture(scope="module", name="smtp")
def flaky_smtp() -> Iterator[MailServer]:
    with MailServer(FlakyHandler()) as srv:
        yield srv


@pytest.fixture(name="handler")
def flaky_handler(smtp: MailServer) -> FlakyHandler:
    h: FlakyHandler = smtp.handler  # type: ignore[assignment]
    h.received.clear()
    h.refuse.clear()
    h.arrivals.clear()
    h.defer = 0
    h.data_commands = 0
    return h

