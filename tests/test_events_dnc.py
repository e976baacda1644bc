"""The Python API a host calls directly: ``record_event``, ``erase_contact``, the
Do-Not-Contact basics and UTM tags, with their tenancy."""
from __future__ import annotations

import datetime as dt
import re

import pytest
import sqlalchemy as sa
from flask import current_app

from crm_mailtrack import DatabaseUnavailable, DNCReason, NotFound, ValidationError
from crm_mailtrack.models import dnc, events, messages, utm_tags

from conftest import path_of


def count(db, table: sa.Table, **where) -> int:
    q = sa.select(sa.func.count()).select_from(table).where(*(table.c[k] == v for k, v in where.items()))
    with db.engine.connect() as conn:
        return conn.execute(q).scalar()


def test_record_event_stores_and_returns_the_event(mailtrack, db):
    when = dt.datetime(2024, 5, 1, 12, 30)  # naive: read as UTC
    ev = mailtrack.record_event("c1", "bounce", email="c1@example.com", message_id="m1", campaign_id="k",
                                occurred_at=when, details={"smtp": "550 no such user"})
    assert ev.id is not None and ev.type == "bounce" and ev.is_machine is False
    db.session.expire_all()
    row = db.session.get(type(ev), ev.id)
    assert row.occurred_at == dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc)
    assert (row.contact_id, row.email, row.message_id, row.campaign_id) == ("c1", "c1@example.com", "m1", "k")
    assert row.details == {"smtp": "550 no such user"}
    aware = mailtrack.record_event("c1", "forward", occurred_at=dt.datetime(2024, 5, 1, 14, 30,
                                                                        tzinfo=dt.timezone(dt.timedelta(hours=2))))
    db.session.expire_all()
    assert db.session.get(type(ev), aware.id).occurred_at == dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc)
    with_url = mailtrack.record_event("c1", "click", url="https://d.test/")
    assert with_url.link_id and len(with_url.link_id) == 16


def test_record_event_validation(mailtrack, db):
    for contact_id, type_ in (("c1", "teleport"), ("c1", "CLICK"), ("", "open"), (None, "open")):
        with pytest.raises(ValidationError) as info:
            mailtrack.record_event(contact_id, type_)
        assert info.value.errors
    assert count(db, events) == 0


def test_erase_contact_counts_rows_and_spares_others(mailtrack, db, client):
    for cid in ("gone", "stays"):
        msg = mailtrack.track_message(contact_id=cid, email=f"{cid}@example.com", subject="s",
                                      html='<a href="https://d.test/">go</a>')
        click = path_of(re.search(r'href="([^"]+/t/c/[^"]+)">go', msg.html).group(1))
        assert client.get(click).status_code == 302
        mailtrack.record_event(cid, "bounce")
        mailtrack.add_dnc(cid)
        mailtrack.add_utm(cid, utm_source="news")
    # gone: 1 message, events click+bounce+dnc_added+utm_added = 4, 1 dnc, 1 utm tag -> 7
    assert mailtrack.erase_contact("gone") == 7
    for table in (messages, events, dnc, utm_tags):
        assert count(db, table, contact_id="gone") == 0
    assert count(db, messages, contact_id="stays") == 1
    assert count(db, events, contact_id="stays") == 4
    assert count(db, dnc, contact_id="stays") == 1 and count(db, utm_tags, contact_id="stays") == 1
    assert mailtrack.erase_contact("gone") == 0
    assert mailtrack.erase_contact("nobody") == 0


def test_erase_contact_is_scoped_to_the_tenant(mailtrack, db):
    mailtrack.record_event("c1", "bounce", tenant_id="t1")
    mailtrack.record_event("c1", "bounce", tenant_id="t2")
    mailtrack.record_event("c1", "bounce")
    assert mailtrack.erase_contact("c1", tenant_id="t1") == 1
    assert count(db, events, contact_id="c1") == 2


