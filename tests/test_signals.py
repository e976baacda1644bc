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
