"""contact lookup by address: functional index on (tenant_id, lower(email)) of messages

Revision ID: 0006_mailtrack_contact_email
Revises: 0003_mailtrack_stats_cells
Create Date: 2026-11-30 12:00:00

``GET /api/contacts?email=`` matches ``lower(email) = lower(:address)`` within a tenant;
without this index both SQLite and PostgreSQL scan the tenant's messages.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0006_mailtrack_contact_email'
down_revision: str | Sequence[str] | None = '0005_mailtrack_suppressions'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_mailtrack_messages_tenant_email', 'mailtrack_messages',
                    ['tenant_id', sa.text('lower(email)')])


def downgrade() -> None:
    op.drop_index('ix_mailtrack_messages_tenant_email', table_name='mailtrack_messages')
