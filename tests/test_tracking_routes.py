"""The public tracking routes, answer by answer: click redirect, open pixel, one-click
unsubscribe (RFC 8058), machine flags and IP anonymization."""
from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack import DNCReason
from crm_mailtrack.models import dnc, events

from conftest import tracked_paths

DEST = "https://dest.test/landing?a=1&b=%2F&c=#part"


def tracked(app: Any, contact_id: str = "c1", campaign_id: str | None = "camp1") -> dict[str, Any]:
    return tracked_paths(app, DEST, campaign_id=campaign_id, contact_id=contact_id)


def rows(app: Any, table: sa.Table = events, **where: Any) -> list[Any]:
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        query = sa.select(table).where(*(table.c[k] == v for k, v in where.items()))
        return conn.execute(query.order_by(table.c.id)).all()


@pytest.fixture
def host(make_app):
    return make_app()


# -- click ---------------------------------------------------------------------------


def test_click_redirects_302_no_store_to_exactly_the_destination(host):
    p = tracked(host)
    client = host.test_client()
    resp = client.get(p["click"], headers={"User-Agent": "Mozilla/5.0 Test"},
                      environ_base={"REMOTE_ADDR": "198.51.100.23"})
    assert resp.status_code == 302
    assert resp.headers["Location"] == DEST
    assert "no-store" in resp.headers["Cache-Control"]
    assert "Set-Cookie" not in resp.headers
    (ev,) = rows(host)
    assert (ev.type, ev.message_id, ev.contact_id, ev.campaign_id, ev.url) == ("click", p["id"], "c1", "camp1", DEST)
    assert ev.email == "c1@example.com" and ev.link_id and ev.user_agent == "Mozilla/5.0 Test"
    assert ev.is_machine is False and ev.machine_reason is None


def test_each_click_and_open_gets_its_own_random_uuid(host, recorded_signals):
    """An event's ``uid`` (what makes a journal replay idempotent) is a random UUID, version 4
    in RFC 4122 layout, hex without dashes; the signal's event carries the stored one."""
    import uuid

    p = tracked(host)
    client = host.test_client()
    for path in [p["click"], p["open"]] * 6:  # a few: a wrong bit shows in half of them
        client.get(path)
    stored = [ev.uid for ev in rows(host)]
    assert len(stored) == len(set(stored)) == 12
    for uid in stored:
        parsed = uuid.UUID(hex=uid)
        assert parsed.hex == uid and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    signalled = [kw["event"].uid for kw in recorded_signals.of("link_clicked") + recorded_signals.of("email_opened")]
    assert sorted(signalled) == sorted(stored)


def test_click_ignores_extra_query_parameters(host):
    p = tracked(host)
    resp = host.test_client().get(p["click"] + "?url=https://evil.test/&next=//evil.test")
    assert resp.status_code == 302 and resp.headers["Location"] == DEST


def test_click_never_answers_301(host):
    p = tracked(host)
    for _ in range(3):
        assert host.test_client().get(p["click"]).status_code == 302
    assert len(rows(host, type="click")) == 3


def test_head_redirects_but_is_a_machine_event(host):
    p = tracked(host)
    resp = host.test_client().head(p["click"])
    assert resp.status_code == 302 and resp.headers["Location"] == DEST
    (ev,) = rows(host)
    assert ev.type == "click" and ev.is_machine is True and ev.machine_reason == "head-request"


PREFETCH = [{"Purpose": "prefetch"}, {"Sec-Purpose": "prefetch"}, {"Sec-Purpose": "prefetch;prerender"},
            {"X-Moz": "prefetch"}]


def test_prefetch_is_a_machine_event(host):
    for headers in PREFETCH:
        p = tracked(host)
        resp = host.test_client().get(p["click"], headers=headers)
        assert resp.status_code == 302 and resp.headers["Location"] == DEST
        (ev,) = rows(host, message_id=p["id"])
        assert ev.is_machine is True and ev.machine_reason, headers


def test_click_of_an_erased_message_still_redirects(host):
    p = tracked(host)
    with host.app_context():
        host.extensions["mailtrack"].extension.erase_contact("c1")
    resp = host.test_client().get(p["click"])
    assert resp.status_code == 302 and resp.headers["Location"] == DEST
    assert rows(host) == []


def test_click_and_open_of_an_erased_message_answer_and_signal_nothing_to_subscribers(host, recorded_signals):
    """With signal subscribers connected, a hit on an erased message's links still gets
    its redirect and pixel; nothing is stored, so nothing is announced."""
    p = tracked(host)
    with host.app_context():
        host.extensions["mailtrack"].extension.erase_contact("c1")
    recorded_signals.calls.clear()
    client = host.test_client()
    resp = client.get(p["click"])
    assert resp.status_code == 302 and resp.headers["Location"] == DEST
    assert _is_pixel(client.get(p["open"]))
    assert rows(host) == [] and recorded_signals.calls == []


