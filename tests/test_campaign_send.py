"""``MailTrack.send_campaign`` without a task queue: the messages are sent in the caller's
process, a transient failure waits as SCHEDULED for ``send-due`` (which retries it), a 5xx
fails at once, the domain rate limit reschedules what is over it to reserved slots that
``send-due`` keeps, ``send()`` stays one attempt, and the settings and the missing-extra
error. The same through Celery workers: test_queue.py."""
from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack import ConfigurationError
from crm_mailtrack.models import events, messages, utcnow

from mailserver import FlakyHandler, MailServer, flaky_handler, flaky_smtp, refusing_port  # noqa: F401 - fixtures smtp, handler

SENDER = "crm@example.com"
HTML = '<p>Hi</p><p><a href="https://shop.test/offer">offer</a></p>'


@pytest.fixture
def sapp(make_app: Any, smtp: MailServer) -> Iterator[Any]:
    app = make_app(MAILTRACK_SMTP_URL=smtp.url(), MAILTRACK_DEFAULT_SENDER=SENDER)
    with app.app_context():
        yield app


def _mt(app: Any) -> Any:
    return app.extensions["mailtrack"].extension


def _rows(app: Any) -> dict[str, Any]:
    session = app.extensions["mailtrack"].session
    out = {r.email: r for r in session.execute(sa.select(messages)).all()}
    session.commit()
    return out


def _types(app: Any, message_id: str) -> list[str]:
    session = app.extensions["mailtrack"].session
    return sorted(session.execute(sa.select(events.c.type).where(events.c.message_id == message_id)).scalars())


def _recipients(n: int, domain: str = "example.com") -> list[dict[str, str]]:
    return [{"contact_id": f"c{i}", "email": f"c{i}@{domain}"} for i in range(n)]


def test_without_a_queue_the_campaign_is_sent_in_process(sapp, handler, api_headers):
    progress = _mt(sapp).send_campaign("spring", _recipients(4), subject="Spring", html=HTML)
    assert progress == {"campaign_id": "spring", "total": 4, "queued": 0, "retrying": 0, "sending": 0,
                        "sent": 4, "failed": 0, "suppressed": 0, "cancelled": 0}
    assert sorted(r.rcpt_tos[0] for r in handler.received) == [f"c{i}@example.com" for i in range(4)]
    # a second call finds nothing PENDING: nothing is sent twice
    assert _mt(sapp).send_campaign("spring")["sent"] == 4 and len(handler.received) == 4
    resp = sapp.test_client().get("/mailtrack/api/campaigns/spring/progress", headers=api_headers)
    assert resp.status_code == 200 and resp.json["sent"] == 4 and resp.json["total"] == 4


def test_send_campaign_sends_the_campaigns_prepared_messages_and_suppresses_dnc(sapp, handler):
    mt = _mt(sapp)
    mt.track_messages(_recipients(3), subject="Prepared", html=HTML, campaign_id="prep")
    mt.track_messages(_recipients(1), subject="Other", html=HTML, campaign_id="other")
    mt.add_dnc("c1")
    progress = mt.send_campaign("prep")
    assert (progress["sent"], progress["suppressed"], progress["total"]) == (2, 1, 3)
    assert sorted(r.rcpt_tos[0] for r in handler.received) == ["c0@example.com", "c2@example.com"]
    assert mt.campaign_progress("other")["queued"] == 1  # another campaign's message is left alone


def test_progress_of_an_unknown_campaign_is_404(client, api_headers):
    resp = client.get("/mailtrack/api/campaigns/nope/progress", headers=api_headers)
    assert resp.status_code == 404 and resp.content_type == "application/problem+json"


