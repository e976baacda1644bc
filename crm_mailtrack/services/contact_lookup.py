"""Finding contacts by email address: the contact id a client then asks for events with.

An address belongs to the contacts the tenant's messages were addressed to: the message
table is where the extension learns which contact an address stands for (tracked events
carry the message's contact). The match is case-insensitive, through the functional index
``ix_mailtrack_messages_tenant_email`` on ``(tenant_id, lower(email))``; both sides are
lowered by the database, so SQLite's ASCII-only ``lower`` and PostgreSQL's agree with
their own index.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from ..models import events, messages
from ..state import MailTrackState

#: Most contacts one address lookup answers (an address normally stands for one or two).
MAX_CONTACTS = 100


def contacts_by_email(state: MailTrackState, tenant: str, email: str, *,
                      include_bots: bool = False) -> list[dict[str, Any]]:
    """``[{"contact_id", "email", "last_activity"}]`` of the tenant's contacts that were
    sent (or scheduled) mail at ``email``, the most recently addressed first. ``email`` is
    the address as last used for that contact; ``last_activity`` the time of the contact's
    latest event (a person's, unless ``include_bots``), ``None`` when it has none."""
    session = state.session
    rows = session.execute(
        sa.select(messages.c.contact_id, messages.c.email, sa.func.max(messages.c.created_at).label("last"))
        .where(messages.c.tenant_id == tenant, sa.func.lower(messages.c.email) == sa.func.lower(email))
        .group_by(messages.c.contact_id, messages.c.email)
    ).all()
    latest: dict[str, tuple[dt.datetime, str]] = {}
    for contact_id, address, last in rows:
        if contact_id not in latest or last > latest[contact_id][0]:
            latest[contact_id] = (last, address)
    ordered = sorted(latest, key=lambda c: (latest[c][0], c), reverse=True)[:MAX_CONTACTS]
    if not ordered:
        return []
    human = [] if include_bots else [events.c.is_machine.is_(False)]
    activity = dict(session.execute(
        sa.select(events.c.contact_id, sa.func.max(events.c.occurred_at))
        .where(events.c.tenant_id == tenant, events.c.contact_id.in_(ordered), *human)
        .group_by(events.c.contact_id)
    ).all())
    return [{"contact_id": c, "email": latest[c][1], "last_activity": activity.get(c)} for c in ordered]


__all__ = ["contacts_by_email", "MAX_CONTACTS"]
