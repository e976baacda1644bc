"""002's own send, schedule and send-template bodies: no ``contactId``, several
``recipients``. Each recipient gets a copy with its own message id and links (checked in
the mail the SMTP server receives and by clicking those links), contacts come from the
host's ``contact_resolver`` or the lower-cased address, and a request stores every copy or
none."""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
import sqlalchemy as sa
from flask import has_request_context, request

from crm_mailtrack import MailTrack
from crm_mailtrack.models import links, messages

from conftest import path_of
from apihelpers import hdrs

API = "/mailtrack/api/communications"
SENDER = "crm@example.com"
HTML = '<p>Hello <a href="https://shop.test/offer">the offer</a></p>'
#: The host's address book, for the resolver (lower-cased keys).
DIRECTORY = {"ann@example.com": "c1", "bob@example.com": "c2"}


def _tenant_and_templates(mt: MailTrack) -> None:
    @mt.tenant_loader
    def _tenant() -> str | None:
        return request.headers.get("X-Tenant") if has_request_context() else None

    @mt.template_loader
    def _template(template_id: str, variables: dict[str, Any]) -> tuple[str, str, str] | None:
        return ("Welcome", HTML, "Welcome!") if template_id == "welcome" else None


def _with_resolver(mt: MailTrack) -> None:
    _tenant_and_templates(mt)

    @mt.contact_resolver
    def _resolve(email: str) -> str | None:
        return DIRECTORY.get(email.lower())


@pytest.fixture
def make(make_app, _server, handler):
    def factory(setup=_tenant_and_templates, **config: Any):
        return make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER=SENDER,
                        MAILTRACK_BOT_AFTER_SEND_SECONDS=0, MAILTRACK_BOT_BURST_SECONDS=0, setup=setup, **config)
    return factory


def _count(app: Any, table: Any) -> int:
    with app.app_context():
        return app.extensions["mailtrack"].session.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def _record(client: Any, message_id: str) -> dict[str, Any]:
    resp = client.get(f"{API}/find/{message_id}", headers=hdrs())
    assert resp.status_code == 200
    return resp.json


def _mail_link(received: Any) -> str:
    html = received.message.get_body(("html",)).get_content()
    return re.search(r'href="([^"]+/t/c/[^"]+)"', html).group(1)


def test_002_send_body_gives_every_recipient_a_copy_with_its_own_links(make, handler):
    app = make()
    client = app.test_client()
    resp = client.post(f"{API}/send", headers=hdrs(), json={
        "body": HTML, "recipients": ["Ann@Example.com", "dan@example.com"], "subject": "Offer"})
    assert resp.status_code == 201, resp.json
    first = resp.json
    assert first["status"] == "SENT" and first["recipients"] == ["Ann@Example.com"]
    assert first["contactId"] == "ann@example.com"  # no resolver: the lower-cased address
    assert len(first["copyIds"]) == 2 and first["copyIds"][0] == first["id"]
    second = _record(client, first["copyIds"][1])
    assert second["recipients"] == ["dan@example.com"] and second["contactId"] == "dan@example.com"
    assert second["status"] == "SENT" and second["subject"] == "Offer"
    listed = client.get(f"{API}/find-list?ids={','.join(first['copyIds'])}", headers=hdrs()).json
    assert sorted(r["id"] for r in listed) == sorted(first["copyIds"])

    # the server got one mail per recipient, each addressed to that recipient alone ...
    assert sorted(r.rcpt_tos[0] for r in handler.received) == ["Ann@Example.com", "dan@example.com"]
    assert all(len(r.rcpt_tos) == 1 for r in handler.received)
    by_rcpt = {r.rcpt_tos[0]: r for r in handler.received}
    ann_link, dan_link = _mail_link(by_rcpt["Ann@Example.com"]), _mail_link(by_rcpt["dan@example.com"])
    assert ann_link != dan_link
    # ... and a click on a copy's link is that copy's, and its contact's
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0"}
    hit = client.get(path_of(dan_link), headers=browser)
    assert hit.status_code == 302 and hit.headers["Location"] == "https://shop.test/offer"
    assert [lk["clickCount"] for lk in _record(client, second["id"])["clickedLinks"]] == [1]
    assert _record(client, first["id"])["clickedLinks"] == []
    events = client.get("/mailtrack/api/contacts/dan@example.com/events/clicks", headers=hdrs()).json["events"]
    assert [e["message_id"] for e in events] == [second["id"]]