# -- open pixel ------------------------------------------------------------------------


def _is_pixel(resp: Any) -> bool:
    return (resp.status_code == 200 and resp.mimetype == "image/gif" and resp.data.startswith(b"GIF89a")
            and "no-store" in resp.headers["Cache-Control"])


def test_open_pixel_records_a_valid_open(host):
    p = tracked(host)
    resp = host.test_client().get(p["open"])
    assert _is_pixel(resp) and "Set-Cookie" not in resp.headers
    (ev,) = rows(host)
    assert (ev.type, ev.message_id, ev.contact_id, ev.url) == ("open", p["id"], "c1", None)


def test_open_pixel_answers_for_any_token(host):
    tracked(host)
    for token in ("garbage", "a.b.c", "x" * 5000, "%FF%FE", "...", "WyJ4Il0.aaaa.bbbb"):
        assert _is_pixel(host.test_client().get(f"/mailtrack/t/o/{token}")), token
    assert rows(host) == []


# -- unsubscribe -----------------------------------------------------------------------


def test_unsubscribe_get_shows_a_form_and_changes_nothing(host):
    p = tracked(host)
    resp = host.test_client().get(p["unsub"])
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    body = resp.get_data(as_text=True)
    assert re.search(r'<form[^>]*method="post"', body)
    assert "c1@example.com" not in body  # the address is masked
    assert rows(host) == [] and rows(host, dnc) == []


