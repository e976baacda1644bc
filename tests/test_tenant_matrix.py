"""The tenant matrix: every route of the app, generated from ``app.url_map`` and the OpenAPI
document, run by tenant B (and by a request with no tenant) against tenant A's data.

- API reads: B's answer is the same before and after A's data exists (nothing of A is seen,
  counted or paged), and A's own answer differs from it (so the request really reaches A's
  data, and a dropped tenant filter shows).
- API writes: B's attempt on A's objects leaves every one of A's answers as it was.
- Public tracking routes: a hit carrying B's tenant header writes into the *message's*
  tenant (A), never the request's.

A route the matrix does not know how to exercise fails :func:`test_every_route_is_in_the_matrix`:
add its path parameter to :data:`PATH_VALUES`, its required query parameter to
:data:`QUERY_VALUES`, or its body to :data:`WRITES`.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
import sqlalchemy as sa
from flask import current_app, has_request_context, request

from crm_mailtrack.instrument import link_id
from crm_mailtrack.models import dnc, events, messages

from apihelpers import API, BROWSER, CONTACTS, TENANT_HEADER, hdrs
from conftest import path_of
from mailserver import MailServer, RecordingHandler

A, B = "tenant-a", "tenant-b"
#: The tenants that must not see A's data: another tenant, and a request naming none.
OTHERS = (B, None)
URL = "https://shop.example/a?utm_source=news"
SENDER = "crm@example.com"

#: API operations that read although their method is POST.
READ_POSTS = {"POST /communications/dynamic-search"}
#: Reads that are the same for every tenant by design.
TENANT_FREE = {"GET /openapi.json"}


@pytest.fixture(scope="module")
def smtp():
    with MailServer(RecordingHandler()) as srv:
        yield srv


def _hooks(mt: Any) -> None:
    @mt.tenant_loader
    def _tenant() -> str | None:
        return request.headers.get(TENANT_HEADER) if has_request_context() else None

    @mt.contact_loader
    def _contact(contact_id: str) -> dict[str, Any] | None:
        return CONTACTS.get(contact_id)

    @mt.template_loader
    def _template(template_id: str, variables: dict[str, Any]) -> tuple[str, str, str] | None:
        return ("Welcome", '<p><a href="https://shop.example/start">start</a></p>', "Hi") \
            if template_id == "welcome" else None


#: ESP webhook credentials (Postmark's Basic auth: the simplest to send from a table row).
HOOK_USER, HOOK_PASSWORD = "hook", "hook-password"


@pytest.fixture
def app(make_app, smtp):
    app = make_app(setup=_hooks, MAILTRACK_SMTP_URL=smtp.url(), MAILTRACK_DEFAULT_SENDER=SENDER,
                   MAILTRACK_WEBHOOKS={"postmark": {"username": HOOK_USER, "password": HOOK_PASSWORD}})
    with app.app_context():
        yield app


# -- the routes ------------------------------------------------------------------------------


def _openapi(client) -> dict[str, Any]:
    resp = client.get(API + "/openapi.json", headers=hdrs())
    assert resp.status_code == 200
    return resp.json


def operations(client) -> list[tuple[str, str, dict[str, Any]]]:
    """``(METHOD, path template, operation)`` of every operation of the OpenAPI document."""
    return [(method.upper(), path, op) for path, ops in _openapi(client)["paths"].items()
            for method, op in ops.items() if isinstance(op, dict) and "responses" in op]


def _flask_rule(path: str) -> str:
    return API + re.sub(r"\{(\w+)\}", r"<\1>", path)


def test_every_route_is_in_the_matrix(app, client):
    """Every URL rule of the app is either an operation of the OpenAPI document (the API
    matrix below runs it) or a public tracking route the tracking matrix knows."""
    documented = {(m, _flask_rule(p)) for m, p, _ in operations(client)}
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "mailtrack_api._unmatched"):
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if rule.endpoint.startswith("mailtrack_api."):
                if (method, rule.rule) not in documented:
                    missing.append(f"{method} {rule.rule} (not in the OpenAPI document)")
            elif (method, rule.endpoint) not in TRACKING_HITS:
                missing.append(f"{method} {rule.rule}: add it to TRACKING_HITS")
    for method, path, op in operations(client):
        try:
            build(method, path, op, _Seed.placeholder())
        except KeyError as exc:
            missing.append(f"{method} {path}: {exc.args[0]}")
    assert missing == []


# -- tenant A's data -----------------------------------------------------------------------


class _Seed(dict):
    @classmethod
    def placeholder(cls) -> _Seed:
        return cls(sent="placeholder-sent", scheduled="placeholder-scheduled", utm_id="999999",
                   link_id="placeholder-link", webhook_id="placeholder-webhook")


def seed_tenant_a(app, client) -> _Seed:
    """A's data through the API and the tracking links (these carry B's tenant header: the
    token decides the tenant): a sent message with a human click, an open, an unsubscribe
    and a comment; a scheduled message; a UTM tag; an imported click count."""
    a = hdrs(A)
    sent = client.post(API + "/communications/send", headers=a, json={
        "contactId": "c1", "subject": "A only", "campaignId": "campA", "relatedEntityType": "deal",
        "relatedEntityId": "d1", "conversationId": "convA", "body": f'<p><a href="{URL}">go</a></p>'})
    assert sent.status_code == 201, sent.json
    later = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)).isoformat()
    scheduled = client.post(API + "/communications/schedule", headers=a, json={
        "contactId": "c2", "subject": "A later", "campaignId": "campA", "relatedEntityType": "deal",
        "relatedEntityId": "d1", "body": "<p>later</p>", "scheduledAt": later})
    assert scheduled.status_code == 201, scheduled.json
    seed = _Seed(sent=sent.json["id"], scheduled=scheduled.json["id"], link_id=link_id(URL))
    mt = app.extensions["mailtrack"].extension
    for hit in TRACKING_HITS.values():
        hit(client, mt, seed["sent"])
    assert client.post(f"{API}/communications/{seed['sent']}/comment", headers=a,
                       json={"comment": "called A"}).status_code == 201
    utm = client.post(API + "/contacts/c1/utm/add", json={"utm_source": "a"}, headers=a)
    assert utm.status_code == 201
    seed["utm_id"] = str(utm.json["utmtag"]["id"])
    assert client.post(API + "/odata/ContactClicks", json={"ID": "c3", "ClickCount": 4}, headers=a).status_code == 201
    hook = client.post(API + "/webhooks", json={"url": "https://a.example/hooks"}, headers=a)
    assert hook.status_code == 201
    seed["webhook_id"] = hook.json["id"]
    return seed


# -- requests from the OpenAPI document ------------------------------------------------------

#: Values of path parameters, by name (A's objects).
PATH_VALUES = {
    "contact_id": lambda s: "c1", "kind": lambda s: "clicks", "channel": lambda s: "email",
    "utm_id": lambda s: s["utm_id"], "campaign_id": lambda s: "campA", "link_id": lambda s: s["link_id"],
    "key": lambda s: "'c3'", "message_id": lambda s: s["sent"], "template_id": lambda s: "welcome",
    "webhook_id": lambda s: s["webhook_id"],
}
#: Values of required query parameters, by name.
QUERY_VALUES = {
    "email": lambda s: CONTACTS["c1"]["email"], "ids": lambda s: f"{s['sent']},{s['scheduled']}",
    "entityType": lambda s: "deal", "entityId": lambda s: "d1",
    "contact_id": lambda s: "c1", "by": lambda s: "device",
}
#: Values of query parameters a route needs only sometimes (the audience's ``action``: given,
#: or carried by a cursor), sent whenever a route has them.
OPTIONAL_VALUES = {"action": lambda s: "opened"}
#: What B sends to each write operation (A's object ids come from the path), and the status
#: the contract names for it.
WRITES: dict[str, tuple[Any, int]] = {
    "POST /contacts/{contact_id}/events": (lambda s: {"type": "open", "message_id": s["sent"]}, 422),
    "POST /contacts/{contact_id}/dnc/{channel}/add": (lambda s: None, 200),
    "POST /contacts/{contact_id}/dnc/{channel}/remove": (lambda s: None, 404),
    "POST /contacts/{contact_id}/utm/add": (lambda s: {"utm_source": "b"}, 201),
    "POST /contacts/{contact_id}/utm/{utm_id}/remove": (lambda s: None, 404),
    "POST /odata/ContactClicks": (lambda s: {"ID": "c3", "ClickCount": 1}, 201),
    "PUT /odata/ContactClicks({key})": (lambda s: {"ClickCount": 100}, 204),
    "DELETE /odata/ContactClicks({key})": (lambda s: None, 204),
    "POST /communications/send": (lambda s: {"contactId": "c1", "subject": "B", "body": "<p>b</p>",
                                             "relatedEntityType": "deal", "relatedEntityId": "d1"}, 201),
    "POST /communications/schedule": (lambda s: {
        "contactId": "c1", "subject": "B later", "body": "<p>b</p>", "scheduledAt": "2999-01-01T00:00:00Z"}, 201),
    "POST /communications/send-template/{template_id}": (lambda s: {"contactId": "c1"}, 201),
    "POST /communications/{message_id}/resend": (lambda s: None, 404),
    "POST /communications/{message_id}/cancel": (lambda s: None, 404),
    "DELETE /communications/delete-list": (lambda s: None, 204),
    "DELETE /communications/{message_id}": (lambda s: None, 404),
    "POST /communications/{message_id}/comment": (lambda s: {"comment": "B was here"}, 404),
    "POST /campaigns/{campaign_id}/send": (lambda s: {}, 404),
    "POST /webhooks": (lambda s: {"url": "https://b.example/hooks"}, 201),
    "POST /webhooks/{webhook_id}/enable": (lambda s: None, 404),
    "POST /webhooks/{webhook_id}/rotate-secret": (lambda s: None, 404),
    "DELETE /webhooks/{webhook_id}": (lambda s: None, 404),
}
#: Bodies of the read operations that are POSTs.
READ_BODIES = {"POST /communications/dynamic-search": lambda s: {"size": 50}}
#: Path parameters a particular operation takes from elsewhere (the scheduled message).
PATH_OVERRIDES = {"POST /communications/{message_id}/cancel": {"message_id": lambda s: s["scheduled"]}}


def build(method: str, path: str, op: dict[str, Any], seed: _Seed) -> tuple[str, dict[str, Any]]:
    """The request (URL, test-client keywords) of one operation; ``KeyError`` naming what
    the tables above lack."""
    key = f"{method} {path}"
    params = op.get("parameters", [])
    url = path
    for p in params:
        if p["in"] == "path":
            value = PATH_OVERRIDES.get(key, {}).get(p["name"]) or PATH_VALUES.get(p["name"])
            if value is None:
                raise KeyError(f"no value for path parameter {p['name']!r}: add it to PATH_VALUES")
            url = url.replace("{" + p["name"] + "}", value(seed))
    query = []
    for p in params:
        if p["in"] == "query" and p.get("required"):
            if p["name"] not in QUERY_VALUES:
                raise KeyError(f"no value for query parameter {p['name']!r}: add it to QUERY_VALUES")
            query.append(f"{p['name']}={QUERY_VALUES[p['name']](seed)}")
        elif p["in"] == "query" and p["name"] in ("include_bots", "size"):
            query.append("include_bots=true" if p["name"] == "include_bots" else "size=100")
        elif p["in"] == "query" and p["name"] in OPTIONAL_VALUES:
            query.append(f"{p['name']}={OPTIONAL_VALUES[p['name']](seed)}")
    kwargs: dict[str, Any] = {}
    if method != "GET":
        if key in WRITES:
            body = WRITES[key][0](seed)
        elif key in READ_BODIES:
            body = READ_BODIES[key](seed)
        else:
            raise KeyError("a write the matrix does not know: add it to WRITES (or READ_BODIES)")
        if body is not None:
            kwargs["json"] = body
    return API + url + ("?" + "&".join(query) if query else ""), kwargs


_TIME = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d)?$")


def _normal(value: Any) -> Any:
    """An answer with the clock taken out (ISO timestamps made equal)."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, str) and _TIME.match(value):
        return "<time>"
    return value