def test_add_dnc_twice_keeps_one_row_and_updates(mailtrack, db, recorded_signals):
    assert mailtrack.can_contact("c1") is True
    first = mailtrack.add_dnc("c1", reason=DNCReason.BOUNCED, channel_id="m1", comments="hard bounce")
    assert (first.reason, first.channel_id, first.comments, first.channel) == (2, "m1", "hard bounce", "email")
    second = mailtrack.add_dnc("c1", reason=DNCReason.MANUAL, comments="asked by phone")
    assert second.id == first.id
    assert (second.reason, second.channel_id, second.comments) == (3, None, "asked by phone")
    assert count(db, dnc) == 1
    assert count(db, events, type="dnc_added") == 1
    assert mailtrack.can_contact("c1") is False
    assert mailtrack.can_contact("c1", "sms") is True
    assert mailtrack.can_contact("c2") is True
    assert recorded_signals.names().count("dnc_added") == 1


def test_remove_dnc(mailtrack, db):
    mailtrack.add_dnc("c1")
    mailtrack.add_dnc("c1", "sms", reason=1)
    assert mailtrack.remove_dnc("c1") is True
    assert mailtrack.can_contact("c1") is True
    assert mailtrack.can_contact("c1", "sms") is False
    assert mailtrack.remove_dnc("c1") is False
    assert count(db, events, type="dnc_removed") == 1
    assert count(db, dnc) == 1


def test_dnc_validation(mailtrack, db):
    for call, kwargs in (
        ("add_dnc", {"channel": "E-Mail"}), ("add_dnc", {"reason": 9}), ("add_dnc", {"reason": "x"}),
        ("add_dnc", {"reason": True}), ("remove_dnc", {"channel": ""}), ("can_contact", {"channel": None}),
    ):
        with pytest.raises(ValidationError):
            getattr(mailtrack, call)("c1", **kwargs)
    assert count(db, dnc) == 0


def test_dnc_tenancy_follows_the_tenant_loader(make_app):
    tenant = {"id": "acme"}

    def setup(mt):
        mt.tenant_loader(lambda: tenant["id"])

    app = make_app(setup=setup)
    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        mt.add_dnc("c1")
        assert mt.can_contact("c1") is False
        tenant["id"] = "globex"
        assert mt.can_contact("c1") is True
        assert mt.can_contact("c1", tenant_id="acme") is False
        assert mt.remove_dnc("c1") is False
        assert mt.remove_dnc("c1", tenant_id="acme") is True


def test_utm_tags(mailtrack, db):
    tag = mailtrack.add_utm("c1", utm_source="news", utm_campaign="spring", url="https://d.test/")
    assert tag.id is not None and tag.date_added.tzinfo is not None
    assert count(db, events, type="utm_added") == 1
    with pytest.raises(NotFound):
        mailtrack.remove_utm("c2", tag.id)
    with pytest.raises(NotFound):
        mailtrack.remove_utm("c1", "not-a-number")
    with pytest.raises(ValidationError):
        mailtrack.add_utm("c1", utm_colour="red")
    mailtrack.remove_utm("c1", tag.id)
    assert count(db, utm_tags) == 0
    assert count(db, events, type="utm_removed") == 1


def test_too_long_values_are_a_validation_error_on_every_database(mailtrack, db):
    """PostgreSQL refuses a value longer than its column, SQLite would store it: both must
    answer the same, with a ValidationError naming the field (not 'database unavailable')."""
    long_id = "x" * 65
    calls = [
        ("campaign_id", lambda: mailtrack.record_event("c1", "bounce", campaign_id=long_id)),
        ("contact_id", lambda: mailtrack.add_dnc(long_id)),
        ("channel_id", lambda: mailtrack.add_dnc("c1", channel_id=long_id)),
        ("template_id", lambda: mailtrack.track_message(contact_id="c1", email="a@example.com",
                                                        subject="s", template_id=long_id)),
        ("utm_source", lambda: mailtrack.add_utm("c1", utm_source="y" * 256)),
    ]
    for field, call in calls:
        with pytest.raises(ValidationError) as info:
            call()
        assert field in info.value.errors
    for table in (events, dnc, messages, utm_tags):
        assert count(db, table) == 0


