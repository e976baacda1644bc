"""Tables of what comes back from the world (on :mod:`.models`' metadata): received replies
(``MailTrack.ingest_mail``, services/inbound.py) and what the ESP webhooks remember
(services/esp/store.py).

Kept apart from :mod:`.models` so that module stays one concern; the package root imports
this one, so the tables are in ``metadata`` whenever the package is.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base, BigID, JSONType, Tenant, UTCDateTime, metadata, utcnow


class InboundMessage(Base):
    """A received reply to an outbound message (``MailTrack.ingest_mail``), shown in its thread."""

    __tablename__ = "mailtrack_inbound"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Tenant, default="", server_default="")
    #: The outbound message replied to (``parentCommunicationId``).
    message_id: Mapped[str] = mapped_column(sa.String(32))
    contact_id: Mapped[str] = mapped_column(sa.String(64))
    event_id: Mapped[int | None] = mapped_column(BigID)
    from_email: Mapped[str | None] = mapped_column(sa.String(320))
    from_name: Mapped[str | None] = mapped_column(sa.String(255))
    recipients: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    cc: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    subject: Mapped[str | None] = mapped_column(sa.Text)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    in_reply_to: Mapped[str | None] = mapped_column(sa.Text)
    internet_message_id: Mapped[str | None] = mapped_column(sa.String(255))
    body_text: Mapped[str | None] = mapped_column(sa.Text)
    body_html: Mapped[str | None] = mapped_column(sa.Text)
    #: The reply's own text, without the quoted original (a reply-quote stripper's result).
    reply_text: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16), default="NEW")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        sa.Index("ix_mailtrack_inbound_message", "message_id", "received_at"),
        sa.Index("ix_mailtrack_inbound_contact", "tenant_id", "contact_id"),
    )


#: What the ESP webhooks remember besides events (``services/esp/store.py``): tokens of signed
#: requests received (``kind = 'nonce'``: a replay is refused on every host) and events that
#: matched no message (``kind = 'unmatched'``, keyed by a digest: counted once). No personal data.
webhook_receipts = sa.Table(
    "mailtrack_webhook_receipts", metadata,
    sa.Column("provider", sa.String(16), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("event_type", sa.String(20)),
    sa.Column("received_at", UTCDateTime(), nullable=False, default=utcnow),
    sa.Index("ix_mailtrack_webhook_receipts_kind_time", "kind", "received_at"),
)
inbound = InboundMessage.__table__