def answer(client, method: str, url: str, kwargs: dict[str, Any], tenant: str | None,
           seed: _Seed) -> tuple[int, Any]:
    """Status and body, with the clock and the seed's ids (A's, or the placeholders) named."""
    resp = client.open(url, method=method, headers=hdrs(tenant), **kwargs)
    body = resp.get_data(as_text=True)
    # a signed link carries the second it was signed at
    body = re.sub(r"/t/([couh])/[\w.\-]+", r"/t/\1/<token>", body)
    for name, value in seed.items():
        if len(value) >= 6:
            body = body.replace(value, f"<{name}>")
    if resp.mimetype.endswith("json") and body:
        return resp.status_code, _normal(json.loads(body))
    return resp.status_code, re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z?", "<time>", body)


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    """Where two answers differ (for the failure message)."""
    if isinstance(old, (dict, list, tuple)) and type(old) is type(new) and len(old) == len(new):
        keys = old.keys() if isinstance(old, dict) else range(len(old))
        return [d for k in keys for d in _diff(old[k], new[k], f"{path}/{k}")]
    return [] if old == new else [f"{path}: {old!r:.80} -> {new!r:.80}"]


def _is_read(method: str, path: str) -> bool:
    return method == "GET" or f"{method} {path}" in READ_POSTS


