"""The tracking routes' own transaction on a pooled driver connection: what a recipient
and the database see when that connection fails or is lost."""
from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack.models import events, utm_tags

from conftest import tracked_paths

DEST = "https://dest.test/landing?utm_source=news&utm_medium=email"


def _count(app: Any, table: sa.Table = events, **where: Any) -> int:
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        q = sa.select(sa.func.count()).select_from(table).where(*(table.c[k] == v for k, v in where.items()))
        return conn.execute(q).scalar()


def test_connections_the_server_dropped_are_discarded_not_reused(make_app, database_url):
    """PostgreSQL ends the backends of every pooled connection (a failover, an idle
    timeout): clicks keep redirecting, a click on a dead connection goes to the journal,
    and the dead connections leave the pool, so later clicks are stored again."""
    if database_url.startswith("sqlite"):
        pytest.skip("a SQLite connection cannot be dropped by a server")
    name = f"mt-drop-{uuid.uuid4().hex[:8]}"
    app = make_app(SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"application_name": name}})
    p = tracked_paths(app, DEST)
    client = app.test_client()
    assert client.get(p["click"]).status_code == 302
    killer = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with killer.connect() as conn:
        dropped = conn.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                       "WHERE application_name = :name"), {"name": name}).scalar()
    killer.dispose()
    assert dropped >= 1
    answers = [client.get(p["click"]).status_code for _ in range(dropped + 3)]
    assert answers == [302] * (dropped + 3)
    journal = app.extensions["mailtrack"].journal
    assert 1 <= journal.count() <= dropped
    assert _count(app, type="click") == 1 + len(answers) - journal.count()
    assert [client.get(p["click"]).status_code for _ in range(2)] == [302, 302]
    assert journal.count() <= dropped  # the pool is healthy again: nothing more journaled


def test_a_failed_click_transaction_leaves_nothing_and_the_connection_clean(make_app, database_url, monkeypatch):
    """A click whose transaction fails after its insert (here: the UTM tag's statement
    refused by the database) is rolled back whole, and the connection goes back to the
    pool clean: the next click on the same connection is stored with its tag."""
    app = make_app()
    p = tracked_paths(app, DEST)
    client = app.test_client()
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0"}
    from crm_mailtrack.services import utm as utm_service

    real = utm_service.upsert_tag

    def refused(runner: Any, values: Any) -> Any:
        return real(runner, {**values, "contact_id": None})  # NOT NULL: the database says no

    monkeypatch.setattr(utm_service, "upsert_tag", refused)
    assert client.get(p["click"], headers=browser).status_code == 302
    assert _count(app, type="click") == 0 and _count(app, utm_tags) == 0
    assert app.extensions["mailtrack"].journal.count() == 1
    monkeypatch.undo()
    assert client.get(p["click"], headers=browser).status_code == 302
    assert _count(app, type="click") == 1 and _count(app, utm_tags) == 1
