"""Signals as a host subscribes to them: sender is the app (``connect_via(app)`` works),
documented keyword arguments, sent after the commit, and a raising subscriber never breaks
a recipient's redirect, pixel or unsubscribe."""
from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from crm_mailtrack import ContactEvent, signals
from crm_mailtrack.models import dnc, events

from conftest import tracked_paths

DEST = "https://dest.test/x?y=1"


def tracked(app: Any) -> dict[str, Any]:
    return tracked_paths(app, DEST, campaign_id="camp")


@pytest.fixture
def fresh_engine(database_url):
    """A separate engine (no pooling): what another process would see."""
    engine = sa.create_engine(database_url, poolclass=NullPool)
    yield engine
    engine.dispose()


def visible(engine: sa.Engine, table: sa.Table, **where: Any) -> int:
    with engine.connect() as conn:
        q = sa.select(sa.func.count()).select_from(table).where(*(table.c[k] == v for k, v in where.items()))
        return conn.execute(q).scalar()


def test_tracking_signals_sender_kwargs_and_after_commit(make_app, fresh_engine):
    app = make_app()
    other = make_app()
    p = tracked(app)
    seen: list[tuple[str, Any, dict[str, Any], int]] = []

    def subscriber(name: str, table: sa.Table, where: dict[str, Any]):
        def receiver(sender: Any, **kw: Any) -> None:
            seen.append((name, sender, kw, visible(fresh_engine, table, **where)))
        return receiver

    on_click = subscriber("link_clicked", events, {"type": "click"})
    on_open = subscriber("email_opened", events, {"type": "open"})
    on_unsub = subscriber("contact_unsubscribed", dnc, {"contact_id": "c1"})
    on_any = subscriber("event_recorded", events, {})
    on_other = subscriber("other-app", events, {})
    with signals.link_clicked.connected_to(on_click, sender=app), \
            signals.email_opened.connected_to(on_open, sender=app), \
            signals.contact_unsubscribed.connected_to(on_unsub, sender=app), \
            signals.event_recorded.connected_to(on_any, sender=app), \
            signals.link_clicked.connected_to(on_other, sender=other):
        client = app.test_client()
        assert client.get(p["click"]).status_code == 302
        assert client.get(p["open"]).status_code == 200
        assert client.post(p["unsub"]).status_code == 200

    names = [s[0] for s in seen]
    assert "other-app" not in names
    assert names.count("link_clicked") == 1 and names.count("email_opened") == 1
    assert names.count("contact_unsubscribed") == 1
    # event_recorded: click, open, unsubscribe, dnc_added
    assert sorted(s[2]["event"].type for s in seen if s[0] == "event_recorded") == \
        ["click", "dnc_added", "open", "unsubscribe"]
    for name, sender, kw, count_at_signal in seen:
        assert sender is app
        assert count_at_signal >= 1, f"{name}: row not committed when the signal fired"
        assert isinstance(kw["event"], ContactEvent)
        assert kw["contact_id"] == "c1"
    click = next(kw for n, _, kw, _ in seen if n == "link_clicked")
    assert (click["message_id"], click["campaign_id"], click["url"]) == (p["id"], "camp", DEST)
    assert click["event"].id is not None and click["event"].type == "click" and click["event"].url == DEST
    opened = next(kw for n, _, kw, _ in seen if n == "email_opened")
    assert (opened["message_id"], opened["campaign_id"]) == (p["id"], "camp")
    unsub = next(kw for n, _, kw, _ in seen if n == "contact_unsubscribed")
    assert (unsub["message_id"], unsub["campaign_id"]) == (p["id"], "camp")


def test_python_api_signals(app, mailtrack, recorded_signals, fresh_engine):
    counts: list[int] = []

    def check(sender: Any, **kw: Any) -> None:
        counts.append(visible(fresh_engine, events, type=kw["event"].type))

    with signals.event_recorded.connected_to(check, sender=app):
        mailtrack.record_event("c9", "bounce", email="c9@example.com", message_id="m1", campaign_id="k")
        mailtrack.add_dnc("c9", comments="asked by phone")
        mailtrack.remove_dnc("c9")
        tag = mailtrack.add_utm("c9", utm_source="news")
        mailtrack.remove_utm("c9", tag.id)
    assert counts and all(c >= 1 for c in counts)
    names = recorded_signals.names()
    for expected in ("email_bounced", "dnc_added", "dnc_removed", "utm_tag_added", "utm_tag_removed"):
        assert names.count(expected) == 1, (expected, names)
    assert names.count("event_recorded") == 5
    assert all(sender is app for _, sender, _ in recorded_signals.calls)
    (bounce,) = recorded_signals.of("email_bounced")
    assert (bounce["contact_id"], bounce["message_id"], bounce["campaign_id"]) == ("c9", "m1", "k")
    (added,) = recorded_signals.of("dnc_added")
    assert added["channel"] == "email" and int(added["reason"]) == 3
    (removed,) = recorded_signals.of("dnc_removed")
    assert removed["channel"] == "email"


