"""Privacy by default: anonymized IPs, X-Forwarded-For only behind a configured proxy, and
``flask mailtrack purge`` deleting old raw events while every total stays true."""
from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from flask import current_app
from werkzeug.middleware.proxy_fix import ProxyFix

from crm_mailtrack.models import event_rollups, events
from crm_mailtrack.services import privacy

from conftest import path_of

NOW = dt.datetime(2026, 6, 30, 12, 0, tzinfo=dt.timezone.utc)


def _click_ip(app: Any, **request: Any) -> str | None:
    mt = app.extensions["mailtrack"].extension
    msg = mt.track_message(contact_id="c1", email="c1@example.com", subject="Hi",
                           html='<a href="https://shop.test/">x</a>')
    resp = app.test_client().get(path_of(mt.click_url(msg, "https://shop.test/")), **request)
    assert resp.status_code == 302
    db = app.extensions["sqlalchemy"]
    return db.session.execute(sa.select(events.c.ip).where(events.c.message_id == msg.id)).scalar_one()


@pytest.mark.parametrize(("addr", "stored"), [
    ("203.0.113.77", "203.0.113.0"),
    ("2001:db8:85a3:1234:5678::1", "2001:db8:85a3::"),
    ("::ffff:198.51.100.23", "198.51.100.0"),
])
def test_ip_is_anonymized_by_default(app, addr, stored):
    assert _click_ip(app, environ_base={"REMOTE_ADDR": addr}) == stored


def test_full_ip_kept_when_configured(make_app):
    app = make_app(MAILTRACK_ANONYMIZE_IP=False)
    with app.app_context():
        assert _click_ip(app, environ_base={"REMOTE_ADDR": "203.0.113.77"}) == "203.0.113.77"


def test_spoofed_forwarding_headers_are_ignored_by_default(app):
    spoof = {"X-Forwarded-For": "192.0.2.1", "X-Real-IP": "192.0.2.2", "Forwarded": "for=192.0.2.3"}
    assert _click_ip(app, headers=spoof, environ_base={"REMOTE_ADDR": "203.0.113.77"}) == "203.0.113.0"


