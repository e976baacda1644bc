"""``MAILTRACK_INBOX_URL`` taken apart: which mailbox ``flask mailtrack fetch-inbox`` reads.

``imaps://user:pass@host:993/INBOX`` (IMAP over TLS), ``imap+starttls://...:143/INBOX``,
``imap://...:143/INBOX`` (plain, for a server on the same host), ``pop3s://user:pass@host:995``,
``pop3+starttls://...:110`` and ``pop3://...:110``. User and password are percent-decoded
(``bounces%40crm.example.com``); the IMAP path is the mailbox (default ``INBOX``). Query
parameters: ``timeout`` (seconds, default 30) and ``cafile`` (a CA bundle that signed the
server's certificate, for a self-hosted server or a test; certificates are always verified).
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .. import config as cfg
from ..errors import ConfigurationError

DEFAULT_PORTS = {"imap": 143, "imap+starttls": 143, "imaps": 993, "pop3": 110, "pop3+starttls": 110, "pop3s": 995}
_SHAPE = ("imaps://user:password@host:993/INBOX, imap+starttls://..., imap://... (plain, a local server), "
          "pop3s://user:password@host:995 or pop3://...")


@dataclass(frozen=True)
class InboxSettings:
    """``MAILTRACK_INBOX_URL`` taken apart. ``str()`` and ``repr()`` never show the password."""

    scheme: str
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    #: The IMAP mailbox (``INBOX`` by default); ``None`` for POP3, which has one.
    mailbox: str | None
    timeout: float
    cafile: str | None

    @property
    def protocol(self) -> str:
        """``"imap"`` or ``"pop3"``."""
        return self.scheme[:4]

    @property
    def tls(self) -> str | None:
        """``"implicit"`` (imaps, pop3s), ``"starttls"`` or ``None`` (plain)."""
        if self.scheme.endswith("+starttls"):
            return "starttls"
        return "implicit" if self.scheme.endswith("s") else None

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the certificate and the host name, against ``cafile`` when given."""
        return ssl.create_default_context(cafile=self.cafile)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = "" if self.mailbox is None else "/" + quote(self.mailbox)
        return f"{self.scheme}://{quote(self.username, safe='')}@{host}:{self.port}{path}"


def parse_inbox_url(url: str) -> InboxSettings:
    """Parse a ``MAILTRACK_INBOX_URL`` (ConfigurationError naming the key if bad; the
    message never repeats the URL, which holds the password)."""
    def bad(why: str) -> ConfigurationError:
        return ConfigurationError(f"{cfg.INBOX_URL} {why}; it must look like {_SHAPE}.")

    if not isinstance(url, str):
        raise ConfigurationError(f"{cfg.INBOX_URL} must be a URL string such as imaps://user:password@host:993/INBOX.")
    if any(c.isspace() for c in url):
        raise bad("contains white space (percent-encode it: %20)")
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port
        query = parse_qs(parts.query, strict_parsing=bool(parts.query))
    except ValueError:
        raise bad("is not a valid URL (a bad port or query string?)") from None
    if scheme not in DEFAULT_PORTS:
        raise bad(f"has the scheme {scheme!r}" if scheme else "has no scheme")
    if not parts.hostname:
        raise bad("names no host")
    if not parts.username or parts.password is None:
        raise bad("needs a user and a password (user:password@host)")
    if parts.fragment:
        raise bad("has a fragment (#...): percent-encode a '#' in the password as %23")
    unknown = set(query) - {"timeout", "cafile"}
    if unknown:
        raise bad(f"has unknown query parameters {sorted(unknown)} (known: timeout, cafile)")
    try:
        timeout = float(query.get("timeout", ["30"])[-1])
    except ValueError:
        timeout = -1.0
    if not 0 < timeout < 3600:
        raise bad("has a bad timeout (seconds, more than 0 and less than 3600)")
    path = unquote(parts.path.lstrip("/"))
    if scheme.startswith("pop3"):
        if path:
            raise bad("has a path, but a POP3 server has one mailbox")
        mailbox = None
    else:
        mailbox = path or "INBOX"
        if any(ord(c) < 32 or ord(c) > 126 for c in mailbox):
            raise bad("names a mailbox that is not printable ASCII")
    return InboxSettings(
        scheme=scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORTS[scheme],
        username=unquote(parts.username),
        password=unquote(parts.password),
        mailbox=mailbox,
        timeout=timeout,
        cafile=query.get("cafile", [None])[-1],
    )


__all__ = ["DEFAULT_PORTS", "InboxSettings", "parse_inbox_url"]