# -- the matrix ----------------------------------------------------------------------------


def test_tenant_b_cannot_read_count_change_or_delete_tenant_a(app, client):
    ops = [(m, p, op) for m, p, op in operations(client) if f"{m} {p}" not in TENANT_FREE]
    reads = [(m, p, op) for m, p, op in ops if _is_read(m, p)]
    writes = [(m, p, op) for m, p, op in ops if not _is_read(m, p)]
    placeholder = _Seed.placeholder()

    def views(tenant: str | None, seed: _Seed) -> dict[str, tuple[int, Any]]:
        return {f"{m} {p}": answer(client, m, *build(m, p, op, seed), tenant, seed) for m, p, op in reads}

    # B's (and the no-tenant) view of an empty database, with ids that A will have
    before = {t: views(t, placeholder) for t in OTHERS}
    seed = seed_tenant_a(app, client)
    for t in OTHERS:
        after = views(t, seed)
        for key, (status, body) in after.items():
            assert (status, body) == before[t][key], (t, key)
    a_view = views(A, seed)
    for key, (status, body) in a_view.items():
        assert status == 200, (key, body)
        assert (status, body) != before[B].get(key), f"{key}: A's own answer shows none of A's data"

    statuses = {}
    # the refusals first: B has no object of its own yet that a remove or delete could find
    for m, p, op in sorted(writes, key=lambda w: WRITES[f"{w[0]} {w[1]}"][1] < 400):
        url, kwargs = build(m, p, op, seed)
        for t in OTHERS:
            statuses[(t, f"{m} {p}")] = answer(client, m, url, kwargs, t, seed)[0]
    assert statuses == {(t, key): WRITES[key][1] for t, key in statuses}
    a_after = views(A, seed)
    changed = {k: _diff(a_view[k], a_after[k]) for k in a_view if a_view[k] != a_after[k]}
    assert changed == {}, "a write of another tenant changed what A sees"
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        kept = conn.execute(sa.select(messages.c.id).where(messages.c.tenant_id == A)).scalars().all()
    assert set(kept) == {seed["sent"], seed["scheduled"]}


