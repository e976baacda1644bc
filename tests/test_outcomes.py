"""The outcome policy (services/external_events.py): what a delivery, bounce, complaint or
unsubscribe reported from outside implies (Do-Not-Contact, soft-bounce runs), its signals,
and exactly-once storage of an outside event by its dedup key."""
from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from crm_mailtrack import ConfigurationError, DNCReason, ValidationError
from crm_mailtrack.models import dnc, events
from crm_mailtrack.services import external_events
from crm_mailtrack.state import get_state

T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.timezone.utc)


def rows(db, table: sa.Table, **where):
    q = sa.select(table).where(*(table.c[k] == v for k, v in where.items())).order_by(table.c.id)
    with db.engine.connect() as conn:
        return conn.execute(q).mappings().all()


def message(mailtrack, contact_id="c1", email=None, **kw):
    return mailtrack.track_message(contact_id=contact_id, email=email or f"{contact_id}@example.com",
                                   subject="Hello", html="<p>hi</p>", campaign_id=kw.pop("campaign_id", "camp"),
                                   **kw)


def outcome(msg, event_type, **kw):
    return external_events.record_outcome(get_state(), msg, event_type, **kw)


def at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def test_complaint_adds_dnc_unsubscribed_with_comment_and_signals_after_commit(mailtrack, db, recorded_signals):
    msg = message(mailtrack)
    seen_committed = []

    def on_complaint(sender, **kw):  # the rows are visible from another connection: committed
        seen_committed.append((len(rows(db, events, type="complaint")), len(rows(db, dnc))))

    from crm_mailtrack import signals
    with signals.email_complained.connected_to(on_complaint):
        ev = outcome(msg, "complaint", details={"feedbackType": "abuse"}, occurred_at=at(5))
    assert ev is not None and ev.type == "complaint"
    assert (ev.contact_id, ev.email, ev.message_id, ev.campaign_id, ev.tenant_id) == (
        "c1", "c1@example.com", msg.id, "camp", "")
    assert ev.occurred_at == at(5)
    [entry] = rows(db, dnc)
    assert (entry["contact_id"], entry["channel"], entry["reason"], entry["comments"], entry["channel_id"]) == (
        "c1", "email", int(DNCReason.UNSUBSCRIBED), "complaint", msg.id)
    assert seen_committed == [(1, 1)]
    assert recorded_signals.names() == ["dnc_added", "event_recorded", "email_complained", "event_recorded"]
    kw = recorded_signals.of("email_complained")[0]
    assert kw["event"].id == ev.id and kw["message_id"] == msg.id and kw["contact_id"] == "c1"
    assert mailtrack.can_contact("c1") is False


def test_delivered_signal_and_no_dnc(mailtrack, db, recorded_signals):
    msg = message(mailtrack)
    ev = outcome(msg, "delivered", details={"status": "2.0.0"})
    assert ev.type == "delivered" and rows(db, dnc) == []
    assert recorded_signals.names() == ["email_delivered", "event_recorded"]
    assert recorded_signals.of("email_delivered")[0]["event"].details == {"status": "2.0.0"}


def test_hard_bounce_adds_dnc_bounced_at_once(mailtrack, db, recorded_signals):
    msg = message(mailtrack)
    outcome(msg, "bounce", details={"bounceType": "hard", "status": "5.1.1", "reason": "user unknown"})
    [entry] = rows(db, dnc)
    assert (entry["reason"], entry["comments"]) == (int(DNCReason.BOUNCED), "user unknown")
    assert recorded_signals.names() == ["dnc_added", "event_recorded", "email_bounced", "event_recorded"]


def test_soft_bounces_in_a_row_add_dnc_at_the_limit(mailtrack, db):
    msgs = [message(mailtrack) for _ in range(4)]
    soft = {"bounceType": "soft", "status": "4.2.2"}
    outcome(msgs[0], "bounce", details=soft, occurred_at=at(1))
    outcome(msgs[1], "bounce", details=soft, occurred_at=at(2))
    assert rows(db, dnc) == []
    outcome(msgs[2], "bounce", details=soft, occurred_at=at(3))
    [entry] = rows(db, dnc)
    assert (entry["reason"], entry["comments"], entry["channel_id"]) == (
        int(DNCReason.BOUNCED), "3 soft bounces in a row", msgs[2].id)


