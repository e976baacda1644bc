"""The extension's tables (prefix ``mailtrack_``), on their own ``MetaData``.

They live on the host's engine and session but not on the host's ``db.Model``, so one
package serves any host. Conventions:

* ``tenant_id`` is stored as ``""`` for "no tenant" so that unique constraints and
  equality filters work the same on SQLite and PostgreSQL; the service layer converts.
* Every timestamp is timezone-aware UTC in Python; SQLite stores it as naive UTC.
* The event log is append-only; counts are derived from it (no hot counter rows).
"""
from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A timestamp that is always timezone-aware UTC on the Python side.

    Naive datetimes given to it are read as UTC (the contract's rule for naive input).
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        value = value.astimezone(dt.timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQLite text, e.g. from a hand-written query
            value = dt.datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
BigID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Tenant = sa.String(64)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = metadata
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSONType}


class DNCReason(enum.IntEnum):
    """Why a contact must not be contacted on a channel (the codes of the Mautic API)."""

    UNSUBSCRIBED = 1
    BOUNCED = 2
    MANUAL = 3


class EventType(str, enum.Enum):
    """Types of contact events; the value is what is stored and shown."""

    SEND = "send"
    OPEN = "open"
    CLICK = "click"
    BOUNCE = "bounce"
    FORWARD = "forward"
    UNSUBSCRIBE = "unsubscribe"
    DNC_ADDED = "dnc_added"
    DNC_REMOVED = "dnc_removed"
    UTM_ADDED = "utm_added"
    UTM_REMOVED = "utm_removed"
    FAILED = "failed"
    #: A note on a message (communications API ``<id>/comment``); beyond DESIGN's list.
    COMMENT = "comment"

    def __str__(self) -> str:
        return self.value


EVENT_TYPES: tuple[str, ...] = tuple(t.value for t in EventType)


class MessageStatus(str, enum.Enum):
    """Lifecycle of an outbound message."""

    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    SENDING = "SENDING"
    SENT = "SENT"
    FAILED = "FAILED"
    SUPPRESSED = "SUPPRESSED"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value


class Message(Base):
    """An outbound message: what was sent, to whom, and its tracked HTML."""

    __tablename__ = "mailtrack_messages"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Tenant, default="", server_default="")
    contact_id: Mapped[str] = mapped_column(sa.String(64))
    email: Mapped[str] = mapped_column(sa.String(320))
    subject: Mapped[str] = mapped_column(sa.Text, default="")
    html: Mapped[str | None] = mapped_column(sa.Text)
    text: Mapped[str | None] = mapped_column(sa.Text)
    original_html: Mapped[str | None] = mapped_column(sa.Text)
    headers: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    campaign_id: Mapped[str | None] = mapped_column(sa.String(64))
    template_id: Mapped[str | None] = mapped_column(sa.String(64))
    template_name: Mapped[str | None] = mapped_column(sa.String(255))
    type: Mapped[str | None] = mapped_column(sa.String(64))
    related_entity_type: Mapped[str | None] = mapped_column(sa.String(64))
    related_entity_id: Mapped[str | None] = mapped_column(sa.String(64))
    conversation_id: Mapped[str | None] = mapped_column(sa.String(64))
    sender_email: Mapped[str | None] = mapped_column(sa.String(320))
    sender_name: Mapped[str | None] = mapped_column(sa.String(255))
    reply_to: Mapped[str | None] = mapped_column(sa.String(320))
    cc: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    bcc: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    variables: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    internet_message_id: Mapped[str | None] = mapped_column(sa.String(255))
    status: Mapped[str] = mapped_column(sa.String(16), default=MessageStatus.PENDING.value)
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    track_opens: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    track_clicks: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    scheduled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    created_by: Mapped[str | None] = mapped_column(sa.String(64))
    updated_by: Mapped[str | None] = mapped_column(sa.String(64))

    __table_args__ = (
        sa.Index("ix_mailtrack_messages_tenant_created", "tenant_id", "created_at", "id"),
        sa.Index("ix_mailtrack_messages_tenant_contact", "tenant_id", "contact_id"),
        sa.Index("ix_mailtrack_messages_tenant_campaign", "tenant_id", "campaign_id"),
        sa.Index("ix_mailtrack_messages_status_scheduled", "status", "scheduled_at"),
        sa.Index("ix_mailtrack_messages_related", "tenant_id", "related_entity_type", "related_entity_id"),
    )

    def __repr__(self) -> str:
        return f"<Message {self.id} to={self.contact_id!r} status={self.status}>"


