"""Authorisation, content negotiation and problem+json errors on the contacts, campaigns
and ContactClicks routes (issue 3, points 1-2)."""
from __future__ import annotations

from apihelpers import API, assert_problem, hdrs, setup_hooks, track
from apihelpers import app  # noqa: F401 - fixture

from conftest import API_TOKEN

#: (method, path, json body) of every route of issue 3.
ROUTES = [
    ("GET", "/contacts/c1/activity", None),
    ("GET", "/activity", None),
    ("GET", "/contacts/c1/events/clicks", None),
    ("POST", "/contacts/c1/events", {"type": "forward"}),
    ("GET", "/contacts/c1/dnc", None),
    ("POST", "/contacts/c1/dnc/email/add", {}),
    ("POST", "/contacts/c1/dnc/email/remove", {}),
    ("GET", "/contacts/c1/utm", None),
    ("POST", "/contacts/c1/utm/add", {"utm_source": "x"}),
    ("POST", "/contacts/c1/utm/1/remove", None),
    ("GET", "/campaigns/camp1/tracking/clicks", None),
    ("GET", "/campaigns/camp1/tracking/clicks/abc", None),
    ("GET", "/campaigns/camp1/links", None),
    ("GET", "/odata/ContactClicks", None),
    ("POST", "/odata/ContactClicks", {"ID": "c1", "ClickCount": 1}),
    ("GET", "/odata/ContactClicks('c1')", None),
    ("PUT", "/odata/ContactClicks('c1')", {"ClickCount": 1}),
    ("DELETE", "/odata/ContactClicks('c1')", None),
]


def _call(client, method, path, body, headers):
    return client.open(API + path, method=method, json=body, headers=headers)


def test_every_route_needs_credentials(client, mailtrack):
    for method, path, body in ROUTES:
        for headers in ({"Accept": "application/json"},
                        {"Authorization": "Bearer wrong", "Accept": "application/json"},
                        {"Authorization": f"Basic {API_TOKEN}", "Accept": "application/json"}):
            resp = _call(client, method, path, body, headers)
            assert_problem(resp, 401)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    # nothing was written by the refused writes
    assert client.get(API + "/activity?include_bots=true", headers=hdrs()).get_json()["total"] == 0


def test_every_route_refuses_a_non_json_accept(client):
    for method, path, body in ROUTES:
        assert_problem(_call(client, method, path, body, hdrs(Accept="text/html")), 406)


def test_authorizer_decides_instead_of_tokens(make_app):
    allowed = {"yes": False}

    def setup(mt):
        setup_hooks(mt)
        mt.api_authorizer(lambda: allowed["yes"])

    app = make_app(setup=setup)
    client = app.test_client()
    assert_problem(client.get(API + "/activity", headers=hdrs()), 401)
    allowed["yes"] = True
    assert client.get(API + "/activity", headers={"Accept": "application/json"}).status_code == 200


def test_no_tokens_and_no_authorizer_is_always_401(make_app):
    app = make_app(setup=setup_hooks, MAILTRACK_API_TOKENS=[])
    assert_problem(app.test_client().get(API + "/activity", headers=hdrs()), 401)


def test_any_configured_token_is_accepted_as_written(make_app):
    """Each of several tokens works (one with a space inside, as the configuration allows);
    a scheme other than Bearer, a prefix or a suffix of a token does not."""
    app = make_app(setup=setup_hooks, MAILTRACK_API_TOKENS=["first-token", "second token"])
    client = app.test_client()

    def status(authorization: str) -> int:
        return client.get(API + "/activity", headers={"Authorization": authorization}).status_code

    assert [status(f"Bearer {t}") for t in ("first-token", "second token")] == [200, 200]
    assert status("bearer first-token") == 200  # the scheme is case-insensitive
    for refused in ("Basic first-token", "Bearer first", "Bearer second", "Bearer first-token2",
                    "Bearer", "first-token"):
        assert_problem(client.get(API + "/activity", headers={"Authorization": refused}), 401)


def test_malformed_json_is_400_and_writes_nothing(client):
    resp = client.post(API + "/contacts/c1/events", data="{not json", headers=hdrs(),
                       content_type="application/json")
    assert assert_problem(resp, 400)["detail"] == "The request body is not valid JSON."
    resp = client.post(API + "/contacts/c1/utm/add", data=b"\xff\xfe", headers=hdrs(),
                       content_type="application/json")
    assert assert_problem(resp, 400)["detail"] == "The request body is not valid JSON."
    assert client.get(API + "/contacts/c1/activity?include_bots=1", headers=hdrs()).get_json()["total"] == 0


def test_validation_errors_are_422_with_field_messages(client):
    body = assert_problem(client.post(API + "/contacts/c1/events", json={"type": "teleport"}, headers=hdrs()), 422)
    assert "type" in body["errors"]
    body = assert_problem(client.post(API + "/contacts/c1/events", json={"type": "forward", "bogus": 1},
                                      headers=hdrs()), 422)
    assert "bogus" in body["errors"]
    body = assert_problem(client.post(API + "/contacts/c1/events", json=["type"], headers=hdrs()), 422)
    assert body["errors"]
    body = assert_problem(client.get(API + "/activity?limit=0", headers=hdrs()), 422)
    assert "limit" in body["errors"]