@pytest.mark.parametrize("evidence", ["delivered", "open", "click"])
def test_delivery_open_or_click_between_soft_bounces_breaks_the_run(mailtrack, db, evidence):
    msgs = [message(mailtrack) for _ in range(5)]
    soft = {"bounceType": "soft"}
    outcome(msgs[0], "bounce", details=soft, occurred_at=at(1))
    outcome(msgs[1], "bounce", details=soft, occurred_at=at(2))
    extra = {"url": "https://shop.test/"} if evidence == "click" else {}
    outcome(msgs[2], evidence, occurred_at=at(3), **extra)
    outcome(msgs[3], "bounce", details=soft, occurred_at=at(4))
    outcome(msgs[4], "bounce", details=soft, occurred_at=at(5))
    assert rows(db, dnc) == []  # two after the evidence, two before it: no run of three
    outcome(msgs[4], "bounce", details={"bounceType": "transient"}, occurred_at=at(6))
    assert [r["reason"] for r in rows(db, dnc)] == [int(DNCReason.BOUNCED)]


def test_a_late_reported_bounce_before_the_evidence_does_not_extend_the_run(mailtrack, db):
    msgs = [message(mailtrack) for _ in range(4)]
    outcome(msgs[0], "delivered", occurred_at=at(10))
    outcome(msgs[1], "bounce", details={"bounceType": "soft"}, occurred_at=at(11))
    outcome(msgs[2], "bounce", details={"bounceType": "soft"}, occurred_at=at(12))
    outcome(msgs[3], "bounce", details={"bounceType": "soft"}, occurred_at=at(9))  # reported late
    assert rows(db, dnc) == []


def test_soft_bounces_count_per_address_and_tenant(mailtrack, db):
    old = [message(mailtrack, email="old@example.com") for _ in range(2)]
    new = message(mailtrack, email="New@Example.com")
    other_tenant = [message(mailtrack, tenant_id="t2") for _ in range(2)]
    for i, msg in enumerate([*old, *other_tenant]):
        outcome(msg, "bounce", details={"bounceType": "soft"}, occurred_at=at(i))
    outcome(new, "bounce", details={"bounceType": "soft"}, occurred_at=at(9))
    assert rows(db, dnc) == []
    outcome(old[0], "bounce", details={"bounceType": "soft"}, occurred_at=at(10))
    [entry] = rows(db, dnc)
    assert (entry["tenant_id"], entry["contact_id"]) == ("", "c1")


def test_soft_bounce_limit_is_configurable_and_zero_turns_it_off(make_app):
    for limit, expect in ((1, 1), (0, 0)):
        app = make_app(MAILTRACK_SOFT_BOUNCE_LIMIT=limit)
        with app.app_context():
            mt = app.extensions["mailtrack"].extension
            msgs = [message(mt, contact_id=f"c{limit}") for _ in range(4)]
            for i, msg in enumerate(msgs):
                outcome(msg, "bounce", details={"bounceType": "soft"}, occurred_at=at(i))
            db = app.extensions["sqlalchemy"]
            assert len(rows(db, dnc, contact_id=f"c{limit}")) == expect


@pytest.mark.parametrize("bad", [-1, "3", True, 2.5, None])
def test_soft_bounce_limit_must_be_a_whole_number(make_app, bad):
    with pytest.raises(ConfigurationError, match="MAILTRACK_SOFT_BOUNCE_LIMIT"):
        make_app(MAILTRACK_SOFT_BOUNCE_LIMIT=bad)


def test_the_events_api_and_record_event_share_the_policy(mailtrack, db, client, api_headers):
    msgs = [message(mailtrack, contact_id="api") for _ in range(3)]
    for i, msg in enumerate(msgs[:2]):
        mailtrack.record_event("api", "bounce", message_id=msg.id, email="api@example.com",
                               details={"bounceType": "soft"}, occurred_at=at(i))
    assert rows(db, dnc) == []
    answer = client.post("/mailtrack/api/contacts/api/events", headers=api_headers,
                         json={"type": "bounce", "message_id": msgs[2].id, "details": {"bounceType": "soft"},
                               "occurred_at": at(5).isoformat()})
    assert answer.status_code == 201, answer.get_json()
    [entry] = rows(db, dnc)
    assert (entry["reason"], entry["comments"]) == (int(DNCReason.BOUNCED), "3 soft bounces in a row")

    answer = client.post("/mailtrack/api/contacts/k2/events", headers=api_headers, json={"type": "complaint"})
    assert answer.status_code == 201, answer.get_json()
    entry = rows(db, dnc, contact_id="k2")[0]
    assert (entry["reason"], entry["comments"]) == (int(DNCReason.UNSUBSCRIBED), "complaint")
    answer = client.post("/mailtrack/api/contacts/k3/events", headers=api_headers, json={"type": "delivered"})
    assert answer.status_code == 201 and rows(db, dnc, contact_id="k3") == []


