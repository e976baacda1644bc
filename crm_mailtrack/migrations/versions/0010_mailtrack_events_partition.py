"""event log partitioned by month on PostgreSQL; events unique by (uid, occurred_at)

Revision ID: 0010_mailtrack_events_partition
Revises: 0009_mailtrack_scale_out
Create Date: 2026-11-30 12:00:00

PostgreSQL: ``mailtrack_events`` becomes ``PARTITION BY RANGE (occurred_at)``, one partition
per UTC month (``mailtrack_events_pYYYY_MM``) from the oldest stored event to three months
ahead, and a default partition. A partitioned table's primary key and unique keys must
hold the partition key: the primary key becomes ``(id, occurred_at)`` (ids still come
from the one sequence, kept at its value) and the idempotency key ``uid`` becomes unique
with ``occurred_at``. The rows are copied into the new table in this transaction (the
table is locked meanwhile: plan the upgrade of a large installation for a quiet hour),
and the indexes are built after the copy.

SQLite has no partitioning; only the idempotency key changes, to the same
``(uid, occurred_at)``, so that both databases follow one rule (a table copy, made by
Alembic's batch mode).

Plain SQLAlchemy and Alembic only: a revision must stay valid when models.py changes.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = '0010_mailtrack_events_partition'
down_revision: str | Sequence[str] | None = '0009_mailtrack_scale_out'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNFOLDED_PG = ("type IN ('open', 'click', 'bounce', 'unsubscribe') "
                "AND folded_as IS DISTINCT FROM is_machine")
_HONEYPOT = "machine_reason = 'honeypot' AND link_id IS NULL"
_INDEXES = [  # name, columns, partial-index predicate
    ('ix_mailtrack_events_campaign', ['tenant_id', 'campaign_id', 'type', 'occurred_at', 'id'], None),
    ('ix_mailtrack_events_contact', ['tenant_id', 'contact_id', 'occurred_at', 'id'], None),
    ('ix_mailtrack_events_message', ['message_id', 'type', 'occurred_at'], None),
    ('ix_mailtrack_events_tenant_time', ['tenant_id', 'occurred_at', 'id'], None),
    ('ix_mailtrack_events_honeypot', ['message_id', 'occurred_at'], _HONEYPOT),
    ('ix_mailtrack_events_unfolded', ['id'], _UNFOLDED_PG),
]
_COLUMNS = ('id, uid, tenant_id, type, contact_id, email, message_id, campaign_id, link_id, url, occurred_at, '
            'ip, user_agent, is_machine, machine_reason, details, folded_as')
#: Months made ahead of the current one (then ``flask mailtrack partitions --ahead N``).
_AHEAD = 3


def _columns() -> list[sa.Column]:
    return [
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('uid', sa.String(length=36), nullable=True),
        sa.Column('tenant_id', sa.String(length=64), server_default='', nullable=False),
        sa.Column('type', sa.String(length=20), nullable=False),
        sa.Column('contact_id', sa.String(length=64), nullable=True),
        sa.Column('email', sa.String(length=320), nullable=True),
        sa.Column('message_id', sa.String(length=32), nullable=True),
        sa.Column('campaign_id', sa.String(length=64), nullable=True),
        sa.Column('link_id', sa.String(length=16), nullable=True),
        sa.Column('url', sa.Text(), nullable=True),
        sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ip', sa.String(length=45), nullable=True),
        sa.Column('user_agent', sa.String(length=512), nullable=True),
        sa.Column('is_machine', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('machine_reason', sa.String(length=32), nullable=True),
        sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('folded_as', sa.Boolean(), nullable=True),
    ]


def _is_partitioned(bind: sa.Connection) -> bool:
    return bool(bind.execute(sa.text(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass('mailtrack_events'))"
    )).scalar())


def _month(moment: dt.datetime) -> dt.datetime:
    moment = moment.astimezone(dt.timezone.utc)
    return dt.datetime(moment.year, moment.month, 1, tzinfo=dt.timezone.utc)


def _next(month: dt.datetime) -> dt.datetime:
    return month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)


def _literal(moment: dt.datetime) -> str:
    return f"'{moment.strftime('%Y-%m-%d %H:%M:%S')}+00'"


def _set_sequence(table: str) -> None:
    op.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
               f"COALESCE((SELECT max(id) FROM {table}), 0) + 1, false)")


def _drop_indexes_and_keys(table: str, unique: str) -> None:
    for name, _cols, _where in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS pk_mailtrack_events, "
               f"DROP CONSTRAINT IF EXISTS {unique}")


def _create_indexes() -> None:
    for name, cols, where in _INDEXES:
        op.create_index(name, 'mailtrack_events', cols,
                        postgresql_where=sa.text(where) if where else None)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'postgresql':
        with op.batch_alter_table('mailtrack_events') as batch:
            batch.drop_constraint('uq_mailtrack_events_uid', type_='unique')
            batch.create_unique_constraint('uq_mailtrack_events_uid_occurred_at', ['uid', 'occurred_at'])
        return
    if _is_partitioned(bind):  # made by create_all() of this version, then upgraded
        return
    op.execute("LOCK TABLE mailtrack_events IN ACCESS EXCLUSIVE MODE")
    _drop_indexes_and_keys('mailtrack_events', 'uq_mailtrack_events_uid')
    op.execute("ALTER TABLE mailtrack_events RENAME TO mailtrack_events_unpartitioned")
    op.execute("ALTER SEQUENCE IF EXISTS mailtrack_events_id_seq RENAME TO mailtrack_events_unpartitioned_id_seq")
    op.create_table(
        'mailtrack_events', *_columns(),
        sa.PrimaryKeyConstraint('id', 'occurred_at', name='pk_mailtrack_events'),
        sa.UniqueConstraint('uid', 'occurred_at', name='uq_mailtrack_events_uid_occurred_at'),
        postgresql_partition_by='RANGE (occurred_at)',
    )
    oldest = bind.execute(sa.text("SELECT min(occurred_at) FROM mailtrack_events_unpartitioned")).scalar()
    now = dt.datetime.now(dt.timezone.utc)
    month, last = _month(min(oldest, now) if oldest is not None else now), _month(now)
    for _ in range(_AHEAD):
        last = _next(last)
    while month <= last:
        end = _next(month)
        op.execute(f"CREATE TABLE mailtrack_events_p{month.year:04d}_{month.month:02d} PARTITION OF "
                   f"mailtrack_events FOR VALUES FROM ({_literal(month)}) TO ({_literal(end)})")
        month = end
    op.execute("CREATE TABLE mailtrack_events_default PARTITION OF mailtrack_events DEFAULT")
    op.execute(f"INSERT INTO mailtrack_events ({_COLUMNS}) SELECT {_COLUMNS} FROM mailtrack_events_unpartitioned")
    _set_sequence('mailtrack_events')
    op.execute("DROP TABLE mailtrack_events_unpartitioned")
    _create_indexes()


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'postgresql':
        with op.batch_alter_table('mailtrack_events') as batch:
            batch.drop_constraint('uq_mailtrack_events_uid_occurred_at', type_='unique')
            batch.create_unique_constraint('uq_mailtrack_events_uid', ['uid'])
        return
    if not _is_partitioned(bind):
        return
    op.execute("LOCK TABLE mailtrack_events IN ACCESS EXCLUSIVE MODE")
    _drop_indexes_and_keys('mailtrack_events', 'uq_mailtrack_events_uid_occurred_at')
    op.execute("ALTER TABLE mailtrack_events RENAME TO mailtrack_events_partitioned")
    op.execute("ALTER SEQUENCE IF EXISTS mailtrack_events_id_seq RENAME TO mailtrack_events_partitioned_id_seq")
    op.create_table(
        'mailtrack_events', *_columns(),
        sa.PrimaryKeyConstraint('id', name='pk_mailtrack_events'),
        sa.UniqueConstraint('uid', name='uq_mailtrack_events_uid'),
    )
    # (uid alone is unique again: two events of one uid at different moments fail here)
    op.execute(f"INSERT INTO mailtrack_events ({_COLUMNS}) SELECT {_COLUMNS} FROM mailtrack_events_partitioned")
    _set_sequence('mailtrack_events')
    op.execute("DROP TABLE mailtrack_events_partitioned")  # its partitions go with it
    _create_indexes()
