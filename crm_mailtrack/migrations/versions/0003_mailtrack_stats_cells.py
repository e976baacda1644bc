"""analytics pre-aggregates: per-message stats columns, event fold marker, cells tables

Revision ID: 0003_mailtrack_stats_cells
Revises: 0002_mailtrack_bots_rollups
Create Date: 2026-11-23 20:30:00

Plain SQLAlchemy and Alembic only: a revision must stay valid when models.py changes. The
cells start empty; the first analytics call (or ``flask mailtrack stats --rebuild``) builds
them from the events and messages already stored.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0003_mailtrack_stats_cells'
down_revision: str | Sequence[str] | None = '0002_mailtrack_bots_rollups'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COUNTED = "(CASE WHEN status IN ('SENT', 'FAILED') THEN status END)"
_DIRTY_PG = f"stats_dirty OR stats_status IS DISTINCT FROM {_COUNTED}"
_DIRTY_SQLITE = f"stats_dirty OR stats_status IS NOT {_COUNTED}"
_TYPES = "type IN ('open', 'click', 'bounce', 'unsubscribe')"
_UNFOLDED_PG = f"{_TYPES} AND folded_as IS DISTINCT FROM is_machine"
_UNFOLDED_SQLITE = f"{_TYPES} AND folded_as IS NOT is_machine"


def upgrade() -> None:
    with op.batch_alter_table('mailtrack_messages') as batch:
        batch.add_column(sa.Column('stats_status', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('stats_day', sa.Date(), nullable=True))
        batch.add_column(sa.Column('stats_flags', sa.SmallInteger(), server_default='0', nullable=False))
        batch.add_column(sa.Column('stats_dirty', sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table('mailtrack_events') as batch:
        batch.add_column(sa.Column('folded_as', sa.Boolean(), nullable=True))
    op.create_index('ix_mailtrack_messages_stats_dirty', 'mailtrack_messages', ['id'],
                    postgresql_where=sa.text(_DIRTY_PG), sqlite_where=sa.text(_DIRTY_SQLITE))
    op.create_index('ix_mailtrack_events_unfolded', 'mailtrack_events', ['id'],
                    postgresql_where=sa.text(_UNFOLDED_PG), sqlite_where=sa.text(_UNFOLDED_SQLITE))
    op.create_table(
        'mailtrack_stats_messages',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('campaign_id', sa.String(length=64), nullable=False),
        sa.Column('template_id', sa.String(length=64), nullable=False),
        sa.Column('template_name', sa.String(length=255), nullable=False),
        sa.Column('type', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False)
          for name in ('messages', 'opened', 'clicked', 'opened_any', 'clicked_any', 'bounced', 'unsubscribed')),
        sa.PrimaryKeyConstraint('tenant_id', 'campaign_id', 'template_id', 'template_name', 'type', 'status',
                                'day', name='pk_mailtrack_stats_messages'),
    )
    op.create_table(
        'mailtrack_stats_days',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('campaign_id', sa.String(length=64), nullable=False),
        sa.Column('send_day', sa.Date(), nullable=False),
        sa.Column('event_day', sa.Date(), nullable=False),
        sa.Column('type', sa.String(length=20), nullable=False),
        sa.Column('is_machine', sa.Boolean(), nullable=False),
        sa.Column('count', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'campaign_id', 'send_day', 'event_day', 'type', 'is_machine',
                                name='pk_mailtrack_stats_days'),
    )
    op.create_index('ix_mailtrack_stats_messages_sends', 'mailtrack_stats_messages',
                    ['tenant_id', 'status', 'day', 'campaign_id', 'messages'])
    op.create_index('ix_mailtrack_stats_messages_groups', 'mailtrack_stats_messages',
                    ['tenant_id', 'template_id', 'type', 'status', 'template_name', 'messages', 'opened', 'clicked',
                     'opened_any', 'clicked_any', 'bounced', 'unsubscribed', 'campaign_id', 'day'])
    op.create_index('ix_mailtrack_stats_days_engagement', 'mailtrack_stats_days',
                    ['tenant_id', 'is_machine', 'event_day', 'type', 'send_day', 'campaign_id', 'count'])
    op.create_table(
        'mailtrack_stats_tenant_messages',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('template_id', sa.String(length=64), nullable=False),
        sa.Column('template_name', sa.String(length=255), nullable=False),
        sa.Column('type', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False)
          for name in ('messages', 'opened', 'clicked', 'opened_any', 'clicked_any', 'bounced', 'unsubscribed')),
        sa.PrimaryKeyConstraint('tenant_id', 'template_id', 'template_name', 'type', 'status', 'day',
                                name='pk_mailtrack_stats_tenant_messages'),
    )
    op.create_table(
        'mailtrack_stats_tenant_days',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('event_day', sa.Date(), nullable=False),
        sa.Column('type', sa.String(length=20), nullable=False),
        sa.Column('is_machine', sa.Boolean(), nullable=False),
        sa.Column('count', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'event_day', 'type', 'is_machine', name='pk_mailtrack_stats_tenant_days'),
    )
    op.create_table(
        'mailtrack_stats_state',
        sa.Column('id', sa.SmallInteger(), nullable=False),
        sa.Column('built_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('folds', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_mailtrack_stats_state'),
    )


def downgrade() -> None:
    op.drop_table('mailtrack_stats_state')
    op.drop_table('mailtrack_stats_tenant_days')
    op.drop_table('mailtrack_stats_tenant_messages')
    op.drop_index('ix_mailtrack_stats_days_engagement', table_name='mailtrack_stats_days')
    op.drop_index('ix_mailtrack_stats_messages_groups', table_name='mailtrack_stats_messages')
    op.drop_index('ix_mailtrack_stats_messages_sends', table_name='mailtrack_stats_messages')
    op.drop_table('mailtrack_stats_days')
    op.drop_table('mailtrack_stats_messages')
    op.drop_index('ix_mailtrack_events_unfolded', table_name='mailtrack_events')
    op.drop_index('ix_mailtrack_messages_stats_dirty', table_name='mailtrack_messages')
    with op.batch_alter_table('mailtrack_events') as batch:
        batch.drop_column('folded_as')
    with op.batch_alter_table('mailtrack_messages') as batch:
        batch.drop_column('stats_dirty')
        batch.drop_column('stats_flags')
        batch.drop_column('stats_day')
        batch.drop_column('stats_status')