def test_a_raising_subscriber_breaks_nothing(make_app, fresh_engine):
    app = make_app()
    p = tracked(app)

    def boom(sender: Any, **kw: Any) -> None:
        raise RuntimeError("subscriber bug")

    later: list[str] = []

    def after(sender: Any, **kw: Any) -> None:
        later.append(kw["event"].type)

    sigs = [signals.link_clicked, signals.email_opened, signals.contact_unsubscribed,
            signals.dnc_added, signals.event_recorded]
    for sig in sigs:
        sig.connect(boom, sender=app)
    signals.event_recorded.connect(after, sender=app)
    try:
        client = app.test_client()
        resp = client.get(p["click"])
        assert resp.status_code == 302 and resp.headers["Location"] == DEST
        head = client.head(p["click"])
        assert head.status_code == 302
        assert client.get(p["open"]).status_code == 200
        resp = client.post(p["unsub"], data={"List-Unsubscribe": "One-Click"})
        assert resp.status_code == 200
    finally:
        for sig in sigs:
            sig.disconnect(boom, sender=app)
        signals.event_recorded.disconnect(after, sender=app)
    assert visible(fresh_engine, events, type="click") == 2
    assert visible(fresh_engine, events, type="open") == 1
    assert visible(fresh_engine, dnc, contact_id="c1") == 1
    assert visible(fresh_engine, events, type="unsubscribe") == 1
    # The other subscribers still ran.
    assert sorted(later) == ["click", "click", "dnc_added", "open", "unsubscribe"]


def test_no_signal_for_invalid_tokens(app, client, recorded_signals):
    p = tracked(app)
    assert client.get(p["click"] + "x").status_code == 404
    assert client.get(p["open"] + "x").status_code == 200
    assert client.post(p["unsub"] + "x").status_code == 404
    assert recorded_signals.calls == []


def test_connect_via_app_hears_only_that_app(make_app):
    app, other = make_app(), make_app()
    heard: list[tuple[Any, str]] = []

    @signals.link_clicked.connect_via(app)
    def on_click(sender: Any, **kw: Any) -> None:
        heard.append((sender, kw["message_id"]))

    try:
        mine, theirs = tracked(app), tracked(other)
        assert app.test_client().get(mine["click"]).status_code == 302
        assert other.test_client().get(theirs["click"]).status_code == 302
    finally:
        signals.link_clicked.disconnect(on_click)
    assert heard == [(app, mine["id"])]


def test_a_subscriber_changing_event_details_changes_no_other_event(app, client):
    """The device details of a user agent are computed once and shared between hits; what a
    subscriber receives is its own copy, so changing it alters neither later rows nor the
    cache."""
    ua = {"User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"}

    def vandal(sender: Any, event: Any, **kwargs: Any) -> None:
        if event.details:
            event.details.clear()
            event.details["vandal"] = True

    paths = tracked_paths(app, "https://dest.test/a")
    with signals.link_clicked.connected_to(vandal):
        for _ in range(2):
            assert client.get(paths["click"], headers=ua).status_code == 302
    session = app.extensions["mailtrack"].session
    stored = session.execute(sa.select(events.c.details).where(events.c.type == "click")).scalars().all()
    assert len(stored) == 2 and all(d and "device" in d and "vandal" not in d for d in stored)
    from crm_mailtrack.devices import event_details

    assert "vandal" not in (event_details(ua["User-Agent"]) or {})  # the shared cache is intact


# -- people and machines: is_machine, machine_reason, events_reclassified ----------------------

SCANNER_UA = "Barracuda Sentinel (EE)"
BROWSER_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"


@pytest.fixture
def live(make_app):
    """An app (burst window 30 s, so a loaded machine cannot miss it) on a real threaded
    werkzeug server (port 0, reported by the server) and ``get(path, user_agent)``."""
    import http.client
    import threading

    from werkzeug.serving import make_server

    app = make_app(MAILTRACK_BOT_BURST_SECONDS=30)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def get(path: str, user_agent: str = BROWSER_UA) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
        try:
            conn.request("GET", path, headers={"User-Agent": user_agent})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    yield app, get
    server.shutdown()
    thread.join(10)
    server.server_close()


