"""The public tracking routes' contract, as a table: for ``/t/c``, ``/t/o``, ``/t/u`` and
``/t/h`` and each method a client sends (GET, HEAD, POST, OPTIONS), the status, the headers
that matter (``Cache-Control``, ``Referrer-Policy``, ``X-Robots-Tag``, ``Retry-After``,
``Location``, ``Allow``), the body, and what is stored (nothing, a machine's event, a
person's), with the database up and with it unreachable.

Requests go over a real socket to werkzeug's threaded server (bound to port 0, the server
reports its port), read with ``http.client``: HEAD and OPTIONS are what a real client gets.
"""
from __future__ import annotations

import contextlib
import http.client
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from werkzeug.serving import make_server

from crm_mailtrack import Message
from crm_mailtrack.models import dnc, events
from crm_mailtrack.tracking import PIXEL

from apihelpers import BROWSER
from conftest import path_of, tracked_paths
from journalhelpers import outage_app  # noqa: F401 - fixture: the same host with its database unreachable

DEST = "https://dest.test/landing?a=1"
ONE_CLICK = ("application/x-www-form-urlencoded", b"List-Unsubscribe=One-Click")
MULTIPART = ("multipart/form-data; boundary=XyZ",
             b'--XyZ\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\nOne-Click\r\n--XyZ--\r\n')
EMPTY = ("application/x-www-form-urlencoded", b"")

ABSENT = None


def no_store(value: str | None) -> bool:
    return value is not None and "no-store" in [d.strip() for d in value.split(",")]


def seconds(value: str | None) -> bool:
    return value is not None and value.isdigit() and int(value) > 0


def methods(*names: str) -> Callable[[str | None], bool]:
    return lambda value: value is not None and {m.strip() for m in value.split(",")} == set(names)


def html_with_form(body: bytes) -> bool:
    return body.startswith(b"<!doctype html>") and re.search(rb'<form[^>]*method="post"', body) is not None


def html_done(body: bytes) -> bool:
    return body.startswith(b"<!doctype html>") and b"unsubscribed" in body and b"<form" not in body


def html_page(body: bytes) -> bool:
    return body.startswith(b"<!doctype html>")


def anything(_: Any) -> bool:
    return True


NOT_ALLOWED = {"status": 405, "Allow": methods("GET", "HEAD", "OPTIONS"), "body": anything, "stored": []}
OPTIONS = {"status": 200, "Allow": methods("GET", "HEAD", "OPTIONS"), "body": b"", "stored": []}
ROBOTS = "noindex"

#: (route, method, request body) -> what the client gets and what is stored. A header not
#: named in a row must be absent.
CONTRACT: dict[tuple[str, str, Any], dict[str, Any]] = {
    ("click", "GET", None): {"status": 302, "Location": DEST, "Cache-Control": no_store,
                             "Referrer-Policy": "no-referrer", "body": b"", "stored": ["person click"]},
    ("click", "HEAD", None): {"status": 302, "Location": DEST, "Cache-Control": no_store,
                              "Referrer-Policy": "no-referrer", "body": b"",
                              "stored": ["machine click (head-request)"]},
    ("click", "POST", None): NOT_ALLOWED,
    ("click", "OPTIONS", None): OPTIONS,
    ("open", "GET", None): {"status": 200, "Cache-Control": no_store, "body": PIXEL, "stored": ["person open"]},
    ("open", "HEAD", None): {"status": 200, "Cache-Control": no_store, "body": b"",
                             "stored": ["machine open (head-request)"]},
    ("open", "POST", None): NOT_ALLOWED,
    ("open", "OPTIONS", None): OPTIONS,
    ("unsub", "GET", None): {"status": 200, "Cache-Control": no_store, "X-Robots-Tag": ROBOTS,
                             "body": html_with_form, "stored": []},
    ("unsub", "HEAD", None): {"status": 200, "Cache-Control": no_store, "X-Robots-Tag": ROBOTS,
                              "body": b"", "stored": []},
    ("unsub", "POST", ONE_CLICK): {"status": 200, "Cache-Control": no_store, "X-Robots-Tag": ROBOTS,
                                   "body": html_done, "stored": ["unsubscribe (one-click)", "DNC"]},
    ("unsub", "POST", MULTIPART): {"status": 200, "Cache-Control": no_store, "X-Robots-Tag": ROBOTS,
                                   "body": html_done, "stored": ["unsubscribe (one-click)", "DNC"]},
    ("unsub", "POST", EMPTY): {"status": 200, "Cache-Control": no_store, "X-Robots-Tag": ROBOTS,
                               "body": html_done, "stored": ["unsubscribe (form)", "DNC"]},
    ("unsub", "OPTIONS", None): {**OPTIONS, "Allow": methods("GET", "HEAD", "POST", "OPTIONS")},
    ("honeypot", "GET", None): {"status": 200, "Cache-Control": no_store, "X-Robots-Tag": ROBOTS,
                                "body": b"", "stored": ["machine click (honeypot)"]},
    ("honeypot", "HEAD", None): {"status": 200, "Cache-Control": no_store, "X-Robots-Tag": ROBOTS,
                                 "body": b"", "stored": ["machine click (honeypot)"]},
    ("honeypot", "POST", None): NOT_ALLOWED,
    ("honeypot", "OPTIONS", None): OPTIONS,
}

