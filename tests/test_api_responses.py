"""Every JSON answer of the API is its route's documented response schema dumping the view's
data, and the routes are registered from one explicit list, in document order."""
from __future__ import annotations

import json
import re
from typing import Any

import marshmallow as ma
import pytest
from apihelpers import API, CONTACTS, click, hdrs, setup_hooks, track
from apihelpers import app, document  # noqa: F401 - fixtures
from flask import Blueprint, Flask, Response, jsonify

from crm_mailtrack.api import ROUTE_GROUPS, blueprint
from crm_mailtrack.api.routing import ROUTES, Routes, register

JSON = "application/json"


# -- the registry -------------------------------------------------------------------------------

def test_every_json_route_has_the_response_schema_it_dumps(document):
    """In the registry and in the document: a 2xx JSON answer always names a schema (a
    component, or an array of one), never a free-form object; 204s have no body."""
    assert ROUTES
    for doc in ROUTES:
        if doc.status == 204:
            assert doc.response is None, doc.endpoint
        elif doc.content_type == JSON:
            assert doc.response is not None, doc.endpoint
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            [(code, ok)] = [(c, r) for c, r in op["responses"].items() if c.startswith("2")]
            if code == "204":
                assert "content" not in ok, (path, method)
                continue
            others = {m: media for m, media in ok["content"].items() if m != JSON}
            # another form (CSV) is a string; a route with a JSON answer has one schema for it
            assert all(media["schema"] == {"type": "string"} for media in others.values()), (path, method)
            if JSON not in ok["content"]:
                continue
            schema = ok["content"][JSON]["schema"]
            schema = schema.get("items", schema) if schema.get("type") == "array" else schema
            assert schema["$ref"].startswith("#/components/schemas/"), (path, method)


def test_routes_are_registered_from_the_one_list_in_document_order(app, document):
    """The blueprint serves exactly the routes of ``ROUTE_GROUPS`` (the catch-all aside),
    and the document lists their paths in that order."""
    declared = [doc for group in ROUTE_GROUPS for doc in group.docs]
    assert declared == ROUTES
    served = {(r.endpoint.split(".", 1)[1], m) for r in app.url_map.iter_rules()
              if r.endpoint.startswith(blueprint.name + ".") and r.endpoint != blueprint.name + "._unmatched"
              for m in r.methods - {"HEAD", "OPTIONS"}}
    assert served == {(doc.endpoint, m) for doc in declared for m in doc.methods}
    order: list[str] = []
    for doc in declared:
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", doc.rule)
        if path not in order:
            order.append(path)
    assert list(document["paths"]) == order
    with pytest.raises(RuntimeError):
        register(Blueprint("again", __name__), ROUTE_GROUPS)


def test_a_json_route_without_a_response_schema_is_refused_when_declared():
    routes = Routes()
    with pytest.raises(TypeError, match="response schema"):
        @routes.route("/x", summary="x")
        def x() -> dict[str, Any]:
            return {}
    with pytest.raises(TypeError, match="204"):
        @routes.route("/y", summary="y", status=204, response=_Out)
        def y() -> None:
            return None


# -- the decorator dumps --------------------------------------------------------------------------

class _Out(ma.Schema):
    name = ma.fields.String()
    createdAt = ma.fields.String(attribute="created_at")


def _mini_app(view_result: Any, **route: Any) -> Flask:
    """A Flask app serving one route declared with :class:`Routes` and :func:`register`."""
    routes = Routes()

    @routes.route("/thing", summary="A thing", **route)
    def thing() -> Any:
        return view_result

    bp = Blueprint("mini", __name__)
    register(bp, [routes], registry=[])
    app = Flask("mini")
    app.config["TESTING"] = True
    app.register_blueprint(bp)
    return app


def test_a_key_the_schema_lacks_never_reaches_the_client():
    app = _mini_app({"name": "n", "created_at": "2026-01-01", "password": "secret"}, response=_Out, status=201)
    resp = app.test_client().get("/thing")
    assert resp.status_code == 201 and resp.mimetype == JSON
    assert resp.get_json() == {"name": "n", "createdAt": "2026-01-01"}


def test_a_view_cannot_answer_a_json_route_with_a_ready_response():
    with Flask("x").app_context():
        ready = jsonify({"name": "n", "password": "secret"})
    app = _mini_app(ready, response=_Out)
    with pytest.raises(TypeError, match="ready Response"):
        app.test_client().get("/thing")


def test_only_non_json_routes_answer_with_their_own_response():
    app = _mini_app(Response("a,b\n", mimetype="text/csv"), content_type="text/csv")
    resp = app.test_client().get("/thing")
    assert resp.status_code == 200 and resp.data == b"a,b\n"
    app = _mini_app(None, status=204)
    resp = app.test_client().get("/thing")
    assert resp.status_code == 204 and resp.data == b""


