"""outbound webhook secret rotation: the previous secret and when it was replaced

Revision ID: 0011_mailtrack_retention
Revises: 0010_mailtrack_events_partition
Create Date: 2026-11-30 13:00:00

``mailtrack_webhook_endpoints`` gains ``previous_secret`` and ``secret_rotated_at``: after
``POST /api/webhooks/<id>/rotate-secret`` deliveries are signed with both keys for a while
(docs/webhooks-outbound.md). Two nullable columns: a plain ``ADD COLUMN`` on both databases.

Plain SQLAlchemy and Alembic only: a revision must stay valid when models.py changes.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0011_mailtrack_retention'
down_revision: str | Sequence[str] | None = '0010_mailtrack_events_partition'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('mailtrack_webhook_endpoints', sa.Column('previous_secret', sa.String(length=64), nullable=True))
    op.add_column('mailtrack_webhook_endpoints', sa.Column('secret_rotated_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), as 0009 does.
    op.drop_column('mailtrack_webhook_endpoints', 'secret_rotated_at')
    op.drop_column('mailtrack_webhook_endpoints', 'previous_secret')