# -- hard bounces and unsubscribes through the Python API (the same service as POST .../events) --


def dnc_rows(db, contact_id: str = "c1", tenant: str = "") -> list[tuple]:
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(dnc.c.channel, dnc.c.reason, dnc.c.channel_id, dnc.c.comments)
            .where(dnc.c.contact_id == contact_id, dnc.c.tenant_id == tenant))]


@pytest.mark.parametrize("bounce_type", ["hard", "Permanent", " HARD "])
def test_hard_bounce_through_the_python_api_adds_dnc_bounced(mailtrack, db, bounce_type):
    ev = mailtrack.record_event("c1", "bounce", message_id="m1",
                                details={"bounceType": bounce_type, "reason": "550 5.1.1 no such user"})
    assert ev.id is not None and ev.type == "bounce"
    assert mailtrack.can_contact("c1") is False
    assert dnc_rows(db) == [("email", int(DNCReason.BOUNCED), "m1", "550 5.1.1 no such user")]
    assert count(db, events, type="dnc_added", contact_id="c1") == 1
    assert mailtrack.can_contact("c2") is True


@pytest.mark.parametrize("details", [None, {}, {"bounceType": "soft"}, {"bounceType": "transient"},
                                     {"type": "hard"}, {"bounceType": ["hard"]}, {"bounceType": None}])
def test_soft_or_unclassified_bounce_does_not_add_dnc(mailtrack, db, recorded_signals, details):
    mailtrack.record_event("c1", "bounce", details=details)
    assert mailtrack.can_contact("c1") is True
    assert count(db, dnc) == 0 and count(db, events, type="dnc_added") == 0
    assert count(db, events, type="bounce") == 1
    assert recorded_signals.names() == ["email_bounced", "event_recorded"]


def test_repeated_hard_bounce_keeps_one_entry_and_an_existing_one(mailtrack, db, recorded_signals):
    for message_id in ("m1", "m2", "m2"):
        mailtrack.record_event("c1", "bounce", message_id=message_id, details={"bounceType": "hard"})
    assert dnc_rows(db) == [("email", int(DNCReason.BOUNCED), "m1", None)]  # the first bounce's entry
    assert count(db, events, type="bounce") == 3 and count(db, events, type="dnc_added") == 1
    assert recorded_signals.names().count("dnc_added") == 1
    assert recorded_signals.names().count("email_bounced") == 3
    # an earlier manual entry is kept as it is, as the API keeps an earlier unsubscribe
    mailtrack.add_dnc("c2", comments="asked by phone")
    mailtrack.record_event("c2", "bounce", details={"bounceType": "hard"})
    assert dnc_rows(db, "c2") == [("email", int(DNCReason.MANUAL), None, "asked by phone")]


def test_unsubscribe_through_the_python_api_adds_dnc_unsubscribed(mailtrack, db):
    mailtrack.record_event("c1", "unsubscribe", message_id="m1")
    assert dnc_rows(db) == [("email", int(DNCReason.UNSUBSCRIBED), "m1", None)]
    for other in ("open", "click", "forward", "send", "failed"):
        mailtrack.record_event("c2", other, details={"bounceType": "hard"})
    assert mailtrack.can_contact("c2") is True


def test_hard_bounce_dnc_follows_the_tenant(mailtrack, db):
    mailtrack.record_event("c1", "bounce", tenant_id="t1", details={"bounceType": "hard"})
    assert mailtrack.can_contact("c1", tenant_id="t1") is False
    assert mailtrack.can_contact("c1") is True and mailtrack.can_contact("c1", tenant_id="t2") is True
    assert dnc_rows(db, tenant="t1") == [("email", int(DNCReason.BOUNCED), None, None)]