UNAVAILABLE = {"status": 503, "Cache-Control": no_store, "Retry-After": seconds, "X-Robots-Tag": anything,
               "body": html_page, "stored": []}
#: With the database unreachable: clicks still redirect and the pixel still answers (their
#: events go to the journal; "stored" is what a replay then writes), the unsubscribe page
#: and the unsubscribe answer 503 with Retry-After, never a 200.
CONTRACT_DOWN: dict[tuple[str, str, Any], dict[str, Any]] = {
    **CONTRACT,
    ("unsub", "GET", None): UNAVAILABLE,
    ("unsub", "HEAD", None): {**UNAVAILABLE, "body": b""},
    ("unsub", "POST", ONE_CLICK): UNAVAILABLE,
    ("unsub", "POST", MULTIPART): UNAVAILABLE,
    ("unsub", "POST", EMPTY): UNAVAILABLE,
}

HEADERS = ("Location", "Cache-Control", "Referrer-Policy", "X-Robots-Tag", "Retry-After", "Allow")


@contextlib.contextmanager
def serving(app) -> Iterator[Callable[..., tuple[int, dict[str, str], bytes]]]:
    """``app`` on werkzeug's threaded server; yields ``send(method, path, body)``."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def send(method: str, path: str, body: tuple[str, bytes] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
        headers = dict(BROWSER)
        if body is not None:
            headers["Content-Type"] = body[0]
        try:
            conn.request(method, path, body=body[1] if body else None, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k: v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    try:
        yield send
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def links(app, contact: str) -> dict[str, str]:
    """The links of a fresh message to ``contact``, as found in the mail (the honeypot link
    included)."""
    p = tracked_paths(app, DEST, contact_id=contact)
    with app.app_context():
        html = app.extensions["mailtrack"].session.get(Message, p["id"]).html
    p["honeypot"] = path_of(re.search(r'href="([^"]+/t/h/[^"]+)"', html).group(1))
    return p


def stored(app, message_id: str) -> list[str]:
    """What the database holds about ``message_id``, in words."""
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.type, events.c.is_machine, events.c.machine_reason, events.c.details)
                            .where(events.c.message_id == message_id, events.c.type != "dnc_added")).all()
        dnc_rows = conn.execute(sa.select(sa.func.count()).select_from(dnc).where(dnc.c.channel_id == message_id)).scalar()
    out = []
    for type_, machine, reason, details in rows:
        if type_ == "unsubscribe":
            out.append(f"unsubscribe ({(details or {}).get('method')})")
        elif machine:
            out.append(f"machine {type_} ({reason})")
        else:
            out.append(f"person {type_}")
    return sorted(out) + ["DNC"] * dnc_rows


def mismatches(key: tuple[str, str, Any], want: dict[str, Any], got: tuple[int, dict[str, str], bytes]) -> list[str]:
    status, headers, body = got
    out = []
    if status != want["status"]:
        out.append(f"status {status} != {want['status']}")
    for name in HEADERS:
        expected, value = want.get(name, ABSENT), headers.get(name)
        ok = expected(value) if callable(expected) else value == expected
        if not ok:
            out.append(f"{name}: {value!r} (want {getattr(expected, '__name__', expected)!r})")
    check = want["body"]
    if not (check(body) if callable(check) else body == check):
        out.append(f"body {body[:60]!r}")
    return [f"{key[0]} {key[1]} {'' if key[2] is None else key[2][1][:26]}: {m}" for m in out]


def test_the_contract_with_the_database_up(make_app):
    app = make_app()
    problems = []
    with serving(app) as send:
        for n, (key, want) in enumerate(CONTRACT.items()):
            route, method, body = key
            p = links(app, f"c{n}")
            problems += mismatches(key, want, send(method, p[route], body))
            if stored(app, p["id"]) != want["stored"]:
                problems.append(f"{route} {method}: stored {stored(app, p['id'])} != {want['stored']}")
    assert problems == []


def test_the_contract_with_the_database_unreachable(make_app, outage_app):  # noqa: F811
    """The same requests to the host's deployment whose database cannot be reached; then a
    replay on the healthy one stores exactly what the journal kept."""
    app = make_app()
    down = outage_app(app.config["MAILTRACK_JOURNAL_PATH"])
    problems, sent = [], []
    with serving(down) as send:
        for n, (key, want) in enumerate(CONTRACT_DOWN.items()):
            route, method, body = key
            p = links(app, f"c{n}")
            problems += mismatches(key, want, send(method, p[route], body))
            sent.append((key, p["id"], want["stored"]))
    assert problems == []
    result = app.test_cli_runner().invoke(args=["mailtrack", "replay-journal"])
    assert result.exit_code == 0, result.output
    assert {key: stored(app, mid) for key, mid, _ in sent} == {key: want for key, _, want in sent}
