"""Events reported from outside (an ESP's webhook, an import) and the Do-Not-Contact entry
they imply: a hard bounce means "bounced", an unsubscribe means "unsubscribed".

This is the one home of that rule: ``MailTrack.record_event`` (Python API) and
``POST /api/contacts/<id>/events`` both go through :func:`record_with_implied_dnc`, so an
event recorded either way writes the same rows and sends the same signals.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ..db import transaction
from ..errors import ValidationError
from ..models import ContactEvent, DNCReason, Message
from ..state import MailTrackState
from . import dnc as dnc_service
from . import events as event_service
from . import privacy
from .common import UNSET, emit, tenant_key

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


def record_with_implied_dnc(
    state: MailTrackState,
    contact_id: str,
    event_type: str,
    *,
    email: str | None = None,
    message_id: str | None = None,
    campaign_id: str | None = None,
    url: str | None = None,
    occurred_at: dt.datetime | None = None,
    details: Mapping[str, Any] | None = None,
    tenant_id: Any = UNSET,
) -> ContactEvent:
    """Store the event and the DNC entry it implies (email, channel id = the message id,
    comments = ``details.reason``; an existing entry is kept) in one transaction: both
    rows or neither. Signals go out after the commit: ``dnc_added`` when the entry is
    new, then the event's own signal and ``event_recorded``. ``details`` larger than
    ``MAILTRACK_MAX_DETAILS_BYTES`` as JSON raise :class:`ValidationError`, storing nothing."""
    privacy.check_details(state, details)
    tenant = tenant_key(state, tenant_id)
    reason = implied_dnc(event_type, details)
    with transaction(state):
        event = event_service.record_event(
            state, contact_id, event_type, email=email, message_id=message_id, campaign_id=campaign_id,
            url=url, occurred_at=occurred_at, details=details, tenant_id=tenant, commit=False,
        )
        if reason is not None:
            comment = (details or {}).get("reason")
            # add_dnc commits the pending event with the entry (or rolls both back)
            dnc_service.add_dnc(state, contact_id, "email", reason, message_id,
                                comment if isinstance(comment, str) else None, tenant_id=tenant,
                                update_existing=False)
    emit(event.type, event=event, contact_id=event.contact_id, message_id=event.message_id,
         campaign_id=event.campaign_id, url=event.url)
    return event


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
    """The API's form of :func:`record_with_implied_dnc`. ``message_id`` must name a
    message of this tenant and contact (else :class:`ValidationError`); missing
    ``email``/``campaign_id`` are taken from it, then ``email`` from ``fallback_email``
    (the host's contact)."""
    message = None
    if message_id:
        message = state.session.get(Message, message_id)
        if message is None or message.tenant_id != tenant or message.contact_id != contact_id:
            raise ValidationError({"message_id": ["No such message for this contact."]})
    return record_with_implied_dnc(
        state, contact_id, event_type,
        email=email or (message.email if message else None) or fallback_email,
        message_id=message_id, campaign_id=campaign_id or (message.campaign_id if message else None),
        url=url, occurred_at=occurred_at, details=details, tenant_id=tenant,
    )
