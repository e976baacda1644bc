"""The API's send routes and ``MailTrack.send_later`` with a task queue (``init_celery``): the
request stores the copies and hands them to a real Celery worker (Redis, RabbitMQ), answering
``PENDING`` before anything reaches the SMTP server; the worker delivers each copy once, under
its tenant. A broker that refuses connections loses nothing: the messages are due for
``send-due``. Without a queue, ``send_later`` never sends inline either.

The campaign path through the queue is in test_queue.py; the routes without a queue (inline
sends) in test_communications_api.py.
"""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import has_request_context, request

from crm_mailtrack.errors import Conflict, NotFound
from crm_mailtrack.models import events, messages

from apihelpers import TENANT_HEADER, hdrs
from celeryhelpers import broker_url, celery_app, closing_celery, host_celery, reachable_broker, worker  # noqa: F401
from conftest import path_of
from mailserver import MailServer, refusing_port

API = "/mailtrack/api"
COMMS = f"{API}/communications"
SENDER = "crm@example.com"
OFFER = "https://shop.test/offer"
HTML = f'<p>Hi</p><p><a href="{OFFER}">offer</a></p>'
A, B = "tenant-a", "tenant-b"


def _hooks(mt: Any) -> None:
    @mt.tenant_loader
    def _tenant() -> str | None:
        return request.headers.get(TENANT_HEADER) if has_request_context() else None

    @mt.template_loader
    def _template(template_id: str, variables: dict[str, Any]) -> tuple[str, str, str] | None:
        return ("Welcome", f'<p><a href="{OFFER}">start</a></p>', "Hi") if template_id == "welcome" else None


def make_host(make_app: Any, smtp: MailServer, celery_app: Any | None) -> Any:
    """A host app sending to ``smtp``, through ``celery_app`` when one is given."""
    app = make_app(setup=_hooks, MAILTRACK_SMTP_URL=smtp.url(), MAILTRACK_DEFAULT_SENDER=SENDER)
    if celery_app is not None:
        app.extensions["mailtrack"].extension.init_celery(celery_app, app)
    return app


@pytest.fixture
def redis_celery() -> Iterator[Any]:
    """The host's Celery app on Redis: for the tests whose point is not the broker (both
    brokers carry the send route's tasks in the first test)."""
    with closing_celery(reachable_broker("redis")) as capp:
        yield capp


def stored(app: Any) -> dict[str, Any]:
    """Every message row by id."""
    with app.app_context():
        session = app.extensions["mailtrack"].session
        out = {r.id: r for r in session.execute(sa.select(messages)).all()}
        session.commit()
        return out


def wait_final(app: Any, ids: list[str], timeout: float = 60) -> dict[str, Any]:
    """Poll the rows of ``ids`` until none is PENDING or SENDING (what a host polling
    ``find/<id>`` would do); return every row."""
    deadline = time.monotonic() + timeout
    while True:
        rows = stored(app)
        if all(rows[i].status not in ("PENDING", "SENDING") for i in ids):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"not delivered after {timeout}s: {[(i, rows[i].status) for i in ids]}")
        time.sleep(0.1)


def event_rows(app: Any, message_id: str) -> list[Any]:
    with app.app_context():
        session = app.extensions["mailtrack"].session
        out = session.execute(sa.select(events.c.type, events.c.tenant_id).where(events.c.message_id == message_id)).all()
        session.commit()
        return list(out)


def header(raw: bytes, name: str) -> bytes:
    """One header field of a raw message, unfolded."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    fields = re.split(rb"\r\n(?![ \t])", head)
    [found] = [f for f in fields if f.lower().startswith(name.lower().encode() + b":")]
    return re.sub(rb"\r\n[ \t]", b" ", found)


def click_path(raw: bytes) -> str:
    """The test-client path of the one click link in the raw message's HTML part."""
    html = email.message_from_bytes(raw, policy=email.policy.default).get_body(("html",)).get_content()
    [url] = re.findall(r'href="([^"]+/t/c/[^"]+)"', html)
    return path_of(url)