def test_validation_errors_name_each_field_by_its_path_with_its_messages(client):
    """``errors`` is flat: ``{field: [messages]}``, a nested field named by its path joined
    with dots; a body that is not an object is ``_schema``."""
    def errors(path, body):
        return assert_problem(client.post(API + path, json=body, headers=hdrs()), 422)["errors"]

    assert errors("/contacts/c1/events", ["type"]) == {"_schema": ["The body must be a JSON object."]}
    assert errors("/contacts/c1/events", {"type": "forward", "bogus": 1}) == {"bogus": ["Unknown field."]}
    assert errors("/contacts/c1/dnc/email/add", {"reason": 9}) == {
        "reason": ["Must be greater than or equal to 1 and less than or equal to 3."]}
    assert errors("/communications/send", {"subject": "s", "body": "<p>x</p>", "recipients": [
        "ann@example.com", "nope"]}) == {"recipients.1": ["Not a valid email address."]}


def test_nul_and_oversized_input_is_422_never_500(client):
    for body in ({"type": "forward", "email": "a\x00b"},
                 {"type": "forward", "details": {"k": "v\x00"}},
                 {"type": "forward", "campaign_id": "c" * 65},
                 {"type": "forward", "occurred_at": "0001-01-01T00:00:00+01:00"}):
        assert_problem(client.post(API + "/contacts/c1/events", json=body, headers=hdrs()), 422)
    resp = client.post(API + "/contacts/c1/events", data='{"type": "forward", "details": {"x": NaN}}',
                       headers=hdrs(), content_type="application/json")
    assert "details" in assert_problem(resp, 422)["errors"]  # the JSON parses; the value is refused
    assert_problem(client.get(API + "/activity?filters[search]=a%00b", headers=hdrs()), 422)


def test_contact_ids_no_contact_can_have_are_404(client):
    assert_problem(client.get(API + "/contacts/" + "x" * 65 + "/dnc", headers=hdrs()), 404)
    assert_problem(client.get(API + "/contacts/a%00b/utm", headers=hdrs()), 404)
    assert_problem(client.post(API + "/contacts/" + "x" * 65 + "/utm/add", json={"utm_source": "s"},
                               headers=hdrs()), 404)


def test_contact_unknown_to_the_loader_is_404(client):
    for method, path, body in ROUTES:
        if path.startswith("/contacts/"):
            assert_problem(_call(client, method, path.replace("/c1/", "/ghost/"), body, hdrs()), 404)
    for path in ("/odata/ContactClicks('ghost')", "/odata/ContactClicks(999)"):
        assert_problem(client.get(API + path, headers=hdrs()), 404)
        assert_problem(client.put(API + path, json={"ClickCount": 1}, headers=hdrs()), 404)
        assert_problem(client.delete(API + path, headers=hdrs()), 404)
    assert_problem(client.post(API + "/odata/ContactClicks", json={"ID": "ghost", "ClickCount": 1},
                               headers=hdrs()), 404)


def test_without_a_contact_loader_any_contact_id_is_accepted(make_app):
    app = make_app(setup=lambda mt: setup_hooks(mt, contacts=False))
    client = app.test_client()
    assert client.get(API + "/contacts/anyone/dnc", headers=hdrs()).status_code == 200
    assert client.post(API + "/contacts/anyone/events", json={"type": "forward"}, headers=hdrs()).status_code == 201
    assert client.get(API + "/odata/ContactClicks('anyone')", headers=hdrs()).get_json()["ClickCount"] == 0


def test_unknown_kind_and_method_answer_problem_json(client, mailtrack):
    track(mailtrack)
    assert_problem(client.get(API + "/contacts/c1/events/hugs", headers=hdrs()), 404)
    assert_problem(client.get(API + "/campaigns/camp1/tracking/hugs", headers=hdrs()), 404)
    resp = client.delete(API + "/contacts/c1/dnc", headers=hdrs())
    assert_problem(resp, 405)
    assert resp.headers["Allow"] == "GET, HEAD, OPTIONS"
    options = client.options(API + "/contacts/c1/dnc/email/add", headers=hdrs())
    assert (options.status_code, options.headers["Allow"], options.data) == (204, "POST, OPTIONS", b"")
    odata = client.options(API + "/odata/ContactClicks('c1')", headers=hdrs())
    assert (odata.status_code, odata.headers["Allow"]) == (204, "GET, HEAD, PUT, DELETE, OPTIONS")
    assert client.options(API + "/contacts/c1/nothing-here", headers=hdrs()).status_code == 404


def test_database_failure_is_503_and_no_partial_write(client, mailtrack):
    """A hard bounce writes the event and the DNC entry together: if the DNC insert fails,
    neither is stored."""
    import sqlalchemy as sa

    from crm_mailtrack.state import get_state

    def broken(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO MAILTRACK_DNC"):
            raise sa.exc.OperationalError(statement, {}, Exception("disk full"))

    with client.application.app_context():
        engine = get_state().engine
    sa.event.listen(engine, "before_cursor_execute", broken)
    try:
        resp = client.post(API + "/contacts/c1/events", json={"type": "bounce", "details": {"bounceType": "hard"}},
                           headers=hdrs())
    finally:
        sa.event.remove(engine, "before_cursor_execute", broken)
    assert_problem(resp, 503)
    assert client.get(API + "/contacts/c1/activity?include_bots=1", headers=hdrs()).get_json()["total"] == 0
    assert client.get(API + "/contacts/c1/dnc", headers=hdrs()).get_json() == {"doNotContact": []}


def test_a_csrf_extension_that_is_not_flask_wtf_is_left_to_the_host(make_app):
    """With a host authorizer, the CSRF token is checked through Flask-WTF's
    ``CSRFProtect.protect()``; something else registered as ``app.extensions["csrf"]``
    (another library) is the host's business: the call is not refused, nor a 500."""
    def setup(mt):
        setup_hooks(mt)
        mt.api_authorizer(lambda: True)

    app = make_app(setup=setup)
    app.extensions["csrf"] = object()
    resp = app.test_client().post(API + "/contacts/c1/dnc/email/add", headers={"Accept": "application/json"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
