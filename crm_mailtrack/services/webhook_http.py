"""Where outbound webhooks may be sent, and the one HTTP POST that sends them.

A webhook URL is chosen by whoever holds an API token; without a guard it could make the
server POST to its own internal network (server-side request forgery): a database admin
page on loopback, a service on a private network, the cloud metadata service at
``169.254.169.254``. So, unless ``MAILTRACK_OUTBOUND_WEBHOOK_ALLOW_PRIVATE`` is set:

* at **creation** (``POST /api/webhooks``) a URL whose host is, or resolves to, a forbidden
  address is refused (422 naming ``url``); a name that does not resolve yet is accepted;
* at **delivery** the host is resolved again (DNS may have changed since) and every address
  is checked; the connection goes to the checked address itself (no second lookup between
  check and connect, so a name cannot answer "public" to the check and "internal" to the
  connect). A forbidden destination is an attempt that failed (its ``lastError`` says why,
  and it is logged); nothing is sent to it.

Forbidden (IPv4 and IPv6, by the stdlib :mod:`ipaddress` properties): loopback, private
(RFC 1918, RFC 4193 ``fc00::/7``, ...), link-local (``169.254.0.0/16`` with the metadata
address, ``fe80::/10``), multicast, unspecified, reserved, IPv6 site-local, and anything
else not globally reachable (``is_global`` false, such as ``100.64.0.0/10``); an IPv6
address embedding an IPv4 one (``::ffff:a.b.c.d``, 6to4) is judged by that one too.

Only ``http`` and ``https``. Environment proxy settings are not used (a proxy would make
the check see the proxy's address instead of the destination's); redirects are not
followed (a 3xx is a failed attempt).
"""
from __future__ import annotations

import base64
import http.client
import ipaddress
import logging
import socket
import ssl
from typing import Any
from urllib.parse import unquote, urlsplit

logger = logging.getLogger("crm_mailtrack.webhooks")

#: Bytes of a receiver's answer read (and dropped); its body is never stored.
MAX_ANSWER_BYTES = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHECKS = ("is_loopback", "is_unspecified", "is_link_local", "is_multicast", "is_private", "is_reserved")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ForbiddenDestination(Exception):
    """The URL's host is, or resolves to, an address webhooks may not be sent to."""


def forbidden_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not receive webhooks (``"loopback"``, ``"private"``, ...), or
    ``None`` when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        for embedded in (address.ipv4_mapped, address.sixtofour):
            if embedded is not None and (reason := forbidden_reason(embedded)) is not None:
                return reason
        if address.is_site_local:
            return "site-local"
    for check in _CHECKS:
        if getattr(address, check):
            return check[3:].replace("_", "-")
    if not address.is_global:
        return "not globally reachable"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check_all(host: str, infos: list[Any]) -> None:
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        reason = forbidden_reason(address)
        if reason is not None:
            shown = f"{host} is" if _literal(host) is not None else f"{host} resolves to {address},"
            article = "an" if reason[0] in "aeiou" else "a"
            raise ForbiddenDestination(f"{shown} {article} {reason} address: webhooks are not sent there "
                                       f"(MAILTRACK_OUTBOUND_WEBHOOK_ALLOW_PRIVATE allows it)")


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """What is wrong with ``url`` as a webhook destination at creation, or ``None``.

    The host is resolved when it is a name; a name that does not resolve (yet) is accepted,
    since delivery checks again."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "Must be an absolute http(s) URL."
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname or any(c.isspace() for c in url):
        return "Must be an absolute http(s) URL."
    if allow_private:
        return None
    host = parts.hostname
    literal = _literal(host)
    try:
        if literal is not None:
            _check_all(host, [(None, None, None, None, (str(literal),))])
        else:
            try:
                infos = socket.getaddrinfo(host, port or _DEFAULT_PORTS[parts.scheme.lower()],
                                           type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                return None  # not resolvable now: checked again at each delivery
            _check_all(host, infos)
    except ForbiddenDestination as exc:
        return f"Not allowed: {exc}."
    return None


def resolve(host: str, port: int, *, allow_private: bool) -> list[Any]:
    """The ``getaddrinfo`` entries of ``host`` (TCP), every one checked unless
    ``allow_private``; :class:`ForbiddenDestination` if any is forbidden."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not allow_private:
        _check_all(host, infos)
    return infos


def _connect(infos: list[Any], timeout: float | None) -> socket.socket:
    """A TCP connection to the first of the checked addresses that answers."""
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError("no address to connect to")


class _HTTPConnection(http.client.HTTPConnection):
    """Connects to the addresses resolved and checked before (never looks the host up again)."""

    def __init__(self, host: str, port: int, timeout: float, infos: list[Any]) -> None:
        super().__init__(host, port, timeout=timeout)
        self._checked = infos

    def connect(self) -> None:
        self.sock = _connect(self._checked, self.timeout)


class _HTTPSConnection(http.client.HTTPSConnection):
    """As :class:`_HTTPConnection`, then TLS verified against the URL's host name."""

    def __init__(self, host: str, port: int, timeout: float, infos: list[Any], context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._checked = infos
        self._tls = context

    def connect(self) -> None:
        self.sock = self._tls.wrap_socket(_connect(self._checked, self.timeout), server_hostname=self.host)


def post(url: str, body: str, headers: dict[str, str], timeout: float, *,
         allow_private: bool = False) -> tuple[int | None, str | None]:
    """POST ``body`` to ``url`` (checked as the module docstring says); ``(status, error)``:
    the HTTP status if one came back, and what went wrong unless it was a 2xx."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        host, port = parts.hostname, parts.port or _DEFAULT_PORTS[scheme]
        if not host:
            raise ValueError("no host in the URL")
        infos = resolve(host, port, allow_private=allow_private)
    except ForbiddenDestination as exc:
        logger.warning("mailtrack webhook to %s refused: %s", url, exc)
        return None, f"Refused: {exc}"
    except (OSError, UnicodeError, ValueError, KeyError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    headers = {**headers, "Content-Type": "application/json", "User-Agent": "crm_mailtrack-webhooks"}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection = (
        _HTTPSConnection(host, port, timeout, infos, ssl.create_default_context()) if scheme == "https"
        else _HTTPConnection(host, port, timeout, infos))
    try:
        conn.request("POST", target, body=body.encode(), headers=headers)
        answer = conn.getresponse()
        answer.read(MAX_ANSWER_BYTES)
        status, reason = int(answer.status), answer.reason
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        conn.close()
    return (status, None) if 200 <= status < 300 else (status, f"HTTP {status} {reason}".strip())


__all__ = ["ForbiddenDestination", "forbidden_reason", "url_problem", "resolve", "post", "MAX_ANSWER_BYTES"]