def _signal_trace(recorded) -> list[tuple[str, bool, str, str | None, str | None, str | None]]:
    """What a subscriber sees of each signal: name, sender, and the plain fields."""
    app = current_app._get_current_object()
    return [(name, sender is app, kw["event"].type, kw.get("message_id"), kw.get("campaign_id"),
             None if kw.get("reason") is None else int(kw["reason"]))
            for name, sender, kw in recorded.calls]


def test_hard_bounce_signals_are_the_same_through_python_and_http(mailtrack, db, client, api_headers,
                                                                  recorded_signals):
    details = {"bounceType": "hard", "reason": "550 no user"}
    mailtrack.record_event("py", "bounce", campaign_id="k", details=details)
    through_python = _signal_trace(recorded_signals)
    recorded_signals.calls.clear()
    resp = client.post("/mailtrack/api/contacts/http/events", headers=api_headers,
                       json={"type": "bounce", "campaign_id": "k", "details": details})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    through_http = _signal_trace(recorded_signals)
    assert through_python == through_http == [
        ("dnc_added", True, "dnc_added", None, None, int(DNCReason.BOUNCED)),
        ("event_recorded", True, "dnc_added", None, None, int(DNCReason.BOUNCED)),
        ("email_bounced", True, "bounce", None, "k", None),
        ("event_recorded", True, "bounce", None, "k", None),
    ]
    (bounced,) = recorded_signals.of("email_bounced")
    assert bounced["contact_id"] == "http"
    assert dnc_rows(db, "py") == dnc_rows(db, "http") == [("email", 2, None, "550 no user")]


def test_hard_bounce_is_one_transaction(mailtrack, db, recorded_signals):
    """When the DNC entry cannot be written, the bounce event is not written either, no
    signal goes out, and the session is usable afterwards."""
    db.session.commit()
    db.session.close()
    with db.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE mailtrack_dnc RENAME TO mailtrack_dnc_away")
    try:
        with pytest.raises(DatabaseUnavailable):
            mailtrack.record_event("c1", "bounce", message_id="m1", details={"bounceType": "hard"})
    finally:
        db.session.close()
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE mailtrack_dnc_away RENAME TO mailtrack_dnc")
    assert count(db, events) == 0 and count(db, dnc) == 0
    assert recorded_signals.calls == []
    mailtrack.record_event("c1", "bounce", message_id="m1", details={"bounceType": "hard"})
    assert count(db, events, type="bounce") == 1 and mailtrack.can_contact("c1") is False


def test_remove_dnc_spares_other_contacts_and_stores_its_event(mailtrack, db, recorded_signals):
    mailtrack.add_dnc("c1")
    mailtrack.add_dnc("c2")
    mailtrack.add_dnc("c1", tenant_id="t1")
    assert mailtrack.remove_dnc("c1", tenant_id="t1") is True
    assert mailtrack.can_contact("c1") is False and mailtrack.can_contact("c2") is False
    assert mailtrack.remove_dnc("c1") is True
    assert mailtrack.can_contact("c1") is True and mailtrack.can_contact("c2") is False
    assert count(db, dnc, contact_id="c2") == 1
    with db.engine.connect() as conn:
        stored = conn.execute(sa.select(events.c.tenant_id, events.c.contact_id, events.c.details,
                                        events.c.occurred_at)
                              .where(events.c.type == "dnc_removed").order_by(events.c.id)).all()
    assert [(r.tenant_id, r.contact_id, r.details) for r in stored] == [
        ("t1", "c1", {"channel": "email"}), ("", "c1", {"channel": "email"})]
    assert all(r.occurred_at is not None for r in stored)
    removed = recorded_signals.of("dnc_removed")
    assert [kw["event"].type for kw in removed] == ["dnc_removed", "dnc_removed"]
    # the documented kwargs, exactly
    assert [{k: v for k, v in kw.items() if k != "event"} for kw in removed] == [
        {"contact_id": "c1", "channel": "email", "message_id": None, "campaign_id": None, "url": None}] * 2


