"""The shipped Alembic migrations: upgrading an empty database gives exactly the models'
schema (no drift) on SQLite and PostgreSQL, downgrade and re-upgrade work, ``flask
mailtrack init-db`` runs them, and a host's own tables and ``alembic_version`` stay untouched.

Each test gets an *empty* database (conftest's databases already hold ``create_all`` tables):
a new SQLite file, or a new PostgreSQL schema dropped at the end.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from crm_mailtrack import MailTrack, metadata
from crm_mailtrack.models import EVENTS_PARTITION_NAME
from crm_mailtrack.migrate import (
    VERSION_TABLE,
    alembic_config,
    compare_server_default,
    current,
    downgrade,
    only_mailtrack_name,
    only_mailtrack_object,
    stamp,
    upgrade,
)

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
OUR_TABLES = set(metadata.tables)


@pytest.fixture
def empty_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database of the parametrised kind."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/migrations.db"
        return
    base = os.environ["MAILTRACK_TEST_POSTGRES_URL"]
    schema = f"mt_mig_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(empty_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(empty_url)
    yield engine
    engine.dispose()


def schema_diff(engine: sa.Engine, target: sa.MetaData = metadata) -> list[object]:
    """Alembic's autogenerate diff between the database and the models (our tables only)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "compare_type": True,
            "compare_server_default": compare_server_default,
            "version_table": VERSION_TABLE,
            "include_name": only_mailtrack_name,
            "include_object": only_mailtrack_object,
        })
        return compare_metadata(context, target)


def table_names(engine: sa.Engine) -> set[str]:
    """The tables, without the event log's partitions (PostgreSQL: tests/test_partitions.py)."""
    return {t for t in sa.inspect(engine).get_table_names() if not EVENTS_PARTITION_NAME.match(t)}


