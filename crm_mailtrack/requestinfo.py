"""What the tracking routes learn from a request: anonymized IP, user agent, and whether
the hit was made by a machine (HEAD request, link prefetch)."""
from __future__ import annotations

import ipaddress
from functools import lru_cache

from flask import Request

MAX_USER_AGENT = 512

#: Headers with which browsers and mail clients announce a prefetch / preview fetch, as
#: WSGI environ keys (what ``request.headers.get`` looks up, without its per-call key
#: building: these are read on every open and click).
_PREFETCH_HEADERS = (
    ("HTTP_PURPOSE", "prefetch"),  # Purpose
    ("HTTP_SEC_PURPOSE", "prefetch"),  # Sec-Purpose
    ("HTTP_X_MOZ", "prefetch"),  # X-Moz
    ("HTTP_X_PURPOSE", "preview"),  # X-Purpose
)


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


def machine_reason(req: Request) -> str | None:
    """A reason when the request itself shows it was made by a machine, else ``None``."""
    if req.method == "HEAD":
        return "head-request"
    environ = req.environ
    for key, token in _PREFETCH_HEADERS:
        value = environ.get(key)
        if value and token in value.lower():
            return "prefetch"
    return None


def user_agent(req: Request) -> str | None:
    ua = req.environ.get("HTTP_USER_AGENT")
    return ua[:MAX_USER_AGENT] if ua else None
