"""The OpenAPI document of issue 3's routes, and a schemathesis fuzz run against it."""
from __future__ import annotations

import os
from typing import Any

import pytest
from apihelpers import API, CONTACTS, hdrs, setup_hooks, track

#: (path, method) of every route of issue 3 as the document spells it.
OPERATIONS = [
    ("/contacts", "get"),
    ("/contacts/{contact_id}/activity", "get"),
    ("/activity", "get"),
    ("/contacts/{contact_id}/events/{kind}", "get"),
    ("/contacts/{contact_id}/events", "post"),
    ("/contacts/{contact_id}/dnc", "get"),
    ("/contacts/{contact_id}/dnc/{channel}/add", "post"),
    ("/contacts/{contact_id}/dnc/{channel}/remove", "post"),
    ("/contacts/{contact_id}/utm", "get"),
    ("/contacts/{contact_id}/utm/add", "post"),
    ("/contacts/{contact_id}/utm/{utm_id}/remove", "post"),
    ("/campaigns/{campaign_id}/tracking/{kind}", "get"),
    ("/campaigns/{campaign_id}/tracking/clicks/{link_id}", "get"),
    ("/campaigns/{campaign_id}/links", "get"),
    ("/odata/ContactClicks", "get"),
    ("/odata/ContactClicks", "post"),
    ("/odata/ContactClicks({key})", "get"),
    ("/odata/ContactClicks({key})", "put"),
    ("/odata/ContactClicks({key})", "delete"),
]
TAGS = {"contacts", "campaigns", "odata"}


@pytest.fixture
def app(make_app):
    app = make_app(setup=setup_hooks)
    with app.app_context():
        yield app


@pytest.fixture
def document(client):
    resp = client.get(API + "/openapi.json", headers=hdrs())
    assert resp.status_code == 200
    return resp.get_json()


def test_every_route_is_documented(document):
    paths = document["paths"]
    for path, method in OPERATIONS:
        op = paths[path][method]
        assert op["summary"] and op["tags"][0] in TAGS, (path, method)
        responses = op["responses"]
        assert {"401", "406"} <= set(responses), (path, method)
        ok = [code for code in responses if code.startswith("2")]
        assert len(ok) == 1, (path, method)
        for code in responses:
            if code[0] in "45":
                assert "application/problem+json" in responses[code]["content"]
        for name in [seg[1:-1] for seg in path.replace("(", "/").replace(")", "/").split("/") if seg.startswith("{")]:
            assert any(p["in"] == "path" and p["name"] == name for p in op["parameters"]), (path, name)
        if method in ("post", "put") and path not in ("/contacts/{contact_id}/utm/{utm_id}/remove",):
            assert "requestBody" in op, (path, method)


def test_parameters_and_shapes_are_spelled_as_the_contract(document):
    params = {p["name"] for p in document["paths"]["/activity"]["get"]["parameters"]}
    assert {"filters[search]", "filters[includeEvents]", "filters[excludeEvents]", "filters[dateFrom]",
            "filters[dateTo]", "order[0]", "order[1]", "page", "limit", "include_bots"} <= params
    report = {p["name"]: p for p in document["paths"]["/campaigns/{campaign_id}/tracking/{kind}"]["get"]["parameters"]}
    assert {"created_since", "limit", "next", "include_bots"} <= set(report)
    assert (report["limit"]["schema"]["minimum"], report["limit"]["schema"]["maximum"]) == (1, 500)
    assert report["limit"]["schema"]["default"] == 500
    odata = {p["name"] for p in document["paths"]["/odata/ContactClicks"]["get"]["parameters"]}
    assert {"$top", "$skip", "$orderby"} <= odata
    assert "422" in document["paths"]["/contacts/{contact_id}/utm/add"]["post"]["responses"]
    assert "409" in document["paths"]["/odata/ContactClicks"]["post"]["responses"]
    schemas = document["components"]["schemas"]
    body = document["paths"]["/contacts/{contact_id}/utm/add"]["post"]["requestBody"]["content"]["application/json"]
    ref = body["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"utm_campaign", "utm_source", "utm_medium", "utm_content", "utm_term", "useragent", "url", "referer",
            "query", "remotehost", "lastActive"} <= set(schemas[ref]["properties"])


def _fuzz(app, tags: set[str]) -> list[Any]:
    """Run schemathesis over every documented operation carrying one of ``tags``, with data
    that fits the schema and data that does not (bounded examples); assert no 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_wsgi(API + "/openapi.json", app, headers=hdrs())
    operations = [op for op in (r.ok() for r in schema.get_all_operations()) if set(op.tags or []) & tags]
    headers = hdrs()
    failures: list[str] = []
    statuses: list[int] = []  # of schema-conforming requests
    negative: list[int] = []
    for operation, mode in [(op, m) for op in operations for m in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]:

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=int(os.environ.get("MAILTRACK_FUZZ_EXAMPLES", "12")), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call_and_validate(headers=headers, checks=[not_a_server_error])
            (statuses if mode is GenerationMode.POSITIVE else negative).append(response.status_code)

        try:
            run()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure
            failures.append(f"{mode.value} {operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
    # the run exercised success paths and error paths, not only 401s
    assert len(statuses) >= 5 * len(operations)
    assert any(200 <= s < 300 for s in statuses) and any(s == 422 for s in statuses)
    assert not any(s == 401 for s in statuses)
    assert negative and all(s < 500 for s in negative)
    return operations


def _fuzz_on_sqlite_only(database_url: str) -> None:
    if not database_url.startswith("sqlite") and not os.environ.get("MAILTRACK_FUZZ_POSTGRES"):
        pytest.skip("the fuzz run is bounded to SQLite (set MAILTRACK_FUZZ_POSTGRES=1 for PostgreSQL too)")


def test_schemathesis_finds_no_server_error(app, client, mailtrack, database_url):
    """Property-based fuzzing of every documented operation of issue 3: never a 5xx."""
    _fuzz_on_sqlite_only(database_url)
    for contact in CONTACTS:
        track(mailtrack, contact, "camp1")
    assert len(_fuzz(app, TAGS)) == len(OPERATIONS)


def test_schemathesis_finds_no_server_error_in_communications(make_app, database_url):
    """The same fuzzing over the communications operations (issue 4). Delivery goes to a
    closed loopback port, so sends fail fast as FAILED records, never as a 5xx."""
    _fuzz_on_sqlite_only(database_url)
    app = make_app(MAILTRACK_SMTP_URL="smtp://127.0.0.1:9?timeout=1", MAILTRACK_DEFAULT_SENDER="crm@example.com")
    with app.app_context():
        mailtrack = app.extensions["mailtrack"].extension
        for contact in CONTACTS:
            track(mailtrack, contact, "camp1")
        assert len(_fuzz(app, {"communications"})) >= 15