class ContactEvent(Base):
    """One row of the append-only contact event log."""

    __tablename__ = "mailtrack_events"

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    #: Idempotency key: set on events that may be written twice (journal replay, imports).
    uid: Mapped[str | None] = mapped_column(sa.String(36), unique=True)
    tenant_id: Mapped[str] = mapped_column(Tenant, default="", server_default="")
    type: Mapped[str] = mapped_column(sa.String(20))
    contact_id: Mapped[str | None] = mapped_column(sa.String(64))
    email: Mapped[str | None] = mapped_column(sa.String(320))
    message_id: Mapped[str | None] = mapped_column(sa.String(32))
    campaign_id: Mapped[str | None] = mapped_column(sa.String(64))
    link_id: Mapped[str | None] = mapped_column(sa.String(16))
    url: Mapped[str | None] = mapped_column(sa.Text)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ip: Mapped[str | None] = mapped_column(sa.String(45))
    user_agent: Mapped[str | None] = mapped_column(sa.String(512))
    is_machine: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    machine_reason: Mapped[str | None] = mapped_column(sa.String(32))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    __table_args__ = (
        sa.Index("ix_mailtrack_events_contact", "tenant_id", "contact_id", "occurred_at", "id"),
        sa.Index("ix_mailtrack_events_campaign", "tenant_id", "campaign_id", "type", "occurred_at", "id"),
        sa.Index("ix_mailtrack_events_message", "message_id", "type", "occurred_at"),
        # Only honeypot hits (a handful of rows): the click path's honeypot probe is one seek.
        sa.Index("ix_mailtrack_events_honeypot", "message_id", "occurred_at",
                 postgresql_where=sa.text("machine_reason = 'honeypot' AND link_id IS NULL"),
                 sqlite_where=sa.text("machine_reason = 'honeypot' AND link_id IS NULL")),
        sa.Index("ix_mailtrack_events_tenant_time", "tenant_id", "occurred_at", "id"),
    )

    def __repr__(self) -> str:
        return f"<ContactEvent {self.id} {self.type} contact={self.contact_id!r}>"


class Link(Base):
    """A tracked destination. ``id`` is derived from the URL (see ``links.link_id``), so it
    is the same in every message and campaign that carries the URL, and needs no lookup on
    the click path."""

    __tablename__ = "mailtrack_links"

    id: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    url: Mapped[str] = mapped_column(sa.Text)


class CampaignLink(Base):
    """Which links a campaign carries, so a campaign's link report lists unclicked ones."""

    __tablename__ = "mailtrack_campaign_links"

    tenant_id: Mapped[str] = mapped_column(Tenant, primary_key=True, default="")
    campaign_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    link_id: Mapped[str] = mapped_column(sa.String(16), primary_key=True)


class DoNotContact(Base):
    """A Do-Not-Contact entry: one per contact and channel."""

    __tablename__ = "mailtrack_dnc"

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(Tenant, default="", server_default="")
    contact_id: Mapped[str] = mapped_column(sa.String(64))
    channel: Mapped[str] = mapped_column(sa.String(32), default="email")
    reason: Mapped[int] = mapped_column(sa.SmallInteger, default=int(DNCReason.MANUAL))
    channel_id: Mapped[str | None] = mapped_column(sa.String(64))
    comments: Mapped[str | None] = mapped_column(sa.Text)
    date_added: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (sa.UniqueConstraint("tenant_id", "contact_id", "channel"),)


class UtmTag(Base):
    """UTM parameters seen for a contact (added by hand, by the API or from a click)."""

    __tablename__ = "mailtrack_utm_tags"

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(Tenant, default="", server_default="")
    contact_id: Mapped[str] = mapped_column(sa.String(64))
    utm_campaign: Mapped[str | None] = mapped_column(sa.String(255))
    utm_source: Mapped[str | None] = mapped_column(sa.String(255))
    utm_medium: Mapped[str | None] = mapped_column(sa.String(255))
    utm_content: Mapped[str | None] = mapped_column(sa.String(255))
    utm_term: Mapped[str | None] = mapped_column(sa.String(255))
    useragent: Mapped[str | None] = mapped_column(sa.Text)
    url: Mapped[str | None] = mapped_column(sa.Text)
    referer: Mapped[str | None] = mapped_column(sa.Text)
    query: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    remotehost: Mapped[str | None] = mapped_column(sa.String(255))
    last_active: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    date_added: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (sa.Index("ix_mailtrack_utm_tags_contact", "tenant_id", "contact_id"),)


class EventRollup(Base):
    """Daily counts of purged events (``flask mailtrack purge``), so that totals and
    per-message uniques stay true after the raw rows are gone. ``""`` stands for "none" in
    campaign, message and link (as for tenant), so the key is unique on both databases."""

    __tablename__ = "mailtrack_event_rollups"

    tenant_id: Mapped[str] = mapped_column(Tenant, primary_key=True, default="")
    day: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    is_machine: Mapped[bool] = mapped_column(sa.Boolean, primary_key=True)
    campaign_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True, default="")
    message_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default="")
    link_id: Mapped[str] = mapped_column(sa.String(16), primary_key=True, default="")
    count: Mapped[int] = mapped_column(sa.BigInteger, default=0)

    __table_args__ = (
        sa.Index("ix_mailtrack_event_rollups_campaign", "tenant_id", "campaign_id", "type"),
        sa.Index("ix_mailtrack_event_rollups_message", "message_id", "type"),
    )


messages = Message.__table__
events = ContactEvent.__table__
links = Link.__table__
campaign_links = CampaignLink.__table__
dnc = DoNotContact.__table__
utm_tags = UtmTag.__table__
event_rollups = EventRollup.__table__
