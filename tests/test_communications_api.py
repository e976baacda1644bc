"""The ``/api/communications/...`` routes (002) as a host's client uses them: send,
send-template, resend, find, find-all, find-list, page, dynamic-search, by-entity, thread,
delete, comment; record shape, tenancy, and a constant number of queries per page."""
from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from flask import has_request_context, request

from crm_mailtrack import ContactEvent, Message
from crm_mailtrack.models import events, messages

from apihelpers import hdrs
from mailserver import MailServer

API = "/mailtrack/api/communications"
SENDER = "crm@example.com"
CONTACTS = {"c1": {"email": "ann@example.com"}, "c2": {"email": "bob@example.com"}, "c3": {}}
T0 = dt.datetime(2026, 2, 1, 9, 0, tzinfo=dt.timezone.utc)


def _hooks(mt: Any) -> None:
    @mt.tenant_loader
    def _tenant() -> str | None:
        return request.headers.get("X-Tenant") if has_request_context() else None

    @mt.contact_loader
    def _contact(contact_id: str) -> dict[str, Any] | None:
        return CONTACTS.get(contact_id)

    @mt.template_loader
    def _template(template_id: str, variables: dict[str, Any]) -> tuple[str, str, str] | None:
        if template_id != "welcome":
            return None
        name = variables.get("name", "there")
        return (f"Welcome {name}", f'<p>Hi {name}, <a href="https://crm.example/start">start</a></p>', f"Hi {name}")


@pytest.fixture
def capp(make_app, _server: MailServer, handler):
    app = make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER=SENDER, setup=_hooks)
    with app.app_context():
        yield app


@pytest.fixture
def client(capp):
    return capp.test_client()


def _send(client: Any, tenant: str | None = None, **body: Any) -> Any:
    payload = {"contactId": "c1", "subject": "Offer", "body": '<p><a href="https://shop.test/a">A</a> '
               '<a href="https://shop.test/b">B</a></p>', **body}
    return client.post(f"{API}/send", headers=hdrs(tenant), json=payload)


def _event(app: Any, message_id: str, type_: str, *, url: str | None = None, machine: bool = False,
           at: dt.datetime = T0) -> None:
    state = app.extensions["mailtrack"]
    msg = state.session.get(Message, message_id)
    state.session.add(ContactEvent(tenant_id=msg.tenant_id, type=type_, contact_id=msg.contact_id,
                                   message_id=message_id, url=url, occurred_at=at, is_machine=machine))
    state.session.commit()


# -- send ----------------------------------------------------------------------------------------

def test_send_returns_the_sent_record(client, handler):
    resp = _send(client, type="OFFERTE", relatedEntityType="deal", relatedEntityId="d1", createdBy="u1",
                 conversationId="conv-1")
    assert resp.status_code == 201, resp.json
    r = resp.json
    assert r["status"] == "SENT" and r["sentAt"].endswith("Z") and r["internetMessageId"].startswith("<")
    assert r["recipients"] == ["ann@example.com"]  # from the contact_loader
    assert r["type"] == "OFFERTE" and r["relatedEntityType"] == "deal" and r["relatedEntityId"] == "d1"
    assert r["conversationId"] == "conv-1" and r["createdBy"] == "u1"
    assert r["openCount"] == 0 and r["opened"] is False and r["openedAt"] is None and r["clickedLinks"] == []
    assert r["linkTrackingEnabled"] is True and r["trackingEnabled"] is True and r["providerType"] == "SMTP"
    assert "/t/c/" in r["body"] and r["originalBody"].startswith('<p><a href="https://shop.test/a">')
    assert [e["type"] for e in r["events"]] == ["CREATE", "SEND"]
    assert r["events"][0]["authorId"] == "u1"
    assert handler.received[0].rcpt_tos == ["ann@example.com"]


def test_send_failure_and_suppression_are_records_not_errors(client, capp, handler):
    handler.refuse.add("bob@example.com")
    failed = _send(client, contactId="c2").json
    assert failed["status"] == "FAILED" and "550" in failed["errorMessage"]
    assert [e["type"] for e in failed["events"]] == ["CREATE", "FAILED"]
    assert failed["events"][1]["description"] == failed["errorMessage"]
    capp.extensions["mailtrack"].extension.add_dnc("c1")
    suppressed = _send(client).json
    assert suppressed["status"] == "SUPPRESSED"
    assert handler.received == []


