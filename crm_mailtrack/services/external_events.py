"""Events reported from outside (received mail, an ESP's webhook, an import, the events API)
and what they imply: the one home of the outcome policy.

- a hard bounce (``details.bounceType`` ``hard``/``permanent``): Do-Not-Contact ``BOUNCED``;
- ``MAILTRACK_SOFT_BOUNCE_LIMIT`` soft bounces of the contact's address in a row, with no
  ``delivered``, ``open`` or ``click`` between them (by ``occurred_at``): ``BOUNCED``;
- an ``unsubscribe``: ``UNSUBSCRIBED``; a ``complaint``: ``UNSUBSCRIBED`` with comments
  ``complaint``.

``MailTrack.record_event`` and ``POST /api/contacts/<id>/events`` go through
:func:`record_with_implied_dnc`; received mail (``MailTrack.ingest_mail``) and ESP webhooks go
through :func:`record_outcome`, which also stores an outside event exactly once: its
``dedup`` key (``(source, external id)``) becomes the event's ``uid``, and a second delivery
of the same event stores nothing. Either way the event and its DNC entry commit together, and
the signals go out after the commit (``dnc_added`` first when the entry is new, then the
event's own signal and ``event_recorded``).
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..db import dialect_name, insert, transaction
from ..errors import ValidationError
from ..models import EVENT_UID_KEY, ContactEvent, DNCReason, Message, events
from ..state import MailTrackState
from . import dnc as dnc_service
from . import events as event_service
from . import privacy
from .common import UNSET, check_lengths, emit, tenant_key

#: ``details.bounceType`` values (case-insensitive) that make a bounce hard.
HARD_BOUNCE_TYPES = ("hard", "permanent")
#: Event types that show the address takes mail: each ends a run of soft bounces.
DELIVERY_EVIDENCE = ("delivered", "open", "click")
#: The DNC comments of a complaint.
COMPLAINT_COMMENT = "complaint"
#: Namespace of the uuid5 ``uid`` of events stored with a dedup key (fixed: changing it would
#: let every event already stored be stored again).
UID_NAMESPACE = uuid.UUID("5f0c4f2e-6d1a-4c53-9b7e-6d61696c7472")


def is_hard_bounce(details: Mapping[str, Any] | None) -> bool:
    value = (details or {}).get("bounceType")
    return isinstance(value, str) and value.strip().lower() in HARD_BOUNCE_TYPES


def implied_dnc(event_type: str, details: Mapping[str, Any] | None) -> DNCReason | None:
    """The DNC reason an event implies by itself (the soft-bounce run needs the history:
    see :func:`soft_bounce_run`)."""
    if event_type == "bounce" and is_hard_bounce(details):
        return DNCReason.BOUNCED
    if event_type in ("unsubscribe", "complaint"):
        return DNCReason.UNSUBSCRIBED
    return None



def stored_uids(session: Any, uids: Sequence[str]) -> set[str]:
    """Which of ``uids`` the event log holds already, at any moment. The unique key is
    ``(uid, occurred_at)`` (:data:`~crm_mailtrack.models.EVENT_UID_KEY`: on PostgreSQL every
    unique key of the partitioned log holds the partition key), so a repeat reported with
    another time would pass the INSERT's conflict check: this lookup (the key's index, by its
    leading column) refuses it first. Two hosts storing the same event at the same instant with
    different times can still both write it: the conflict check catches the same time."""
    if not uids:
        return set()
    return set(session.execute(sa.select(events.c.uid).where(events.c.uid.in_(list(uids)))).scalars())


def event_uid(tenant: str, message_id: str | None, dedup: tuple[str, str] | str) -> str:
    """The deterministic ``uid`` of an outside event: uuid5 of the tenant, the message and
    the dedup key, so the same provider event (or the same received mail) has one uid."""
    parts = (dedup,) if isinstance(dedup, str) else tuple(dedup)
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f"a dedup key is a non-empty string or a tuple of them, not {dedup!r}")
    return str(uuid.uuid5(UID_NAMESPACE, "\0".join((tenant, message_id or "", *parts))))


def _same_address(tenant: str, contact_id: str, email: str | None) -> list[Any]:
    where = [events.c.tenant_id == tenant, events.c.contact_id == contact_id]
    if email:
        where.append(sa.func.lower(events.c.email) == email.strip().lower())
    return where


def soft_bounce_run(session: Session, tenant: str, contact_id: str, email: str | None) -> int:
    """How many bounces (any that is not hard; hard ones put the contact on DNC already) the
    contact's address has had since its last ``delivered``, ``open`` or ``click``: one
    SQL statement on the contact's index, counting the caller's pending rows."""
    where = _same_address(tenant, str(contact_id), email)
    last_good = sa.select(sa.func.max(events.c.occurred_at)).where(
        *where, events.c.type.in_(DELIVERY_EVIDENCE)).scalar_subquery()
    bounce_type = sa.func.lower(sa.func.coalesce(events.c.details["bounceType"].as_string(), ""))
    stmt = sa.select(sa.func.count()).select_from(events).where(
        *where, events.c.type == "bounce", bounce_type.not_in(HARD_BOUNCE_TYPES),
        sa.or_(last_good.is_(None), events.c.occurred_at > last_good),
    )
    return int(session.execute(stmt).scalar_one())


def _dnc_for(state: MailTrackState, session: Session, event: ContactEvent) -> tuple[DNCReason, str | None] | None:
    """The DNC entry (reason, comments) that ``event`` (flushed or pending) implies."""
    details = event.details or {}
    reason = implied_dnc(event.type, details)
    if reason is not None:
        if event.type == "complaint":
            return reason, COMPLAINT_COMMENT
        comment = details.get("reason")
        return reason, comment if isinstance(comment, str) else None
    limit = state.settings.soft_bounce_limit
    if event.type == "bounce" and limit and event.contact_id:
        run = soft_bounce_run(session, event.tenant_id, event.contact_id, event.email)
        if run >= limit:
            return DNCReason.BOUNCED, f"{run} soft bounces in a row"
    return None


def _announce(event: ContactEvent, **extra: Any) -> None:
    emit(event.type, event=event, contact_id=event.contact_id, message_id=event.message_id,
         campaign_id=event.campaign_id, url=event.url, **extra)


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
    comments = ``details.reason``, ``complaint`` for a complaint; an existing entry is kept)
    in one transaction: both rows or neither. Signals go out after the commit: ``dnc_added``
    when the entry is new, then the event's own signal and ``event_recorded``. ``details``
    larger than ``MAILTRACK_MAX_DETAILS_BYTES`` as JSON raise :class:`ValidationError`,
    storing nothing."""
    privacy.check_details(state, details)
    tenant = tenant_key(state, tenant_id)
    with transaction(state) as session:
        event = event_service.record_event(
            state, contact_id, event_type, email=email, message_id=message_id, campaign_id=campaign_id,
            url=url, occurred_at=occurred_at, details=details, tenant_id=tenant, commit=False,
        )
        session.flush()
        implied = _dnc_for(state, session, event)
        if implied is not None:
            # add_dnc commits the pending event with the entry (or rolls both back)
            dnc_service.add_dnc(state, contact_id, "email", implied[0], message_id, implied[1],
                                tenant_id=tenant, update_existing=False)
    _announce(event)
    return event