def test_same_dedup_key_is_stored_once(mailtrack, db, recorded_signals):
    msg = message(mailtrack)
    first = outcome(msg, "bounce", details={"bounceType": "hard"}, dedup=("sendgrid", "evt-1"))
    assert first is not None
    names = recorded_signals.names()
    again = outcome(msg, "bounce", details={"bounceType": "hard"}, dedup=("sendgrid", "evt-1"))
    assert again is None
    assert recorded_signals.names() == names  # nothing announced twice
    stored = rows(db, events, type="bounce")
    assert len(stored) == 1 and stored[0]["uid"] == first.uid
    assert first.uid == external_events.event_uid("", msg.id, ("sendgrid", "evt-1"))
    assert len(rows(db, dnc)) == 1 and len(rows(db, events, type="dnc_added")) == 1
    # another event id, another source, another message: other events
    assert outcome(msg, "bounce", details={"bounceType": "hard"}, dedup=("sendgrid", "evt-2")) is not None
    assert outcome(msg, "bounce", details={"bounceType": "hard"}, dedup=("mailgun", "evt-1")) is not None
    other = message(mailtrack)
    assert outcome(other, "delivered", dedup=("sendgrid", "evt-1")) is not None
    assert len(rows(db, events, type="bounce")) == 3


def test_also_runs_in_the_transaction_only_for_a_new_event(mailtrack, db, recorded_signals):
    msg = message(mailtrack)
    calls = []

    def also(session, event):
        calls.append(event.id)
        return {"inbound": "the record"}

    ev = outcome(msg, "reply", dedup=("mail", "<r1@example.net>"), also=also)
    assert outcome(msg, "reply", dedup=("mail", "<r1@example.net>"), also=also) is None
    assert calls == [ev.id]
    assert recorded_signals.of("email_replied")[0]["inbound"] == "the record"

    def failing(session, event):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        outcome(msg, "complaint", dedup=("mail", "<r2@example.net>"), also=failing)
    assert rows(db, events, type="complaint") == [] and rows(db, dnc) == []


def test_esp_open_and_click_keep_the_machine_verdict(mailtrack, db, recorded_signals):
    msg = message(mailtrack)
    ev = outcome(msg, "open", is_machine=True, machine_reason="esp-machine", dedup=("postmark", "o1"))
    click = outcome(msg, "click", url="https://shop.test/a", dedup=("postmark", "c1"))
    stored = {r["type"]: r for r in rows(db, events)}
    assert (stored["open"]["is_machine"], stored["open"]["machine_reason"]) == (True, "esp-machine")
    assert stored["click"]["is_machine"] is False and stored["click"]["link_id"] == click.link_id
    opened = recorded_signals.of("email_opened")[0]
    assert opened["is_machine"] is True and opened["machine_reason"] == "esp-machine"
    assert opened["event"].id == ev.id
    assert recorded_signals.of("link_clicked")[0]["url"] == "https://shop.test/a"


def test_bad_input_stores_nothing(mailtrack, db, make_app):
    msg = message(mailtrack)
    with pytest.raises(ValidationError):
        outcome(msg, "teleport")
    with pytest.raises(ValidationError):
        outcome(msg, "bounce", details={"diagnostic": "x" * (64 * 1024)})
    with pytest.raises(ValueError):
        outcome(msg, "bounce", dedup=("sendgrid", ""))
    assert rows(db, events) == []


def test_a_sent_message_is_found_by_its_message_id(make_app, handler, _server):
    from crm_mailtrack.services import matching

    app = make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER="crm@shop.test")
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        msg = mt.send(message(mt, email="Ann@Example.com"))
        [received] = handler.received
        header = received.message["Message-ID"]
        assert header == msg.internet_message_id
        state = get_state()
        assert matching.by_internet_message_id(state, [header]).id == msg.id
        assert matching.by_internet_message_id(state, [header.strip("<>")]).id == msg.id
        refs = f"<a@elsewhere.test>\r\n {header}"
        assert matching.by_internet_message_id(state, ["<x@y.test>", refs], email="ann@example.COM").id == msg.id
        assert matching.by_internet_message_id(state, [header], email="bob@example.com") is None
        assert matching.by_internet_message_id(state, ["<nothing@shop.test>", "", "garbage"]) is None
        assert matching.by_id(state, msg.id).id == msg.id and matching.by_id(state, "x" * 40) is None