def test_contact_resolver_names_the_contacts(make, handler):
    app = make(setup=_with_resolver)
    mt = app.extensions["mailtrack"].extension

    def resolver(email: str) -> str | None:
        return None

    assert mt.contact_resolver(resolver) is resolver  # stored and returned unchanged
    mt.contact_resolver(lambda email: DIRECTORY.get(email.lower()))
    resp = app.test_client().post(f"{API}/send", headers=hdrs("t1"), json={
        "body": HTML, "recipients": ["BOB@example.com", "New.Person@Example.com"], "subject": "Hi"})
    assert resp.status_code == 201, resp.json
    client = app.test_client()
    copies = [client.get(f"{API}/find/{i}", headers=hdrs("t1")).json for i in resp.json["copyIds"]]
    assert [(c["contactId"], c["recipients"], c["tenantId"]) for c in copies] == [
        ("c2", ["BOB@example.com"], "t1"), ("new.person@example.com", ["New.Person@Example.com"], "t1")]


def test_a_resolver_may_answer_integer_ids(make, handler):
    app = make()
    app.extensions["mailtrack"].extension.contact_resolver(lambda email: 42)
    resp = app.test_client().post(f"{API}/send", headers=hdrs(), json={
        "body": HTML, "recipients": ["ann@example.com"], "subject": "Hi"})
    assert resp.status_code == 201 and resp.json["contactId"] == "42"


def test_002_schedule_body_schedules_one_copy_per_recipient(make, handler):
    app = make()
    client = app.test_client()
    at = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).replace(microsecond=0)
    resp = client.post(f"{API}/schedule", headers=hdrs(), json={
        "body": HTML, "recipients": ["ann@example.com", "bob@example.com"],
        "scheduledAt": at.isoformat().replace("+00:00", "Z"), "subject": "Later"})
    assert resp.status_code == 201, resp.json
    assert resp.json["status"] == "SCHEDULED" and len(resp.json["copyIds"]) == 2
    scheduled = client.get(f"{API}/scheduled", headers=hdrs()).json
    assert sorted(r["id"] for r in scheduled) == sorted(resp.json["copyIds"])
    assert handler.received == []
    with app.app_context():
        assert app.extensions["mailtrack"].extension.send_due(now=at + dt.timedelta(seconds=1)) == 2
    assert sorted(r.rcpt_tos[0] for r in handler.received) == ["ann@example.com", "bob@example.com"]


def test_002_send_template_body_with_several_recipients(make, handler):
    app = make()
    resp = app.test_client().post(f"{API}/send-template/welcome", headers=hdrs(),
                                  json={"recipients": ["ann@example.com", "bob@example.com"]})
    assert resp.status_code == 201, resp.json
    assert resp.json["templateId"] == "welcome" and len(resp.json["copyIds"]) == 2
    assert sorted(r.rcpt_tos[0] for r in handler.received) == ["ann@example.com", "bob@example.com"]
    assert all(r.message["Subject"] == "Welcome" for r in handler.received)


def test_do_not_contact_is_per_recipient(make, handler):
    app = make(setup=_with_resolver)
    with app.app_context():
        app.extensions["mailtrack"].extension.add_dnc("c2")  # bob, through the resolver
        app.extensions["mailtrack"].extension.add_dnc("cy@example.com")  # an address-contact
    resp = app.test_client().post(f"{API}/send", headers=hdrs(), json={
        "body": HTML, "recipients": ["ann@example.com", "bob@example.com", "CY@example.com"], "subject": "Hi"})
    assert resp.status_code == 201
    client = app.test_client()
    statuses = [client.get(f"{API}/find/{i}", headers=hdrs()).json["status"] for i in resp.json["copyIds"]]
    assert statuses == ["SENT", "SUPPRESSED", "SUPPRESSED"]
    assert [r.rcpt_tos for r in handler.received] == [["ann@example.com"]]


