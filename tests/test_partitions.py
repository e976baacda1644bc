"""An event log that can grow (issue 17): on PostgreSQL ``mailtrack_events`` is partitioned
by month; migration 0010 converts an installation with data; ``flask mailtrack partitions``
makes the months ahead; purge drops whole months (same totals as deleting rows); reports
that bound the time read only the months they cover; events are unique by (uid,
occurred_at) on both databases.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from flask import current_app

from crm_mailtrack import metadata
from crm_mailtrack.migrate import (
    VERSION_TABLE,
    compare_server_default,
    current,
    downgrade,
    only_mailtrack_name,
    only_mailtrack_object,
    upgrade,
)
from crm_mailtrack.models import event_rollups, events
from crm_mailtrack.services import partitions, privacy
from crm_mailtrack.services.contactclicks import IMPORT_REASON

from apihelpers import hdrs
from test_privacy import NOW, _seed, _totals, _uniques

BEFORE = "0006_mailtrack_contact_email"
UTC = dt.timezone.utc


@pytest.fixture(autouse=True)
def _only_the_default_partition(database_url: str) -> None:
    """The PostgreSQL schema of a test process outlives a test (tables are truncated):
    start each test here with the default partition only, as create_all() makes it."""
    if not database_url.startswith("postgresql"):
        return
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        for part in partitions.partitions(conn):
            if not part.is_default:
                conn.execute(sa.text(f'DROP TABLE "{part.name}"'))
    engine.dispose()


@pytest.fixture
def engine(empty_url: str) -> Iterator[sa.Engine]:
    """An engine on an empty database of the parametrised kind (a new schema on PostgreSQL)."""
    engine = sa.create_engine(empty_url)
    yield engine
    engine.dispose()


def schema_diff(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={
            "compare_type": True, "compare_server_default": compare_server_default, "version_table": VERSION_TABLE,
            "include_name": only_mailtrack_name, "include_object": only_mailtrack_object}), metadata)


def partition_names(bind: Any) -> list[str]:
    with (bind.connect() if isinstance(bind, sa.Engine) else bind) as conn:
        return [p.name for p in partitions.partitions(conn)]


def pg(bind: Any) -> bool:
    return bind.dialect.name == "postgresql"


_INSERT = sa.text("INSERT INTO mailtrack_events (uid, tenant_id, type, contact_id, message_id, campaign_id, "
                  "occurred_at, is_machine) VALUES (:uid, '', :type, 'c1', 'm1', 'cmp', :at, false)")
_OLD_ROWS = [("u1", "open", "2025-12-15 10:00:00+00:00"), ("u2", "click", "2026-01-10 08:30:00+00:00"),
             ("u3", "send", "2026-03-01 00:00:00+00:00"), (None, "open", "2026-03-31 23:59:59+00:00")]


def test_upgrading_an_event_log_with_data_partitions_it_and_keeps_every_row(engine: sa.Engine) -> None:
    """0006 -> 0010: every row keeps its id and values; on PostgreSQL one partition per
    month from the oldest event to three months ahead plus the default one, the sequence
    goes on after the highest id, and autogenerate finds nothing to change. Downgrade and
    upgrade again keep the rows too."""
    upgrade(engine, BEFORE)
    with engine.begin() as conn:
        for uid, type_, at in _OLD_ROWS:
            conn.execute(_INSERT, {"uid": uid, "type": type_, "at": at})
    query = sa.text("SELECT id, uid, type FROM mailtrack_events ORDER BY id")
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    upgrade(engine)
    assert schema_diff(engine) == []
    with engine.connect() as conn:
        assert conn.execute(query).all() == rows
    if pg(engine):
        names = partition_names(engine)
        month = partitions.month_start(dt.datetime.now(UTC))
        for _ in range(3):
            month = partitions.next_month(month)
        expected, start = [], dt.datetime(2025, 12, 1, tzinfo=UTC)
        while start <= month:
            expected.append(f"mailtrack_events_p{start.year}_{start.month:02d}")
            start = partitions.next_month(start)
        assert names == [*expected, "mailtrack_events_default"]
        with engine.connect() as conn:
            where = dict(conn.execute(sa.text(
                "SELECT uid, tableoid::regclass::text FROM mailtrack_events WHERE uid IS NOT NULL")).all())
        assert where == {"u1": "mailtrack_events_p2025_12", "u2": "mailtrack_events_p2026_01",
                         "u3": "mailtrack_events_p2026_03"}
    with engine.begin() as conn:  # a new row takes the next id
        conn.execute(_INSERT, {"uid": "u5", "type": "open", "at": "2026-02-02 00:00:00+00:00"})
        assert conn.execute(sa.text("SELECT id FROM mailtrack_events WHERE uid = 'u5'")).scalar() == rows[-1].id + 1
    downgrade(engine, BEFORE)
    assert partition_names(engine) == []
    with engine.connect() as conn:
        assert len(conn.execute(query).all()) == len(rows) + 1
    upgrade(engine)
    assert current(engine) is not None and schema_diff(engine) == []


def test_an_event_is_unique_by_uid_and_moment_on_both_databases(engine: sa.Engine) -> None:
    """The idempotency key holds the partition key: the same uid at the same moment is
    refused (a replay, a provider's retry), at another moment it is another event."""
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(_INSERT, {"uid": "dup", "type": "open", "at": "2026-02-02 10:00:00+00:00"})
        conn.execute(_INSERT, {"uid": "dup", "type": "open", "at": "2026-02-02 10:00:01+00:00"})
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(_INSERT, {"uid": "dup", "type": "open", "at": "2026-02-02 10:00:00+00:00"})


def test_partitions_command_makes_months_ahead_and_moves_stray_rows(app: Any, runner: Any) -> None:
    mt = app.extensions["mailtrack"].extension
    result = runner.invoke(args=["mailtrack", "partitions", "--ahead", "2"])
    assert result.exit_code == 0, result.output
    engine = app.extensions["sqlalchemy"].engine
    if not pg(engine):
        assert "PostgreSQL only; nothing to do" in result.output
        return
    assert "made 3 partitions" in result.output
    # create_all() made only the default partition: an event of a month without one lands
    # there, and moves to its month when the month is made.
    later = partitions.next_month(partitions.month_start(dt.datetime.now(UTC)))
    for _ in range(4):
        later = partitions.next_month(later)
    event_id = mt.record_event("c1", "open", occurred_at=later + dt.timedelta(days=3)).id
    app.extensions["sqlalchemy"].session.commit()  # no open transaction holds the table

    def home() -> str:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT tableoid::regclass::text FROM mailtrack_events WHERE id = :i"),
                                {"i": event_id}).scalar_one()

    assert home() == "mailtrack_events_default"
    result = runner.invoke(args=["mailtrack", "partitions", "--ahead", "6"])
    assert result.exit_code == 0, result.output
    assert "made 4 partitions" in result.output and "7 monthly partitions" in result.output
    assert home() == f"mailtrack_events_p{later.year}_{later.month:02d}"
    again = runner.invoke(args=["mailtrack", "partitions", "--ahead", "6"])
    assert "made 0 partitions" in again.output


