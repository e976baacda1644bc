"""Hostile JSON bodies: deep nesting is a 400, a body over its route's size limit a 413
(declared or streamed), oversized event ``details`` a 422, all in problem+json, nothing
stored and no traceback logged."""
from __future__ import annotations

import datetime as dt
import http.client
import io
import json
import logging
import threading

import pytest
from apihelpers import API, assert_problem, hdrs, setup_hooks, track
from apihelpers import app  # noqa: F401 - fixture
from werkzeug.serving import make_server

from crm_mailtrack import MailTrack
from crm_mailtrack.errors import ConfigurationError, ValidationError
from crm_mailtrack.models import ContactEvent, Message

#: Routes that take no body at all: they must not fail on one, but they do not read it.
BODYLESS = {"mailtrack_api.communications_resend", "mailtrack_api.communications_cancel",
            "mailtrack_api.utm_remove", "mailtrack_api.enable_webhook",
            "mailtrack_api.rotate_webhook_secret"}
#: The routes whose body carries a message's HTML (the larger limit).
MESSAGE_ROUTES = {"mailtrack_api.communications_send", "mailtrack_api.communications_schedule",
                  "mailtrack_api.communications_send_template", "mailtrack_api.campaign_send"}
LATER = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)).isoformat()


def _body_routes(app, message_id):
    """``(endpoint, method, path)`` of every POST/PUT route of the JSON API, path
    parameters filled in (so a route added later is covered without editing this test)."""
    adapter = app.url_map.bind("crm.test")
    values = {"contact_id": "c1", "channel": "email", "message_id": message_id, "template_id": "t1",
              "utm_id": "1", "key": "'c1'", "webhook_id": "w1", "campaign_id": "camp1"}
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("mailtrack_api.") or rule.endpoint == "mailtrack_api._unmatched":
            continue
        for method in sorted(rule.methods & {"POST", "PUT"}):
            path = adapter.build(rule.endpoint, {k: values[k] for k in rule.arguments})
            found.append((rule.endpoint, method, path))
    assert len(found) >= 12, found  # events, DNC, UTM, ContactClicks, communications ...
    return found


def _rows(db):
    return db.session.query(ContactEvent).count(), db.session.query(Message).count()


def test_deeply_nested_json_is_400_on_every_body_route(app, client, mailtrack, db, caplog):
    message_id = track(mailtrack).id
    before = _rows(db)
    nested = b"[" * 20_000 + b"]" * 20_000
    as_details = b'{"type": "bounce", "details": ' + b'{"a": ' * 5_000 + b"1" + b"}" * 5_000 + b"}"
    for endpoint, method, path in _body_routes(app, message_id):
        for body in (nested, as_details):
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                resp = client.open(path, method=method, data=body, headers=hdrs(**{"Content-Type": "application/json"}))
            assert resp.status_code != 500, (endpoint, resp.get_data(as_text=True))
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR], endpoint
            if endpoint not in BODYLESS:
                problem = assert_problem(resp, 400)
                assert "JSON" in problem["detail"], endpoint
    # a document just inside the depth limit is parsed (and judged by the schema), not refused
    ok = client.post(f"{API}/contacts/c1/events", headers=hdrs(),
                     json={"type": "bounce", "details": json.loads('{"a":' * 15 + "1" + "}" * 15)})
    assert ok.status_code == 201
    assert _rows(db) == (before[0] + 1, before[1])


def test_json_nested_32_levels_is_judged_and_33_levels_is_400(client, db):
    """The depth limit (32 levels of arrays and objects, the body's own object the first) is
    exact, whatever comes before or after the deep member in the document."""
    def body(levels: int) -> bytes:  # {"details": {"a": ... {"a": 1}}, "type": "bounce"}
        details = '{"a":' * (levels - 1) + "1" + "}" * (levels - 1)
        return ('{"details": ' + details + ', "type": "bounce"}').encode()

    json_hdrs = hdrs(**{"Content-Type": "application/json"})
    # 32 levels: parsed, then judged by the schema (details have a nesting limit of their own)
    judged = assert_problem(client.post(f"{API}/contacts/c1/events", data=body(32), headers=json_hdrs), 422)
    assert judged["errors"] == {"details": ["Nested too deeply."]}
    assert client.post(f"{API}/contacts/c1/events", data=body(20), headers=json_hdrs).status_code == 201
    deep = assert_problem(client.post(f"{API}/contacts/c1/events", data=body(33), headers=json_hdrs), 400)
    assert deep["detail"] == "The JSON body nests deeper than 32 levels."
    listed = b'{"type": "bounce", "details": {"x": ' + b"[" * 31 + b"]" * 31 + b"}}"  # 33 with arrays
    assert_problem(client.post(f"{API}/contacts/c1/events", data=listed, headers=json_hdrs), 400)
    listed = b'{"type": "bounce", "details": {"x": ' + b"[" * 30 + b"]" * 30 + b"}}"  # 32
    assert_problem(client.post(f"{API}/contacts/c1/events", data=listed, headers=json_hdrs), 422)
    assert _rows(db) == (1, 0)