def test_cc_and_bcc_travel_with_the_first_copy_only(make, handler):
    app = make()
    resp = app.test_client().post(f"{API}/send", headers=hdrs(), json={
        "body": HTML, "recipients": ["ann@example.com", "bob@example.com"], "subject": "Hi",
        "cc": ["carol@example.com"], "bcc": ["audit@example.com"]})
    assert resp.status_code == 201
    rcpts = sorted(r.rcpt_tos for r in handler.received)
    assert rcpts == [["ann@example.com", "carol@example.com", "audit@example.com"], ["bob@example.com"]]


def test_with_contact_id_one_recipient_at_most(make, handler):
    app = make()
    resp = app.test_client().post(f"{API}/send", headers=hdrs(), json={
        "contactId": "c1", "body": HTML, "recipients": ["ann@example.com", "bob@example.com"], "subject": "Hi"})
    assert resp.status_code == 422 and _names_recipients(resp.json["errors"])
    ok = app.test_client().post(f"{API}/send", headers=hdrs(), json={
        "contactId": "c1", "body": HTML, "recipients": ["Ann@example.com"], "subject": "Hi"})
    assert ok.status_code == 201 and ok.json["contactId"] == "c1" and ok.json["copyIds"] == [ok.json["id"]]


@pytest.mark.parametrize("recipients", [
    None,  # neither contactId nor recipients
    [],
    ["ann@example.com", "not-an-address"],
    ["ann@example.com", "ANN@example.com"],  # the same address twice
    [f"r{i}@example.com" for i in range(51)],  # over the cap
    ["a" * 64 + "@" + "b" * 60 + ".example.com"],  # an address too long to serve as contact id
])
def test_bad_recipients_are_422_naming_recipients_and_nothing_is_written(make, handler, recipients):
    app = make()
    extra = {} if recipients is None else {"recipients": recipients}
    for path, body in (("send", {"body": HTML, "subject": "Hi", **extra}), ("send-template/welcome", extra)):
        resp = app.test_client().post(f"{API}/{path}", headers=hdrs(), json=body)
        assert resp.status_code == 422, resp.json
        assert resp.content_type == "application/problem+json" and _names_recipients(resp.json["errors"])
    assert _count(app, messages) == 0 and handler.received == []


def test_all_copies_are_stored_or_none(make, handler):
    """The resolver's id for the second address cannot be stored: the first copy, already
    composed in the same transaction, is not stored either (nor its links)."""
    app = make()
    app.extensions["mailtrack"].extension.contact_resolver(
        lambda email: "x" * 65 if email.startswith("bob") else None)
    resp = app.test_client().post(f"{API}/send", headers=hdrs(), json={
        "body": HTML, "recipients": ["ann@example.com", "bob@example.com"], "subject": "Hi"})
    assert resp.status_code == 422 and _names_recipients(resp.json["errors"])
    assert _count(app, messages) == 0 and _count(app, links) == 0 and handler.received == []


def test_the_openapi_document_describes_the_002_bodies(make):
    app = make()
    doc = app.test_client().get("/mailtrack/api/openapi.json", headers=hdrs()).json
    schemas = doc["components"]["schemas"]

    def schema_of(path: str, part: str) -> dict[str, Any]:
        op = doc["paths"][path]["post"]
        content = op["requestBody"] if part == "body" else op["responses"]["201"]
        ref = content["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        return schemas[ref]

    for path in ("/communications/send", "/communications/schedule", "/communications/send-template/{template_id}"):
        body = schema_of(path, "body")
        assert "contactId" not in body.get("required", []), path
        assert body["properties"]["recipients"]["maxItems"] == 50
        assert "copyIds" in schema_of(path, "response")["properties"]


def _names_recipients(errors: dict[str, list[str]]) -> bool:
    """The 422 names ``recipients`` or one of its items (``recipients.1``: errors are flat)."""
    return any(key == "recipients" or key.startswith("recipients.") for key in errors)
