"""bot verdicts and purge: honeypot partial index, daily event rollups

Revision ID: 0002_mailtrack_bots_rollups
Revises: 0001_mailtrack_initial
Create Date: 2026-11-23 19:10:00

Plain SQLAlchemy and Alembic only: a revision must stay valid when models.py changes.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0002_mailtrack_bots_rollups'
down_revision: str | Sequence[str] | None = '0001_mailtrack_initial'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HONEYPOT_WHERE = "machine_reason = 'honeypot' AND link_id IS NULL"


def upgrade() -> None:
    op.create_table(
        'mailtrack_event_rollups',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('type', sa.String(length=20), nullable=False),
        sa.Column('is_machine', sa.Boolean(), nullable=False),
        sa.Column('campaign_id', sa.String(length=64), nullable=False),
        sa.Column('message_id', sa.String(length=32), nullable=False),
        sa.Column('link_id', sa.String(length=16), nullable=False),
        sa.Column('count', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'day', 'type', 'is_machine', 'campaign_id', 'message_id',
                                'link_id', name='pk_mailtrack_event_rollups'),
    )
    op.create_index('ix_mailtrack_event_rollups_campaign', 'mailtrack_event_rollups',
                    ['tenant_id', 'campaign_id', 'type'])
    op.create_index('ix_mailtrack_event_rollups_message', 'mailtrack_event_rollups',
                    ['message_id', 'type'])
    op.create_index('ix_mailtrack_events_honeypot', 'mailtrack_events', ['message_id', 'occurred_at'],
                    postgresql_where=sa.text(_HONEYPOT_WHERE), sqlite_where=sa.text(_HONEYPOT_WHERE))


def downgrade() -> None:
    op.drop_index('ix_mailtrack_events_honeypot', table_name='mailtrack_events')
    op.drop_index('ix_mailtrack_event_rollups_message', table_name='mailtrack_event_rollups')
    op.drop_index('ix_mailtrack_event_rollups_campaign', table_name='mailtrack_event_rollups')
    op.drop_table('mailtrack_event_rollups')
