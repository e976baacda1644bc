"""suppressions: Do-Not-Contact entries that survive a contact's erasure, as keyed hashes

Revision ID: 0005_mailtrack_suppressions
Revises: 0003_mailtrack_stats_cells
Create Date: 2026-11-30 09:00:00

Plain SQLAlchemy and Alembic only: a revision must stay valid when models.py changes.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0005_mailtrack_suppressions'
down_revision: str | Sequence[str] | None = '0004_mailtrack_utm_tag_identity'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'mailtrack_suppressions',
        sa.Column('tenant_id', sa.String(length=64), server_default='', nullable=False),
        sa.Column('channel', sa.String(length=32), nullable=False),
        sa.Column('address_hash', sa.String(length=64), nullable=False),
        sa.Column('reason', sa.SmallInteger(), nullable=False),
        sa.Column('date_added', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'channel', 'address_hash', name=op.f('pk_mailtrack_suppressions')),
    )


def downgrade() -> None:
    op.drop_table('mailtrack_suppressions')