@pytest.mark.parametrize("body, status, field", [
    ({"contactId": "nobody"}, 404, None),
    ({"contactId": "c3"}, 422, "recipients"),  # the loader knows no address
    ({"recipients": ["a@example.com", "b@example.com"]}, 422, "recipients"),
    ({"recipients": ["not-an-address"]}, 422, "recipients"),
    ({"unknownField": 1}, 422, "unknownField"),
    ({"body": None}, 422, "body"),
    ({"subject": "Hi\r\nBcc: victim@example.com"}, 422, "subject"),
    ({"body": '<a href="https://x.test/a\x01b">x</a>'}, 422, "body"),
    ({"variables": {"a": "nul\x00"}}, 422, "variables"),
])
def test_send_rejects_bad_input_without_writing(client, capp, handler, body, status, field):
    resp = _send(client, **body)
    assert resp.status_code == status and resp.content_type == "application/problem+json"
    if field:
        assert any(key.split(".")[0] == field for key in resp.json["errors"])  # nested: "recipients.0"
    assert capp.extensions["mailtrack"].session.execute(sa.select(sa.func.count()).select_from(messages)).scalar() == 0
    assert handler.received == []


def test_send_template_uses_the_template_loader(client, handler):
    resp = client.post(f"{API}/send-template/welcome", headers=hdrs(),
                       json={"contactId": "c2", "variables": {"name": "Bob"}, "templateName": "Welcome"})
    assert resp.status_code == 201, resp.json
    r = resp.json
    assert r["subject"] == "Welcome Bob" and r["templateId"] == "welcome" and r["templateName"] == "Welcome"
    assert r["status"] == "SENT" and r["bodyText"] == "Hi Bob"
    mail = handler.received[0].message
    assert mail["Subject"] == "Welcome Bob" and mail.get_body(("plain",)).get_content().strip() == "Hi Bob"
    missing = client.post(f"{API}/send-template/nope", headers=hdrs(), json={"contactId": "c2"})
    assert missing.status_code == 404


def test_send_template_without_a_loader_is_404(make_app, _server, handler):
    app = make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER=SENDER)
    resp = app.test_client().post(f"{API}/send-template/welcome", headers=hdrs(),
                                  json={"contactId": "c1", "recipients": ["ann@example.com"]})
    assert resp.status_code == 404 and handler.received == []


def test_resend_makes_a_copy_in_the_same_thread(client, handler):
    first = _send(client).json
    resent = client.post(f"{API}/{first['id']}/resend", headers=hdrs())
    assert resent.status_code == 201
    r = resent.json
    assert r["id"] != first["id"] and r["status"] == "SENT" and r["conversationId"] == first["id"]
    assert r["originalBody"] == first["originalBody"] and len(handler.received) == 2
    thread = client.get(f"{API}/{first['id']}/thread", headers=hdrs()).json
    assert thread["inbound"] == [] and [m["id"] for m in thread["outbound"]] == [first["id"], r["id"]]
    assert client.get(f"{API}/{r['id']}/thread", headers=hdrs()).json == thread


def test_resend_only_sent_or_failed(client):
    at = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).isoformat()
    scheduled = client.post(f"{API}/schedule", headers=hdrs(), json={
        "contactId": "c1", "subject": "x", "body": "<p>x</p>", "scheduledAt": at}).json
    resp = client.post(f"{API}/{scheduled['id']}/resend", headers=hdrs())
    assert resp.status_code == 409


# -- records ------------------------------------------------------------------------------------

def test_record_counts_human_opens_and_clicks_per_link(client, capp):
    r = _send(client).json
    mid = r["id"]
    _event(capp, mid, "open", at=T0 + dt.timedelta(minutes=5))
    _event(capp, mid, "open", at=T0 + dt.timedelta(minutes=9))
    _event(capp, mid, "open", machine=True, at=T0)
    _event(capp, mid, "click", url="https://shop.test/a", at=T0 + dt.timedelta(minutes=6))
    _event(capp, mid, "click", url="https://shop.test/a", at=T0 + dt.timedelta(minutes=7))
    _event(capp, mid, "click", url="https://shop.test/b", machine=True, at=T0 + dt.timedelta(minutes=1))
    got = client.get(f"{API}/find/{mid}", headers=hdrs()).json
    assert got["openCount"] == 2 and got["opened"] is True and got["openedAt"] == "2026-02-01T09:05:00Z"
    [link] = got["clickedLinks"]
    assert link["originalUrl"] == "https://shop.test/a" and link["clickCount"] == 2
    assert link["clickedAt"] == "2026-02-01T09:06:00Z" and "/mailtrack/t/c/" in link["url"]
    with_bots = client.get(f"{API}/page?include_bots=true", headers=hdrs()).json["content"][0]
    assert with_bots["openCount"] == 3 and with_bots["openedAt"] == "2026-02-01T09:00:00Z"
    assert sorted((lk["originalUrl"], lk["clickCount"]) for lk in with_bots["clickedLinks"]) == [
        ("https://shop.test/a", 2), ("https://shop.test/b", 1)]


