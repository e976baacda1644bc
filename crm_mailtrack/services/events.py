"""The contact event log: events from outside the tracking routes, and erasure.

Opens and clicks (and their journal replay) are stored by :mod:`.tracking`."""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ..db import transaction
from ..errors import ValidationError
from ..models import EVENT_TYPES, ContactEvent, events, utcnow
from ..state import MailTrackState
from .common import UNSET, check_lengths, emit, tenant_key


def check_type(event_type: str) -> None:
    """Refuse a type that is not one of :data:`~crm_mailtrack.models.EVENT_TYPES`."""
    if event_type not in EVENT_TYPES:
        raise ValidationError({"type": [f"Must be one of: {', '.join(EVENT_TYPES)}."]})


def event_time(occurred_at: dt.datetime | None) -> dt.datetime:
    """When an event from outside happened: ``occurred_at`` (a naive time is UTC), else now."""
    if occurred_at is None:
        return utcnow()
    return occurred_at if occurred_at.tzinfo is not None else occurred_at.replace(tzinfo=dt.timezone.utc)


def record_event(
    state: MailTrackState,
    contact_id: str,
    type: str,
    *,
    email: str | None = None,
    message_id: str | None = None,
    campaign_id: str | None = None,
    url: str | None = None,
    occurred_at: dt.datetime | None = None,
    details: Mapping[str, Any] | None = None,
    tenant_id: Any = UNSET,
    uid: str | None = None,
    link_id: str | None = None,
    commit: bool = True,
) -> ContactEvent:
    """Record an event that happened outside the tracking routes (ESP webhook, import)."""
    check_type(type)
    if contact_id is None or str(contact_id) == "":
        raise ValidationError({"contact_id": ["Missing data for required field."]})
    check_lengths(events, contact_id=str(contact_id), email=email, message_id=message_id,
                  campaign_id=campaign_id)
    if url is not None and link_id is None:
        from ..instrument import link_id as make_link_id

        link_id = make_link_id(url)
    event = ContactEvent(
        uid=uid,
        tenant_id=tenant_key(state, tenant_id),
        type=str(type),
        contact_id=str(contact_id),
        email=email,
        message_id=message_id,
        campaign_id=campaign_id,
        link_id=link_id,
        url=url,
        occurred_at=event_time(occurred_at),
        is_machine=False,
        details=dict(details) if details else None,
    )
    with transaction(state, commit=commit) as session:
        session.add(event)
    if commit:
        emit(str(type), event=event, contact_id=event.contact_id, message_id=message_id,
             campaign_id=campaign_id, url=url)
    return event


def erase_contact(state: MailTrackState, contact_id: str, *, tenant_id: Any = UNSET) -> int:
    """Delete every tracked row of a contact; see :func:`.privacy.erase_contact`."""
    from . import privacy

    return privacy.erase_contact(state, contact_id, tenant_id=tenant_id)