# -- public tracking routes ------------------------------------------------------------------


def _mail_links(mt, message_id: str) -> dict[str, str]:
    from flask import current_app

    from crm_mailtrack import Message

    html = current_app.extensions["mailtrack"].session.get(Message, message_id).html
    return {
        "click": path_of(mt.click_url(message_id, URL)),
        "open": path_of(mt.open_url(message_id)),
        "unsub": path_of(mt.unsubscribe_url(message_id)),
        "honeypot": path_of(re.search(r'href="([^"]+/t/h/[^"]+)"', html).group(1)),
    }


def _b(**extra: str) -> dict[str, str]:
    return {**BROWSER, TENANT_HEADER: B, **extra}


def _esp_event(c, mt, mid):
    """An ESP's (Postmark's) delivery event for the message: the webhook knows no tenant, the
    message's own decides."""
    import base64

    auth = base64.b64encode(f"{HOOK_USER}:{HOOK_PASSWORD}".encode()).decode()
    body = {"RecordType": "Delivery", "MessageID": f"pm-{mid}", "Recipient": _email_of(mid),
            "DeliveredAt": "2026-11-30T12:00:00Z", "Metadata": {"mailtrack_id": mid}}
    return c.post("/mailtrack/hooks/postmark", json=body, headers=_b(Authorization=f"Basic {auth}"))


