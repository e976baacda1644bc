"""scale-out sending: a message's send attempts and rate slot, per-domain send pacing

Revision ID: 0009_mailtrack_scale_out
Revises: 0006_mailtrack_contact_email
Create Date: 2026-11-30 13:00:00

``mailtrack_messages.send_attempts`` counts the SMTP conversations tried for a message, so a
transient failure (4xx, server unreachable) is retried with backoff up to
``MAILTRACK_SEND_MAX_ATTEMPTS``; ``send_slot_at`` is the slot a message reserved in its
domain's rate limit. ``mailtrack_send_pacing`` holds each rate-limited domain's next free
slot, shared by every worker (``MAILTRACK_DOMAIN_RATE_LIMITS``).
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0009_mailtrack_scale_out'
down_revision: str | Sequence[str] | None = '0006_mailtrack_contact_email'
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


def downgrade() -> None:
    op.drop_table('mailtrack_send_pacing')
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch copy of the table: the copy
    # would lose the expression index ix_mailtrack_messages_tenant_email (0006).
    op.execute('ALTER TABLE mailtrack_messages DROP COLUMN send_slot_at')
    op.execute('ALTER TABLE mailtrack_messages DROP COLUMN send_attempts')
