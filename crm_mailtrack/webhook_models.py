"""Tables of the outbound webhooks (services/webhooks.py): the endpoints hosts subscribe, and
one delivery row per (endpoint, event), which is also the delivery log.

Kept apart from :mod:`.models` (on the same metadata) so that module stays one concern;
the package root imports this one, so the tables are in ``metadata`` whenever the package is.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base, BigID, JSONType, Tenant, UTCDateTime, utcnow


class WebhookEndpoint(Base):
    """A URL subscribed to event types (none: every type) for one tenant."""

    __tablename__ = "mailtrack_webhook_endpoints"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Tenant, default="", server_default="")
    url: Mapped[str] = mapped_column(sa.Text)
    #: ``whsec_`` + base64 of the HMAC key (Standard Webhooks' format).
    secret: Mapped[str] = mapped_column(sa.String(64))
    #: The secret before the last rotation, still signing beside the new one for a while
    #: (``services.webhooks.SECRET_OVERLAP`` after ``secret_rotated_at``).
    previous_secret: Mapped[str | None] = mapped_column(sa.String(64))
    secret_rotated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    event_types: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    description: Mapped[str | None] = mapped_column(sa.String(255))
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(sa.Text)
    #: Failed attempts in a row (any delivery); reset by a success or by enabling.
    failure_streak: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: The highest event id turned into deliveries for this endpoint.
    last_event_id: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (sa.Index("ix_mailtrack_webhook_endpoints_tenant", "tenant_id", "created_at"),)


class WebhookDelivery(Base):
    """One event for one endpoint: its exact body (the same bytes on every retry), state and
    the last attempt's result."""

    __tablename__ = "mailtrack_webhook_deliveries"

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(sa.String(32))
    tenant_id: Mapped[str] = mapped_column(Tenant, default="", server_default="")
    event_id: Mapped[int] = mapped_column(sa.BigInteger)
    event_type: Mapped[str] = mapped_column(sa.String(20))
    payload: Mapped[str] = mapped_column(sa.Text)
    #: ``pending``, ``delivered`` or ``failed`` (retries exhausted).
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_status: Mapped[int | None] = mapped_column(sa.Integer)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        sa.UniqueConstraint("endpoint_id", "event_id"),
        sa.Index("ix_mailtrack_webhook_deliveries_due", "status", "next_attempt_at"),
        sa.Index("ix_mailtrack_webhook_deliveries_endpoint", "endpoint_id", "id"),
    )


webhook_endpoints = WebhookEndpoint.__table__
webhook_deliveries = WebhookDelivery.__table__

__all__ = ["WebhookEndpoint", "WebhookDelivery", "webhook_endpoints", "webhook_deliveries"]