def test_bodies_over_their_routes_limit_are_413(make_app):
    app = make_app(setup=setup_hooks, MAILTRACK_MAX_BODY_BYTES=4000, MAILTRACK_MAX_MESSAGE_BODY_BYTES=40_000,
                   MAILTRACK_MAX_DETAILS_BYTES=1000)
    client = app.test_client()
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        db = app.extensions["sqlalchemy"]
        message_id = track(mt).id
        before = _rows(db)
        for endpoint, method, path in _body_routes(app, message_id):
            if endpoint in BODYLESS:
                continue
            limit = 40_000 if endpoint in MESSAGE_ROUTES else 4000
            body = json.dumps({"pad": "x" * limit}).encode()
            resp = client.open(path, method=method, data=body, headers=hdrs(**{"Content-Type": "application/json"}))
            problem = assert_problem(resp, 413)
            assert str(limit) in problem["detail"], endpoint
        assert _rows(db) == before
        # the message routes take HTML well past the small limit
        html = "<p>" + "y" * 20_000 + "</p>"
        resp = client.post(f"{API}/communications/schedule", headers=hdrs(),
                           json={"contactId": "c1", "subject": "s", "body": html, "scheduledAt": LATER})
        assert resp.status_code == 201, resp.get_data(as_text=True)
        # details: the body fits, the stored object does not: 422 naming the field
        resp = client.post(f"{API}/contacts/c1/events", headers=hdrs(),
                           json={"type": "bounce", "details": {"diagnostic": "z" * 1200}})
        assert "details" in assert_problem(resp, 422)["errors"]
        assert _rows(db) == (before[0], before[1] + 1)


def test_default_limits_refuse_what_was_accepted_before(client, db):
    """Bodies of the sizes an attacker sent before (tens of MB): refused by the defaults."""
    big_html = "<p>" + "x" * (6 * 1024 * 1024) + "</p>"
    resp = client.post(f"{API}/communications/schedule", headers=hdrs(),
                       json={"contactId": "c1", "subject": "s", "body": big_html, "scheduledAt": LATER})
    assert resp.status_code == 413, resp.status_code  # (not the 6 MB body in the message)
    assert_problem(resp, 413)
    resp = client.post(f"{API}/contacts/c1/events", headers=hdrs(),
                       json={"type": "bounce", "details": {"blob": "x" * (100 * 1024)}})
    assert_problem(resp, 413)
    resp = client.post(f"{API}/contacts/c1/events", headers=hdrs(),
                       json={"type": "bounce", "details": {"blob": "x" * (20 * 1024)}})
    assert_problem(resp, 422)
    assert _rows(db) == (0, 0)


