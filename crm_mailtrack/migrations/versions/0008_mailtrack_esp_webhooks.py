"""ESP webhooks: receipts (replayed tokens, unmatched events)

Revision ID: 0008_mailtrack_esp_webhooks
Revises: 0007_mailtrack_inbound
Create Date: 2026-11-30 12:30:00

``mailtrack_webhook_receipts`` remembers the tokens of signed webhook requests (a replay is
refused on every host) and the events that matched no message (counted once). Events
without our id are matched by Message-ID through ``ix_mailtrack_messages_internet_message_id``
(made by 0007_mailtrack_inbound).
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0008_mailtrack_esp_webhooks'
down_revision: str | Sequence[str] | None = '0007_mailtrack_inbound'
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


def downgrade() -> None:
    op.drop_index('ix_mailtrack_webhook_receipts_kind_time', table_name='mailtrack_webhook_receipts')
    op.drop_table('mailtrack_webhook_receipts')
