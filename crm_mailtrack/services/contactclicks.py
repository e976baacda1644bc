"""Per-contact click totals (the OData ContactClicks entity set), derived from the event log.

A contact's ``ClickCount`` = its human ``click`` events (every tracked click with
``include_bots``) + the clicks imported from another system. An import (or a correction) is itself an event, so the total stays derivable from
the log: a ``click`` row with ``is_machine = true``, ``machine_reason = "import"`` and
``details = {"imported": N}`` (N may be negative for a downward correction). Being flagged
as non-human keeps imports out of every human count and report; having no message or
campaign keeps them out of campaign reports even with ``include_bots``.
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import current_app

from ..db import transaction
from ..models import ContactEvent, EventType, events, utcnow
from ..state import MailTrackState
from ..signals import event_recorded
from . import stats

IMPORT_REASON = "import"

_is_import = sa.and_(events.c.is_machine.is_(True), events.c.machine_reason == IMPORT_REASON)
_imported = sa.func.coalesce(events.c.details["imported"].as_integer(), 0)
#: Clicks a row contributes to the total: people's clicks and imports, or with bots every
#: tracked click too.
CLICK_WEIGHT = sa.case((events.c.is_machine.is_(False), 1), (_is_import, _imported), else_=0)
CLICK_WEIGHT_BOTS = sa.case((_is_import, _imported), else_=1)


def _count(include_bots: bool) -> sa.ColumnElement[Any]:
    return sa.func.coalesce(sa.func.sum(CLICK_WEIGHT_BOTS if include_bots else CLICK_WEIGHT), 0)



def _conds(tenant: str, include_bots: bool = False) -> list[Any]:
    where = [events.c.tenant_id == tenant, events.c.type == EventType.CLICK.value]
    if not include_bots:
        where.append(sa.or_(events.c.is_machine.is_(False), events.c.machine_reason == IMPORT_REASON))
    return where


def click_total(state: MailTrackState, tenant: str, contact_id: str, *,
                include_bots: bool = False) -> tuple[int, bool]:
    """``(ClickCount, has_click_data)`` of one contact."""
    row = state.session.execute(
        sa.select(_count(include_bots), sa.func.count())
        .where(*_conds(tenant, include_bots), events.c.contact_id == contact_id)
    ).one()
    return int(row[0]), bool(row[1])


_ORDER = {
    "ID": ("contact_id", False), "ID asc": ("contact_id", False), "ID desc": ("contact_id", True),
    "ClickCount": ("click_count", False), "ClickCount asc": ("click_count", False),
    "ClickCount desc": ("click_count", True),
}


def list_totals(state: MailTrackState, tenant: str, *, top: int, skip: int,
                orderby: str = "ID", include_bots: bool = False) -> list[sa.Row[Any]]:
    """``(contact_id, click_count)`` of the contacts with click data, one page."""
    column, desc = _ORDER[orderby]
    count = _count(include_bots).label("click_count")
    key = count if column == "click_count" else events.c.contact_id
    order = [key.desc() if desc else key.asc()]
    if column == "click_count":
        order.append(events.c.contact_id.asc())
    return list(state.session.execute(
        sa.select(events.c.contact_id, count).where(*_conds(tenant, include_bots)).group_by(events.c.contact_id)
        .order_by(*order).limit(top).offset(skip)
    ).all())


def import_clicks(state: MailTrackState, tenant: str, contact_id: str, clicks: int, *,
                  set_total: bool = False, email: str | None = None) -> int:
    """Store an import event; ``set_total`` makes ``clicks`` the new total (a correction).

    Returns the contact's new ``ClickCount``. Read and write share one transaction.
    """
    with transaction(state) as session:
        current, _ = click_total(state, tenant, contact_id)
        delta = clicks - current if set_total else clicks
        event = ContactEvent(
            tenant_id=tenant, type=EventType.CLICK.value, contact_id=contact_id, email=email,
            occurred_at=utcnow(), is_machine=True, machine_reason=IMPORT_REASON,
            details={"imported": delta, **({"total": clicks} if set_total else {})},
        )
        session.add(event)
    # Only ``event_recorded``: an import is not a click, so ``link_clicked`` stays silent.
    if event_recorded.receivers:
        event_recorded.send(current_app._get_current_object(), event=event,  # type: ignore[attr-defined]
                            contact_id=contact_id, message_id=None, campaign_id=None, url=None)
    return current + delta


def erase_clicks(state: MailTrackState, tenant: str, contact_id: str) -> int:
    """Delete every click event (tracked and imported) of a contact; rows deleted."""
    which = sa.and_(events.c.tenant_id == tenant, events.c.contact_id == contact_id,
                    events.c.type == EventType.CLICK.value)
    with transaction(state) as session:
        stats.forget_events(session.connection(), which)
        result = session.execute(sa.delete(events).where(which))
    return int(result.rowcount or 0)