def _serve(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def test_a_streamed_body_without_length_is_cut_at_the_limit(make_app):
    """Chunked transfer, no Content-Length, through a real HTTP server: read to limit + 1."""
    app = make_app(setup=setup_hooks, MAILTRACK_MAX_BODY_BYTES=4000)
    server, thread = _serve(app)
    try:
        def post(chunks):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn.request("POST", f"{API}/contacts/c1/events", body=iter(chunks), encode_chunked=True,
                         headers={**hdrs(), "Content-Type": "application/json", "Transfer-Encoding": "chunked"})
            resp = conn.getresponse()
            result = resp.status, resp.getheader("Content-Type"), json.loads(resp.read())
            conn.close()
            return result

        small = json.dumps({"type": "bounce", "details": {"reason": "mailbox full"}}).encode()
        status, ctype, body = post([small[:10], small[10:]])
        assert status == 201, body
        big = json.dumps({"type": "bounce", "details": {"pad": "x" * 10_000}}).encode()
        status, ctype, body = post([big[i:i + 1000] for i in range(0, len(big), 1000)])
        assert (status, ctype, body["status"]) == (413, "application/problem+json", 413)
    finally:
        server.shutdown()
        thread.join()
    with app.app_context():
        assert app.extensions["sqlalchemy"].session.query(ContactEvent).count() == 1


def _event_body(size: int) -> bytes:
    """A valid event body of exactly ``size`` bytes."""
    head, tail = b'{"type": "bounce", "details": {"pad": "', b'"}}'
    body = head + b"x" * (size - len(head) - len(tail)) + tail
    assert len(body) == size
    return body


def test_a_body_of_exactly_the_limit_is_taken_one_byte_more_is_413(make_app):
    """The limit is the largest body taken, declared (Content-Length) or streamed (chunked,
    in chunks of any size) through a real HTTP server."""
    app = make_app(setup=setup_hooks, MAILTRACK_MAX_BODY_BYTES=4000)
    client = app.test_client()
    path = f"{API}/contacts/c1/events"
    json_hdrs = hdrs(**{"Content-Type": "application/json"})
    assert client.post(path, data=_event_body(4000), headers=json_hdrs).status_code == 201
    assert_problem(client.post(path, data=_event_body(4001), headers=json_hdrs), 413)
    server, thread = _serve(app)
    try:
        def post(body: bytes, chunk: int) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn.request("POST", path, body=iter([body[i:i + chunk] for i in range(0, len(body), chunk)]),
                         encode_chunked=True, headers={**json_hdrs, "Transfer-Encoding": "chunked"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            return resp.status

        for chunk in (4001, 1000, 999):
            assert post(_event_body(4000), chunk) == 201, chunk
            assert post(_event_body(4001), chunk) == 413, chunk
    finally:
        server.shutdown()
        thread.join()
    with app.app_context():
        # the bounces taken (a run of soft bounces also adds a dnc_added event: not counted)
        assert app.extensions["sqlalchemy"].session.query(ContactEvent).filter_by(type="bounce").count() == 4


class _Trickle(io.RawIOBase):
    """A request body that arrives a few bytes per read (8: the limit falls on a read's end),
    as a server may hand it over."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step = data, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = min(len(buffer), self.step, len(self.data))
        buffer[:n], self.data = self.data[:n], self.data[n:]
        return n

    def tell(self) -> int:  # the test client asks; the body's length is given, so it is not used
        return 0

    def seek(self, *args) -> int:  # type: ignore[no-untyped-def]
        return 0


def test_a_chunked_body_read_a_few_bytes_at_a_time_is_whole_and_limited(make_app):
    """A chunked body (no length) that the server hands over in small reads is put back
    together exactly, and counted as a whole against the limit."""
    app = make_app(setup=setup_hooks, MAILTRACK_MAX_BODY_BYTES=4000)
    client = app.test_client()

    def post(body: bytes) -> int:
        return client.post(f"{API}/contacts/c1/events", input_stream=_Trickle(body, 8), content_length=len(body),
                           headers={**hdrs(), "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True}).status_code

    assert post(_event_body(4000)) == 201
    assert post(_event_body(4001)) == 413
    assert post(_event_body(100)) == 201
    with app.app_context():
        assert app.extensions["sqlalchemy"].session.query(ContactEvent).count() == 2


def test_record_event_refuses_oversized_details(mailtrack, db):
    with pytest.raises(ValidationError) as err:
        mailtrack.record_event("c1", "bounce", details={"payload": "x" * 20_000})
    assert "details" in err.value.errors and "16384" in err.value.errors["details"][0]
    mailtrack.record_event("c1", "bounce", details={"payload": "x" * 10_000})
    assert db.session.query(ContactEvent).count() == 1


@pytest.mark.parametrize("key, value", [
    ("MAILTRACK_MAX_BODY_BYTES", "64k"), ("MAILTRACK_MAX_MESSAGE_BODY_BYTES", 0),
    ("MAILTRACK_MAX_DETAILS_BYTES", True), ("MAILTRACK_MAX_DETAILS_BYTES", -1),
])
def test_size_limits_are_validated_at_init_app(make_app, key, value):
    with pytest.raises(ConfigurationError, match=key):
        make_app(mailtrack=MailTrack(), **{key: value})