def test_a_honeypot_click_at_the_same_moment_as_a_link_click(client, capp):
    """A honeypot hit has no URL; sharing its timestamp with a real link's click must not
    break the per-link ordering of a record (it was a TypeError, a 500)."""
    mid = _send(client).json["id"]
    _event(capp, mid, "click", url="https://shop.test/a", machine=True, at=T0)
    _event(capp, mid, "click", url=None, machine=True, at=T0)
    resp = client.get(f"{API}/page?include_bots=true", headers=hdrs())
    assert resp.status_code == 200
    links = resp.json["content"][0]["clickedLinks"]
    assert ("https://shop.test/a", 1) in [(lk["originalUrl"], lk["clickCount"]) for lk in links]


def test_a_click_without_an_open_counts_as_opened(client, capp):
    mid = _send(client).json["id"]
    _event(capp, mid, "click", url="https://shop.test/b", at=T0 + dt.timedelta(hours=1))
    got = client.get(f"{API}/find/{mid}", headers=hdrs()).json
    assert got["openCount"] == 0 and got["opened"] is True and got["openedAt"] == "2026-02-01T10:00:00Z"


def test_tenancy_other_tenants_rows_are_404_or_absent(client):
    mine = _send(client, tenant="t1").json["id"]
    theirs = _send(client, tenant="t2").json["id"]
    assert client.get(f"{API}/find/{theirs}", headers=hdrs("t1")).status_code == 404
    assert client.delete(f"{API}/{theirs}", headers=hdrs("t1")).status_code == 404
    assert client.post(f"{API}/{theirs}/comment", headers=hdrs("t1"), json="hi").status_code == 404
    assert client.post(f"{API}/{theirs}/resend", headers=hdrs("t1")).status_code == 404
    assert client.get(f"{API}/{theirs}/thread", headers=hdrs("t1")).status_code == 404
    assert [r["id"] for r in client.get(f"{API}/find-all", headers=hdrs("t1")).json] == [mine]
    assert [r["id"] for r in client.get(f"{API}/find-list?ids={mine},{theirs}", headers=hdrs("t1")).json] == [mine]
    assert client.get(f"{API}/page", headers=hdrs("t1")).json["totalElements"] == 1
    assert client.get(f"{API}/find/{theirs}", headers=hdrs("t2")).json["tenantId"] == "t2"


def test_ids_no_message_can_have_are_404(client):
    for path in (f"{API}/find/%00", f"{API}/{'x' * 100}/thread"):
        assert client.get(path, headers=hdrs()).status_code == 404
    assert client.post(f"{API}/a%00b/cancel", headers=hdrs()).status_code == 404
    assert client.delete(f"{API}/a%00b", headers=hdrs()).status_code == 404
    assert client.get(f"{API}/find-list?ids=a%00b", headers=hdrs()).status_code == 422


def test_find_list_and_find_by_ids(client):
    a, b = _send(client).json["id"], _send(client).json["id"]
    for url in (f"{API}/find-list?ids={a}&ids={b}", f"{API}/find?ids={a},{b}", f"{API}/find-list?ids={a},nope,{b}"):
        assert sorted(r["id"] for r in client.get(url, headers=hdrs()).json) == sorted([a, b])
    assert client.get(f"{API}/find-list", headers=hdrs()).status_code == 422


def test_a_list_parameter_repeated_with_or_without_brackets_keeps_every_value(client):
    """``search=a&search=b`` is the list ``[a, b]``, as ``search[]=a&search[]=b`` is: a
    host's HTTP client may write either. The terms all apply (each must match), so losing
    one of them widens the answer; ``ids`` likewise finds every message named."""
    spring_offer = _send(client, subject="Spring offer").json["id"]
    spring_invoice = _send(client, subject="Spring invoice").json["id"]
    _send(client, subject="Autumn offer")

    def subjects(query: str) -> list[str]:
        resp = client.get(f"{API}/dynamic-search?{query}", headers=hdrs())
        assert resp.status_code == 200, (query, resp.json)
        return sorted(r["subject"] for r in resp.json["content"])

    assert subjects("search=offer") == ["Autumn offer", "Spring offer"]
    assert subjects("search=spring") == ["Spring invoice", "Spring offer"]
    for query in ("search=spring&search=offer", "search[]=spring&search[]=offer", "search=spring&search[]=offer"):
        assert subjects(query) == ["Spring offer"], query
    for query in (f"ids={spring_offer}&ids={spring_invoice}", f"ids[]={spring_offer}&ids[]={spring_invoice}"):
        resp = client.get(f"{API}/find-list?{query}", headers=hdrs())
        assert resp.status_code == 200, (query, resp.json)
        assert sorted(r["id"] for r in resp.json) == sorted([spring_offer, spring_invoice]), query


