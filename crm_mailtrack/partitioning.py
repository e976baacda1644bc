"""Declarative partitioning on PostgreSQL, as far as the table definitions need it.

A table whose ``info`` names its partition columns (:data:`PARTITION_KEY_INFO`) gets them
appended to its PostgreSQL primary key when created (a partitioned table's unique keys
must hold the partition key); the names of the event log's partitions are defined here.
What is done with the partitions is :mod:`crm_mailtrack.services.partitions`.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles

#: ``Table.info`` key naming a partitioned table's partition columns; the PostgreSQL
#: primary key of such a table holds them too (:func:`_partitioned_primary_key`).
PARTITION_KEY_INFO = "mailtrack_partition_key"
#: The partition of the event log on PostgreSQL that takes rows no monthly partition
#: covers (``flask mailtrack partitions`` moves them to their month when it makes it).
EVENTS_DEFAULT_PARTITION = "mailtrack_events_default"
#: Names of the event log's partitions: ``mailtrack_events_p2026_11`` (pg_partman's monthly
#: naming too) and the default one. They are not models: migrations do not compare them.
EVENTS_PARTITION_NAME = re.compile(r"^mailtrack_events_(p\d{4}_\d{2}|default)$")


def events_partition_name(month: dt.date) -> str:
    """The name of the monthly partition holding ``month`` (any day of it)."""
    return f"mailtrack_events_p{month.year:04d}_{month.month:02d}"


@compiles(sa.PrimaryKeyConstraint, "postgresql")
def _partitioned_primary_key(constraint: sa.PrimaryKeyConstraint, compiler: Any, **kw: Any) -> str:
    """PostgreSQL's primary key of a partitioned table must hold the partition key: the key
    of a table with ``info[PARTITION_KEY_INFO]`` gets those columns appended in its CREATE
    TABLE. Alembic does not compare primary keys, so the models keep ``id`` alone (SQLite's
    autoincrement needs a single-column key)."""
    table = constraint.table
    extra = [c for c in table.info.get(PARTITION_KEY_INFO, ()) if c not in constraint.columns.keys()]
    if not extra or not constraint.columns:
        return str(compiler.visit_primary_key_constraint(constraint, **kw))
    prep = compiler.preparer
    names = [prep.quote(c.name) for c in constraint.columns] + [prep.quote(c) for c in extra]
    head = f"CONSTRAINT {prep.format_constraint(constraint)} " if constraint.name is not None else ""
    return f"{head}PRIMARY KEY ({', '.join(names)})"