def test_a_451_waits_as_scheduled_and_send_due_retries_it(sapp, handler):
    handler.defer = 1
    before = utcnow()
    progress = _mt(sapp).send_campaign("retry", _recipients(1), subject="Retry", html=HTML)
    assert (progress["queued"], progress["retrying"], progress["sent"]) == (1, 1, 0)
    row = _rows(sapp)["c0@example.com"]
    assert row.status == "SCHEDULED" and row.send_attempts == 1
    assert row.error_message.startswith("451 4.3.0") and "will retry" in row.error_message
    # the default backoff: 60 s after the failed try
    assert dt.timedelta(seconds=59) <= row.scheduled_at - before <= dt.timedelta(seconds=61)
    assert _types(sapp, row.id) == []  # nothing final happened: no event
    assert _mt(sapp).send_due(before) == 0  # not due yet
    assert _mt(sapp).send_due(row.scheduled_at) == 1
    row = _rows(sapp)["c0@example.com"]
    assert row.status == "SENT" and row.send_attempts == 2 and row.error_message is None
    assert handler.data_commands == 2 and len(handler.received) == 1
    assert _types(sapp, row.id) == ["send"]


def test_send_due_gives_up_after_the_last_attempt(make_app, smtp, handler):
    handler.defer = -1
    app = make_app(MAILTRACK_SMTP_URL=smtp.url(), MAILTRACK_DEFAULT_SENDER=SENDER, MAILTRACK_SEND_MAX_ATTEMPTS=2,
                   MAILTRACK_SEND_RETRY_BACKOFF_SECONDS=0)
    with app.app_context():
        mt = _mt(app)
        msg = mt.track_message(contact_id="c1", email="c1@example.com", subject="S", html=HTML,
                               scheduled_at=utcnow() - dt.timedelta(minutes=1))
        assert mt.send_due() == 1
        assert _rows(app)["c1@example.com"].status == "SCHEDULED"
        assert mt.send_due() == 1
        row = _rows(app)["c1@example.com"]
        assert row.status == "FAILED" and row.send_attempts == 2 and row.error_message.endswith("(after 2 attempts)")
        assert _types(app, msg.id) == ["failed"] and handler.data_commands == 2


def test_a_5xx_fails_at_once_and_send_stays_one_attempt(sapp, handler):
    handler.refuse.add("c0@example.com")
    progress = _mt(sapp).send_campaign("hard", _recipients(1), subject="Hard", html=HTML)
    assert (progress["failed"], progress["queued"]) == (1, 0)
    assert _rows(sapp)["c0@example.com"].send_attempts == 1
    # send(): the caller waits for the outcome, so a 451 is final there, as before
    handler.defer = 1
    msg = _mt(sapp).track_message(contact_id="c9", email="c9@example.com", subject="Inline", html=HTML)
    out = _mt(sapp).send(msg)
    assert out.status == "FAILED" and out.error_message.startswith("451") and out.send_attempts == 1


def test_an_unreachable_server_is_transient_for_a_campaign(make_app):
    with refusing_port() as port:
        app = make_app(MAILTRACK_SMTP_URL=f"smtp://127.0.0.1:{port}?timeout=5", MAILTRACK_DEFAULT_SENDER=SENDER)
        with app.app_context():
            progress = _mt(app).send_campaign("down", _recipients(2), subject="Down", html=HTML)
            assert (progress["queued"], progress["retrying"], progress["failed"]) == (2, 2, 0)
            assert all("ConnectionRefusedError" in r.error_message for r in _rows(app).values())


def test_the_rate_limit_reschedules_to_reserved_slots_that_send_due_keeps(make_app, smtp, handler):
    app = make_app(MAILTRACK_SMTP_URL=smtp.url(), MAILTRACK_DEFAULT_SENDER=SENDER,
                   MAILTRACK_DOMAIN_RATE_LIMITS={"Example.org": "1/m"})
    with app.app_context():
        mt = _mt(app)
        start = utcnow()
        progress = mt.send_campaign("slow", [*_recipients(3, "example.org"), {"contact_id": "f", "email": "f@free.test"}],
                                    subject="Slow", html=HTML)
        assert (progress["sent"], progress["queued"], progress["retrying"]) == (2, 2, 0)
        got = sorted(r.rcpt_tos[0] for r in handler.received)
        assert len(got) == 2 and got[0].endswith("@example.org") and got[1] == "f@free.test"
        waiting = sorted((r for r in _rows(app).values() if r.status == "SCHEDULED"), key=lambda r: r.scheduled_at)
        assert {r.email for r in waiting} == {f"c{i}@example.org" for i in range(3)} - {got[0]}
        slots = [r.send_slot_at for r in waiting]
        assert [r.scheduled_at for r in waiting] == slots
        assert dt.timedelta(seconds=59) <= slots[0] - start <= dt.timedelta(seconds=61)
        assert slots[1] - slots[0] == dt.timedelta(seconds=60)
        # send-due before a slot opens sends nothing and keeps the reservations
        assert mt.send_due(slots[1]) == 2
        assert len(handler.received) == 2
        again = sorted((r for r in _rows(app).values() if r.status == "SCHEDULED"), key=lambda r: r.scheduled_at)
        assert [r.send_slot_at for r in again] == slots and [r.scheduled_at for r in again] == slots