def test_page_envelope_and_sorting(client):
    ids = [_send(client, subject=s).json["id"] for s in ("b", "c", "a")]
    page0 = client.get(f"{API}/page?page=0&size=2&sortBy=subject&direction=ASC", headers=hdrs()).json
    assert [r["subject"] for r in page0["content"]] == ["a", "b"]
    assert (page0["totalElements"], page0["totalPages"], page0["number"], page0["size"]) == (3, 2, 0, 2)
    assert page0["first"] is True and page0["last"] is False and page0["numberOfElements"] == 2
    assert page0["empty"] is False and page0["pageable"]["offset"] == 0 and page0["sort"]["sorted"] is True
    page1 = client.get(f"{API}/page?page=1&size=2&sortBy=subject&direction=ASC", headers=hdrs()).json
    assert [r["subject"] for r in page1["content"]] == ["c"] and page1["last"] is True
    empty = client.get(f"{API}/page?page=5&size=2", headers=hdrs()).json
    assert empty["empty"] is True and empty["content"] == []
    newest_first = client.get(f"{API}/page", headers=hdrs()).json["content"]
    assert [r["id"] for r in newest_first] == ids[::-1]
    for bad in ("sortBy=body", "sortBy=subject;drop", "direction=UP", "size=0", "size=501", "page=-1"):
        resp = client.get(f"{API}/page?{bad}", headers=hdrs())
        assert resp.status_code == 422, bad


def test_dynamic_search_get_and_post(client, handler):
    handler.refuse.add("bob@example.com")
    _send(client, subject="Quarterly offer", type="OFFERTE")
    _send(client, subject="Invoice 100%", type="INVOICE", contactId="c2")
    _send(client, subject="Another offer", type="OFFERTE", templateId="t-1")

    def subjects(resp: Any) -> list[str]:
        assert resp.status_code == 200, resp.json
        return sorted(r["subject"] for r in resp.json["content"])

    assert subjects(client.get(f"{API}/dynamic-search?type=OFFERTE", headers=hdrs())) == ["Another offer", "Quarterly offer"]
    assert subjects(client.get(f"{API}/dynamic-search?status=FAILED", headers=hdrs())) == ["Invoice 100%"]
    assert subjects(client.get(f"{API}/dynamic-search?search=OFFER&search=quarter", headers=hdrs())) == ["Quarterly offer"]
    assert subjects(client.get(f"{API}/dynamic-search?search=100%25", headers=hdrs())) == ["Invoice 100%"]
    assert subjects(client.get(f"{API}/dynamic-search?search=%25", headers=hdrs())) == ["Invoice 100%"]
    sorted_get = client.get(f"{API}/dynamic-search?sort=subject,desc", headers=hdrs()).json["content"]
    assert [r["subject"] for r in sorted_get] == ["Quarterly offer", "Invoice 100%", "Another offer"]

    post = client.post(f"{API}/dynamic-search", headers=hdrs(), json={
        "filters": {"status": ["SENT", "FAILED"], "type": "OFFERTE"}, "search": ["offer"],
        "sort": [{"field": "subject", "ascending": True}], "page": 0, "size": 1})
    assert post.status_code == 200
    assert [r["subject"] for r in post.json["content"]] == ["Another offer"] and post.json["totalElements"] == 2
    for bad in ({"filters": {"body": "x"}}, {"sort": [{"field": "html"}]}, {"size": 9999}, {"nope": 1}):
        resp = client.post(f"{API}/dynamic-search", headers=hdrs(), json=bad)
        assert resp.status_code == 422, bad
    assert client.get(f"{API}/dynamic-search?sort=subject,sideways", headers=hdrs()).status_code == 422
    future = client.get(f"{API}/dynamic-search?dateFrom=2999-01-01", headers=hdrs()).json
    assert future["totalElements"] == 0


def test_by_entity(client, capp):
    mid = _send(client, relatedEntityType="deal", relatedEntityId="d9", subject="About the deal").json["id"]
    _send(client, relatedEntityType="deal", relatedEntityId="other")
    _event(capp, mid, "open")
    items = client.get(f"{API}/by-entity?entityType=deal&entityId=d9", headers=hdrs()).json
    assert len(items) == 1
    item = items[0]
    assert item["id"] == mid and item["subject"] == "About the deal" and item["direction"] == "OUTBOUND"
    assert item["opened"] is True and item["fromEmail"] == SENDER and item["recipients"] == ["ann@example.com"]
    assert client.get(f"{API}/by-entity?entityType=deal", headers=hdrs()).status_code == 422


