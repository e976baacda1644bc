"""Outbound webhooks against a real HTTP receiver on loopback: signatures verified with the
``standardwebhooks`` library (the Standard Webhooks reference implementation), nothing sent on
the click path, retries with backoff under a stable ``webhook-id`` and body, the schedule
running out, an endpoint disabled after failing in a row and enabled again, redirects not
followed, two runs at once posting once, and the API's configuration and delivery log."""
from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack.models import events, utcnow
from crm_mailtrack.services import webhooks
from crm_mailtrack.state import get_state

from conftest import path_of

standardwebhooks = pytest.importorskip("standardwebhooks", reason="standardwebhooks is in the dev extra")

API = "/mailtrack/api"
BROWSER = {"User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                         "Chrome/124.0 Safari/537.36"}


class Receiver:
    """An HTTP server on a port the OS picks, recording each POST and answering with the
    next of ``answers`` (the last one repeats)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes, str]] = []
        self.answers: list[int] = [200]
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body, self.path))
                    code = outer.answers.pop(0) if len(outer.answers) > 1 else outer.answers[0]
                self.send_response(code)
                if 300 <= code < 400:
                    self.send_header("Location", f"http://127.0.0.1:{outer.port}/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/crm"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


#: The receiver is on loopback: these tests allow internal destinations (the guard's own
#: tests, in test_webhooks_hardening.py, do not).
ALLOW = {"MAILTRACK_OUTBOUND_WEBHOOK_ALLOW_PRIVATE": True}


@pytest.fixture
def app(make_app: Any) -> Iterator[Any]:
    app = make_app(**ALLOW)
    with app.app_context():
        yield app


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _subscribe(app: Any, headers: dict[str, str], url: str, **body: Any) -> dict[str, Any]:
    resp = app.test_client().post(f"{API}/webhooks", json={"url": url, **body}, headers=headers)
    assert resp.status_code == 201, resp.json
    return resp.json


def _click(app: Any, mt: Any, campaign: str = "c") -> str:
    msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="Hi", campaign_id=campaign,
                           html='<a href="https://shop.test/x">x</a>')
    resp = app.test_client().get(path_of(mt.click_url(msg, "https://shop.test/x")), headers=BROWSER)
    assert resp.status_code == 302
    return msg.id


def _event_ids(app: Any, kind: str) -> list[int]:
    session = get_state(app).session
    ids = sorted(session.execute(sa.select(events.c.id).where(events.c.type == kind)).scalars())
    session.commit()
    return ids


def _log(app: Any, headers: dict[str, str], webhook_id: str) -> list[dict[str, Any]]:
    resp = app.test_client().get(f"{API}/webhooks/{webhook_id}/deliveries", headers=headers)
    assert resp.status_code == 200
    return resp.json["deliveries"]


def test_a_click_is_posted_signed_by_the_command_never_on_the_click_path(app, api_headers, receiver):
    hook = _subscribe(app, api_headers, receiver.url, eventTypes=["click"], description="CRM")
    assert hook["secret"].startswith("whsec_") and hook["enabled"] is True and hook["eventTypes"] == ["click"]
    mt = app.extensions["mailtrack"].extension
    message_id = _click(app, mt)
    mt.record_event("c1", "open", message_id=message_id)
    assert receiver.requests == []  # the redirect did not wait for, nor make, any delivery

    out = app.test_cli_runner().invoke(args=["mailtrack", "deliver-webhooks"])
    assert out.exit_code == 0, out.output
    assert "1 new deliveries; delivered 1, failed 0" in out.output
    assert len(receiver.requests) == 1  # the open is not subscribed
    headers, body, path = receiver.requests[0]
    assert path == "/hooks/crm" and headers["content-type"] == "application/json"
    payload = standardwebhooks.Webhook(hook["secret"]).verify(body, headers)
    click_id = _event_ids(app, "click")[0]
    assert headers["webhook-id"] == f"evt_{click_id}"
    assert payload["type"] == "click"
    assert payload["data"]["id"] == f"evt_{click_id}" and payload["data"]["messageId"] == message_id
    assert payload["data"]["url"] == "https://shop.test/x" and payload["data"]["contactId"] == "c1"
    assert payload["data"]["isMachine"] is False
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(webhooks.new_secret()).verify(body, headers)  # another key: refused

    # a second run sends nothing again
    again = app.test_cli_runner().invoke(args=["mailtrack", "deliver-webhooks"])
    assert "0 new deliveries; delivered 0, failed 0" in again.output and len(receiver.requests) == 1
    (entry,) = _log(app, api_headers, hook["id"])
    assert entry["status"] == "delivered" and entry["attempts"] == 1 and entry["lastStatus"] == 200
    assert entry["eventId"] == f"evt_{click_id}" and entry["eventType"] == "click"


def test_a_failure_is_retried_after_the_backoff_with_the_same_id_and_body(app, api_headers, receiver):
    receiver.answers = [500, 200]
    hook = _subscribe(app, api_headers, receiver.url)
    _click(app, app.extensions["mailtrack"].extension)
    state = get_state(app)
    start = utcnow()
    assert webhooks.run(state, start)["failed"] >= 1
    first = [e for e in _log(app, api_headers, hook["id"]) if e["eventType"] == "click"][0]
    assert first["status"] == "pending" and first["attempts"] == 1 and first["lastStatus"] == 500
    assert first["lastError"].startswith("HTTP 500")
    next_at = dt.datetime.fromisoformat(first["nextAttemptAt"].replace("Z", "+00:00"))
    assert dt.timedelta(seconds=4) <= next_at - start <= dt.timedelta(seconds=6)  # the first wait: 5 s

    posts = len(receiver.requests)
    assert webhooks.run(state, start + dt.timedelta(seconds=2))["delivered"] == 0  # not due yet
    assert len(receiver.requests) == posts
    webhooks.run(state, start + dt.timedelta(seconds=6))
    clicks = [(h, b) for h, b, _ in receiver.requests if json.loads(b)["type"] == "click"]
    assert len(clicks) == 2
    (h1, b1), (h2, b2) = clicks
    assert h1["webhook-id"] == h2["webhook-id"] and b1 == b2
    for h, b in clicks:
        standardwebhooks.Webhook(hook["secret"]).verify(b, h)
    done = [e for e in _log(app, api_headers, hook["id"]) if e["eventType"] == "click"][0]
    assert done["status"] == "delivered" and done["attempts"] == 2 and done["lastError"] is None


def test_the_schedule_runs_out_and_a_failing_endpoint_is_disabled_then_enabled(make_app, api_headers, receiver):
    app = make_app(MAILTRACK_OUTBOUND_WEBHOOK_RETRY_SCHEDULE=[1, 2],
                   MAILTRACK_OUTBOUND_WEBHOOK_DISABLE_AFTER=5, **ALLOW)
    receiver.answers = [503]
    with app.app_context():
        hook = _subscribe(app, api_headers, receiver.url, eventTypes=["click"])
        mt = app.extensions["mailtrack"].extension
        _click(app, mt, "one")
        state = get_state(app)
        t = utcnow()
        for seconds in (0, 1, 3):  # attempt 1, then after 1 s and 2 s more: the schedule is spent
            webhooks.run(state, t + dt.timedelta(seconds=seconds))
        (entry,) = _log(app, api_headers, hook["id"])
        assert entry["status"] == "failed" and entry["attempts"] == 3 and entry["nextAttemptAt"] is None
        assert len(receiver.requests) == 3
        assert webhooks.run(state, t + dt.timedelta(hours=1))["failed"] == 0  # never again

        _click(app, mt, "two")  # two more failures: five in a row
        for seconds in (3600, 3601):
            webhooks.run(state, t + dt.timedelta(seconds=seconds))
        shown = app.test_client().get(f"{API}/webhooks/{hook['id']}", headers=api_headers).json
        assert shown["enabled"] is False and shown["failureStreak"] == 5
        assert shown["disabledReason"].startswith("5 failed attempts in a row; last: HTTP 503")
        assert "secret" not in shown
        posts = len(receiver.requests)
        _click(app, mt, "three")
        webhooks.run(state, t + dt.timedelta(hours=2))
        assert len(receiver.requests) == posts  # disabled: nothing is posted, nothing collected

        receiver.answers = [200]
        enabled = app.test_client().post(f"{API}/webhooks/{hook['id']}/enable", headers=api_headers)
        assert enabled.status_code == 200 and enabled.json["enabled"] is True and enabled.json["failureStreak"] == 0
        totals = webhooks.run(state, t + dt.timedelta(hours=3))
        assert totals["delivered"] == 2  # "two"'s retry and "three", which waited
        assert [e["status"] for e in _log(app, api_headers, hook["id"])] == ["delivered", "delivered", "failed"]


def test_a_redirect_is_a_failure_and_is_not_followed(app, api_headers, receiver):
    receiver.answers = [302]
    hook = _subscribe(app, api_headers, receiver.url, eventTypes=["click"])
    _click(app, app.extensions["mailtrack"].extension)
    assert webhooks.run(get_state(app))["failed"] == 1
    assert [p for _, _, p in receiver.requests] == ["/hooks/crm"]
    (entry,) = _log(app, api_headers, hook["id"])
    assert entry["lastStatus"] == 302 and entry["status"] == "pending"


def test_two_runs_at_once_post_each_event_once(app, api_headers, receiver):
    _subscribe(app, api_headers, receiver.url, eventTypes=["click"])
    mt = app.extensions["mailtrack"].extension
    for i in range(5):
        _click(app, mt, f"camp{i}")
    barrier = threading.Barrier(2)
    results: list[dict[str, int]] = []

    def run() -> None:
        with app.app_context():
            barrier.wait()
            results.append(webhooks.run(get_state(app)))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(r["delivered"] for r in results) == 5
    ids = [h["webhook-id"] for h, _, _ in receiver.requests]
    assert len(ids) == 5 and len(set(ids)) == 5


@pytest.mark.parametrize("body", [
    {"url": "ftp://example.com/hook"},
    {"url": "not a url"},
    {"url": "https://example.com/hook", "eventTypes": ["clicked"]},
    {"url": "https://example.com/hook", "extra": 1},
    {},
])
def test_bad_subscriptions_are_422(client, api_headers, body):
    resp = client.post(f"{API}/webhooks", json=body, headers=api_headers)
    assert resp.status_code == 422 and resp.content_type == "application/problem+json"


def test_delete_removes_the_webhook_and_its_log(app, api_headers, receiver):
    hook = _subscribe(app, api_headers, receiver.url)
    client = app.test_client()
    assert client.get(f"{API}/webhooks", headers=api_headers).json["webhooks"][0]["id"] == hook["id"]
    assert client.delete(f"{API}/webhooks/{hook['id']}", headers=api_headers).status_code == 204
    assert client.get(f"{API}/webhooks/{hook['id']}", headers=api_headers).status_code == 404
    assert client.get(f"{API}/webhooks", headers=api_headers).json == {"webhooks": []}


def test_bad_settings_are_refused(make_app):
    from crm_mailtrack import ConfigurationError

    for key, value in (("MAILTRACK_OUTBOUND_WEBHOOK_RETRY_SCHEDULE", [5, -1]),
                       ("MAILTRACK_OUTBOUND_WEBHOOK_DISABLE_AFTER", 0),
                       ("MAILTRACK_OUTBOUND_WEBHOOK_TIMEOUT_SECONDS", 0),
                       ("MAILTRACK_OUTBOUND_WEBHOOK_ALLOW_PRIVATE", "yes")):
        with pytest.raises(ConfigurationError, match=key):
            make_app(**{key: value})
