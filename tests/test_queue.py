"""Campaign sends through a real Celery worker (in a thread of this process) on the real Redis
and RabbitMQ brokers of this machine, into a real SMTP server on loopback: each message sent
once even when its task is delivered twice, a 451 retried then accepted, a 5xx failed at
once, the per-domain rate limit pacing what the server receives, and the progress a host
reads from the API. Skipped, with the reason, when a broker is unreachable.

The same sends without a queue (in-process, then ``send-due``) are in test_campaign_send.py.
"""
from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack.models import events, messages

from celeryhelpers import broker_url, celery_app, worker  # noqa: F401 - fixtures broker_url, celery_app
from mailserver import FlakyHandler, MailServer, flaky_handler, flaky_smtp  # noqa: F401 - fixtures smtp, handler

SENDER = "crm@example.com"
HTML = '<p>Hi</p><p><a href="https://shop.test/offer">offer</a></p>'


def make_queued_app(make_app: Any, smtp: MailServer, celery_app: Any, **config: Any) -> Any:
    app = make_app(MAILTRACK_SMTP_URL=smtp.url(), MAILTRACK_DEFAULT_SENDER=SENDER, **config)
    app.extensions["mailtrack"].extension.init_celery(celery_app, app)
    return app


def wait_done(app: Any, campaign_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll the campaign's progress (each time in a fresh app context, as a web request
    would) until nothing is queued or being sent."""
    deadline = time.monotonic() + timeout
    while True:
        with app.app_context():
            progress = app.extensions["mailtrack"].extension.campaign_progress(campaign_id)
        if progress["queued"] == 0 and progress["sending"] == 0:
            return progress
        if time.monotonic() > deadline:
            raise AssertionError(f"campaign {campaign_id} not done after {timeout}s: {progress}")
        time.sleep(0.1)


def rows(app: Any) -> dict[str, Any]:
    with app.app_context():
        session = app.extensions["mailtrack"].session
        return {r.email: r for r in session.execute(sa.select(messages)).all()}


def event_types(app: Any, message_id: str) -> list[str]:
    with app.app_context():
        session = app.extensions["mailtrack"].session
        return sorted(session.execute(sa.select(events.c.type).where(events.c.message_id == message_id)).scalars())


def recipients(n: int, domain: str = "example.com") -> list[dict[str, str]]:
    return [{"contact_id": f"c{i}", "email": f"c{i}@{domain}"} for i in range(n)]


def test_a_campaign_fans_out_to_tasks_and_each_recipient_gets_one_copy(make_app, smtp, handler, celery_app,
                                                                       api_headers):
    app = make_queued_app(make_app, smtp, celery_app)
    with app.app_context():
        started = app.extensions["mailtrack"].extension.send_campaign(
            "spring", recipients(6), subject="Spring sale", html=HTML)
    # enqueued, not sent: no worker runs yet
    assert started == {"campaign_id": "spring", "total": 6, "queued": 6, "retrying": 0, "sending": 0,
                       "sent": 0, "failed": 0, "suppressed": 0, "cancelled": 0}
    assert handler.received == []
    with worker(celery_app):
        done = wait_done(app, "spring")
    assert done["sent"] == 6 and done["total"] == 6 and done["failed"] == 0
    got = sorted(r.rcpt_tos[0] for r in handler.received)
    assert got == sorted(f"c{i}@example.com" for i in range(6))
    assert all(b"Subject: Spring sale" in r.raw for r in handler.received)
    stored = rows(app)
    assert {r.status for r in stored.values()} == {"SENT"}
    assert all(event_types(app, r.id) == ["send"] for r in stored.values())

    resp = app.test_client().get("/mailtrack/api/campaigns/spring/progress", headers=api_headers)
    assert resp.status_code == 200
    assert resp.json == {"campaign_id": "spring", "total": 6, "queued": 0, "retrying": 0, "sending": 0,
                         "sent": 6, "failed": 0, "suppressed": 0, "cancelled": 0}


def broker_holds(celery_app: Any) -> int:
    """How many tasks wait in the test's queue at the broker (kombu's passive declare)."""
    name = celery_app.conf.task_default_queue
    with celery_app.connection_for_write() as conn:
        return conn.default_channel.queue_declare(queue=name, passive=True).message_count


def test_a_large_campaign_is_published_as_fan_out_tasks(make_app, smtp, handler, celery_app):
    """More messages than ``fanout_chunk``: the caller publishes one fan-out task per chunk
    (what the broker holds before any worker runs), the workers turn them into the send
    tasks, and each recipient gets one copy."""
    app = make_app(MAILTRACK_SMTP_URL=smtp.url(), MAILTRACK_DEFAULT_SENDER=SENDER)
    app.extensions["mailtrack"].extension.init_celery(celery_app, app, fanout_chunk=3)
    with app.app_context():
        started = app.extensions["mailtrack"].extension.send_campaign(
            "big", recipients(7), subject="Big", html=HTML)
    assert started["queued"] == 7 and handler.received == []
    assert broker_holds(celery_app) == 3  # chunks of 3, 3 and 1, not 7 send tasks
    with worker(celery_app):
        done = wait_done(app, "big")
    assert done["sent"] == 7 and done["failed"] == 0
    assert handler.data_commands == 7
    assert sorted(r.rcpt_tos[0] for r in handler.received) == sorted(f"c{i}@example.com" for i in range(7))
    assert all(event_types(app, r.id) == ["send"] for r in rows(app).values())


@pytest.mark.parametrize("chunk", [0, -1, 2.5, True, "500"])
def test_fanout_chunk_must_be_a_positive_integer(make_app, celery_app, chunk):
    from crm_mailtrack.errors import ConfigurationError

    app = make_app()
    with pytest.raises(ConfigurationError, match="fanout_chunk"):
        app.extensions["mailtrack"].extension.init_celery(celery_app, app, fanout_chunk=chunk)


def test_a_task_delivered_twice_sends_once(make_app, smtp, handler, celery_app):
    """Every task published twice, two worker threads racing for them: the message's claim
    lets one of each pair send; the server receives one copy per message."""
    app = make_queued_app(make_app, smtp, celery_app)
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        ids = mt.track_messages(recipients(5), subject="Twice", html=HTML, campaign_id="dup")
    queue = app.extensions["mailtrack"].queue
    assert queue.enqueue([*ids, *ids]) == 10
    with worker(celery_app, threads=2):
        wait_done(app, "dup")
        time.sleep(0.5)  # let the second task of each pair run too
    assert len(handler.received) == 5
    assert handler.data_commands == 5
    assert sorted(r.rcpt_tos[0] for r in handler.received) == sorted(f"c{i}@example.com" for i in range(5))
    assert all(event_types(app, mid) == ["send"] for mid in ids)


def test_a_451_is_retried_with_backoff_then_sent(make_app, smtp, handler, celery_app):
    handler.defer = 1
    app = make_queued_app(make_app, smtp, celery_app, MAILTRACK_SEND_RETRY_BACKOFF_SECONDS=0.3)
    with app.app_context():
        app.extensions["mailtrack"].extension.send_campaign("retry", recipients(1), subject="Retry", html=HTML)
    with worker(celery_app):
        done = wait_done(app, "retry")
    assert done["sent"] == 1 and done["failed"] == 0
    assert handler.data_commands == 2  # the 451, then the accepted one
    assert len(handler.received) == 1
    row = rows(app)["c0@example.com"]
    assert row.status == "SENT" and row.send_attempts == 2 and row.error_message is None
    assert event_types(app, row.id) == ["send"]


def test_a_5xx_fails_at_once_and_451s_run_out_of_attempts(make_app, smtp, handler, celery_app):
    handler.refuse.add("c0@example.com")
    handler.defer = -1  # every DATA is answered 451
    app = make_queued_app(make_app, smtp, celery_app, MAILTRACK_SEND_RETRY_BACKOFF_SECONDS=0.1,
                          MAILTRACK_SEND_MAX_ATTEMPTS=3)
    with app.app_context():
        app.extensions["mailtrack"].extension.send_campaign("fail", recipients(2), subject="No", html=HTML)
    with worker(celery_app):
        done = wait_done(app, "fail")
    assert done["failed"] == 2 and done["sent"] == 0
    stored = rows(app)
    refused, deferred = stored["c0@example.com"], stored["c1@example.com"]
    assert refused.status == "FAILED" and refused.send_attempts == 1
    assert refused.error_message.startswith("c0@example.com: 550")
    assert deferred.status == "FAILED" and deferred.send_attempts == 3
    assert deferred.error_message.startswith("451") and deferred.error_message.endswith("(after 3 attempts)")
    assert handler.data_commands == 3 and handler.received == []
    assert event_types(app, refused.id) == ["failed"] and event_types(app, deferred.id) == ["failed"]


def test_the_domain_rate_limit_paces_what_the_server_receives(make_app, smtp, handler, celery_app):
    """4 a second for example.org: one slot every 0.25 s, whichever worker thread sends; the
    other domain is not held back."""
    app = make_queued_app(make_app, smtp, celery_app, MAILTRACK_DOMAIN_RATE_LIMITS={"example.org": "4/s"})
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        mt.track_messages(recipients(8, "example.org"), subject="Paced", html=HTML, campaign_id="paced")
        mt.track_messages([{"contact_id": "x", "email": "x@other.test"}], subject="Free", html=HTML,
                          campaign_id="paced")
        mt.send_campaign("paced")
    with worker(celery_app, threads=3):
        done = wait_done(app, "paced")
    assert done["sent"] == 9
    paced = [t for t, rcpts in handler.arrivals if rcpts[0].endswith("@example.org")]
    assert len(paced) == 8
    # Slots are reserved 0.25 s apart (1.75 s from first to last); what the server sees also
    # carries each SMTP conversation's latency, which varies on a busy machine. Unpaced, the
    # eight would arrive within a few hundredths of a second.
    assert paced[-1] - paced[0] >= 1.0, paced
    # Any second holds 4 slots; a conversation delayed on a busy machine (the suite runs one
    # test process per core) can land in the next second's: +2 for that jitter. Unpaced, all
    # 8 land in one second; twice the rate spans 0.875 s (the check above).
    for start in paced:
        assert sum(1 for t in paced if start <= t < start + 1.0) <= 6, paced


def test_init_celery_twice_is_refused(make_app, smtp, celery_app):
    app = make_queued_app(make_app, smtp, celery_app)
    with pytest.raises(RuntimeError, match="already"):
        app.extensions["mailtrack"].extension.init_celery(celery_app, app)


def test_webhooks_are_delivered_by_the_queue(make_app, smtp, celery_app, api_headers):
    """The beat task ``crm_mailtrack.deliver_webhooks`` run by a worker posts the signed event."""
    from test_webhooks_outbound import Receiver

    standardwebhooks = pytest.importorskip("standardwebhooks")
    receiver = Receiver()
    try:
        # the receiver listens on loopback, which the SSRF guard refuses unless allowed
        app = make_queued_app(make_app, smtp, celery_app, MAILTRACK_OUTBOUND_WEBHOOK_ALLOW_PRIVATE=True)
        client = app.test_client()
        hook = client.post("/mailtrack/api/webhooks", json={"url": receiver.url, "eventTypes": ["unsubscribe"]},
                           headers=api_headers).json
        with app.app_context():
            mt = app.extensions["mailtrack"].extension
            mt.record_event("c1", "unsubscribe", email="c1@example.com")
        assert receiver.requests == []
        celery_app.send_task("crm_mailtrack.deliver_webhooks")
        with worker(celery_app):
            deadline = time.monotonic() + 30
            while not receiver.requests and time.monotonic() < deadline:
                time.sleep(0.1)
        (headers, body, _), = receiver.requests
        payload = standardwebhooks.Webhook(hook["secret"]).verify(body, headers)
        assert payload["type"] == "unsubscribe" and payload["data"]["contactId"] == "c1"
    finally:
        receiver.close()


def test_the_api_campaign_send_enqueues_for_the_workers(make_app, smtp, handler, celery_app, api_headers):
    app = make_queued_app(make_app, smtp, celery_app)
    resp = app.test_client().post("/mailtrack/api/campaigns/api/send", headers=api_headers, json={
        "subject": "Via API", "html": HTML, "recipients": [{"contactId": "c1", "email": "c1@example.com"}]})
    assert resp.status_code == 202 and resp.json["queued"] == 1
    assert handler.data_commands == 0
    with worker(celery_app):
        done = wait_done(app, "api")
    assert done["sent"] == 1 and [r.rcpt_tos for r in handler.received] == [["c1@example.com"]]
