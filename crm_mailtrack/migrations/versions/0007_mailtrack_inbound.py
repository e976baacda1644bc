"""inbound mail: received replies, Message-ID lookup, complaints in the analytics cells

Revision ID: 0007_mailtrack_inbound
Revises: 0006_mailtrack_contact_email
Create Date: 2026-11-30 12:30:00

- ``mailtrack_inbound``: received replies (``MailTrack.ingest_mail``), listed in a
  message's thread;
- an index on ``mailtrack_messages.internet_message_id``: replies, DSNs, ARF reports and ESP
  events are matched by the Message-ID we sent;
- the analytics cells count complaints (``complained``); the partial index of unfolded
  events takes ``complaint`` events in (none existed before this revision, so the cells
  need no rebuild).

Plain SQLAlchemy and Alembic only: a revision must stay valid when models.py changes.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

# revision identifiers, used by Alembic.
revision: str = '0007_mailtrack_inbound'
down_revision: str | Sequence[str] | None = '0006_mailtrack_contact_email'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_TYPES = "type IN ('open', 'click', 'bounce', 'unsubscribe')"
_NEW_TYPES = "type IN ('open', 'click', 'bounce', 'unsubscribe', 'complaint')"
_GROUP_COLUMNS = ['tenant_id', 'template_id', 'type', 'status', 'template_name', 'messages', 'opened', 'clicked',
                  'opened_any', 'clicked_any', 'bounced', 'unsubscribed']
_JSON = sa.JSON().with_variant(JSONB(), 'postgresql')
_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def _unfolded_index(types: str) -> None:
    op.drop_index('ix_mailtrack_events_unfolded', table_name='mailtrack_events')
    op.create_index('ix_mailtrack_events_unfolded', 'mailtrack_events', ['id'],
                    postgresql_where=sa.text(f"{types} AND folded_as IS DISTINCT FROM is_machine"),
                    sqlite_where=sa.text(f"{types} AND folded_as IS NOT is_machine"))


def upgrade() -> None:
    op.create_table(
        'mailtrack_inbound',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('tenant_id', sa.String(length=64), server_default='', nullable=False),
        sa.Column('message_id', sa.String(length=32), nullable=False),
        sa.Column('contact_id', sa.String(length=64), nullable=False),
        sa.Column('event_id', _ID, nullable=True),
        sa.Column('from_email', sa.String(length=320), nullable=True),
        sa.Column('from_name', sa.String(length=255), nullable=True),
        sa.Column('recipients', _JSON, nullable=True),
        sa.Column('cc', _JSON, nullable=True),
        sa.Column('subject', sa.Text(), nullable=True),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('in_reply_to', sa.Text(), nullable=True),
        sa.Column('internet_message_id', sa.String(length=255), nullable=True),
        sa.Column('body_text', sa.Text(), nullable=True),
        sa.Column('body_html', sa.Text(), nullable=True),
        sa.Column('reply_text', sa.Text(), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_mailtrack_inbound'),
    )
    op.create_index('ix_mailtrack_inbound_message', 'mailtrack_inbound', ['message_id', 'received_at'])
    op.create_index('ix_mailtrack_inbound_contact', 'mailtrack_inbound', ['tenant_id', 'contact_id'])
    op.create_index('ix_mailtrack_messages_internet_message_id', 'mailtrack_messages', ['internet_message_id'])
    for table in ('mailtrack_stats_messages', 'mailtrack_stats_tenant_messages'):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('complained', sa.BigInteger(), server_default='0', nullable=False))
    op.drop_index('ix_mailtrack_stats_messages_groups', table_name='mailtrack_stats_messages')
    op.create_index('ix_mailtrack_stats_messages_groups', 'mailtrack_stats_messages',
                    [*_GROUP_COLUMNS, 'complained', 'campaign_id', 'day'])
    _unfolded_index(_NEW_TYPES)


def downgrade() -> None:
    _unfolded_index(_OLD_TYPES)
    op.drop_index('ix_mailtrack_stats_messages_groups', table_name='mailtrack_stats_messages')
    op.create_index('ix_mailtrack_stats_messages_groups', 'mailtrack_stats_messages',
                    [*_GROUP_COLUMNS, 'campaign_id', 'day'])
    for table in ('mailtrack_stats_messages', 'mailtrack_stats_tenant_messages'):
        with op.batch_alter_table(table) as batch:
            batch.drop_column('complained')
    op.drop_index('ix_mailtrack_messages_internet_message_id', table_name='mailtrack_messages')
    op.drop_index('ix_mailtrack_inbound_contact', table_name='mailtrack_inbound')
    op.drop_index('ix_mailtrack_inbound_message', table_name='mailtrack_inbound')
    op.drop_table('mailtrack_inbound')
