"""Scheduling: the schedule/scheduled/cancel routes, ``send_due`` and ``flask mailtrack
send-due``, and the proof that two concurrent send-due runs never deliver a message twice."""
from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack.models import events, messages

from mailserver import MailServer, RecordingHandler

SENDER = "crm@example.com"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def _server():
    with MailServer(RecordingHandler()) as srv:
        yield srv


@pytest.fixture
def handler(_server: MailServer) -> RecordingHandler:
    _server.handler.received.clear()
    return _server.handler


@pytest.fixture
def sapp(make_app, _server: MailServer, handler):
    app = make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER=SENDER)
    with app.app_context():
        yield app


def _schedule(app: Any, n: int, at: dt.datetime, prefix: str = "r") -> list[str]:
    mt = app.extensions["mailtrack"].extension
    return [mt.track_message(contact_id=f"c{i}", email=f"{prefix}{i}@example.com", subject=f"s{i}",
                             html="<p>hi</p>", scheduled_at=at).id for i in range(n)]


def _status(app: Any) -> Counter[str]:
    session = app.extensions["mailtrack"].session
    return Counter(session.execute(sa.select(messages.c.status)).scalars())


def test_send_due_sends_only_what_is_due(sapp, handler):
    due = _schedule(sapp, 2, NOW - dt.timedelta(minutes=5), "due")
    later = _schedule(sapp, 1, NOW + dt.timedelta(minutes=5), "later")
    mt = sapp.extensions["mailtrack"].extension
    assert mt.send_due(NOW) == 2
    assert sorted(r.rcpt_tos[0] for r in handler.received) == ["due0@example.com", "due1@example.com"]
    assert _status(sapp) == Counter({"SENT": 2, "SCHEDULED": 1})
    assert mt.send_due(NOW) == 0  # nothing is sent twice
    assert mt.send_due(NOW + dt.timedelta(minutes=10)) == 1
    assert len(handler.received) == 3
    assert len(due) == 2 and len(later) == 1


def test_send_due_reads_in_batches(sapp, handler):
    from crm_mailtrack.services.sending import send_due

    _schedule(sapp, 7, NOW - dt.timedelta(hours=1))
    seen: list[int] = []
    assert send_due(sapp.extensions["mailtrack"], NOW, batch_size=3, progress=seen.append) == 7
    assert len(seen) == 7 and len(handler.received) == 7


def test_two_concurrent_send_due_runs_deliver_each_message_once(sapp, handler):
    n = 24
    ids = _schedule(sapp, n, NOW - dt.timedelta(minutes=1))
    barrier = threading.Barrier(2)
    handled: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with sapp.app_context():  # its own session and connection
                barrier.wait()
                handled.append(sapp.extensions["mailtrack"].extension.send_due(NOW))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(handled) == n
    delivered = Counter(r.rcpt_tos[0] for r in handler.received)
    assert len(delivered) == n and set(delivered.values()) == {1}
    session = sapp.extensions["mailtrack"].session
    session.commit()
    assert _status(sapp) == Counter({"SENT": n})
    sends = Counter(session.execute(sa.select(events.c.message_id).where(events.c.type == "send")).scalars())
    assert set(sends) == set(ids) and set(sends.values()) == {1}


def test_cli_send_due_with_progress(sapp, handler):
    _schedule(sapp, 3, dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1))
    result = sapp.test_cli_runner().invoke(args=["mailtrack", "send-due"])
    assert result.exit_code == 0, result.output
    assert "Sending due messages" in result.output
    assert "handled 3 due messages" in result.output
    assert len(handler.received) == 3
    again = sapp.test_cli_runner().invoke(args=["mailtrack", "send-due"])
    assert "no scheduled messages are due" in again.output


def test_a_bad_smtp_url_is_refused_before_anything_can_be_claimed(make_app):
    """A bad MAILTRACK_SMTP_URL fails at init_app, naming the key, so no send-due run can
    ever claim a message it cannot deliver."""
    from crm_mailtrack import ConfigurationError

    with pytest.raises(ConfigurationError, match="MAILTRACK_SMTP_URL"):
        make_app(MAILTRACK_SMTP_URL="http://nope", MAILTRACK_DEFAULT_SENDER=SENDER)


def test_schedule_list_cancel_routes(sapp, handler, api_headers):
    client = sapp.test_client()
    at = (NOW + dt.timedelta(days=1)).isoformat()
    created = client.post("/mailtrack/api/communications/schedule", headers=api_headers, json={
        "contactId": "c1", "recipients": ["ann@example.com"], "subject": "Later", "body": "<p>x</p>",
        "scheduledAt": at,
    })
    assert created.status_code == 201, created.json
    record = created.json
    assert record["status"] == "SCHEDULED" and record["scheduledAt"] == "2026-03-02T12:00:00Z"
    assert handler.received == []

    listed = client.get("/mailtrack/api/communications/scheduled", headers=api_headers).json
    assert [r["id"] for r in listed] == [record["id"]]

    cancelled = client.post(f"/mailtrack/api/communications/{record['id']}/cancel", headers=api_headers)
    assert cancelled.status_code == 200 and cancelled.json["status"] == "CANCELLED"
    assert client.get("/mailtrack/api/communications/scheduled", headers=api_headers).json == []
    again = client.post(f"/mailtrack/api/communications/{record['id']}/cancel", headers=api_headers)
    assert again.status_code == 409 and again.content_type == "application/problem+json"
    assert sapp.extensions["mailtrack"].extension.send_due(NOW + dt.timedelta(days=2)) == 0
    assert handler.received == []
    missing = client.post("/mailtrack/api/communications/nope/cancel", headers=api_headers)
    assert missing.status_code == 404


def test_schedule_requires_a_valid_time(sapp, api_headers):
    client = sapp.test_client()
    resp = client.post("/mailtrack/api/communications/schedule", headers=api_headers, json={
        "contactId": "c1", "recipients": ["ann@example.com"], "subject": "x", "body": "<p>x</p>",
        "scheduledAt": "tomorrow"})
    assert resp.status_code == 422 and "scheduledAt" in resp.json["errors"]
    assert _status(sapp) == Counter()