@pytest.mark.parametrize("kind", ["urlencoded", "multipart", "empty"])
def test_one_click_unsubscribe_post(host, kind):
    p = tracked(host)
    client = host.test_client(use_cookies=False)
    if kind == "urlencoded":
        resp = client.post(p["unsub"], data="List-Unsubscribe=One-Click",
                           content_type="application/x-www-form-urlencoded")
    elif kind == "multipart":
        resp = client.post(p["unsub"], data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data")
    else:
        resp = client.post(p["unsub"])
    assert resp.status_code == 200 and "Location" not in resp.headers
    (row,) = rows(host, dnc)
    assert (row.contact_id, row.channel, row.reason, row.channel_id) == ("c1", "email", int(DNCReason.UNSUBSCRIBED), p["id"])
    (ev,) = rows(host, type="unsubscribe")
    assert (ev.contact_id, ev.message_id, ev.campaign_id) == ("c1", p["id"], "camp1")
    # Idempotent: a second POST keeps one row and one unsubscribe.
    assert client.post(p["unsub"], data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert len(rows(host, dnc)) == 1 and len(rows(host, type="unsubscribe")) == 1
    with host.app_context():
        assert host.extensions["mailtrack"].extension.can_contact("c1") is False
        assert host.extensions["mailtrack"].extension.can_contact("c2") is True
    # The GET page now says it is done, still without changing anything.
    page = client.get(p["unsub"]).get_data(as_text=True)
    assert "unsubscribed" in page.lower() and "<form" not in page


def test_unsubscribe_of_an_unknown_message_is_404(host):
    p = tracked(host)
    with host.app_context():
        host.extensions["mailtrack"].extension.erase_contact("c1")
    assert host.test_client().post(p["unsub"]).status_code == 404
    assert rows(host, dnc) == []


def test_unsubscribe_rejects_other_methods(host):
    p = tracked(host)
    assert host.test_client().put(p["unsub"]).status_code == 405
    assert host.test_client().post(p["click"]).status_code == 405


# -- IP anonymization ------------------------------------------------------------------


IPS = {
    True: [("203.0.113.77", "203.0.113.0"), ("2001:db8:abcd:12:1::5", "2001:db8:abcd::"),
           ("::ffff:203.0.113.77", "203.0.113.0")],
    False: [("203.0.113.77", "203.0.113.77"), ("2001:db8:abcd:12:1::5", "2001:db8:abcd:12:1::5")],
}


@pytest.mark.parametrize("anonymize", [True, False], ids=["anonymized", "full"])
def test_ip_storage(make_app, anonymize):
    app = make_app(MAILTRACK_ANONYMIZE_IP=anonymize)
    for n, (addr, stored) in enumerate(IPS[anonymize]):
        p = tracked(app, contact_id=f"c{n}")
        client = app.test_client()
        client.get(p["click"], environ_base={"REMOTE_ADDR": addr})
        client.get(p["open"], environ_base={"REMOTE_ADDR": addr})
        client.post(p["unsub"], environ_base={"REMOTE_ADDR": addr})
        stored_ips = {ev.type: ev.ip for ev in rows(app, message_id=p["id"])}
        assert stored_ips == {"click": stored, "open": stored, "unsubscribe": stored}, addr


@pytest.mark.parametrize("csrf_first", [True, False], ids=["csrf-before", "csrf-after"])
def test_one_click_unsubscribe_passes_a_hosts_csrf_protection(database_url, tmp_path, csrf_first):
    """A host with Flask-WTF's CSRFProtect (set up before or after MailTrack) keeps its
    forms protected, and the RFC 8058 POST still needs no CSRF token."""
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    from flask_wtf.csrf import CSRFProtect

    from crm_mailtrack import MailTrack

    from conftest import BASE_URL, SECRET

    app = Flask("csrf_host", instance_path=str(tmp_path / "csrf"))
    app.config.update(SECRET_KEY=SECRET, SQLALCHEMY_DATABASE_URI=database_url, MAILTRACK_BASE_URL=BASE_URL)
    db = SQLAlchemy(app)
    mt = MailTrack()
    if csrf_first:
        CSRFProtect(app)
    mt.init_app(app, db=db)
    if not csrf_first:
        CSRFProtect(app)

    @app.post("/host-form")
    def host_form() -> str:
        return "saved"

    try:
        with app.app_context():
            mt.create_all()
        p = tracked(app)
        client = app.test_client(use_cookies=False)
        assert client.post("/host-form").status_code == 400  # the host stays protected
        resp = client.post(p["unsub"], data={"List-Unsubscribe": "One-Click"})
        assert resp.status_code == 200
        assert len(rows(app, dnc)) == 1
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


# -- methods a real client sends: HEAD, OPTIONS ----------------------------------------


@pytest.fixture
def live(host):
    """``host`` on a real threaded werkzeug server (port 0, the server reports its port) and a
    function sending one request over HTTP: ``(status, headers, body)``."""
    import http.client
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, host, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def send(method: str, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
        try:
            conn.request(method, path, headers={"User-Agent": "Mozilla/5.0 Live", **headers})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    yield send
    server.shutdown()
    thread.join(10)
    server.server_close()


def _honeypot_path(app: Any) -> str:
    from conftest import path_of

    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        msg = mt.track_message(contact_id="c9", email="c9@example.com", subject="s",
                               html='<body><a href="https://shop.test/">x</a></body>')
        return path_of(re.search(r'href="([^"]+/t/h/[^"]+)"', msg.html).group(1))


def test_head_on_unsubscribe_changes_nothing(host, live):
    """Flask answers HEAD on GET routes: a HEAD of the unsubscribe link (a scanner checking
    the link) must not unsubscribe anybody; it is answered like the GET page."""
    p = tracked(host)
    status, headers, body = live("HEAD", p["unsub"])
    assert status == 200 and headers["Content-Type"].startswith("text/html") and body == b""
    assert rows(host) == [] and rows(host, dnc) == []
    with host.app_context():
        assert host.extensions["mailtrack"].extension.can_contact("c1") is True
    status, _, _ = live("POST", p["unsub"])  # only a POST does
    assert status == 200 and len(rows(host, dnc)) == 1


def test_options_on_tracking_routes_changes_nothing(host, live):
    p = tracked(host)
    honeypot = _honeypot_path(host)
    for path in (p["click"], p["open"], p["unsub"], honeypot):
        status, headers, _ = live("OPTIONS", path)
        assert status == 200 and "Allow" in headers, path
        assert "POST" not in headers["Allow"] or path == p["unsub"]
    assert rows(host) == [] and rows(host, dnc) == []


def test_head_on_the_pixel_is_a_machine_open(host, live):
    """A HEAD of the pixel fetches no image: it is stored as a machine open
    (``head-request``), never a person's."""
    p = tracked(host)
    status, headers, body = live("HEAD", p["open"])
    assert status == 200 and headers["Content-Type"] == "image/gif" and "no-store" in headers["Cache-Control"]
    assert body == b""
    (ev,) = rows(host)
    assert (ev.type, ev.is_machine, ev.machine_reason) == ("open", True, "head-request")


def test_head_on_click_and_honeypot_are_machine_clicks(host, live):
    p = tracked(host)
    status, headers, _ = live("HEAD", p["click"])
    assert status == 302 and headers["Location"] == DEST
    status, _, _ = live("HEAD", _honeypot_path(host))
    assert status == 200
    assert [(ev.type, ev.is_machine) for ev in rows(host)] == [("click", True), ("click", True)]


def test_unsubscribe_links_outlive_link_max_age(make_app, monkeypatch):
    """``MAILTRACK_LINK_MAX_AGE`` expires click and open links, never the opt-out: an
    unsubscribe link of an old message still shows its page and still unsubscribes."""
    from itsdangerous import TimestampSigner
    import time

    app = make_app(MAILTRACK_LINK_MAX_AGE=3600)
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 400 * 86400)
    old = tracked(app)
    monkeypatch.undo()
    client = app.test_client()
    assert client.get(old["click"]).status_code == 404
    page = client.get(old["unsub"])
    assert page.status_code == 200 and "<form" in page.get_data(as_text=True)
    assert client.post(old["unsub"], data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert len(rows(app, dnc)) == 1
