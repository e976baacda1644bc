"""ESP webhooks: receipts (replayed tokens, unmatched events) and messages by Message-ID

Revision ID: 0007_mailtrack_esp_webhooks
Revises: 0006_mailtrack_contact_email
Create Date: 2026-11-30 12:30:00

``mailtrack_webhook_receipts`` remembers the tokens of signed webhook requests (a replay is
refused on every host) and the events that matched no message (counted once).
``ix_mailtrack_messages_internet_message_id``: events without our id are matched by
Message-ID; without the index every webhook event would scan the messages.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0007_mailtrack_esp_webhooks'
down_revision: str | Sequence[str] | None = '0006_mailtrack_contact_email'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'mailtrack_webhook_receipts',
        sa.Column('provider', sa.String(length=16), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('event_type', sa.String(length=20), nullable=True),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('provider', 'kind', 'key', name=op.f('pk_mailtrack_webhook_receipts')),
    )
    op.create_index('ix_mailtrack_webhook_receipts_kind_time', 'mailtrack_webhook_receipts',
                    ['kind', 'received_at'])
    op.create_index('ix_mailtrack_messages_internet_message_id', 'mailtrack_messages', ['internet_message_id'])


def downgrade() -> None:
    op.drop_index('ix_mailtrack_messages_internet_message_id', table_name='mailtrack_messages')
    op.drop_index('ix_mailtrack_webhook_receipts_kind_time', table_name='mailtrack_webhook_receipts')
    op.drop_table('mailtrack_webhook_receipts')