def _two_link_message(app: Any) -> dict[str, Any]:
    import re

    from conftest import path_of

    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        msg = mt.track_message(contact_id="c1", email="c1@example.com", subject="s", campaign_id="camp",
                               html='<body><a href="https://dest.test/a">a</a> <a href="https://dest.test/b">b</a>'
                                    '</body>')
        links = [path_of(u) for u in re.findall(r'href="([^"]+)"', msg.html)]
        return {"id": msg.id, "a": next(u for u in links if "/t/c/" in u),
                "b": [u for u in links if "/t/c/" in u][1], "honeypot": next(u for u in links if "/t/h/" in u),
                "open": path_of(re.search(r'src="([^"]+/t/o/[^"]+)"', msg.html).group(1))}


def test_scanner_click_and_open_carry_the_machine_verdict(live, recorded_signals):
    app, get = live
    p = _two_link_message(app)
    assert get(p["a"], SCANNER_UA) == 302
    assert get(p["open"], BROWSER_UA) == 200
    (click,) = recorded_signals.of("link_clicked")
    assert (click["is_machine"], click["machine_reason"]) == (True, "scanner-ua")
    assert click["event"].is_machine is True and click["event"].machine_reason == "scanner-ua"
    (opened,) = recorded_signals.of("email_opened")
    assert (opened["is_machine"], opened["machine_reason"]) == (False, None)
    recorded = {kw["event"].type: kw for kw in recorded_signals.of("event_recorded")}
    assert (recorded["click"]["is_machine"], recorded["click"]["machine_reason"]) == (True, "scanner-ua")
    assert (recorded["open"]["is_machine"], recorded["open"]["machine_reason"]) == (False, None)


@pytest.mark.parametrize("trigger", ["burst", "honeypot"])
def test_a_verdict_changed_later_is_announced(live, recorded_signals, trigger):
    """A human click, then a click on another link within the burst window (or a honeypot
    hit): the first click is re-marked and ``events_reclassified`` names it."""
    app, get = live
    p = _two_link_message(app)
    assert get(p["a"]) == 302
    (first,) = recorded_signals.of("link_clicked")
    assert (first["is_machine"], first["machine_reason"]) == (False, None)
    if trigger == "burst":
        assert get(p["b"]) == 302
        second = recorded_signals.of("link_clicked")[1]
        assert (second["is_machine"], second["machine_reason"]) == (True, "burst")
    else:
        assert get(p["honeypot"]) == 200
    (changed,) = recorded_signals.of("events_reclassified")
    assert changed == {"event_ids": [first["event"].id], "message_id": p["id"], "contact_id": "c1",
                       "machine_reason": trigger, "is_machine": True}
    sender = next(s for name, s, _ in recorded_signals.calls if name == "events_reclassified")
    assert sender is app
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        stored = conn.execute(sa.select(events.c.is_machine, events.c.machine_reason)
                              .where(events.c.id == first["event"].id)).one()
    assert tuple(stored) == (True, trigger)


def test_a_raising_reclassified_subscriber_breaks_no_redirect(live):
    app, get = live
    p = _two_link_message(app)

    def boom(sender: Any, **kw: Any) -> None:
        raise RuntimeError("subscriber bug")

    with signals.events_reclassified.connected_to(boom, sender=app):
        assert get(p["a"]) == 302
        assert get(p["b"]) == 302
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)
                            .where(events.c.is_machine.is_(True))).scalar() == 2


def test_readme_lead_scoring_example(live):
    """The README's scoring subscriber, run as written: it ignores machine clicks and takes
    back the points of a click re-marked later."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (code,) = re.findall(r"<!-- lead-scoring example -->\s*```python\n(.*?)```", readme, re.S)
    app, get = live
    namespace: dict[str, Any] = {"app": app}
    exec(compile(code, "README.md", "exec"), namespace)
    try:
        scores = namespace["scores"]
        p = _two_link_message(app)
        assert get(p["a"], SCANNER_UA) == 302
        assert scores["c1"] == 0
        assert get(p["a"]) == 302
        assert scores["c1"] == 5
        assert get(p["b"]) == 302  # a burst: this click and the one before are a machine's
        assert scores["c1"] == 0
        other = tracked_paths(app, "https://dest.test/c", contact_id="c2")
        assert get(other["click"]) == 302
        assert scores["c2"] == 5
    finally:
        for name in ("score_click", "take_back"):
            for sig in (signals.link_clicked, signals.events_reclassified):
                sig.disconnect(namespace[name])
