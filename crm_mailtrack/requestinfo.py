"""What the tracking routes learn from a request: its facts, not a verdict.

:func:`request_facts` gives the method, the IP (anonymized unless configured otherwise),
the user agent and the headers with which a client announces a prefetch or preview;
:mod:`.bots` decides from them whether a machine made the hit.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import NamedTuple

from flask import Request

MAX_USER_AGENT = 512

#: Headers a client announces a prefetch / preview fetch with (:mod:`.bots` reads their
#: values), as WSGI environ keys: read on every open and click.
_ANNOUNCING = (
    ("Purpose", "HTTP_PURPOSE"),
    ("Sec-Purpose", "HTTP_SEC_PURPOSE"),
    ("X-Moz", "HTTP_X_MOZ"),
    ("X-Purpose", "HTTP_X_PURPOSE"),
)


class RequestFacts(NamedTuple):
    """The facts of one tracking request that the verdict and the stored event use."""

    method: str
    ip: str | None
    user_agent: str | None
    #: ``(header name, value)`` of the prefetch/preview headers present (usually none)
    announced: tuple[tuple[str, str], ...] = ()


@lru_cache(maxsize=4096)
def anonymize_ip(addr: str | None, enabled: bool = True) -> str | None:
    """IPv4 to its /24 and IPv6 to its /48 network address (when ``enabled``).
    Cached: ``ipaddress`` parsing costs ~15 µs, a repeat visitor a dict lookup."""
    if not addr:
        return None
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if not enabled:
        return str(ip)
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


def request_facts(req: Request, anonymize: bool = True) -> RequestFacts:
    """The :class:`RequestFacts` of ``req``; the IP anonymized when ``anonymize``."""
    environ = req.environ
    announced = tuple((name, value) for name, key in _ANNOUNCING if (value := environ.get(key)))
    return RequestFacts(req.method, anonymize_ip(req.remote_addr, anonymize), user_agent(req), announced)


def user_agent(req: Request) -> str | None:
    ua = req.environ.get("HTTP_USER_AGENT")
    return ua[:MAX_USER_AGENT] if ua else None
