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
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .partitioning import (  # noqa: F401 - re-exported: the names of the event log's partitions
    EVENTS_DEFAULT_PARTITION,
    EVENTS_PARTITION_NAME,
    PARTITION_KEY_INFO,
    events_partition_name,
)
from .sqltypes import BigID, JSONType, Tenant, UTCDateTime, utcnow  # noqa: F401 - re-exported

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

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
    #: A note on a message (communications API ``<id>/comment``), an event type of its own.
    COMMENT = "comment"
    #: The receiving server accepted the message (a positive DSN, an ESP's delivery event).
    DELIVERED = "delivered"
    #: A person answered the message (received mail, see ``MailTrack.ingest_mail``).
    REPLY = "reply"
    #: An automatic answer (RFC 3834 ``Auto-Submitted``, out-of-office): never a reply.
    AUTO_REPLY = "auto_reply"
    #: The recipient reported the message as spam (an ARF report, an ESP's complaint).
    COMPLAINT = "complaint"

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


#: Partial-index predicates of the analytics fold (services/stats.py); the migration uses
#: the same text. A message is stale when its counted status is not its current one (among
#: SENT and FAILED, the statuses analytics counts) or its flags were invalidated.
_COUNTED_STATUS = "(CASE WHEN status IN ('SENT', 'FAILED') THEN status END)"
MESSAGES_STATS_DIRTY_PG = f"stats_dirty OR stats_status IS DISTINCT FROM {_COUNTED_STATUS}"
MESSAGES_STATS_DIRTY_SQLITE = f"stats_dirty OR stats_status IS NOT {_COUNTED_STATUS}"
#: An event is unfolded when analytics counts its type and has not counted it as it is now.
_FOLDED_TYPES = "type IN ('open', 'click', 'bounce', 'unsubscribe', 'complaint')"
EVENTS_UNFOLDED_PG = f"{_FOLDED_TYPES} AND folded_as IS DISTINCT FROM is_machine"
EVENTS_UNFOLDED_SQLITE = f"{_FOLDED_TYPES} AND folded_as IS NOT is_machine"


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
    #: SMTP conversations tried so far (services/dispatch.py retries transient failures).
    send_attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    #: When the slot this message reserved in its domain's rate limit opens (services/pacing.py).
    send_slot_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    track_opens: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    track_clicks: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    scheduled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    created_by: Mapped[str | None] = mapped_column(sa.String(64))
    updated_by: Mapped[str | None] = mapped_column(sa.String(64))
    # What the analytics cells (services/stats.py) count for this message: its status when
    # SENT or FAILED (else NULL), the UTC day of its send, its engagement flags (a bit mask,
    # stats.FLAG_*), and whether its flags must be recomputed. Written by the stats fold only.
    stats_status: Mapped[str | None] = mapped_column(sa.String(16))
    stats_day: Mapped[dt.date | None] = mapped_column(sa.Date)
    stats_flags: Mapped[int] = mapped_column(sa.SmallInteger, default=0, server_default="0")
    stats_dirty: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())

    __table_args__ = (
        # Messages whose analytics contribution is out of date (a partial index: normally
        # empty, so the fold finds them in O(changed), and untouched rows cost nothing).
        sa.Index("ix_mailtrack_messages_stats_dirty", "id",
                 postgresql_where=sa.text(MESSAGES_STATS_DIRTY_PG),
                 sqlite_where=sa.text(MESSAGES_STATS_DIRTY_SQLITE)),
        sa.Index("ix_mailtrack_messages_tenant_created", "tenant_id", "created_at", "id"),
        sa.Index("ix_mailtrack_messages_tenant_contact", "tenant_id", "contact_id"),
        sa.Index("ix_mailtrack_messages_tenant_campaign", "tenant_id", "campaign_id"),
        sa.Index("ix_mailtrack_messages_status_scheduled", "status", "scheduled_at"),
        sa.Index("ix_mailtrack_messages_related", "tenant_id", "related_entity_type", "related_entity_id"),
        # Contact lookup by address, case-insensitive (GET /api/contacts?email=).
        sa.Index("ix_mailtrack_messages_tenant_email", "tenant_id", sa.text("lower(email)")),
        # Received mail (replies, DSNs, ARF reports) and ESP events name the Message-ID we sent.
        sa.Index("ix_mailtrack_messages_internet_message_id", "internet_message_id"),
    )

    def __repr__(self) -> str:
        return f"<Message {self.id} to={self.contact_id!r} status={self.status}>"