def test_the_send_route_answers_pending_at_once_and_a_worker_delivers_each_copy_once(
        make_app, _server, handler, celery_app):
    app = make_host(make_app, _server, celery_app)
    client = app.test_client()
    resp = client.post(f"{COMMS}/send", headers=hdrs(A), json={
        "recipients": ["ann@example.com", "bob@example.com"], "subject": "Offer", "body": HTML})
    assert resp.status_code == 201, resp.json
    first = resp.json
    assert first["status"] == "PENDING"
    assert first["sentAt"] is None and first["errorMessage"] is None and first["internetMessageId"] is None
    assert first["recipients"] == ["ann@example.com"] and first["tenantId"] == A
    ids = first["copyIds"]
    assert len(ids) == 2 and ids[0] == first["id"]
    # No worker runs yet: an inline send would have reached the server before the answer.
    assert handler.received == []
    assert {stored(app)[i].status for i in ids} == {"PENDING"}
    later = client.post(f"{COMMS}/schedule", headers=hdrs(A), json={
        "recipients": ["cy@example.com"], "subject": "Later", "body": HTML,
        "scheduledAt": (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).isoformat()})
    assert later.status_code == 201 and later.json["status"] == "SCHEDULED"

    with worker(celery_app):
        rows = wait_final(app, ids)
    assert [rows[i].status for i in ids] == ["SENT", "SENT"]
    got = sorted(handler.received, key=lambda r: r.rcpt_tos)
    assert [r.rcpt_tos for r in got] == [["ann@example.com"], ["bob@example.com"]]  # one copy each
    by_email = {rows[i].email: rows[i] for i in ids}
    paths = []
    for received in got:
        row = by_email[received.rcpt_tos[0]]
        assert header(received.raw, "To") == f"To: {row.email}".encode()
        assert header(received.raw, "Message-ID") == f"Message-ID: {row.internet_message_id}".encode()
        assert header(received.raw, "List-Unsubscribe") == f"List-Unsubscribe: {row.headers['List-Unsubscribe']}".encode()
        assert event_rows(app, row.id) == [("send", A)]
        paths.append(click_path(received.raw))
    assert paths[0] != paths[1]  # each copy's links are its own
    # ann's link counts for ann's copy only (include_bots: a click seconds after the send
    # is judged a machine's, and this test is about whose link it is)
    click = client.get(paths[0])
    assert click.status_code == 302 and click.headers["Location"] == OFFER
    ann, bob = by_email["ann@example.com"].id, by_email["bob@example.com"].id
    found = client.get(f"{COMMS}/find/{ann}?include_bots=true", headers=hdrs(A)).json
    assert found["status"] == "SENT" and [(c["originalUrl"], c["clickCount"]) for c in found["clickedLinks"]] == [
        (OFFER, 1)]
    assert client.get(f"{COMMS}/find/{bob}?include_bots=true", headers=hdrs(A)).json["clickedLinks"] == []
    # the scheduled copy is send-due's, at its time: the workers left it alone
    assert stored(app)[later.json["id"]].status == "SCHEDULED"
    assert len(handler.received) == 2


def test_templates_resends_and_send_later_go_through_the_queue_while_send_stays_synchronous(
        make_app, _server, handler, redis_celery):
    app = make_host(make_app, _server, redis_celery)
    client = app.test_client()
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        # send() keeps its contract with a queue configured: delivered before it returns
        direct = mt.send(mt.track_message(contact_id="d1", email="dan@example.com", subject="Direct", html=HTML,
                                          tenant_id=A))
        assert direct.status == "SENT" and [r.rcpt_tos for r in handler.received] == [["dan@example.com"]]
        later = mt.track_message(contact_id="e1", email="eve@example.com", subject="Later", html=HTML, tenant_id=A)
        returned = mt.send_later(later)
        assert returned is later and later.status == "PENDING"
        direct_id, later_id = direct.id, later.id
    template = client.post(f"{COMMS}/send-template/welcome", headers=hdrs(A), json={"recipients": ["fay@example.com"]})
    assert template.status_code == 201 and template.json["status"] == "PENDING"
    assert template.json["subject"] == "Welcome" and template.json["templateId"] == "welcome"
    resent = client.post(f"{COMMS}/{direct_id}/resend", headers=hdrs(A))
    assert resent.status_code == 201 and resent.json["status"] == "PENDING" and resent.json["id"] != direct_id
    assert len(handler.received) == 1  # still only the synchronous send

    ids = [later_id, template.json["id"], resent.json["id"]]
    with worker(redis_celery):
        rows = wait_final(app, ids)
    assert [rows[i].status for i in ids] == ["SENT", "SENT", "SENT"]
    assert sorted(r.rcpt_tos[0] for r in handler.received) == [
        "dan@example.com", "dan@example.com", "eve@example.com", "fay@example.com"]
    fay = next(r for r in handler.received if r.rcpt_tos == ["fay@example.com"])
    assert header(fay.raw, "Subject") == b"Subject: Welcome"
    assert all(event_rows(app, i) == [("send", A)] for i in ids)