def test_a_view_cannot_answer_an_undocumented_status():
    app = _mini_app(({"name": "n"}, 200), response=_Out, status=201)
    with pytest.raises(TypeError, match="documents 201"):
        app.test_client().get("/thing")


# -- the real routes answer what the document shows ---------------------------------------------

def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _undocumented_keys(document: dict[str, Any], schema: dict[str, Any], data: Any, at: str = "") -> list[str]:
    """Keys of ``data`` that ``schema`` (recursively) does not list."""
    schema = _resolve(document, schema)
    found: list[str] = []
    if isinstance(data, list) and "items" in schema:
        for i, item in enumerate(data):
            found += _undocumented_keys(document, schema["items"], item, f"{at}.{i}")
    elif isinstance(data, dict) and "properties" in schema:
        for key, item in data.items():
            if key not in schema["properties"]:
                found.append(f"{at}.{key}")
            else:
                found += _undocumented_keys(document, schema["properties"][key], item, f"{at}.{key}")
    return found


def test_real_answers_have_only_documented_keys(make_app):
    """Answers of the hand-shaped routes (activity, cursor pages, campaign reports and links,
    ContactClicks, UTM) carry no key the document does not show, even when the host's
    contact mapping holds more than the OData properties."""
    contacts = {**CONTACTS, "c1": {**CONTACTS["c1"], "password_hash": "s3cret"}}

    def hooks(mt: Any) -> None:
        setup_hooks(mt, contacts=False)
        mt.contact_loader(contacts.get)

    app = make_app(setup=hooks)
    client = app.test_client()
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        msg = track(mt, "c1", "camp1")
        click(client, mt, msg, "https://shop.example/a")
    document = client.get(API + "/openapi.json", headers=hdrs()).get_json()
    client.post(API + "/contacts/c1/utm/add", json={"utm_source": "news"}, headers=hdrs())
    calls = [
        ("get", "/contacts/c1/activity?limit=1", "/contacts/{contact_id}/activity"),
        ("get", "/activity", "/activity"),
        ("get", "/contacts/c1/events/clicks?limit=1", "/contacts/{contact_id}/events/{kind}"),
        ("get", "/campaigns/camp1/tracking/clicks", "/campaigns/{campaign_id}/tracking/{kind}"),
        ("get", "/campaigns/camp1/tracking/sends", "/campaigns/{campaign_id}/tracking/{kind}"),
        ("get", "/campaigns/camp1/links", "/campaigns/{campaign_id}/links"),
        ("get", "/odata/ContactClicks", "/odata/ContactClicks"),
        ("get", "/odata/ContactClicks('c1')", "/odata/ContactClicks({key})"),
        ("get", "/contacts/c1/utm", "/contacts/{contact_id}/utm"),
        ("get", f"/communications/find/{msg.id}", "/communications/find/{message_id}"),
        ("get", "/communications/page", "/communications/page"),
    ]
    for method, url, path in calls:
        resp = getattr(client, method)(API + url, headers=hdrs())
        assert resp.status_code == 200, (url, resp.get_json())
        ok = document["paths"][path][method]["responses"]["200"]["content"][JSON]["schema"]
        body = resp.get_json()
        assert _undocumented_keys(document, ok, body) == [], url
        assert "s3cret" not in resp.get_data(as_text=True), url
    clicks = client.get(API + "/odata/ContactClicks('c1')", headers=hdrs()).get_json()
    assert clicks["ID"] == "c1" and clicks["ClickCount"] == 1 and clicks["FirstName"] == "Ann"
    report = client.get(API + "/campaigns/camp1/tracking/clicks", headers=hdrs()).get_json()
    [item] = report["results"]
    assert set(item) == {"activity_type", "campaign_id", "contact_id", "email_address", "link_id",
                         "click_date", "is_bot"}
    assert report["meta"] == {"pagination": {}}


_DOCUMENT_SCRIPT = """
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from crm_mailtrack import MailTrack
app = Flask("doc")
app.config.update(SECRET_KEY="s" * 32, SQLALCHEMY_DATABASE_URI="sqlite://", MAILTRACK_BASE_URL="https://crm.example",
                  MAILTRACK_API_TOKENS=["t"])
db = SQLAlchemy()
db.init_app(app)
MailTrack().init_app(app, db=db)
print(app.test_client().get("/mailtrack/api/openapi.json", headers={"Authorization": "Bearer t"}).get_data(as_text=True))
"""


def test_the_document_is_the_same_text_in_every_process():
    """Paths, operations and components come out in one order, whatever the interpreter's
    memory layout (schema components used to follow the ids of the schema objects)."""
    import subprocess
    import sys

    texts = {subprocess.run([sys.executable, "-c", _DOCUMENT_SCRIPT], check=True, capture_output=True,
                            text=True).stdout for _ in range(3)}
    assert len(texts) == 1
    assert json.loads(texts.pop())["openapi"] == "3.1.0"