#: The event log is range-partitioned by month of this column on PostgreSQL (declarative
#: partitioning; ``services/partitions.py`` makes the monthly partitions, purge drops them).
EVENTS_PARTITION_KEY = "occurred_at"
#: What makes an event unique when it carries a ``uid``: the uid *and* its moment. A unique
#: key of a partitioned table must hold the partition key, so uid alone cannot be unique on
#: PostgreSQL; SQLite uses the same key so that both databases follow one rule. Writers
#: that may repeat an event (journal replay, provider webhooks, imports) give the same uid
#: and the same ``occurred_at`` each time, and use ``ON CONFLICT (uid, occurred_at) DO
#: NOTHING`` (or catch the IntegrityError).
EVENT_UID_KEY = ("uid", EVENTS_PARTITION_KEY)


class ContactEvent(Base):
    """One row of the append-only contact event log.

    On PostgreSQL the table is partitioned by month of ``occurred_at``; its primary key
    there is ``(id, occurred_at)`` (``id`` alone still comes from one sequence, so it stays
    unique), while the ORM and SQLite know ``id`` alone."""

    __tablename__ = "mailtrack_events"

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    #: Idempotency key, with ``occurred_at`` (:data:`EVENT_UID_KEY`): set on events that may
    #: be written twice (journal replay, imports, provider webhooks).
    uid: Mapped[str | None] = mapped_column(sa.String(36))
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
    #: The ``is_machine`` the analytics cells counted this event with (NULL: not counted yet).
    #: An event is *unfolded* while the two differ: new, or re-marked as a machine since.
    folded_as: Mapped[bool | None] = mapped_column(sa.Boolean)

    __table_args__ = (
        sa.Index("ix_mailtrack_events_unfolded", "id",
                 postgresql_where=sa.text(EVENTS_UNFOLDED_PG), sqlite_where=sa.text(EVENTS_UNFOLDED_SQLITE)),
        sa.Index("ix_mailtrack_events_contact", "tenant_id", "contact_id", "occurred_at", "id"),
        sa.Index("ix_mailtrack_events_campaign", "tenant_id", "campaign_id", "type", "occurred_at", "id"),
        sa.Index("ix_mailtrack_events_message", "message_id", "type", "occurred_at"),
        # Only honeypot hits (a handful of rows): the click path's honeypot probe is one seek.
        sa.Index("ix_mailtrack_events_honeypot", "message_id", "occurred_at",
                 postgresql_where=sa.text("machine_reason = 'honeypot' AND link_id IS NULL"),
                 sqlite_where=sa.text("machine_reason = 'honeypot' AND link_id IS NULL")),
        sa.Index("ix_mailtrack_events_tenant_time", "tenant_id", "occurred_at", "id"),
        # On a partitioned table every unique key holds the partition key: see EVENT_UID_KEY.
        sa.UniqueConstraint(*EVENT_UID_KEY),
        {"postgresql_partition_by": f"RANGE ({EVENTS_PARTITION_KEY})",
         "info": {PARTITION_KEY_INFO: (EVENTS_PARTITION_KEY,)}},
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


class Suppression(Base):
    """A Do-Not-Contact entry that outlives its contact's erasure, holding no personal data:
    an HMAC of the tenant, channel and normalised address (see ``services/dnc.py``)."""

    __tablename__ = "mailtrack_suppressions"

    tenant_id: Mapped[str] = mapped_column(Tenant, primary_key=True, default="", server_default="")
    channel: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    address_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    reason: Mapped[int] = mapped_column(sa.SmallInteger)
    date_added: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


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
    #: The tag's identity among the contact's tags: a digest of its five ``utm_*`` values
    #: (``services.utm.combination_key``). A contact has one tag per combination.
    utm_key: Mapped[str] = mapped_column(sa.String(64))
    #: How many times the combination was seen (human clicks, adds); ``last_active`` is
    #: the latest of them, the other fields are those of the first.
    hits: Mapped[int] = mapped_column(sa.BigInteger, default=1, server_default="1")

    # (tenant_id, contact_id) leads the unique index, so it also serves a contact's list.
    __table_args__ = (sa.UniqueConstraint("tenant_id", "contact_id", "utm_key"),)


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


class _MessageCounts:
    """The counts of a message cell: SENT/FAILED messages, and how many of them were opened
    and clicked by people (``opened``, ``clicked``) or by anyone (``*_any``), bounced,
    unsubscribed and complained about (reported as spam)."""

    messages: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    opened: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    clicked: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    opened_any: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    clicked_any: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    bounced: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    unsubscribed: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    complained: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")


class StatsMessageCell(_MessageCounts, Base):
    """Analytics pre-aggregate: the SENT/FAILED messages of one (tenant, campaign, template,
    type, status, UTC send day), with how many were opened, clicked, bounced, unsubscribed.
    Maintained by ``services/stats.py`` (``""`` stands for "none" in the key)."""

    __tablename__ = "mailtrack_stats_messages"

    tenant_id: Mapped[str] = mapped_column(Tenant, primary_key=True)
    campaign_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    template_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    template_name: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    day: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)

    __table_args__ = (
        # the two reads of analytics, each without a sort or a table read (covering)
        sa.Index("ix_mailtrack_stats_messages_sends", "tenant_id", "status", "day", "campaign_id", "messages"),
        sa.Index("ix_mailtrack_stats_messages_groups", "tenant_id", "template_id", "type", "status",
                 "template_name", "messages", "opened", "clicked", "opened_any", "clicked_any", "bounced",
                 "unsubscribed", "complained", "campaign_id", "day"),
    )