@pytest.mark.parametrize(("key", "value"), [
    ("MAILTRACK_DOMAIN_RATE_LIMITS", {"gmail.com": "600 per minute"}),
    ("MAILTRACK_DOMAIN_RATE_LIMITS", {"gmail.com": "0/m"}),
    ("MAILTRACK_DOMAIN_RATE_LIMITS", {"a@gmail.com": "6/m"}),
    ("MAILTRACK_DOMAIN_RATE_LIMITS", ["gmail.com"]),
    ("MAILTRACK_SEND_MAX_ATTEMPTS", 0),
    ("MAILTRACK_SEND_MAX_ATTEMPTS", True),
    ("MAILTRACK_SEND_RETRY_BACKOFF_SECONDS", -1),
    ("MAILTRACK_SEND_RETRY_BACKOFF_SECONDS", "60"),
])
def test_bad_sending_settings_are_refused_at_init_app(make_app, key, value):
    with pytest.raises(ConfigurationError, match=key):
        make_app(**{key: value})


def test_init_celery_without_the_extra_names_it(sapp, monkeypatch):
    monkeypatch.setitem(sys.modules, "celery", None)  # as if Celery were not installed
    with pytest.raises(ConfigurationError, match=r"'celery' extra") as err:
        _mt(sapp).init_celery(object(), sapp)
    assert "crm_mailtrack[celery]" in str(err.value)
    assert sapp.extensions["mailtrack"].queue is None


def test_the_api_hands_a_campaign_to_send_due_without_a_queue(sapp, handler, api_headers):
    client = sapp.test_client()
    url = "/mailtrack/api/campaigns/fall/send"
    recipients = [{"contactId": "c1", "email": "c1@example.com"}, {"contactId": "c2", "email": "c2@example.com"}]
    resp = client.post(url, headers=api_headers, json={"subject": "Fall", "html": HTML, "recipients": recipients})
    assert resp.status_code == 202, resp.json
    assert (resp.json["queued"], resp.json["total"], resp.json["sent"]) == (2, 2, 0)
    assert handler.data_commands == 0  # nothing is sent inside the request
    out = sapp.test_cli_runner().invoke(args=["mailtrack", "send-due"])
    assert out.exit_code == 0, out.output
    assert sorted(r.rcpt_tos[0] for r in handler.received) == ["c1@example.com", "c2@example.com"]
    assert client.get("/mailtrack/api/campaigns/fall/progress", headers=api_headers).json["sent"] == 2
    # again, without recipients: nothing is PENDING any more, nothing more is sent
    again = client.post(url, headers=api_headers, json={})
    assert again.status_code == 202 and again.json["sent"] == 2 and again.json["queued"] == 0


@pytest.mark.parametrize(("body", "status"), [
    ({}, 404),  # no recipients and no such campaign
    ({"subject": "S", "recipients": [{"contactId": "", "email": "c1@example.com"}]}, 422),
    ({"subject": "S", "recipients": [{"contactId": "c1", "email": "not an address"}]}, 422),
    ({"subject": "S", "recipients": []}, 422),
])
def test_bad_campaign_sends_store_nothing(sapp, api_headers, body, status):
    resp = sapp.test_client().post("/mailtrack/api/campaigns/bad/send", headers=api_headers, json=body)
    assert resp.status_code == status and resp.content_type == "application/problem+json"
    assert _rows(sapp) == {}
