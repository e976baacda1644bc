"""Run the Alembic migrations shipped in ``crm_mailtrack/migrations`` (branch ``mailtrack``).

``flask mailtrack init-db`` calls :func:`upgrade`. Our revisions keep their own version
table, ``mailtrack_alembic_version``, and only ever look at ``mailtrack_*`` tables, so a
host's own ``alembic_version`` and tables are never touched.

A host on Flask-Migrate/Alembic may run our revisions in its own history instead (then it
should not also use ``init-db``). In its ``alembic.ini``::

    path_separator = space
    version_locations = %(here)s/versions crm_mailtrack:migrations/versions

then ``flask db upgrade heads`` (or ``mailtrack@head``). So that its autogenerate leaves our
tables alone, pass ``include_name=crm_mailtrack.migrate.exclude_mailtrack`` to
``Migrate(app, db, ...)`` (or to ``context.configure`` in its ``env.py``).
"""
from __future__ import annotations

import atexit
import contextlib
import functools
from collections.abc import Iterator
from importlib import resources
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

VERSION_TABLE = "mailtrack_alembic_version"
BRANCH = "mailtrack"
TABLE_PREFIX = "mailtrack_"

Bind = sa.Engine | sa.Connection

__all__ = [
    "VERSION_TABLE", "BRANCH", "script_location", "alembic_config", "upgrade", "downgrade",
    "stamp", "current", "include_name", "include_object", "compare_server_default",
    "exclude_mailtrack",
]

_files = contextlib.ExitStack()
atexit.register(_files.close)


@functools.cache
def script_location() -> str:
    """Filesystem path of the shipped Alembic script directory."""
    ref = resources.files("crm_mailtrack") / "migrations"
    return str(_files.enter_context(resources.as_file(ref)))


def alembic_config(connection: sa.Connection | None = None, *, url: str | None = None) -> Config:
    """An Alembic ``Config`` for our scripts: ``env.py`` runs on ``connection`` if given,
    else on a new engine for ``url`` (as the ``alembic`` command line would)."""
    config = Config()
    config.set_main_option("script_location", script_location())
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ini interpolation
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@contextlib.contextmanager
def _connection(bind: Bind) -> Iterator[sa.Connection]:
    """A given connection as is (its owner commits, or Alembic does if no transaction is
    open); an engine's connection in a transaction committed at the end."""
    if isinstance(bind, sa.Connection):
        yield bind
    else:
        with bind.begin() as conn:
            yield conn


def upgrade(bind: Bind, revision: str = f"{BRANCH}@head") -> None:
    """Create or upgrade the extension's tables; a no-op when already at ``revision``.

    Tables made by ``create_all()`` carry no revision: this refuses them, with advice,
    rather than failing half-way on "table already exists"."""
    with _connection(bind) as conn:
        if current(conn) is None:
            existing = sorted(t for t in sa.inspect(conn).get_table_names()
                              if t.startswith(TABLE_PREFIX) and t != VERSION_TABLE)
            if existing:
                raise RuntimeError(
                    f"tables {', '.join(existing)} exist but {VERSION_TABLE} records no revision "
                    "(made by create_all()?); if they match the models of this version, record "
                    "them with crm_mailtrack.migrate.stamp(engine), then upgrade")
        command.upgrade(alembic_config(conn), revision)


def downgrade(bind: Bind, revision: str) -> None:
    """Downgrade to ``revision`` (``"base"`` drops every table of the extension)."""
    with _connection(bind) as conn:
        command.downgrade(alembic_config(conn), revision)


def stamp(bind: Bind, revision: str = f"{BRANCH}@head") -> None:
    """Record ``revision`` without running it, e.g. for tables made by ``create_all()``."""
    with _connection(bind) as conn:
        command.stamp(alembic_config(conn), revision)


def current(bind: Bind) -> str | None:
    """The revision recorded in ``mailtrack_alembic_version``, ``None`` before any upgrade."""
    with _connection(bind) as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic ``include_name`` hook: reflect only our tables."""
    return type_ != "table" or bool(name and name.startswith(TABLE_PREFIX))


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic ``include_object`` hook: compare only our tables (and what they hold)."""
    return type_ != "table" or bool(name and name.startswith(TABLE_PREFIX))


def compare_server_default(context: MigrationContext, inspected_column: Any, metadata_column: Any,
                           inspected_default: str | None, metadata_default: Any,
                           rendered_metadata_default: str | None) -> bool | None:
    """Alembic ``compare_server_default`` hook. Alembic (1.20 at least) reflects SQLite's
    ``DEFAULT ''`` as ``('')`` and reports a change where there is none."""
    if (context.dialect.name == "sqlite" and rendered_metadata_default == ""
            and inspected_default in ("''", "('')")):
        return False
    return None  # Alembic's own comparison decides


def exclude_mailtrack(name: str | None, type_: str, parent_names: Any) -> bool:
    """``include_name`` hook for a host's own migrations: skip our tables."""
    return not (type_ == "table" and name and name.startswith(TABLE_PREFIX))