def test_delete_and_delete_list_remove_messages_and_their_events(client, capp):
    a, b, c = (_send(client).json["id"] for _ in range(3))
    _event(capp, a, "open")
    assert client.delete(f"{API}/{a}", headers=hdrs()).status_code == 204
    assert client.get(f"{API}/find/{a}", headers=hdrs()).status_code == 404
    assert client.delete(f"{API}/{a}", headers=hdrs()).status_code == 404
    session = capp.extensions["mailtrack"].session
    assert session.execute(sa.select(sa.func.count()).select_from(events).where(events.c.message_id == a)).scalar() == 0
    assert client.delete(f"{API}/delete-list?ids={b},{c},unknown", headers=hdrs()).status_code == 204
    assert client.get(f"{API}/find-all", headers=hdrs()).json == []


def test_comment_is_stored_as_an_event(client, capp, recorded_signals):
    mid = _send(client).json["id"]
    plain = client.post(f"{API}/{mid}/comment", headers=hdrs(), json="Called, will reply")
    assert plain.status_code == 201 and plain.json["type"] == "COMMENT"
    obj = client.post(f"{API}/{mid}/comment", headers=hdrs(), json={"comment": "Second", "authorId": "u7"})
    assert obj.status_code == 201
    record = client.get(f"{API}/find/{mid}", headers=hdrs()).json
    comments = [e for e in record["events"] if e["type"] == "COMMENT"]
    assert [(e["description"], e["authorId"]) for e in comments] == [("Called, will reply", None), ("Second", "u7")]
    assert client.post(f"{API}/{mid}/comment", headers=hdrs(), json="").status_code == 422
    assert client.post(f"{API}/{mid}/comment", headers=hdrs(), json=[1]).status_code == 422
    bad_json = client.post(f"{API}/{mid}/comment", headers={**hdrs(), "Content-Type": "application/json"}, data="{")
    assert bad_json.status_code == 400
    assert client.post(f"{API}/nope/comment", headers=hdrs(), json="x").status_code == 404
    comment_signals = [(kw["event"].message_id, kw["event"].details) for kw in recorded_signals.of("event_recorded")
                       if kw["event"].type == "comment"]
    assert [message_id for message_id, _ in comment_signals] == [mid, mid]  # one per stored comment, none for refusals


def test_a_page_holds_each_records_own_counts(client, capp):
    """Records of a page carry their own opens and clicks (fetched per page, not per row:
    bench/bench_queries.py counts the statements)."""
    mt = capp.extensions["mailtrack"].extension
    ids = []
    for i in range(4):
        mid = mt.track_message(contact_id="c1", email="ann@example.com", subject=f"s{i}",
                               html='<a href="https://shop.test/a">A</a>').id
        for _ in range(i):
            _event(capp, mid, "open")
        ids.append(mid)
    _event(capp, ids[3], "click", url="https://shop.test/a")
    page = client.get(f"{API}/page?size=4&sortBy=subject&direction=ASC", headers=hdrs()).json["content"]
    assert [(r["id"], r["openCount"], [c["clickCount"] for c in r["clickedLinks"]]) for r in page] == [
        (ids[0], 0, []), (ids[1], 1, []), (ids[2], 2, []), (ids[3], 3, [1])]


def test_unauthorised_and_not_acceptable(client):
    assert client.get(f"{API}/find-all").status_code == 401
    resp = client.get(f"{API}/find-all", headers={**hdrs(), "Accept": "text/html"})
    assert resp.status_code == 406


def test_routes_are_in_the_openapi_document(client):
    doc = client.get("/mailtrack/api/openapi.json", headers=hdrs()).json
    expected = {"/communications/send", "/communications/send-template/{template_id}", "/communications/schedule",
                "/communications/scheduled", "/communications/{message_id}/cancel",
                "/communications/{message_id}/resend", "/communications/find/{message_id}",
                "/communications/find-all", "/communications/find-list", "/communications/page",
                "/communications/dynamic-search", "/communications/by-entity", "/communications/delete-list",
                "/communications/{message_id}", "/communications/{message_id}/comment",
                "/communications/{message_id}/thread", "/communications/analytics", "/communications/csv-export"}
    assert expected <= set(doc["paths"])
    assert set(doc["paths"]["/communications/dynamic-search"]) == {"get", "post"}