def _dnc_table(db) -> set[tuple]:
    with db.engine.connect() as conn:
        return set(conn.execute(sa.select(dnc.c.tenant_id, dnc.c.contact_id, dnc.c.channel, dnc.c.reason,
                                          dnc.c.channel_id, dnc.c.comments)).all())


def test_updating_a_dnc_entry_changes_only_that_entry(mailtrack, db):
    """The update of an existing entry is scoped to its tenant, contact and channel."""
    for tenant, contact, channel in (("t1", "c1", "email"), ("t2", "c1", "email"), ("t1", "c2", "email"),
                                     ("t1", "c1", "sms")):
        mailtrack.add_dnc(contact, channel, reason=DNCReason.BOUNCED, channel_id="m0", comments="first",
                          tenant_id=tenant)
    row = mailtrack.add_dnc("c1", "email", reason=DNCReason.MANUAL, channel_id="m9", comments="by phone",
                            tenant_id="t1")
    assert (row.tenant_id, row.contact_id, row.channel, row.reason, row.channel_id, row.comments) == (
        "t1", "c1", "email", 3, "m9", "by phone")
    assert _dnc_table(db) == {
        ("t1", "c1", "email", 3, "m9", "by phone"),
        ("t2", "c1", "email", 2, "m0", "first"),
        ("t1", "c2", "email", 2, "m0", "first"),
        ("t1", "c1", "sms", 2, "m0", "first"),
    }


def test_dnc_added_event_and_signal_carry_the_entry(mailtrack, db, recorded_signals):
    """The stored ``dnc_added`` event and the ``dnc_added`` signal describe the new entry."""
    row = mailtrack.add_dnc(7, "sms", reason=1, channel_id=42, comments="replied STOP", tenant_id="t1")
    assert (row.contact_id, row.channel_id) == ("7", "42")  # ids are stored as text
    with db.engine.connect() as conn:
        (stored,) = conn.execute(sa.select(events).where(events.c.type == "dnc_added")).all()
    assert (stored.tenant_id, stored.contact_id, stored.message_id, stored.campaign_id, stored.is_machine) == (
        "t1", "7", None, None, False)
    assert stored.details == {"channel": "sms", "reason": 1, "channelId": "42", "comments": "replied STOP"}
    assert stored.occurred_at == row.date_added
    (added,) = recorded_signals.of("dnc_added")
    assert added["event"].id == stored.id and added["event"].type == "dnc_added"
    assert {k: v for k, v in added.items() if k != "event"} == {
        "contact_id": "7", "message_id": None, "campaign_id": None, "url": None, "channel": "sms",
        "reason": DNCReason.UNSUBSCRIBED}
    assert type(added["reason"]) is DNCReason


def test_dnc_validation_says_what_is_wrong(mailtrack, db):
    for reason in (9, "x", True, None):
        with pytest.raises(ValidationError) as info:
            mailtrack.add_dnc("c1", reason=reason)
        assert info.value.errors == {"reason": ["Must be 1 (unsubscribed), 2 (bounced) or 3 (manual)."]}
    with pytest.raises(ValidationError) as info:
        mailtrack.add_dnc("c1", "E-Mail")
    assert info.value.errors == {"channel": ["A channel is a lowercase name such as 'email' or 'sms'."]}
    assert count(db, dnc) == 0


def test_a_raising_dnc_subscriber_reaches_the_python_api_caller_after_the_commit(app, mailtrack, db):
    """Only the public tracking routes (and journal replay) isolate subscribers: through the
    Python API a subscriber's exception reaches the host's call, and the entry is stored."""
    from crm_mailtrack import signals

    def boom(sender, **kw):
        raise RuntimeError("subscriber bug")

    with signals.dnc_added.connected_to(boom, sender=app):
        with pytest.raises(RuntimeError, match="subscriber bug"):
            mailtrack.add_dnc("c1")
    assert count(db, dnc, contact_id="c1") == 1 and count(db, events, type="dnc_added") == 1