def test_behind_proxyfix_the_forwarded_address_is_used(make_app):
    app = make_app(MAILTRACK_ANONYMIZE_IP=False)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # the host's one trusted proxy
    with app.app_context():
        # The proxy appends the real client; whatever the client put first is not trusted.
        got = _click_ip(app, headers={"X-Forwarded-For": "6.6.6.6, 192.0.2.1"},
                        environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert got == "192.0.2.1"


# -- purge ---------------------------------------------------------------------------------


def _event(mt: Any, type_: str, at: dt.datetime, *, message: str, link: str | None = None,
           machine: bool = False, campaign: str | None = "cmp") -> None:
    event = mt.record_event("c1", type_, message_id=message, campaign_id=campaign, occurred_at=at,
                            url=None if link is None else f"https://shop.test/{link}")
    if machine:
        db = current_app.extensions["sqlalchemy"]
        db.session.execute(sa.update(events).where(events.c.id == event.id)
                           .values(is_machine=True, machine_reason="scanner-ua"))
        db.session.commit()


def _totals(db: Any) -> dict[tuple[str, bool], int]:
    """(type, is_machine) -> count, raw events plus rollups: what a report must show."""
    raw = db.session.execute(sa.select(events.c.type, events.c.is_machine, sa.func.count())
                             .group_by(events.c.type, events.c.is_machine)).all()
    rolled = db.session.execute(sa.select(event_rollups.c.type, event_rollups.c.is_machine,
                                          sa.func.sum(event_rollups.c.count))
                                .group_by(event_rollups.c.type, event_rollups.c.is_machine)).all()
    out: dict[tuple[str, bool], int] = {}
    for type_, machine, n in [*raw, *rolled]:
        out[(type_, bool(machine))] = out.get((type_, bool(machine)), 0) + int(n)
    return out


def _uniques(db: Any, type_: str, *, by_link: bool = False) -> int:
    """Human uniques per message (opens) or per message and link (clicks), raw + rollups."""
    cols = lambda t: (t.c.message_id, t.c.link_id) if by_link else (t.c.message_id,)  # noqa: E731
    raw = sa.select(*cols(events)).where(events.c.type == type_, events.c.is_machine == sa.false())
    rolled = sa.select(*cols(event_rollups)).where(event_rollups.c.type == type_,
                                                   event_rollups.c.is_machine == sa.false())
    both = sa.union(raw, rolled).subquery()
    return db.session.execute(sa.select(sa.func.count()).select_from(both)).scalar()


def _seed(mt: Any) -> None:
    old, older = NOW - dt.timedelta(days=45), NOW - dt.timedelta(days=90, hours=3)
    recent = NOW - dt.timedelta(days=2)
    for message in ("m1", "m2"):
        _event(mt, "send", older, message=message)
        _event(mt, "open", older, message=message)
        _event(mt, "open", older, message=message, machine=True)
    _event(mt, "open", old, message="m1")            # a second open of m1: total 2, unique 1
    _event(mt, "click", old, message="m1", link="a")
    _event(mt, "click", old + dt.timedelta(hours=1), message="m1", link="a")
    _event(mt, "click", old, message="m1", link="b", machine=True)
    _event(mt, "open", recent, message="m2")         # stays raw; its unique overlaps a rollup
    _event(mt, "click", recent, message="m2", link="a")
    _event(mt, "bounce", old, message="m3", campaign=None)


def test_purge_keeps_totals_and_uniques_true(mailtrack, db):
    _seed(mailtrack)
    before = _totals(db)
    uniques = (_uniques(db, "open"), _uniques(db, "click", by_link=True))
    deleted = privacy.purge(mailtrack_state(), 30, now=NOW)
    assert deleted == 11
    assert db.session.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 2
    assert _totals(db) == before
    assert (_uniques(db, "open"), _uniques(db, "click", by_link=True)) == uniques == (2, 2)
    assert privacy.rolled_up_counts(mailtrack_state(), "", campaign_id="cmp") == {
        "send": 2, "open": 3, "click": 2}
    assert privacy.rolled_up_counts(mailtrack_state(), "", include_bots=True)["open"] == 5
    # Running it again changes nothing.
    assert privacy.purge(mailtrack_state(), 30, now=NOW) == 0
    assert _totals(db) == before


def test_purge_across_a_day_split_adds_to_the_same_rollup(mailtrack, db):
    day = NOW - dt.timedelta(days=40)
    _event(mailtrack, "open", day.replace(hour=8), message="m1")
    _event(mailtrack, "open", day.replace(hour=16), message="m1")
    # The first cutoff falls at noon of that day: only the morning open goes.
    assert privacy.purge(mailtrack_state(), 40, now=day.replace(hour=12) + dt.timedelta(days=40)) == 1
    assert privacy.purge(mailtrack_state(), 30, now=NOW) == 1
    rows = db.session.execute(sa.select(event_rollups.c.day, event_rollups.c.count)).all()
    assert [(r.day, r.count) for r in rows] == [(day.date(), 2)]


def test_purge_command(mailtrack, db, runner):
    now = dt.datetime.now(dt.timezone.utc)
    _event(mailtrack, "open", now - dt.timedelta(days=40), message="m1")
    _event(mailtrack, "open", now - dt.timedelta(days=5), message="m1")
    result = runner.invoke(args=["mailtrack", "purge", "--older-than", "30", "--yes"])
    assert result.exit_code == 0, result.output
    assert "purged 1 events older than 30 days" in result.output
    assert db.session.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 1
    nothing = runner.invoke(args=["mailtrack", "purge", "--older-than", "30", "--yes"])
    assert nothing.exit_code == 0 and "no events older than 30 days" in nothing.output


@pytest.mark.parametrize("args", [[], ["--older-than", "-1"], ["--older-than", "soon"]])
def test_purge_command_refuses_bad_input(runner, args):
    result = runner.invoke(args=["mailtrack", "purge", *args, "--yes"])
    assert result.exit_code == 2


def mailtrack_state() -> Any:
    from crm_mailtrack.state import get_state

    return get_state()


def test_purge_keeps_imported_contactclicks_totals(app, client, api_headers):
    """Imported click totals live only in their import events (rollups have no contact id):
    a purge of old events must not shrink a contact's ClickCount."""
    resp = client.post("/mailtrack/api/odata/ContactClicks", json={"ID": "c9", "ClickCount": 7},
                       headers=api_headers)
    assert resp.status_code == 201, resp.get_json()
    far_future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=400)
    privacy.purge(current_app.extensions["mailtrack"], 1, now=far_future)
    got = client.get("/mailtrack/api/odata/ContactClicks('c9')", headers=api_headers).get_json()
    assert got["ClickCount"] == 7