def record_outcome(
    state: MailTrackState,
    message: Message,
    event_type: str,
    *,
    details: Mapping[str, Any] | None = None,
    occurred_at: dt.datetime | None = None,
    dedup: tuple[str, str] | str | None = None,
    is_machine: bool = False,
    machine_reason: str | None = None,
    url: str | None = None,
    also: Callable[[Session, ContactEvent], Mapping[str, Any] | None] | None = None,
) -> ContactEvent | None:
    """Record what happened to an outbound ``message`` as an outside source reports it
    (``delivered``, ``bounce``, ``complaint``, ``unsubscribe``, ``reply``, ``auto_reply``, an
    ESP's ``open``/``click`` with its machine verdict), with the DNC entry it implies, in one
    transaction. Tenant, contact, address and campaign are the message's.

    ``dedup`` (``(source, external id)``) makes the event idempotent: it becomes the event's
    ``uid`` (:func:`event_uid`) and the INSERT tolerates the conflict, so a second call with
    the same key stores nothing, sends nothing and returns ``None``. ``also(session, event)``
    runs in the transaction only when the event is new (rows that belong with it, e.g. the
    received reply); a mapping it returns is added to the signal's keywords.
    ``details`` larger than ``MAILTRACK_MAX_DETAILS_BYTES`` raise :class:`ValidationError`."""
    event_service.check_type(event_type)
    privacy.check_details(state, details)
    link_id = None
    if url is not None:
        check_lengths(events, url=url)
        from ..instrument import link_id as make_link_id

        link_id = make_link_id(url)
    tenant, message_id, contact_id = message.tenant_id, message.id, message.contact_id
    uid = event_uid(tenant, message_id, dedup) if dedup is not None else None
    values = {
        "uid": uid, "tenant_id": tenant, "type": event_type, "contact_id": message.contact_id,
        "email": message.email, "message_id": message.id, "campaign_id": message.campaign_id,
        "link_id": link_id, "url": url, "occurred_at": event_service.event_time(occurred_at),
        "is_machine": bool(is_machine), "machine_reason": machine_reason,
        "details": dict(details) if details else None,
    }
    extra: Mapping[str, Any] | None = None
    with transaction(state) as session:
        stmt = insert(dialect_name(state), events).values(**values)
        if uid is not None:
            if stored_uids(session, [uid]):
                return None  # stored before, perhaps at another moment
            stmt = stmt.on_conflict_do_nothing(index_elements=list(EVENT_UID_KEY))
        row = session.execute(stmt.returning(events.c.id)).first()
        if row is None:
            return None  # stored before: nothing more to do
        event = session.get(ContactEvent, row.id)
        assert event is not None
        if also is not None:
            extra = also(session, event)
        implied = _dnc_for(state, session, event)
        if implied is not None:
            dnc_service.add_dnc(state, contact_id, "email", implied[0], message_id, implied[1],
                                tenant_id=tenant, update_existing=False)
    # the signal's keywords from the values written: reading the (committed, so expired)
    # event would cost a SELECT per event that only a subscriber may need
    verdict = {"is_machine": values["is_machine"], "machine_reason": machine_reason} if event_type in (
        "open", "click") else {}
    emit(event_type, event=event, contact_id=contact_id, message_id=message_id,
         campaign_id=values["campaign_id"], url=url, **verdict, **(extra or {}))
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


__all__ = ["HARD_BOUNCE_TYPES", "DELIVERY_EVIDENCE", "COMPLAINT_COMMENT", "is_hard_bounce", "implied_dnc",
           "event_uid", "soft_bounce_run", "record_with_implied_dnc", "record_outcome",
           "record_external_event"]