class StatsDayCell(Base):
    """Analytics pre-aggregate: open and click events of SENT messages per (tenant,
    campaign, UTC send day of the message, UTC day of the event, type, machine)."""

    __tablename__ = "mailtrack_stats_days"

    tenant_id: Mapped[str] = mapped_column(Tenant, primary_key=True)
    campaign_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    send_day: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)
    event_day: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    is_machine: Mapped[bool] = mapped_column(sa.Boolean, primary_key=True)
    count: Mapped[int] = mapped_column(sa.BigInteger, default=0)

    __table_args__ = (
        # engagement per event day without a sort or a table read (covering)
        sa.Index("ix_mailtrack_stats_days_engagement", "tenant_id", "is_machine", "event_day", "type",
                 "send_day", "campaign_id", "count"),
    )


class StatsTenantMessageCell(_MessageCounts, Base):
    """``mailtrack_stats_messages`` summed over campaigns: what a tenant-wide analytics call
    reads (a few rows per day). Kept in step by ``services/stats.py``."""

    __tablename__ = "mailtrack_stats_tenant_messages"

    tenant_id: Mapped[str] = mapped_column(Tenant, primary_key=True)
    template_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    template_name: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    day: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)


class StatsTenantDayCell(Base):
    """``mailtrack_stats_days`` summed over campaigns and send days: the engagement per day
    of a tenant-wide, all-time analytics call."""

    __tablename__ = "mailtrack_stats_tenant_days"

    tenant_id: Mapped[str] = mapped_column(Tenant, primary_key=True)
    event_day: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    is_machine: Mapped[bool] = mapped_column(sa.Boolean, primary_key=True)
    count: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class StatsState(Base):
    """One row once the analytics cells have been built (``services/stats.py``)."""

    __tablename__ = "mailtrack_stats_state"

    id: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    built_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    folds: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class SendPacing(Base):
    """The next free send slot of one recipient domain (epoch seconds), shared by every
    sender (``MAILTRACK_DOMAIN_RATE_LIMITS``; services/pacing.py)."""

    __tablename__ = "mailtrack_send_pacing"

    domain: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    next_at: Mapped[float] = mapped_column(sa.Float)


messages = Message.__table__
events = ContactEvent.__table__

links = Link.__table__
campaign_links = CampaignLink.__table__
dnc = DoNotContact.__table__
utm_tags = UtmTag.__table__
suppressions = Suppression.__table__
event_rollups = EventRollup.__table__
stats_messages = StatsMessageCell.__table__
stats_days = StatsDayCell.__table__
stats_state = StatsState.__table__
stats_tenant_messages = StatsTenantMessageCell.__table__
stats_tenant_days = StatsTenantDayCell.__table__

# create_all() on PostgreSQL: the partitioned event log with its default partition, so every
# insert finds a partition before `flask mailtrack partitions` makes the monthly ones.
sa.event.listen(events, "after_create", sa.DDL(
    f"CREATE TABLE {EVENTS_DEFAULT_PARTITION} PARTITION OF mailtrack_events DEFAULT").execute_if(dialect="postgresql"))
send_pacing = SendPacing.__table__