def _months(engine: sa.Engine, first: dt.datetime, last: dt.datetime) -> None:
    with engine.begin() as conn:
        month = partitions.month_start(first)
        while month <= last:
            partitions.create_month(conn, month)
            month = partitions.next_month(month)


def test_purge_drops_whole_months_and_keeps_totals_true(app: Any, mailtrack: Any, db: Any) -> None:
    """The purge of test_privacy on monthly partitions: the same rows deleted, the same
    totals and uniques after it; the months wholly before the cutoff are gone as tables;
    an imported ContactClicks event of a dropped month (kept by every purge) survives."""
    engine = db.engine
    if pg(engine):
        _months(engine, NOW - dt.timedelta(days=120), NOW)
    _seed(mailtrack)
    imported = mailtrack.record_event("c7", "click", occurred_at=NOW - dt.timedelta(days=100)).id
    db.session.execute(sa.update(events).where(events.c.id == imported)
                       .values(is_machine=True, machine_reason=IMPORT_REASON))
    db.session.commit()
    before, uniques = _totals(db), (_uniques(db, "open"), _uniques(db, "click", by_link=True))
    db.session.commit()  # the purge drops tables: no open transaction of ours may hold them
    state = current_app.extensions["mailtrack"]
    slices = privacy.purge_days(state, 30, now=NOW)
    assert privacy.purge(state, 30, now=NOW) == 11
    assert _totals(db) == before
    assert (_uniques(db, "open"), _uniques(db, "click", by_link=True)) == uniques == (2, 2)
    assert db.session.execute(sa.select(events.c.id).where(events.c.machine_reason == IMPORT_REASON)
                              ).scalars().all() == [imported]
    if pg(engine):
        # cutoff 2026-05-31 12:00: March and April go whole (one slice each), not day by day
        assert (dt.datetime(2026, 3, 1, tzinfo=UTC), dt.datetime(2026, 4, 1, tzinfo=UTC)) in slices
        assert len(slices) < 40
        names = partition_names(engine)
        assert "mailtrack_events_p2026_03" not in names and "mailtrack_events_p2026_04" not in names
        assert "mailtrack_events_p2026_05" in names and "mailtrack_events_default" in names
        # February held only the import: moved to the default partition, then dropped
        assert "mailtrack_events_p2026_02" not in names
    assert privacy.purge(state, 30, now=NOW) == 0
    assert _totals(db) == before