def test_a_queued_message_is_sent_under_its_tenant(make_app, _server, handler, redis_celery):
    """The same contact is on Do-Not-Contact in tenant A only: the worker suppresses A's copy
    and delivers B's, each recorded in its own tenant."""
    app = make_host(make_app, _server, redis_celery)
    client = app.test_client()
    dnc = client.post(f"{API}/contacts/z1/dnc/email/add", headers=hdrs(A), json={"reason": 1})
    assert dnc.status_code == 200, dnc.json
    body = {"contactId": "z1", "recipients": ["zed@example.com"], "subject": "Hello", "body": HTML}
    in_a = client.post(f"{COMMS}/send", headers=hdrs(A), json=body).json
    in_b = client.post(f"{COMMS}/send", headers=hdrs(B), json=body).json
    assert (in_a["status"], in_a["tenantId"]) == ("PENDING", A)
    assert (in_b["status"], in_b["tenantId"]) == ("PENDING", B)
    with worker(redis_celery):
        rows = wait_final(app, [in_a["id"], in_b["id"]])
    assert (rows[in_a["id"]].status, rows[in_a["id"]].tenant_id) == ("SUPPRESSED", A)
    assert (rows[in_b["id"]].status, rows[in_b["id"]].tenant_id) == ("SENT", B)
    assert [r.rcpt_tos for r in handler.received] == [["zed@example.com"]]
    assert event_rows(app, in_b["id"]) == [("send", B)]
    assert client.get(f"{COMMS}/find/{in_b['id']}", headers=hdrs(B)).json["status"] == "SENT"
    assert client.get(f"{COMMS}/find/{in_b['id']}", headers=hdrs(A)).status_code == 404
    assert client.get(f"{COMMS}/find/{in_a['id']}", headers=hdrs(B)).status_code == 404


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_a_broker_that_refuses_connections_leaves_the_messages_due_for_send_due(make_app, _server, handler,
                                                                                 scheme, caplog):
    with refusing_port() as port:
        url = f"redis://127.0.0.1:{port}/0" if scheme == "redis" else f"amqp://guest:guest@127.0.0.1:{port}//"
        capp = host_celery(url)
        try:
            app = make_host(make_app, _server, capp)
            client = app.test_client()
            before = dt.datetime.now(dt.timezone.utc)
            with caplog.at_level(logging.WARNING, logger="crm_mailtrack"):
                resp = client.post(f"{COMMS}/send", headers=hdrs(A), json={
                    "recipients": ["ann@example.com"], "subject": "Offer", "body": HTML})
                campaign = client.post(f"{API}/campaigns/spring/send", headers=hdrs(A), json={
                    "subject": "Spring", "html": HTML, "recipients": [{"contactId": "b1", "email": "bob@example.com"}]})
                with app.app_context():
                    mt = app.extensions["mailtrack"].extension
                    later = mt.send_later(mt.track_message(contact_id="c1", email="cy@example.com", subject="Later",
                                                           html=HTML, tenant_id=A))
                    later_status, later_id, later_at = later.status, later.id, later.scheduled_at
        finally:
            capp.close()
    assert resp.status_code == 201, resp.json
    assert resp.json["status"] == "SCHEDULED"
    scheduled_at = dt.datetime.fromisoformat(resp.json["scheduledAt"].replace("Z", "+00:00"))
    assert before - dt.timedelta(seconds=1) <= scheduled_at <= dt.datetime.now(dt.timezone.utc)
    assert campaign.status_code == 202 and campaign.json["queued"] == 1
    assert later_status == "SCHEDULED" and later_at <= dt.datetime.now(dt.timezone.utc)
    assert sum("did not take" in r.getMessage() for r in caplog.records) == 3
    assert handler.received == []

    result = app.test_cli_runner().invoke(args=["mailtrack", "send-due"])
    assert result.exit_code == 0, result.output
    assert "handled 3 due messages" in result.output
    assert sorted(r.rcpt_tos[0] for r in handler.received) == ["ann@example.com", "bob@example.com", "cy@example.com"]
    rows = stored(app)
    assert {rows[i].status for i in (resp.json["id"], later_id)} == {"SENT"}
    assert {r.status for r in rows.values()} == {"SENT"}


def test_send_later_without_a_queue_never_sends_inline(make_app, _server, handler):
    app = make_host(make_app, _server, None)
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        before = dt.datetime.now(dt.timezone.utc)
        msg = mt.send_later(mt.track_message(contact_id="c1", email="ann@example.com", subject="Hi", html=HTML))
        assert msg.status == "SCHEDULED" and before <= msg.scheduled_at <= dt.datetime.now(dt.timezone.utc)
        assert handler.received == []
        tomorrow = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
        future = mt.track_message(contact_id="c2", email="bob@example.com", subject="Hi", html=HTML,
                                  scheduled_at=tomorrow)
        assert mt.send_later(future.id).scheduled_at == tomorrow  # left for its time
        assert mt.send_due() == 1
        assert [r.rcpt_tos for r in handler.received] == [["ann@example.com"]]
        with pytest.raises(Conflict, match="is SENT"):
            mt.send_later(msg)
        with pytest.raises(NotFound):
            mt.send_later("no-such-id")
    # the API without a queue still sends inside the request (unchanged)
    resp = app.test_client().post(f"{COMMS}/send", headers=hdrs(A), json={
        "recipients": ["cy@example.com"], "subject": "Now", "body": HTML})
    assert resp.status_code == 201 and resp.json["status"] == "SENT"
    assert len(handler.received) == 2
