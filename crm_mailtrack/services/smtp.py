"""The SMTP side of sending: ``MAILTRACK_SMTP_URL`` taken apart, and one reusable connection.

The URL: ``smtp://host:25`` (plain), ``smtps://host:465`` (implicit TLS) or
``smtp+starttls://user:pass@host:587``; user and password are percent-decoded. Query
parameters: ``timeout`` (seconds, default 30) and ``cafile`` (a CA bundle to verify the
server's certificate with, for a private CA).
"""
from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .. import config as cfg
from ..errors import ConfigurationError

_DEFAULT_PORTS = {"smtp": 25, "smtps": 465, "smtp+starttls": 587}


@dataclass(frozen=True)
class SMTPSettings:
    """``MAILTRACK_SMTP_URL`` taken apart."""

    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None
    timeout: float
    cafile: str | None

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cafile)


def parse_smtp_url(url: str) -> SMTPSettings:
    """Parse an ``smtp://``, ``smtps://`` or ``smtp+starttls://`` URL (ConfigurationError if bad)."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError
        port = parts.port or _DEFAULT_PORTS[scheme]
        query = parse_qs(parts.query)
        timeout = float(query.get("timeout", ["30"])[-1])
    except ValueError:
        raise ConfigurationError(
            f"{cfg.SMTP_URL} must look like smtp://host:25, smtps://host:465 or "
            "smtp+starttls://user:pass@host:587"
        ) from None
    return SMTPSettings(
        scheme=scheme,
        host=parts.hostname,
        port=port,
        username=None if parts.username is None else unquote(parts.username),
        password=None if parts.password is None else unquote(parts.password),
        timeout=timeout,
        cafile=query.get("cafile", [None])[-1],
    )


class Mailer:
    """One SMTP connection, opened on first use and reused for a batch (``send_due``).

    Before each further message the connection is checked with ``NOOP`` and reopened if the
    server dropped it; a failure *during* a transaction is final for that message (it may
    have been accepted), never retried.
    """

    def __init__(self, settings: SMTPSettings) -> None:
        self.settings = settings
        self._conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        conn: smtplib.SMTP
        if s.scheme == "smtps":
            conn = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=s.ssl_context())
        else:
            conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        try:
            if s.scheme == "smtp+starttls":
                conn.starttls(context=s.ssl_context())
            if s.username is not None:
                conn.login(s.username, s.password or "")
        except BaseException:
            conn.close()
            raise
        return conn

    def connection(self) -> smtplib.SMTP:
        if self._conn is not None:
            try:
                if self._conn.noop()[0] == 250:
                    return self._conn
            except (smtplib.SMTPException, OSError):
                pass
            self.close()
        self._conn = self._connect()
        return self._conn

    def deliver(self, mail: EmailMessage, sender: str, recipients: list[str]) -> dict[str, Any]:
        """Send one message; returns the refused recipients (as ``smtplib.sendmail``)."""
        return self.transact(self.connection(), mail, sender, recipients)

    def transact(self, conn: smtplib.SMTP, mail: EmailMessage, sender: str, recipients: list[str]) -> dict[str, Any]:
        """One mail transaction on ``conn`` (from :meth:`connection`): a failure here may
        come after the server accepted the message, unlike one while connecting."""
        try:
            return conn.send_message(mail, from_addr=sender, to_addrs=recipients)
        except smtplib.SMTPServerDisconnected:
            self._conn = None
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()

    def __enter__(self) -> Mailer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["SMTPSettings", "parse_smtp_url", "Mailer"]