def _plan(engine: sa.Engine, statement: str, params: Any) -> str:
    with engine.connect() as conn:
        cursor = conn.connection.cursor()
        cursor.execute("EXPLAIN " + statement, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_a_campaign_report_reads_only_the_months_it_asks_for(app: Any, mailtrack: Any, db: Any) -> None:
    """``created_since`` bounds occurred_at: PostgreSQL prunes the older months (the plan
    of the statement the API ran names only the newer partitions)."""
    engine = db.engine
    if not pg(engine):
        pytest.skip("partitions exist on PostgreSQL only")
    _months(engine, dt.datetime(2026, 1, 1, tzinfo=UTC), dt.datetime(2026, 6, 1, tzinfo=UTC))
    mailtrack.track_message(contact_id="c1", email="c1@example.com", subject="s", html="<p>x</p>",
                            campaign_id="cmp")
    for month in range(1, 7):
        mailtrack.record_event("c1", "open", campaign_id="cmp", occurred_at=dt.datetime(2026, month, 5, tzinfo=UTC))
    db.session.commit()
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "FROM mailtrack_events" in statement and "ORDER BY" in statement:
            seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        resp = app.test_client().get("/mailtrack/api/campaigns/cmp/tracking/opens",
                                     query_string={"created_since": "2026-05-01T00:00:00Z"}, headers=hdrs())
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert resp.status_code == 200, resp.get_json()
    assert len(resp.get_json()["results"]) == 2
    [(statement, params)] = seen
    plan = _plan(engine, statement, params)
    scanned = sorted(n for n in partition_names(engine) if f" {n} " in plan or plan.endswith(f" {n}"))
    assert scanned == ["mailtrack_events_default", "mailtrack_events_p2026_05", "mailtrack_events_p2026_06"], plan


def test_rollups_of_a_dropped_month_match_deleting_its_rows(make_app: Any) -> None:
    """The same events purged by dropping their month (partitioned) and by deleting rows
    (a month without partition, in the default partition) give the same rollups."""
    app = make_app()
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("partitions exist on PostgreSQL only")
    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        engine = app.extensions["sqlalchemy"].engine
        _months(engine, dt.datetime(2026, 1, 1, tzinfo=UTC), dt.datetime(2026, 1, 1, tzinfo=UTC))
        for month in (1, 2):  # January has a partition, February lives in the default one
            for day in (3, 4, 20):
                for kind in ("send", "open", "click"):
                    mt.record_event("c1", kind, message_id=f"m{day}", campaign_id="cmp",
                                    url="https://a.test/" if kind == "click" else None,
                                    occurred_at=dt.datetime(2026, month, day, 9, tzinfo=UTC))
        app.extensions["sqlalchemy"].session.commit()
        state = current_app.extensions["mailtrack"]
        assert privacy.purge(state, 0, now=dt.datetime(2026, 3, 1, tzinfo=UTC)) == 18
        with engine.connect() as conn:
            rows = conn.execute(sa.select(event_rollups.c.day, event_rollups.c.type, event_rollups.c.count)
                                .order_by(event_rollups.c.day, event_rollups.c.type)).all()
    jan = [(r.day.day, r.type, r.count) for r in rows if r.day.month == 1]
    feb = [(r.day.day, r.type, r.count) for r in rows if r.day.month == 2]
    assert jan == feb == [(d, t, 1) for d in (3, 4, 20) for t in ("click", "open", "send")]
    assert "mailtrack_events_p2026_01" not in partition_names(engine)
