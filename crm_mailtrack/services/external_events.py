"""Events reported from outside (an ESP's webhook, an import) and the Do-Not-Contact entry
they imply: a hard bounce means "bounced", an unsubscribe means "unsubscribed"."""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ..errors import ValidationError
from ..models import ContactEvent, DNCReason, Message
from ..state import MailTrackState
from . import dnc as dnc_service
from . import events as event_service
from .common import emit

#: ``details.bounceType`` values (case-insensitive) that make a bounce hard.
HARD_BOUNCE_TYPES = ("hard", "permanent")


def is_hard_bounce(details: Mapping[str, Any] | None) -> bool:
    value = (details or {}).get("bounceType")
    return isinstance(value, str) and value.strip().lower() in HARD_BOUNCE_TYPES


def implied_dnc(event_type: str, details: Mapping[str, Any] | None) -> DNCReason | None:
    if event_type == "bounce" and is_hard_bounce(details):
        return DNCReason.BOUNCED
    if event_type == "unsubscribe":
        return DNCReason.UNSUBSCRIBED
    return None


def record_external_event(
    state: MailTrackState,
    tenant: str,
    contact_id: str,
    event_type: str,
    *,
    email: str | None = None,
    message_id: str | None = None,
    campaign_id: str | None = None,
    url: str | None = None,
    occurred_at: dt.datetime | None = None,
    details: Mapping[str, Any] | None = None,
    fallback_email: str | None = None,
) -> ContactEvent:
    """Store the event (and its implied DNC entry, keeping an existing one) in one
    transaction. ``message_id`` must name a message of this tenant and contact (else
    :class:`ValidationError`); missing ``email``/``campaign_id`` are taken from it, then
    ``email`` from ``fallback_email`` (the host's contact)."""
    message = None
    if message_id:
        message = state.session.get(Message, message_id)
        if message is None or message.tenant_id != tenant or message.contact_id != contact_id:
            raise ValidationError({"message_id": ["No such message for this contact."]})
    event = event_service.record_event(
        state, contact_id, event_type,
        email=email or (message.email if message else None) or fallback_email,
        message_id=message_id, campaign_id=campaign_id or (message.campaign_id if message else None),
        url=url, occurred_at=occurred_at, details=details, tenant_id=tenant, commit=False,
    )
    reason = implied_dnc(event_type, details)
    if reason is not None:
        comment = (details or {}).get("reason")
        # add_dnc commits the pending event with the entry (or rolls both back).
        dnc_service.add_dnc(state, contact_id, "email", reason, message_id,
                            comment if isinstance(comment, str) else None, tenant_id=tenant,
                            update_existing=False)
    else:
        event_service.commit_or_503(state.session)
    emit(event.type, event=event, contact_id=contact_id, message_id=event.message_id,
         campaign_id=event.campaign_id, url=event.url)
    return event
