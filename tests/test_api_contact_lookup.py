"""``GET /api/contacts?email=`` (003 step 1): the contacts mail was addressed to at an
address, case-insensitively, in the request's tenant only, with their last activity; and
the database answers it from an index, on SQLite and PostgreSQL."""
from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from apihelpers import API, add_event, assert_problem, hdrs, setup_hooks

from crm_mailtrack.models import messages

INDEX = "ix_mailtrack_messages_tenant_email"


@pytest.fixture
def app(make_app):
    app = make_app(setup=lambda mt: setup_hooks(mt, contacts=False))
    with app.app_context():
        yield app


def _message(mt: Any, contact_id: str, email: str, tenant: str = "") -> str:
    return mt.track_message(contact_id=contact_id, email=email, subject="s", html="<p>x</p>", tenant_id=tenant).id


def _lookup(client: Any, email: str, tenant: str | None = None, extra: str = "") -> Any:
    return client.get(f"{API}/contacts", query_string=f"email={email}{extra}", headers=hdrs(tenant))


def test_finds_the_contacts_of_an_address_case_insensitively_in_the_tenant(client, mailtrack, db):
    _message(mailtrack, "c1", "Ann@Example.com", "t1")
    _message(mailtrack, "c1", "ann@example.com", "t1")  # the address as last used
    _message(mailtrack, "ann@example.com", "ANN@example.com", "t1")  # an address-contact, same person
    _message(mailtrack, "c2", "bob@example.com", "t1")
    _message(mailtrack, "theirs", "ann@example.com", "t2")
    add_event(db, "click", "c1", minutes=10, tenant="t1")
    add_event(db, "open", "c1", minutes=20, tenant="t1", bot=True)

    resp = _lookup(client, "ANN@EXAMPLE.COM", "t1")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    contacts = resp.json["contacts"]
    assert sorted(c["contactId"] for c in contacts) == ["ann@example.com", "c1"]
    by_id = {c["contactId"]: c for c in contacts}
    assert by_id["c1"] == {"contactId": "c1", "email": "ann@example.com", "lastActivity": "2024-05-01T12:10:00Z"}
    assert by_id["ann@example.com"]["lastActivity"] is None  # never sent, no event
    assert contacts[0]["contactId"] == "ann@example.com"  # the most recently addressed first

    with_bots = {c["contactId"]: c for c in _lookup(client, "ann@example.com", "t1", "&include_bots=true").json["contacts"]}
    assert with_bots["c1"]["lastActivity"] == "2024-05-01T12:20:00Z"

    theirs = _lookup(client, "ann@example.com", "t2").json["contacts"]
    assert [c["contactId"] for c in theirs] == ["theirs"]
    assert _lookup(client, "ann@example.com").json == {"contacts": []}  # the default tenant has none
    assert _lookup(client, "nobody@example.com", "t1").json == {"contacts": []}


def test_contacts_the_loader_does_not_know_are_left_out(make_app):
    app = make_app(setup=setup_hooks)  # the loader knows c1, c2, c3, 42
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        _message(mt, "c1", "ann@example.com")
        _message(mt, "gone", "ann@example.com")
        resp = _lookup(app.test_client(), "ann@example.com")
    assert [c["contactId"] for c in resp.json["contacts"]] == ["c1"]


@pytest.mark.parametrize("query", ["", "email=", "email=not-an-address", "email=a%00b@example.com"])
def test_without_a_valid_email_it_is_422(client, query):
    body = assert_problem(client.get(f"{API}/contacts?{query}", headers=hdrs()), 422)
    assert "email" in body["errors"]


def _lookup_statement(app: Any, client: Any) -> tuple[str, Any]:
    """The SQL (and parameters) the route runs against the messages table."""
    engine = app.extensions["mailtrack"].engine
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "lower(" in statement and "mailtrack_messages" in statement:
            seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        assert _lookup(client, "User7@Example.com", "t1").json["contacts"][0]["contactId"] == "u7"
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert len(seen) == 1
    return seen[0]


def test_the_lookup_reads_an_index(app, client, db):
    """Plans from the database itself, with enough rows (and statistics) that a scan would
    be its choice without the index."""
    now = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    rows = [{"id": f"m{t}{i:05d}", "tenant_id": t, "contact_id": f"u{i}", "email": f"user{i}@example.com",
             "subject": "s", "status": "SENT", "track_opens": True, "track_clicks": True,
             "created_at": now, "updated_at": now} for t in ("t1", "t2") for i in range(3000)]
    db.session.execute(sa.insert(messages), rows)
    db.session.commit()
    statement, parameters = _lookup_statement(app, client)
    with db.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("ANALYZE")
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
        else:
            conn.exec_driver_sql("ANALYZE mailtrack_messages")
            plan = " ".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
    assert INDEX in plan, plan