def add_host_tables(engine: sa.Engine) -> None:
    """A host's own table with a row, and the host's own Alembic version table."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE crm_contacts (id INTEGER PRIMARY KEY, name VARCHAR(50))"))
        conn.execute(sa.text("INSERT INTO crm_contacts VALUES (1, 'Ada')"))
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('host_rev_1')"))


def assert_host_tables_intact(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id, name FROM crm_contacts")).all() == [(1, "Ada")]
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [("host_rev_1",)]


def test_one_head_on_the_mailtrack_branch() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [HEAD]
    base = script.get_revision(script.get_bases()[0])
    assert base.branch_labels == {"mailtrack"}
    assert script.get_revision("mailtrack@head").revision == HEAD


def test_upgrade_from_empty_gives_exactly_the_models(engine: sa.Engine) -> None:
    assert current(engine) is None
    upgrade(engine)
    assert table_names(engine) == OUR_TABLES | {VERSION_TABLE}
    assert current(engine) == HEAD
    assert schema_diff(engine) == []

    # The check can fail: it sees a changed server default and a missing index.
    changed = sa.MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["mailtrack_events"].append_column(
        sa.Column("tenant_id", sa.String(64), nullable=False, server_default="x"), replace_existing=True)
    [[(op, _, table, column, *_rest)]] = schema_diff(engine, changed)
    assert (op, table, column) == ("modify_default", "mailtrack_events", "tenant_id")
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_mailtrack_events_message"))
    diff = schema_diff(engine)
    assert [(op, index.name) for op, index in diff] == [("add_index", "ix_mailtrack_events_message")]


def test_alembic_check_through_env_finds_nothing_to_generate(empty_url: str, engine: sa.Engine) -> None:
    """``env.py`` on a URL (the ``alembic`` command line's way), with its own filters and
    comparison hooks: at head, autogenerate has nothing to write."""
    upgrade(engine)
    command.check(alembic_config(url=empty_url))  # raises AutogenerateDiffsDetected on drift


def test_upgrade_twice_is_a_no_op_and_keeps_rows(engine: sa.Engine) -> None:
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO mailtrack_links (id, url) VALUES ('abc', 'https://example.com/')"))
    upgrade(engine)
    upgrade(engine, "heads")
    assert current(engine) == HEAD
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT url FROM mailtrack_links")).scalar_one() == "https://example.com/"
        assert conn.execute(sa.text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar_one() == 1


def test_downgrade_to_base_removes_our_tables_then_upgrade_again(engine: sa.Engine) -> None:
    upgrade(engine)
    downgrade(engine, "base")
    assert {t for t in table_names(engine) if t.startswith("mailtrack_")} == {VERSION_TABLE}
    assert current(engine) is None
    upgrade(engine)
    assert schema_diff(engine) == []


def test_upgrade_on_a_given_connection_joins_its_transaction(engine: sa.Engine) -> None:
    """With a connection, the caller's transaction holds the upgrade and commits it."""
    with engine.connect() as conn:
        with conn.begin():
            upgrade(conn)
            assert current(conn) == HEAD
        assert current(conn) == HEAD
    assert OUR_TABLES <= table_names(engine)


def test_tables_from_create_all_are_taken_over_when_they_are_the_head_schema(engine: sa.Engine) -> None:
    """``create_all()`` gives the same schema as the migrations: ``upgrade`` records the
    head for such unversioned tables (a quick start moves on to the migrations), keeping
    their rows."""
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO mailtrack_links (id, url) VALUES ('abc', 'https://example.com/')"))
    assert current(engine) is None
    upgrade(engine)
    assert current(engine) == HEAD
    assert schema_diff(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT url FROM mailtrack_links")).scalar_one() == "https://example.com/"


def test_unversioned_tables_that_differ_from_the_head_are_refused_and_not_stamped(engine: sa.Engine) -> None:
    """Tables of another schema (an older release's create_all, a hand edit) would skip
    migrations they need if stamped: refused, naming the difference; ``stamp`` is the
    operator's explicit way."""
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_mailtrack_events_message"))
    with pytest.raises(RuntimeError, match="ix_mailtrack_events_message"):
        upgrade(engine)
    assert current(engine) is None
    stamp(engine)
    assert current(engine) == HEAD


def test_cli_init_db_creates_tables_and_stamps_our_version_table(
    empty_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    add_host_tables(engine)
    app = Flask("host_migrations", instance_path=str(tmp_path / "instance"))
    app.config.update(
        SECRET_KEY="migrations-test-secret-" + "m" * 24,
        SQLALCHEMY_DATABASE_URI=empty_url,
        MAILTRACK_BASE_URL="http://crm.test",
        MAILTRACK_JOURNAL_PATH=str(tmp_path / "journal.jsonl"),
    )
    db = SQLAlchemy()
    db.init_app(app)
    MailTrack().init_app(app, db=db)
    runner = app.test_cli_runner()
    try:
        result = runner.invoke(args=["mailtrack", "init-db"])
        assert result.exit_code == 0, result.output
        assert "database ready" in result.output
        assert runner.invoke(args=["mailtrack", "init-db"]).exit_code == 0  # again: no-op
    finally:
        with app.app_context():
            db.engine.dispose()

    assert table_names(engine) == OUR_TABLES | {VERSION_TABLE, "crm_contacts", "alembic_version"}
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == [(HEAD,)]
    assert schema_diff(engine) == []  # the host's tables are not ours to compare
    assert_host_tables_intact(engine)

    downgrade(engine, "base")
    assert table_names(engine) == {VERSION_TABLE, "crm_contacts", "alembic_version"}
    assert_host_tables_intact(engine)


def test_host_alembic_can_take_our_revisions_through_version_locations(
    empty_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    """The set-up the docstring of ``crm_mailtrack.migrate`` gives hosts: our versions
    directory in the host's ``version_locations``, one ``alembic_version`` for both."""
    host_dir = tmp_path / "host_migrations"
    with open(os.devnull, "w") as quiet:
        command.init(Config(str(tmp_path / "alembic.ini"), stdout=quiet), str(host_dir))
    config = Config()  # no ini file: the generic env.py then leaves logging alone
    config.set_main_option("script_location", str(host_dir))
    config.set_main_option("path_separator", "space")
    config.set_main_option("version_locations", f"{host_dir}/versions crm_mailtrack:migrations/versions")
    config.set_main_option("sqlalchemy.url", empty_url.replace("%", "%%"))

    command.upgrade(config, "heads")

    assert table_names(engine) == OUR_TABLES | {"alembic_version"}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [(HEAD,)]
    assert schema_diff(engine) == []


def test_upgrading_an_installation_with_data_builds_the_analytics_cells(
    empty_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    """Rows written by the previous release (revision 0002) count once upgraded to 0003:
    the first analytics call builds the cells from them."""
    upgrade(engine, "0002_mailtrack_bots_rollups")
    with engine.begin() as conn:
        for i, (status, opened, clicked_by_bot) in enumerate([("SENT", True, False), ("SENT", False, True),
                                                               ("FAILED", False, False)]):
            conn.execute(sa.text(
                "INSERT INTO mailtrack_messages (id, tenant_id, contact_id, email, subject, headers, status, "
                "track_opens, track_clicks, sent_at, created_at, updated_at) VALUES (:id, '', :c, 'a@b.test', "
                "'s', '{}', :status, true, true, :at, :at, :at)"),
                {"id": f"m{i}", "c": f"c{i}", "status": status, "at": "2026-03-01 10:00:00"})
            if opened:
                conn.execute(sa.text("INSERT INTO mailtrack_events (tenant_id, type, message_id, occurred_at, "
                                     "is_machine) VALUES ('', 'open', :m, '2026-03-01 11:00:00', false)"),
                             {"m": f"m{i}"})
            if clicked_by_bot:
                conn.execute(sa.text("INSERT INTO mailtrack_events (tenant_id, type, message_id, url, occurred_at, "
                                     "is_machine) VALUES ('', 'click', :m, 'https://x.test/', '2026-03-01 10:00:01', "
                                     "true)"), {"m": f"m{i}"})
    upgrade(engine)
    app = Flask("host_upgraded", instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="migrations-test-secret-" + "m" * 24, SQLALCHEMY_DATABASE_URI=empty_url,
                      MAILTRACK_BASE_URL="http://crm.test", MAILTRACK_JOURNAL_PATH=str(tmp_path / "journal.jsonl"))
    db = SQLAlchemy()
    db.init_app(app)
    MailTrack().init_app(app, db=db)
    from crm_mailtrack.services.analytics import analytics

    try:
        with app.app_context():
            state = app.extensions["mailtrack"]
            humans, everyone = analytics(state, ""), analytics(state, "", include_bots=True)
            assert (humans["totalSent"], humans["totalOpened"], humans["totalClicked"], humans["totalFailed"]) == (
                2, 1, 0, 1)
            assert (everyone["totalOpened"], everyone["totalClicked"]) == (2, 1)
            assert everyone == analytics(state, "", include_bots=True, use_cells=False)
    finally:
        with app.app_context():
            db.engine.dispose()


def test_the_old_filter_names_warn_and_point_a_host_to_the_right_ones(engine: sa.Engine) -> None:
    """``include_name`` / ``include_object`` kept only our tables: a host taking them for its
    env.py got the opposite of what it needed. They now warn, naming the host's filters;
    ``exclude_mailtrack`` (the first name of the host's filter) still works."""
    import crm_mailtrack.migrate as migrate

    for old in ("include_name", "include_object"):
        with pytest.warns(DeprecationWarning, match=f"exclude_mailtrack_{old.split('_')[1]}"):
            getattr(migrate, old)
    upgrade(engine)
    host = sa.MetaData()
    sa.Table("crm_contacts", host, sa.Column("id", sa.Integer, primary_key=True))
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "include_name": migrate.exclude_mailtrack, "include_object": migrate.exclude_mailtrack_object})
        diff = compare_metadata(context, host)
    assert [(op, table.name) for op, table in diff] == [("add_table", "crm_contacts")]


@pytest.mark.parametrize("hook", ["include_name", "include_object"])
def test_each_host_filter_alone_keeps_autogenerate_off_our_tables(engine: sa.Engine, hook: str) -> None:
    """A host's env.py may pass only one of the two filters: either alone keeps our tables
    (and our version table) out of the host's autogenerate, and keeps the host's."""
    import crm_mailtrack.migrate as migrate

    upgrade(engine)
    host = sa.MetaData()
    sa.Table("crm_contacts", host, sa.Column("id", sa.Integer, primary_key=True))
    hooks = {"include_name": migrate.exclude_mailtrack_name, "include_object": migrate.exclude_mailtrack_object}
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={hook: hooks[hook]}), host)
    assert [(op, table.name) for op, table in diff] == [("add_table", "crm_contacts")]


def test_upgrading_merges_duplicate_utm_tags(engine: sa.Engine) -> None:
    """Installations before 0004 stored a tag per click: the upgrade folds each contact's
    rows of one utm_* combination into its oldest row (hits = rows, latest last_active) and
    then enforces one tag per contact and combination."""
    upgrade(engine, "0003_mailtrack_stats_cells")
    rows = [  # (tenant, contact, source, campaign, last_active)
        ("", "c1", "news", "spring", "2026-03-01 10:00:00"),
        ("", "c1", "news", "spring", "2026-03-03 10:00:00"),
        ("", "c1", "news", "spring", None),
        ("", "c1", "news", "summer", "2026-03-02 10:00:00"),
        ("", "c2", "news", "spring", "2026-03-01 09:00:00"),
        ("t2", "c1", "news", "spring", "2026-03-01 08:00:00"),
        ("", "c3", None, None, None),
        ("", "c3", "", None, None),  # empty and missing are the same combination
    ]
    with engine.begin() as conn:
        for tenant, contact, source, campaign, last_active in rows:
            conn.execute(sa.text(
                "INSERT INTO mailtrack_utm_tags (tenant_id, contact_id, utm_source, utm_campaign, last_active, "
                "date_added) VALUES (:t, :c, :s, :k, :at, '2026-03-01 00:00:00')"),
                {"t": tenant, "c": contact, "s": source, "k": campaign, "at": last_active})
    upgrade(engine)
    assert schema_diff(engine) == []
    with engine.connect() as conn:
        merged = conn.execute(sa.text(
            "SELECT id, tenant_id, contact_id, utm_campaign, hits, last_active FROM mailtrack_utm_tags ORDER BY id"
        )).all()
    assert [(r.id, r.tenant_id, r.contact_id, r.utm_campaign, r.hits) for r in merged] == [
        (1, "", "c1", "spring", 3), (4, "", "c1", "summer", 1), (5, "", "c2", "spring", 1),
        (6, "t2", "c1", "spring", 1), (7, "", "c3", None, 2)]
    assert str(merged[0].last_active).startswith("2026-03-03 10:00:00")
    with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
        key = conn.execute(sa.text("SELECT utm_key FROM mailtrack_utm_tags WHERE id = 1")).scalar_one()
        from crm_mailtrack.services.utm import combination_key  # what a later click of c1 computes

        assert key == combination_key({"utm_source": "news", "utm_campaign": "spring"})
        conn.execute(sa.text("INSERT INTO mailtrack_utm_tags (tenant_id, contact_id, utm_key, date_added) "
                             "VALUES ('', 'c1', :k, '2026-03-05 00:00:00')"), {"k": key})
    downgrade(engine, "0003_mailtrack_stats_cells")
    upgrade(engine)
    assert schema_diff(engine) == []
