"""Do-Not-Contact: one row per contact and channel, written with atomic upserts; and the
suppression records that keep an erased contact's entries in force.

Suppressions: erasing a contact deletes its DNC rows with everything else, yet an address
that unsubscribed must not become mailable again. So before the rows go, each of the
contact's DNC channels is recorded for each of its known addresses as
``HMAC-SHA256(key, tenant NUL channel NUL address)`` (address trimmed and lower-cased):
nothing in the table names anyone, and only a holder of the key can test an address
against it. :func:`can_contact` and the send path consult it by address.

The key is derived (HMAC, fixed label) from ``MAILTRACK_SECRET_KEY``; lookups also try the
keys in ``MAILTRACK_SECRET_KEY_FALLBACKS``, so suppressions made before a rotation hold
while the old key stays in the fallbacks. A suppression made under a key that has left
both is no longer recognised: keep retired keys in the fallbacks for as long as such
suppressions must hold.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from ..db import dialect_name, insert, transaction
from ..errors import ValidationError
from ..models import ContactEvent, DNCReason, DoNotContact, EventType, dnc, suppressions, utcnow
from ..state import MailTrackState
from .common import UNSET, check_lengths, emit, tenant_key

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
    values = {
        "tenant_id": tenant, "contact_id": contact_id, "channel": channel,
        "reason": int(reason), "channel_id": channel_id, "comments": comments, "date_added": utcnow(),
    }
    with transaction(state) as session:
        stmt = insert(dialect_name(state), dnc).values(**values).on_conflict_do_nothing(
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
    with transaction(state) as session:
        result = session.execute(
            sa.delete(dnc).where(dnc.c.tenant_id == tenant, dnc.c.contact_id == contact_id, dnc.c.channel == channel)
        )
        removed = bool(result.rowcount)
        event = None
        if removed:
            event = ContactEvent(tenant_id=tenant, type=EventType.DNC_REMOVED.value, contact_id=contact_id,
                                 occurred_at=utcnow(), details={"channel": channel})
            session.add(event)
    if event is not None:
        emit(event.type, event=event, contact_id=contact_id, message_id=None, campaign_id=None,
             url=None, channel=channel)
    return removed


def can_contact(state: MailTrackState, contact_id: str, channel: str = "email", *, tenant_id: Any = UNSET,
                email: str | None = None) -> bool:
    """``False`` when the contact has a DNC entry for ``channel``, or when its address is
    suppressed (an erased contact's entry): ``email`` if given, else the address the
    ``contact_loader`` gives for the contact."""
    tenant = tenant_key(state, tenant_id)
    channel = check_channel(channel)
    found = state.session.execute(
        sa.select(dnc.c.id).where(
            dnc.c.tenant_id == tenant, dnc.c.contact_id == str(contact_id), dnc.c.channel == channel
        ).limit(1)
    ).first()
    if found is not None:
        return False
    if email is None:
        contact = state.hooks.load_contact(str(contact_id))
        email = contact.get("email") if contact is not None else None
    return not (isinstance(email, str) and is_suppressed(state, tenant, channel, email))


def _suppression_keys(state: MailTrackState) -> list[bytes]:
    """The current suppression key first, then those of the fallback secret keys."""
    settings = state.settings
    secrets = [settings.secret_key, *reversed(settings.secret_key_fallbacks)]
    return [hmac.new(key if isinstance(key, bytes) else str(key).encode(), b"mailtrack.suppression",
                     hashlib.sha256).digest() for key in secrets]


def _address_hash(key: bytes, tenant: str, channel: str, address: str) -> str:
    normalised = address.strip().lower()
    return hmac.new(key, f"{tenant}\0{channel}\0{normalised}".encode(), hashlib.sha256).hexdigest()


def is_suppressed(state: MailTrackState, tenant: str, channel: str, address: str) -> bool:
    """Whether ``address`` has a suppression record for ``channel`` in ``tenant``."""
    hashes = [_address_hash(key, tenant, channel, address) for key in _suppression_keys(state)]
    found = state.session.execute(
        sa.select(suppressions.c.address_hash).where(
            suppressions.c.tenant_id == tenant, suppressions.c.channel == channel,
            suppressions.c.address_hash.in_(hashes),
        ).limit(1)
    ).first()
    return found is not None


def suppress(state: MailTrackState, tenant: str, contact_id: str, addresses: Iterable[str]) -> int:
    """Record a suppression for each DNC channel of the contact and each of ``addresses``,
    in the caller's transaction (an erasure); return how many were new."""
    session = state.session
    rows = session.execute(
        sa.select(dnc.c.channel, dnc.c.reason).where(dnc.c.tenant_id == tenant, dnc.c.contact_id == str(contact_id))
    ).all()
    key = _suppression_keys(state)[0]
    values = [
        {"tenant_id": tenant, "channel": channel, "address_hash": _address_hash(key, tenant, channel, address),
         "reason": reason, "date_added": utcnow()}
        for channel, reason in rows for address in {a.strip().lower() for a in addresses if a and a.strip()}
    ]
    if not values:
        return 0
    stmt = insert(dialect_name(state), suppressions).on_conflict_do_nothing(
        index_elements=["tenant_id", "channel", "address_hash"])
    return max(session.execute(stmt, values).rowcount or 0, 0)  # -1: the driver did not count


def list_dnc(state: MailTrackState, contact_id: str, *, tenant_id: Any = UNSET) -> list[DoNotContact]:
    tenant = tenant_key(state, tenant_id)
    return list(state.session.execute(
        sa.select(DoNotContact)
        .where(DoNotContact.tenant_id == tenant, DoNotContact.contact_id == str(contact_id))
        .order_by(DoNotContact.id)
    ).scalars())
