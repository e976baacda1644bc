"""Scheduling: the schedule/scheduled/cancel routes, ``send_due`` and ``flask mailtrack
send-due``, and the proof that two concurrent send-due runs never deliver a message twice."""
from __future__ import annotations

import datetime as dt
import smtplib
import threading
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack.models import events, messages

from mailserver import MailServer

SENDER = "crm@example.com"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


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


def _send_due_twice_at_once(sapp, now: dt.datetime | None = None) -> list[int]:
    """Two ``send_due`` runs started together, each in its own app context (session and
    connection); what each returned. Fails the test if either raised."""
    barrier = threading.Barrier(2)
    handled: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with sapp.app_context():
                barrier.wait()
                handled.append(sapp.extensions["mailtrack"].extension.send_due(now))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    return handled


def test_two_concurrent_send_due_runs_deliver_each_message_once(sapp, handler):
    n = 24
    ids = _schedule(sapp, n, NOW - dt.timedelta(minutes=1))
    handled = _send_due_twice_at_once(sapp, NOW)
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


# -- a sender that died mid-send: SENDING rows are failed after the timeout, never re-sent --

class _Killed(BaseException):
    """What kill -9 or a deploy does to a sender, as far as the database can tell: the
    process stops inside the SMTP conversation, after the claim, before the outcome."""


def _crash_while_sending(app: Any, monkeypatch: pytest.MonkeyPatch, email: str, tenant: str | None = None) -> str:
    mt = app.extensions["mailtrack"].extension
    msg = mt.track_message(contact_id="c-" + email, email=email, subject="s", html="<p>hi</p>", tenant_id=tenant)

    def die(*args: Any, **kwargs: Any) -> Any:
        raise _Killed()

    with monkeypatch.context() as patch:
        patch.setattr(smtplib.SMTP, "send_message", die)
        with pytest.raises(_Killed):
            mt.send(msg)
    session = app.extensions["mailtrack"].session
    session.rollback()  # the dead process's session is gone
    assert session.execute(sa.select(messages.c.status).where(messages.c.id == msg.id)).scalar_one() == "SENDING"
    session.commit()
    return msg.id


def _age(app: Any, ids: list[str], seconds: float) -> None:
    """Time passes: the claims of ``ids`` were made ``seconds`` ago."""
    session = app.extensions["mailtrack"].session
    session.execute(sa.update(messages).where(messages.c.id.in_(ids)).values(
        updated_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)))
    session.commit()


def _row(app: Any, message_id: str) -> Any:
    session = app.extensions["mailtrack"].session
    row = session.execute(sa.select(messages.c.status, messages.c.error_message)
                          .where(messages.c.id == message_id)).one()
    session.commit()
    return row


def _event_types(app: Any, message_id: str) -> list[str]:
    session = app.extensions["mailtrack"].session
    types = list(session.execute(sa.select(events.c.type).where(events.c.message_id == message_id)).scalars())
    session.commit()
    return types


def _says_interrupted(error: str | None) -> bool:
    return (error is not None and "interrupted while sending" in error.lower()
            and "not retried" in error.lower() and "duplicate" in error.lower())


def test_a_message_left_sending_past_the_timeout_fails_and_is_not_sent(
        sapp, handler, monkeypatch, recorded_signals, api_headers):
    """Default timeout (900 s), every tenant: the stuck rows become FAILED with an error that
    says why, get the normal failure's event and signals, and nothing is delivered; the due
    message of the same run is sent as usual; an operator can resend a copy."""
    mt = sapp.extensions["mailtrack"].extension
    stuck = [_crash_while_sending(sapp, monkeypatch, "ann@example.com"),
             _crash_while_sending(sapp, monkeypatch, "bob@example.com", tenant="other-tenant")]
    assert handler.received == []
    _age(sapp, stuck, 900 + 60)
    [due] = _schedule(sapp, 1, dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1), "due")

    assert mt.send_due() == 1  # what it returns is unchanged: the due messages it handled
    assert [r.rcpt_tos for r in handler.received] == [["due0@example.com"]]
    for message_id in stuck:
        row = _row(sapp, message_id)
        assert row.status == "FAILED" and _says_interrupted(row.error_message), row
        assert _event_types(sapp, message_id) == ["failed"]
    failed = recorded_signals.of("message_failed")
    assert sorted(kw["message_id"] for kw in failed) == sorted(stuck)
    assert all(_says_interrupted(kw["error"]) and kw["event"].type == "failed"
               and kw["event"].details == {"error": kw["error"]} for kw in failed)
    recorded = [kw["event"].message_id for kw in recorded_signals.of("event_recorded") if kw["event"].type == "failed"]
    assert sorted(recorded) == sorted(stuck)

    assert mt.send_due() == 0  # nothing is failed twice, nothing is sent
    assert len(recorded_signals.of("message_failed")) == 2 and len(handler.received) == 1
    assert _event_types(sapp, stuck[0]) == ["failed"]

    copy = sapp.test_client().post(f"/mailtrack/api/communications/{stuck[0]}/resend", headers=api_headers)
    assert copy.status_code == 201 and copy.json["status"] == "SENT" and copy.json["id"] != stuck[0]
    assert [r.rcpt_tos for r in handler.received][-1] == ["ann@example.com"]


