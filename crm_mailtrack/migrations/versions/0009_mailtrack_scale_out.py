"""scale out: a message's send attempts and rate slot, per-domain pacing, outbound webhooks

Revision ID: 0009_mailtrack_scale_out
Revises: 0008_mailtrack_esp_webhooks
Create Date: 2026-11-30 13:00:00

``mailtrack_messages.send_attempts`` counts the SMTP conversations tried for a message, so a
transient failure (4xx, server unreachable) is retried with backoff up to
``MAILTRACK_SEND_MAX_ATTEMPTS``; ``send_slot_at`` is the slot a message reserved in its
domain's rate limit. ``mailtrack_send_pacing`` holds each rate-limited domain's next free
slot, shared by every worker (``MAILTRACK_DOMAIN_RATE_LIMITS``). ``mailtrack_webhook_endpoints``
and ``mailtrack_webhook_deliveries`` are the outbound webhooks and their delivery log.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

# revision identifiers, used by Alembic.
revision: str = '0009_mailtrack_scale_out'
down_revision: str | Sequence[str] | None = '0008_mailtrack_esp_webhooks'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('mailtrack_messages', sa.Column('send_attempts', sa.Integer(), server_default='0', nullable=False))
    op.add_column('mailtrack_messages', sa.Column('send_slot_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'mailtrack_send_pacing',
        sa.Column('domain', sa.String(length=255), nullable=False),
        sa.Column('next_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('domain', name=op.f('pk_mailtrack_send_pacing')),
    )
    op.create_table(
        'mailtrack_webhook_endpoints',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('tenant_id', sa.String(length=64), server_default='', nullable=False),
        sa.Column('url', sa.Text(), nullable=False),
        sa.Column('secret', sa.String(length=64), nullable=False),
        sa.Column('event_types', sa.JSON().with_variant(JSONB(), 'postgresql'), nullable=False),
        sa.Column('description', sa.String(length=255), nullable=True),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('disabled_reason', sa.Text(), nullable=True),
        sa.Column('failure_streak', sa.Integer(), nullable=False),
        sa.Column('last_event_id', sa.BigInteger(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mailtrack_webhook_endpoints')),
    )
    op.create_index('ix_mailtrack_webhook_endpoints_tenant', 'mailtrack_webhook_endpoints',
                    ['tenant_id', 'created_at'])
    op.create_table(
        'mailtrack_webhook_deliveries',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('endpoint_id', sa.String(length=32), nullable=False),
        sa.Column('tenant_id', sa.String(length=64), server_default='', nullable=False),
        sa.Column('event_id', sa.BigInteger(), nullable=False),
        sa.Column('event_type', sa.String(length=20), nullable=False),
        sa.Column('payload', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_status', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mailtrack_webhook_deliveries')),
        sa.UniqueConstraint('endpoint_id', 'event_id',
                            name=op.f('uq_mailtrack_webhook_deliveries_endpoint_id_event_id')),
    )
    op.create_index('ix_mailtrack_webhook_deliveries_due', 'mailtrack_webhook_deliveries',
                    ['status', 'next_attempt_at'])
    op.create_index('ix_mailtrack_webhook_deliveries_endpoint', 'mailtrack_webhook_deliveries',
                    ['endpoint_id', 'id'])


def downgrade() -> None:
    op.drop_table('mailtrack_webhook_deliveries')
    op.drop_table('mailtrack_webhook_endpoints')
    op.drop_table('mailtrack_send_pacing')
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch copy of the table: the copy
    # would lose the expression index ix_mailtrack_messages_tenant_email (0006).
    op.execute('ALTER TABLE mailtrack_messages DROP COLUMN send_slot_at')
    op.execute('ALTER TABLE mailtrack_messages DROP COLUMN send_attempts')
