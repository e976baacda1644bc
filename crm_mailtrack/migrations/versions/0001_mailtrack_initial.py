"""mailtrack initial tables: messages, event log, links, campaign links, DNC, UTM tags

Revision ID: 0001_mailtrack_initial
Revises:
Create Date: 2026-11-23 18:25:21

Plain SQLAlchemy and Alembic only: a revision must stay valid when models.py changes.
``UTCDateTime`` is stored as ``DateTime(timezone=True)``; ``JSON`` is ``JSONB`` on PostgreSQL;
autoincrement ids are ``BIGINT`` (``INTEGER`` on SQLite, so they alias the rowid).
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = '0001_mailtrack_initial'
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ('mailtrack',)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'mailtrack_campaign_links',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('campaign_id', sa.String(length=64), nullable=False),
        sa.Column('link_id', sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'campaign_id', 'link_id', name=op.f('pk_mailtrack_campaign_links')),
    )
    op.create_table(
        'mailtrack_dnc',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('tenant_id', sa.String(length=64), server_default='', nullable=False),
        sa.Column('contact_id', sa.String(length=64), nullable=False),
        sa.Column('channel', sa.String(length=32), nullable=False),
        sa.Column('reason', sa.SmallInteger(), nullable=False),
        sa.Column('channel_id', sa.String(length=64), nullable=True),
        sa.Column('comments', sa.Text(), nullable=True),
        sa.Column('date_added', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mailtrack_dnc')),
        sa.UniqueConstraint('tenant_id', 'contact_id', 'channel', name=op.f('uq_mailtrack_dnc_tenant_id_contact_id_channel')),
    )
    op.create_table(
        'mailtrack_events',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('uid', sa.String(length=36), nullable=True),
        sa.Column('tenant_id', sa.String(length=64), server_default='', nullable=False),
        sa.Column('type', sa.String(length=20), nullable=False),
        sa.Column('contact_id', sa.String(length=64), nullable=True),
        sa.Column('email', sa.String(length=320), nullable=True),
        sa.Column('message_id', sa.String(length=32), nullable=True),
        sa.Column('campaign_id', sa.String(length=64), nullable=True),
        sa.Column('link_id', sa.String(length=16), nullable=True),
        sa.Column('url', sa.Text(), nullable=True),
        sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ip', sa.String(length=45), nullable=True),
        sa.Column('user_agent', sa.String(length=512), nullable=True),
        sa.Column('is_machine', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('machine_reason', sa.String(length=32), nullable=True),
        sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mailtrack_events')),
        sa.UniqueConstraint('uid', name=op.f('uq_mailtrack_events_uid')),
    )
    op.create_index('ix_mailtrack_events_campaign', 'mailtrack_events', ['tenant_id', 'campaign_id', 'type', 'occurred_at', 'id'])
    op.create_index('ix_mailtrack_events_contact', 'mailtrack_events', ['tenant_id', 'contact_id', 'occurred_at', 'id'])
    op.create_index('ix_mailtrack_events_message', 'mailtrack_events', ['message_id', 'type', 'occurred_at'])
    op.create_index('ix_mailtrack_events_tenant_time', 'mailtrack_events', ['tenant_id', 'occurred_at', 'id'])
    op.create_table(
        'mailtrack_links',
        sa.Column('id', sa.String(length=16), nullable=False),
        sa.Column('url', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mailtrack_links')),
    )
    op.create_table(
        'mailtrack_messages',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('tenant_id', sa.String(length=64), server_default='', nullable=False),
        sa.Column('contact_id', sa.String(length=64), nullable=False),
        sa.Column('email', sa.String(length=320), nullable=False),
        sa.Column('subject', sa.Text(), nullable=False),
        sa.Column('html', sa.Text(), nullable=True),
        sa.Column('text', sa.Text(), nullable=True),
        sa.Column('original_html', sa.Text(), nullable=True),
        sa.Column('headers', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
        sa.Column('campaign_id', sa.String(length=64), nullable=True),
        sa.Column('template_id', sa.String(length=64), nullable=True),
        sa.Column('template_name', sa.String(length=255), nullable=True),
        sa.Column('type', sa.String(length=64), nullable=True),
        sa.Column('related_entity_type', sa.String(length=64), nullable=True),
        sa.Column('related_entity_id', sa.String(length=64), nullable=True),
        sa.Column('conversation_id', sa.String(length=64), nullable=True),
        sa.Column('sender_email', sa.String(length=320), nullable=True),
        sa.Column('sender_name', sa.String(length=255), nullable=True),
        sa.Column('reply_to', sa.String(length=320), nullable=True),
        sa.Column('cc', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
        sa.Column('bcc', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
        sa.Column('variables', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
        sa.Column('internet_message_id', sa.String(length=255), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('error_message', sa.Text(), nullable=True),
        sa.Column('track_opens', sa.Boolean(), nullable=False),
        sa.Column('track_clicks', sa.Boolean(), nullable=False),
        sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_by', sa.String(length=64), nullable=True),
        sa.Column('updated_by', sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mailtrack_messages')),
    )
    op.create_index('ix_mailtrack_messages_related', 'mailtrack_messages', ['tenant_id', 'related_entity_type', 'related_entity_id'])
    op.create_index('ix_mailtrack_messages_status_scheduled', 'mailtrack_messages', ['status', 'scheduled_at'])
    op.create_index('ix_mailtrack_messages_tenant_campaign', 'mailtrack_messages', ['tenant_id', 'campaign_id'])
    op.create_index('ix_mailtrack_messages_tenant_contact', 'mailtrack_messages', ['tenant_id', 'contact_id'])
    op.create_index('ix_mailtrack_messages_tenant_created', 'mailtrack_messages', ['tenant_id', 'created_at', 'id'])
    op.create_table(
        'mailtrack_utm_tags',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('tenant_id', sa.String(length=64), server_default='', nullable=False),
        sa.Column('contact_id', sa.String(length=64), nullable=False),
        sa.Column('utm_campaign', sa.String(length=255), nullable=True),
        sa.Column('utm_source', sa.String(length=255), nullable=True),
        sa.Column('utm_medium', sa.String(length=255), nullable=True),
        sa.Column('utm_content', sa.String(length=255), nullable=True),
        sa.Column('utm_term', sa.String(length=255), nullable=True),
        sa.Column('useragent', sa.Text(), nullable=True),
        sa.Column('url', sa.Text(), nullable=True),
        sa.Column('referer', sa.Text(), nullable=True),
        sa.Column('query', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
        sa.Column('remotehost', sa.String(length=255), nullable=True),
        sa.Column('last_active', sa.DateTime(timezone=True), nullable=True),
        sa.Column('date_added', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mailtrack_utm_tags')),
    )
    op.create_index('ix_mailtrack_utm_tags_contact', 'mailtrack_utm_tags', ['tenant_id', 'contact_id'])


def downgrade() -> None:
    op.drop_table('mailtrack_utm_tags')
    op.drop_table('mailtrack_messages')
    op.drop_table('mailtrack_links')
    op.drop_table('mailtrack_events')
    op.drop_table('mailtrack_dnc')
    op.drop_table('mailtrack_campaign_links')