def test_the_timeout_is_honoured_a_younger_sending_message_is_untouched(
        make_app, _server, handler, monkeypatch, recorded_signals):
    app = make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER=SENDER,
                   MAILTRACK_SENDING_TIMEOUT_SECONDS=600)
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        fresh = _crash_while_sending(app, monkeypatch, "fresh@example.com")
        younger = _crash_while_sending(app, monkeypatch, "younger@example.com")
        _age(app, [younger], 600 - 60)
        assert mt.send_due() == 0
        for message_id in (fresh, younger):
            assert tuple(_row(app, message_id)) == ("SENDING", None)
            assert _event_types(app, message_id) == []
        assert recorded_signals.of("message_failed") == []

        _age(app, [younger], 600 + 60)  # the configured 600 s, not the default 900 s
        mt.send_due()
        assert _row(app, younger).status == "FAILED" and _row(app, fresh).status == "SENDING"
        assert handler.received == []


def test_a_message_that_reaches_sent_meanwhile_is_not_overwritten(sapp, handler, monkeypatch, recorded_signals):
    """The slow sender finishes between anything send_due may have read and its UPDATE: the
    UPDATE's own condition must leave the row alone (a read-then-update-by-id would not)."""
    mt = sapp.extensions["mailtrack"].extension
    state = sapp.extensions["mailtrack"]
    [late] = [_crash_while_sending(sapp, monkeypatch, "late@example.com")]
    _age(sapp, [late], 900 + 60)
    finished: list[str] = []

    def sender_finishes_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if finished or not statement.lstrip().upper().startswith("UPDATE MAILTRACK_MESSAGES"):
            return
        finished.append(statement)
        with state.engine.connect() as other:  # the other process, its own connection
            other.execute(sa.update(messages).where(messages.c.id == late).values(
                status="SENT", sent_at=dt.datetime.now(dt.timezone.utc),
                updated_at=dt.datetime.now(dt.timezone.utc)))
            other.commit()

    sa.event.listen(state.engine, "before_cursor_execute", sender_finishes_first)
    try:
        result = sapp.test_cli_runner().invoke(args=["mailtrack", "send-due"])
    finally:
        sa.event.remove(state.engine, "before_cursor_execute", sender_finishes_first)
    assert finished, "send-due never updated the messages table"
    assert result.exit_code == 0, result.output
    assert "interrupted" not in result.output
    assert tuple(_row(sapp, late)) == ("SENT", None)
    assert _event_types(sapp, late) == [] and recorded_signals.of("message_failed") == []


def test_two_concurrent_runs_fail_each_stuck_message_once(sapp, handler, monkeypatch, recorded_signals):
    stuck = [_crash_while_sending(sapp, monkeypatch, f"s{i}@example.com") for i in range(6)]
    _age(sapp, stuck, 900 + 60)
    _send_due_twice_at_once(sapp)
    session = sapp.extensions["mailtrack"].session
    failed = Counter(session.execute(sa.select(events.c.message_id).where(events.c.type == "failed")).scalars())
    assert failed == Counter({message_id: 1 for message_id in stuck})
    assert sorted(kw["message_id"] for kw in recorded_signals.of("message_failed")) == sorted(stuck)
    assert handler.received == []


def test_cli_send_due_reports_the_interrupted_messages(sapp, handler, monkeypatch):
    stuck = _crash_while_sending(sapp, monkeypatch, "ann@example.com")
    runner = sapp.test_cli_runner()
    first = runner.invoke(args=["mailtrack", "send-due"])
    assert first.exit_code == 0, first.output
    assert "interrupted" not in first.output and _row(sapp, stuck).status == "SENDING"

    _age(sapp, [stuck], 900 + 60)
    second = runner.invoke(args=["mailtrack", "send-due"])
    assert second.exit_code == 0, second.output
    assert "marked 1 interrupted message FAILED" in second.output
    assert "no scheduled messages are due" in second.output
    assert _row(sapp, stuck).status == "FAILED" and handler.received == []
    third = runner.invoke(args=["mailtrack", "send-due"])
    assert "interrupted" not in third.output


@pytest.mark.parametrize("value", [0, -5, 30, 29.5, "900", True, None, float("nan"), float("inf"),
                                   31 * 24 * 3600])
def test_a_bad_sending_timeout_is_refused_at_init_app(make_app, value):
    """A number of seconds above the SMTP timeout (30 s by default: a send that is merely
    slow must never be declared interrupted) and at most 30 days."""
    from crm_mailtrack import ConfigurationError

    with pytest.raises(ConfigurationError, match="MAILTRACK_SENDING_TIMEOUT_SECONDS"):
        make_app(MAILTRACK_SENDING_TIMEOUT_SECONDS=value)


def test_a_sending_timeout_is_checked_against_the_smtp_urls_timeout(make_app, _server, monkeypatch):
    """Just above the SMTP timeout is accepted, and is the timeout send-due applies."""
    from crm_mailtrack import ConfigurationError

    for timeout, smtp_url in ((31, _server.url()), (45.5, _server.url().replace("timeout=10", "timeout=45"))):
        app = make_app(MAILTRACK_SENDING_TIMEOUT_SECONDS=timeout, MAILTRACK_SMTP_URL=smtp_url,
                       MAILTRACK_DEFAULT_SENDER=SENDER)
        with app.app_context():
            stuck = _crash_while_sending(app, monkeypatch, "stuck@example.com")
            _age(app, [stuck], 40)
            app.extensions["mailtrack"].extension.send_due()
            assert _row(app, stuck).status == ("FAILED" if timeout < 40 else "SENDING"), timeout
    with pytest.raises(ConfigurationError, match="MAILTRACK_SENDING_TIMEOUT_SECONDS"):
        make_app(MAILTRACK_SENDING_TIMEOUT_SECONDS=60, MAILTRACK_SMTP_URL="smtp://localhost:25?timeout=60")
