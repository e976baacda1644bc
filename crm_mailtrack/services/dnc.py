"""Do-Not-Contact: one row per contact and channel, written with atomic upserts."""
from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from ..errors import DatabaseUnavailable, ValidationError
from ..models import ContactEvent, DNCReason, DoNotContact, EventType, dnc, utcnow
from ..state import MailTrackState
from .common import UNSET, check_lengths, dialect_insert, emit, tenant_key

_CHANNEL = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def check_channel(channel: Any) -> str:
    if not isinstance(channel, str) or not _CHANNEL.match(channel):
        raise ValidationError({"channel": ["A channel is a lowercase name such as 'email' or 'sms'."]})
    return channel


def check_reason(reason: Any) -> DNCReason:
    try:
        if isinstance(reason, bool):
            raise ValueError
        return DNCReason(int(reason))
    except (TypeError, ValueError):
        raise ValidationError({"reason": ["Must be 1 (unsubscribed), 2 (bounced) or 3 (manual)."]}) from None


def get_dnc(state: MailTrackState, contact_id: str, channel: str, tenant: str) -> DoNotContact | None:
    return state.session.execute(
        sa.select(DoNotContact).where(
            DoNotContact.tenant_id == tenant,
            DoNotContact.contact_id == str(contact_id),
            DoNotContact.channel == channel,
        )
    ).scalar_one_or_none()


def add_dnc(
    state: MailTrackState,
    contact_id: str,
    channel: str = "email",
    reason: DNCReason | int = DNCReason.MANUAL,
    channel_id: str | None = None,
    comments: str | None = None,
    *,
    tenant_id: Any = UNSET,
    update_existing: bool = True,
    extra_events: list[ContactEvent] | None = None,
    safe_signals: bool = False,
) -> tuple[DoNotContact, bool]:
    """Add (or, with ``update_existing``, update) a DNC entry; ``(row, created)``.

    The INSERT ... ON CONFLICT DO NOTHING decides atomically who creates the row, so two
    concurrent unsubscribes leave one row and one ``dnc_added`` event. ``extra_events``
    are committed in the same transaction when the row is created (the unsubscribe event).
    """
    channel = check_channel(channel)
    reason = check_reason(reason)
    tenant = tenant_key(state, tenant_id)
    contact_id = str(contact_id)
    channel_id = None if channel_id is None else str(channel_id)
    check_lengths(dnc, contact_id=contact_id, channel_id=channel_id)
    session = state.session
    values = {
        "tenant_id": tenant, "contact_id": contact_id, "channel": channel,
        "reason": int(reason), "channel_id": channel_id, "comments": comments, "date_added": utcnow(),
    }
    try:
        stmt = dialect_insert(state, dnc).values(**values).on_conflict_do_nothing(
            index_elements=["tenant_id", "contact_id", "channel"]
        ).returning(dnc.c.id)
        created = session.execute(stmt).first() is not None
        if not created and update_existing:
            session.execute(
                sa.update(dnc)
                .where(dnc.c.tenant_id == tenant, dnc.c.contact_id == contact_id, dnc.c.channel == channel)
                .values(reason=int(reason), channel_id=channel_id, comments=comments)
            )
        added_events: list[ContactEvent] = []
        if created:
            added_events = [*(extra_events or []), ContactEvent(
                tenant_id=tenant, type=EventType.DNC_ADDED.value, contact_id=contact_id,
                occurred_at=values["date_added"],
                details={"channel": channel, "reason": int(reason), "channelId": channel_id, "comments": comments},
            )]
            session.add_all(added_events)
        session.commit()
    except sa.exc.SQLAlchemyError as exc:
        session.rollback()
        raise DatabaseUnavailable() from exc
    row = get_dnc(state, contact_id, channel, tenant)
    assert row is not None
    for ev in added_events:
        emit(ev.type, safe=safe_signals, event=ev, contact_id=contact_id, message_id=ev.message_id,
             campaign_id=ev.campaign_id, url=None, channel=channel, reason=reason)
    return row, created


def remove_dnc(state: MailTrackState, contact_id: str, channel: str = "email", *, tenant_id: Any = UNSET) -> bool:
    """Remove a DNC entry; ``True`` when one was removed (and a ``dnc_removed`` event stored)."""
    channel = check_channel(channel)
    tenant = tenant_key(state, tenant_id)
    contact_id = str(contact_id)
    session = state.session
    try:
        result = session.execute(
            sa.delete(dnc).where(dnc.c.tenant_id == tenant, dnc.c.contact_id == contact_id, dnc.c.channel == channel)
        )
        removed = bool(result.rowcount)
        event = None
        if removed:
            event = ContactEvent(tenant_id=tenant, type=EventType.DNC_REMOVED.value, contact_id=contact_id,
                                 occurred_at=utcnow(), details={"channel": channel})
            session.add(event)
        session.commit()
    except sa.exc.SQLAlchemyError as exc:
        session.rollback()
        raise DatabaseUnavailable() from exc
    if event is not None:
        emit(event.type, event=event, contact_id=contact_id, message_id=None, campaign_id=None,
             url=None, channel=channel)
    return removed


def can_contact(state: MailTrackState, contact_id: str, channel: str = "email", *, tenant_id: Any = UNSET) -> bool:
    tenant = tenant_key(state, tenant_id)
    found = state.session.execute(
        sa.select(dnc.c.id).where(
            dnc.c.tenant_id == tenant, dnc.c.contact_id == str(contact_id), dnc.c.channel == check_channel(channel)
        ).limit(1)
    ).first()
    return found is None


def list_dnc(state: MailTrackState, contact_id: str, *, tenant_id: Any = UNSET) -> list[DoNotContact]:
    tenant = tenant_key(state, tenant_id)
    return list(state.session.execute(
        sa.select(DoNotContact)
        .where(DoNotContact.tenant_id == tenant, DoNotContact.contact_id == str(contact_id))
        .order_by(DoNotContact.id)
    ).scalars())
