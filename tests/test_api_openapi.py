"""The OpenAPI document of issue 3's routes, and a schemathesis fuzz run against it."""
from __future__ import annotations

import os
from typing import Any

import pytest
from apihelpers import API, CONTACTS, assert_problem, hdrs, setup_hooks, track
from apihelpers import app, document  # noqa: F401 - fixtures

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


#: Examples per operation and generation mode (data that fits the document, data that does not).
#: Small enough that the run over the whole document takes some seconds per database.
FUZZ_EXAMPLES = int(os.environ.get("MAILTRACK_FUZZ_EXAMPLES", "5"))
#: The suite's run is the same every time (Hypothesis derandomized: a CI run fails only for a
#: change in the code or the document). ``MAILTRACK_FUZZ_RANDOM=1`` explores new examples on
#: each run: do that with more examples when touching the API, and keep what it finds as tests.
FUZZ_RANDOM = os.environ.get("MAILTRACK_FUZZ_RANDOM", "") not in ("", "0")


def _conformance_fuzz(app) -> dict[str, Any]:
    """Run schemathesis over every operation of the document (so routes added later are
    covered too), with data that fits the document and data that does not, and its
    conformance checks: no 5xx, only documented status codes, content types and headers,
    answers that match their schemas, valid data accepted (2xx, or 404/409 for ids that do not
    exist), invalid data refused (4xx). Returns the statuses seen, per mode."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import (
        content_type_conformance,
        negative_data_rejection,
        not_a_server_error,
        positive_data_acceptance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )
    from schemathesis.generation.modes import GenerationMode

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance, positive_data_acceptance, negative_data_rejection]
    # In-process WSGI calls: no network at all.
    schema = schemathesis.openapi.from_wsgi(API + "/openapi.json", app, headers=hdrs())
    # The bearer token is sent by this test, so the Authorization header is not a generated
    # parameter (a "negative" case that only drops it would be made valid again by the token).
    schema.config.generation.update(with_security_parameters=False)
    operations = [result.ok() for result in schema.get_all_operations()]
    headers = hdrs()
    failures: list[str] = []
    seen: dict[str, Any] = {"positive": [], "negative": [], "operations": operations}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(mode))
            @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=not FUZZ_RANDOM,
                      suppress_health_check=list(HealthCheck))
            def run(case):
                response = case.call_and_validate(headers=headers, checks=checks)
                seen[mode.value].append(response.status_code)

            try:
                run()
            except Unsatisfiable:
                # Nothing to negate: the operation's only inputs are path strings, and every
                # string is a valid one (an unknown id is a 404, checked in positive mode).
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect every operation's failure
                failures.append(f"{mode.value} {operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    return seen


def test_schemathesis_conformance_over_the_whole_document(make_app):
    """Every documented operation, on SQLite and PostgreSQL: the answers conform to the
    document and the document's input rules are exactly the API's. Delivery goes to a closed
    loopback port, so sends fail fast as FAILED records, never as a 5xx."""
    # Webhook URLs: whether a generated host is internal depends on DNS, which no document can
    # state, so internal destinations are allowed here (test_webhooks_hardening.py covers
    # their refusal).
    app = make_app(setup=setup_hooks, MAILTRACK_SMTP_URL="smtp://127.0.0.1:9?timeout=1",
                   MAILTRACK_DEFAULT_SENDER="crm@example.com", MAILTRACK_OUTBOUND_WEBHOOK_ALLOW_PRIVATE=True)
    with app.app_context():
        mailtrack = app.extensions["mailtrack"].extension
        for contact in CONTACTS:
            track(mailtrack, contact, "camp1")
        seen = _conformance_fuzz(app)
    operations = seen["operations"]
    assert {(op.path, op.method) for op in operations} >= set(OPERATIONS)
    assert len(operations) >= len(OPERATIONS) + 15  # and the communications routes
    # The run exercised success paths and refusals, not only 401s.
    positive, negative = seen["positive"], seen["negative"]
    assert len(positive) >= 3 * len(operations)
    assert any(200 <= s < 300 for s in positive) and 401 not in positive
    assert negative and {s for s in negative} & {400, 422}


def _sample_path(path: str) -> str:
    """A documented path with its parameters filled in (the values need not exist)."""
    import re

    return API + re.sub(r"\{(\w+)\}", lambda m: "x1" if m.group(1) != "utm_id" else "1", path)


def test_options_and_wrong_methods_answer_exactly_the_documented_methods(client, document):
    """Every documented path: OPTIONS is 204 with ``Allow`` listing exactly the methods the
    document gives it (HEAD with GET, and OPTIONS); any other method is a 405 problem+json
    with the same ``Allow``."""
    import re

    every = {"GET", "POST", "PUT", "PATCH", "DELETE"}
    paths = document["paths"]
    assert len(paths) >= 30
    templates = {path: re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(API + path)) + "$") for path in paths}
    for path in paths:
        url = _sample_path(path)
        # A URL may fit more than one documented template (DELETE /communications/{message_id}
        # also serves /communications/send): the URL's methods are all of theirs.
        documented = {m.upper() for other, rx in templates.items() if rx.match(url) for m in paths[other]}
        expected = documented | {"OPTIONS"} | ({"HEAD"} if "GET" in documented else set())
        resp = client.options(url, headers=hdrs())
        assert resp.status_code == 204, (path, resp.status_code)
        assert set(resp.headers["Allow"].split(", ")) == expected, (path, resp.headers["Allow"])
        for method in sorted(every - documented):
            resp = client.open(url, method=method, headers=hdrs())
            body = assert_problem(resp, 405)
            assert body["title"] == "Method Not Allowed"
            assert set(resp.headers["Allow"].split(", ")) == expected, (path, method, resp.headers["Allow"])
    unknown = client.options(API + "/no/such/thing", headers=hdrs())
    assert_problem(unknown, 404)
    assert "Allow" not in unknown.headers


def test_nested_validation_errors_are_flat_as_documented(client, document):
    """A 422 names nested fields by their dotted path, so ``errors`` is always the documented
    ``{field: [messages]}``."""
    resp = client.get(API + "/activity?filters[includeEvents][]=open&filters[includeEvents][]=bogus", headers=hdrs())
    errors = assert_problem(resp, 422)["errors"]
    assert list(errors) == ["filters[includeEvents].1"]
    assert errors["filters[includeEvents].1"][0].startswith("Must be one of:")
    resp = client.post(API + "/communications/dynamic-search", json={"filters": {"status": ["SENT", "x" * 400]}},
                       headers=hdrs())
    assert assert_problem(resp, 422)["errors"] == {"filters.status.1": ["Longer than maximum length 320."]}
    shape = document["components"]["schemas"]["Problem"]["properties"]["errors"]
    assert shape["additionalProperties"] == {"type": "array", "items": {"type": "string"}}


def test_input_rules_are_in_the_document(document):
    """The rules the API enforces are stated where a client reads them: no NUL in text
    (``pattern``), one line for mail headers, absolute http(s) event URLs, sort values."""
    schemas = document["components"]["schemas"]
    event = schemas["EventBody"]["properties"]
    assert event["url"]["pattern"].startswith("^[Hh][Tt][Tt][Pp][Ss]?://")
    assert event["email"]["pattern"] == "^[^\\x00]*$"
    assert event["details"]["additionalProperties"] == {"$ref": "#/components/schemas/JsonValue"}
    assert schemas["JsonValue"]["anyOf"]
    send = document["paths"]["/communications/send"]["post"]["requestBody"]["content"]["application/json"]
    send_schema = schemas[send["schema"]["$ref"].rsplit("/", 1)[1]]["properties"]
    assert send_schema["subject"]["pattern"] == "^[^\\x00\\r\\n]*$"
    sort = {p["name"]: p for p in document["paths"]["/communications/dynamic-search"]["get"]["parameters"]}["sort"]
    assert "created" in sort["schema"]["items"]["pattern"]
    assert schemas["UTMAddBody"]["anyOf"]


@pytest.mark.parametrize("url", ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,<script>x</script>",
                                 "//evil.example/x", "/relative", "https://", "http://exa mple.com/",
                                 "vbscript:msgbox(1)", "ftp://files.example/a"])
def test_event_urls_must_be_absolute_http(client, url):
    resp = client.post(API + "/contacts/c1/events", json={"type": "click", "url": url}, headers=hdrs())
    assert assert_problem(resp, 422)["errors"] == {"url": ["Must be an absolute http:// or https:// URL."]}
    assert client.get(API + "/contacts/c1/activity?include_bots=true", headers=hdrs()).get_json()["total"] == 0


def test_event_urls_http_and_https_are_accepted(client):
    for url in ("https://shop.example/a?utm_source=x#top", "HTTP://shop.example", "http://[::1]:8080/p"):
        resp = client.post(API + "/contacts/c1/events", json={"type": "click", "url": url}, headers=hdrs())
        assert resp.status_code == 201, resp.get_data(as_text=True)
        assert resp.get_json()["url"] == url
