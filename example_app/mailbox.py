"""The demo's local SMTP server (aiosmtpd, in a thread) and its mailbox.

Everything the CRM sends to ``smtp://127.0.0.1:<port>`` lands in the ``inbox_mail``
table, where the Inbox page shows it the way a recipient's mail client would: opening a
mail loads the open pixel, clicking a link goes through the real click redirect.
"""
from __future__ import annotations

import email
import email.policy
import socket
import threading
from typing import Any

from flask import Flask

from .models import InboxMail, db


def parse_mail(raw: bytes) -> dict[str, Any]:
    """The fields of ``InboxMail`` from a raw RFC 5322 message."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    html = text = None
    for part in msg.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        ctype = part.get_content_type()
        if ctype == "text/html" and html is None:
            html = part.get_content()
        elif ctype == "text/plain" and text is None:
            text = part.get_content()
    return {
        "subject": str(msg.get("Subject", "")),
        "message_id": str(msg.get("Message-ID", "")) or None,
        "list_unsubscribe": str(msg.get("List-Unsubscribe", "")) or None,
        "html": html,
        "text": text,
        "size": len(raw),
    }


def store_mail(app: Flask, mail_from: str, rcpt_tos: list[str], raw: bytes) -> int:
    """Save a received mail; returns its id."""
    with app.app_context():
        row = InboxMail(mail_from=mail_from, rcpt_to=", ".join(rcpt_tos), **parse_mail(raw))
        db.session.add(row)
        db.session.commit()
        return row.id


class _Handler:
    """aiosmtpd handler: every accepted message goes to the mailbox table of ``app``."""

    def __init__(self) -> None:
        self.app: Flask | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.app is None:
            return "451 Mailbox not ready, try again later"
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        store_mail(self.app, envelope.mail_from or "", list(envelope.rcpt_tos), content)
        return "250 Message accepted for delivery"


class LocalSMTPServer:
    """A loopback SMTP server (aiosmtpd's ``SMTP`` protocol on an asyncio loop in a
    background thread).

    It can start before the app exists (the app's ``MAILTRACK_SMTP_URL`` needs its port):
    ``LocalSMTPServer(port=None).start()``, then ``create_app(...)``, then ``.app = app``.
    Without a fixed port the OS picks one when the socket is bound (port 0), and the server
    listens on that very socket: no other process can take the port in between.
    """

    def __init__(self, app: Flask | None = None, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port
        self._handler = _Handler()
        self._handler.app = app
        self._loop: Any = None
        self._thread: threading.Thread | None = None

    @property
    def app(self) -> Flask | None:
        return self._handler.app

    @app.setter
    def app(self, app: Flask) -> None:
        self._handler.app = app

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> LocalSMTPServer:
        """Bind (``OSError`` when a fixed port is taken), listen, and serve in a thread."""
        import asyncio

        from aiosmtpd.smtp import SMTP

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((self.host, self.port or 0))
            sock.listen()
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            server = loop.run_until_complete(loop.create_server(lambda: SMTP(self._handler), sock=sock))
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                loop.run_until_complete(server.wait_closed())
                loop.close()

        self._loop, self._thread = loop, threading.Thread(target=serve, name="local-smtp", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the local SMTP server did not start")
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = self._loop = None
