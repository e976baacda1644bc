"""How SNS certificates and subscription confirmations are fetched by default; a host
(or a test) replaces it with ``MAILTRACK_WEBHOOKS["ses"]["fetch"]``."""
from __future__ import annotations

#: Largest certificate or confirmation answer read.
MAX_FETCH_BYTES = 64 * 1024


def https_get(url: str) -> bytes:
    """The default fetch: an HTTPS GET with certificate verification and a 10 s timeout,
    reading at most :data:`MAX_FETCH_BYTES`."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - https only, host checked
        return bytes(resp.read(MAX_FETCH_BYTES + 1))
