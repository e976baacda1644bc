"""Alembic environment of crm_mailtrack's own migrations (see ``crm_mailtrack.migrate``).

It runs on ``config.attributes["connection"]`` when one is given (``migrate.upgrade`` and
friends), else on ``sqlalchemy.url`` (the ``alembic`` command line). Only ``mailtrack_*``
tables are reflected or compared, and the version table is ``mailtrack_alembic_version``.

A new revision, after changing ``models.py``::

    from crm_mailtrack.migrate import alembic_config
    from alembic import command
    command.revision(alembic_config(url="sqlite:////tmp/mt.db"), "what changed",
                     autogenerate=True)   # after upgrading that database to head
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context

from crm_mailtrack.migrate import (
    VERSION_TABLE,
    compare_server_default,
    only_mailtrack_name,
    only_mailtrack_object,
    quiet_expression_index_warnings,
)
from crm_mailtrack.models import metadata

config = context.config


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Write a TypeDecorator (e.g. ``UTCDateTime``) as its plain SQLAlchemy type, so
    revisions never import our models."""
    if type_ == "type" and isinstance(obj, sa.types.TypeDecorator):
        impl = obj.impl_instance
        if type(impl).__module__.startswith("sqlalchemy.sql"):
            return f"sa.{impl!r}"
    return False


OPTIONS: dict[str, Any] = {
    "target_metadata": metadata,
    "version_table": VERSION_TABLE,
    "include_name": only_mailtrack_name,
    "include_object": only_mailtrack_object,
    "render_item": render_item,
    "render_as_batch": True,  # ALTERs that also work on SQLite
    "compare_type": True,
    "compare_server_default": compare_server_default,
}


def run_offline() -> None:
    """``--sql`` mode: write the SQL instead of running it."""
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      dialect_opts={"paramstyle": "named"}, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: sa.Connection) -> None:
    context.configure(connection=connection, **OPTIONS)
    with context.begin_transaction(), quiet_expression_index_warnings():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("crm_mailtrack migrations need config.attributes['connection'] "
                           "or sqlalchemy.url (see crm_mailtrack.migrate)")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            run_on(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