def _email_of(mid: str) -> str:
    with current_app.extensions["mailtrack"].engine.connect() as conn:
        return conn.execute(sa.select(messages.c.email).where(messages.c.id == mid)).scalar_one()


#: One hit per (method, endpoint) of the public tracking blueprint (and the ESP webhook),
#: sent with B's tenant header: ``hit(client, mailtrack, message_id)``.
TRACKING_HITS = {
    ("GET", "mailtrack.click"): lambda c, mt, mid: c.get(_mail_links(mt, mid)["click"], headers=_b()),
    ("GET", "mailtrack.open_pixel"): lambda c, mt, mid: c.get(_mail_links(mt, mid)["open"], headers=_b()),
    ("GET", "mailtrack.honeypot"): lambda c, mt, mid: c.get(_mail_links(mt, mid)["honeypot"], headers=_b()),
    ("GET", "mailtrack.unsubscribe"): lambda c, mt, mid: c.get(_mail_links(mt, mid)["unsub"], headers=_b()),
    ("POST", "mailtrack.unsubscribe"): lambda c, mt, mid: c.post(
        _mail_links(mt, mid)["unsub"], headers=_b(), data={"List-Unsubscribe": "One-Click"}),
    ("POST", "mailtrack_hooks.hook"): _esp_event,
}


def test_tracking_routes_write_into_the_messages_tenant(app, client):
    """Click (with its UTM tag), open, honeypot and unsubscribe of A's message, requested
    with B's tenant header: every row is A's, and B sees none of it."""
    mt = app.extensions["mailtrack"].extension
    msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="s", tenant_id=A,
                           campaign_id="campA", html=f'<body><a href="{URL}">go</a></body>')
    for (method, endpoint), hit in TRACKING_HITS.items():
        resp = hit(client, mt, msg.id)
        assert resp.status_code in {"mailtrack.click": (302,)}.get(endpoint, (200,)), (method, endpoint)
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        tenants = {row.type: row.tenant_id for row in conn.execute(sa.select(events.c.type, events.c.tenant_id))}
        dnc_rows = conn.execute(sa.select(dnc.c.tenant_id, dnc.c.contact_id)).all()
    assert {"click", "open", "unsubscribe", "delivered"} <= set(tenants) and set(tenants.values()) == {A}
    assert [tuple(r) for r in dnc_rows] == [(A, "c1")]
    with app.app_context():
        assert mt.can_contact("c1", tenant_id=A) is False
        assert mt.can_contact("c1", tenant_id=B) is True
    assert client.get(API + "/contacts/c1/utm", headers=hdrs(A)).json["utmtags"][0]["utm_source"] == "news"
    assert client.get(API + "/contacts/c1/utm", headers=hdrs(B)).json == {"utmtags": []}
    assert client.get(API + "/contacts/c1/dnc", headers=hdrs(B)).json == {"doNotContact": []}
