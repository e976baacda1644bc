"""The click path's fast lane (services.rawexec) returns what SQLAlchemy's execute returns."""
from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from crm_mailtrack.models import UTCDateTime, events
from crm_mailtrack.services import rawexec
from crm_mailtrack.state import get_state


def _insert_stmt() -> sa.Insert:
    return sa.insert(events).values(
        tenant_id=sa.bindparam("tenant", type_=sa.String()),
        type=sa.case((sa.bindparam("n", type_=sa.Integer()) > 1, "click"), else_="open"),  # literal binds
        contact_id=sa.bindparam("contact", type_=sa.String()),
        occurred_at=sa.bindparam("at", type_=UTCDateTime()),
        is_machine=sa.bindparam("machine", type_=sa.Boolean()),
        details=sa.bindparam("details", type_=events.c.details.type),
    ).returning(events.c.id, events.c.type, events.c.occurred_at, events.c.is_machine, events.c.details)


STMT = _insert_stmt()


def test_first_matches_sqlalchemy_execute(app):
    engine = get_state().engine
    at = dt.datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=dt.timezone.utc)
    params = {"tenant": "t", "n": 2, "contact": "c1", "at": at, "machine": True, "details": {"a": [1, "x"]}}
    with engine.begin() as conn:
        fast = rawexec.first(conn, STMT, params)
        slow = conn.execute(STMT, params).first()
    assert fast.type == slow.type == "click"
    assert fast.occurred_at == slow.occurred_at == at and fast.occurred_at.tzinfo is not None
    assert fast.is_machine is True and slow.is_machine is True
    assert fast.details == slow.details == {"a": [1, "x"]}
    assert fast._mapping["id"] == slow.id - 1  # two rows, in order


def test_first_committed_commits_and_errors_propagate(app):
    engine = get_state().engine
    at = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    row = rawexec.first_committed(engine, STMT, {"tenant": "", "n": 0, "contact": "c2", "at": at,
                                                 "machine": False, "details": None})
    assert row.type == "open" and row.is_machine is False
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)
                            .where(events.c.contact_id == "c2")).scalar() == 1
    bad = sa.insert(events).values(id=sa.bindparam("id", type_=sa.Integer()), type="open",
                                   tenant_id="").returning(events.c.id)
    with pytest.raises(Exception):
        rawexec.first_committed(engine, bad, {"id": row.id})  # duplicate primary key
    with engine.connect() as conn:  # the pool is still usable after the failure
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 1


def test_statements_needing_per_execution_compilation_are_refused(app):
    stmt = sa.select(events.c.id).where(events.c.id.in_(sa.bindparam("ids", expanding=True)))
    with pytest.raises(ValueError):
        rawexec.CompiledStatement(stmt, get_state().engine.dialect)
