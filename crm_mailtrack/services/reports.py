"""Read-side SQL of the JSON API: contact activity, a contact's events by kind, campaign
reports and campaign links.

Everything is one SQL statement per answer, scoped by tenant first (every index starts
with ``tenant_id``). Counts and paging happen in the database. Lists that a client walks
through (contact events, campaign reports) use keyset pagination on ``(occurred_at, id)``,
newest first: ``WHERE (occurred_at, id) < (:t, :id) ORDER BY occurred_at DESC, id DESC``,
so a deep page costs what the first costs and rows arriving meanwhile shift nothing.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..db import like_escape
from ..models import UTCDateTime, campaign_links, event_rollups, events, links, messages
from ..state import MailTrackState

#: Human names of the event types (the activity API's ``eventType`` and ``types``).
EVENT_LABELS: dict[str, str] = {
    "send": "Email sent",
    "open": "Email opened",
    "click": "Email link clicked",
    "bounce": "Email bounced",
    "forward": "Email forwarded",
    "unsubscribe": "Unsubscribed",
    "dnc_added": "Added to Do-Not-Contact",
    "dnc_removed": "Removed from Do-Not-Contact",
    "utm_added": "UTM tags recorded",
    "utm_removed": "UTM tags removed",
    "failed": "Email delivery failed",
    "delivered": "Email delivered",
    "reply": "Replied to email",
    "auto_reply": "Automatic reply received",
    "complaint": "Marked as spam",
}

#: The columns an event row is read with.
EVENT_COLUMNS = (
    events.c.id, events.c.type, events.c.contact_id, events.c.email, events.c.message_id,
    events.c.campaign_id, events.c.link_id, events.c.url, events.c.occurred_at,
    events.c.is_machine, events.c.machine_reason, events.c.details,
)

#: Allow-listed activity sort columns (public name -> column).
SORTABLE = {"occurred_at", "id", "type", "contact_id", "email"}


@dataclass
class ActivityFilters:
    """The activity filters, already validated by the API schema."""

    search: str | None = None
    include_events: Sequence[str] = ()
    exclude_events: Sequence[str] = ()
    date_from: dt.datetime | None = None
    date_to: dt.datetime | None = None
    order_column: str = "occurred_at"
    descending: bool = True
    page: int = 1
    limit: int = 30
    include_bots: bool = False


def activity(state: MailTrackState, tenant: str, contact_id: str | None,
             f: ActivityFilters) -> tuple[list[sa.Row[Any]], int]:
    """One page of events and the total matching count (one contact, or all)."""
    if f.order_column not in SORTABLE:
        raise ValueError(f"not a sortable column: {f.order_column}")
    conds: list[Any] = [events.c.tenant_id == tenant]
    if contact_id is not None:
        conds.append(events.c.contact_id == contact_id)
    if not f.include_bots:
        conds.append(events.c.is_machine.is_(False))
    if f.include_events:
        conds.append(events.c.type.in_(list(f.include_events)))
    if f.exclude_events:
        conds.append(events.c.type.not_in(list(f.exclude_events)))
    if f.date_from is not None:
        conds.append(events.c.occurred_at >= f.date_from)
    if f.date_to is not None:
        conds.append(events.c.occurred_at <= f.date_to)
    if f.search:
        pattern = f"%{like_escape(f.search)}%"
        conds.append(sa.or_(*(
            col.ilike(pattern, escape="\\")
            for col in (events.c.email, events.c.url, events.c.contact_id, events.c.campaign_id,
                        events.c.message_id, events.c.type)
        )))
    total = state.reads.execute(sa.select(sa.func.count()).select_from(events).where(*conds)).scalar_one()
    column = events.c[f.order_column]
    order = [column.desc(), events.c.id.desc()] if f.descending else [column.asc(), events.c.id.asc()]
    if f.order_column == "id":
        order = order[:1]
    rows = state.reads.execute(
        sa.select(*EVENT_COLUMNS).where(*conds).order_by(*order)
        .limit(f.limit).offset((f.page - 1) * f.limit)
    ).all()
    return list(rows), int(total)


def _before(position: tuple[dt.datetime, int] | None) -> list[Any]:
    """Keyset condition "strictly older than ``position``" (newest-first order)."""
    if position is None:
        return []
    at, last_id = position
    return [sa.tuple_(events.c.occurred_at, events.c.id)
            < sa.tuple_(sa.literal(at, UTCDateTime()), sa.literal(last_id, sa.BigInteger()))]


def contact_events(state: MailTrackState, tenant: str, contact_id: str, event_type: str, *,
                   include_bots: bool, after: tuple[dt.datetime, int] | None, limit: int) -> list[sa.Row[Any]]:
    """A contact's events of one type, newest first, ``limit + 1`` rows (the extra one
    tells the caller there is a next page)."""
    conds = [events.c.tenant_id == tenant, events.c.contact_id == contact_id, events.c.type == event_type,
             *_before(after)]
    if not include_bots:
        conds.append(events.c.is_machine.is_(False))
    return list(state.reads.execute(
        sa.select(*EVENT_COLUMNS).where(*conds)
        .order_by(events.c.occurred_at.desc(), events.c.id.desc()).limit(limit + 1)
    ).all())


def campaign_known(state: MailTrackState, tenant: str, campaign_id: str) -> bool:
    """A campaign exists for a tenant when one of its messages does."""
    return state.reads.execute(
        sa.select(messages.c.id).where(messages.c.tenant_id == tenant, messages.c.campaign_id == campaign_id).limit(1)
    ).first() is not None


def link_in_campaign(state: MailTrackState, tenant: str, campaign_id: str, link_id: str) -> bool:
    return state.reads.execute(
        sa.select(campaign_links.c.link_id).where(
            campaign_links.c.tenant_id == tenant, campaign_links.c.campaign_id == campaign_id,
            campaign_links.c.link_id == link_id,
        )
    ).first() is not None


def campaign_report(state: MailTrackState, tenant: str, campaign_id: str, event_type: str, *,
                    link_id: str | None = None, created_since: dt.datetime | None = None,
                    include_bots: bool = False, after: tuple[dt.datetime, int] | None = None,
                    limit: int = 500) -> list[sa.Row[Any]]:
    """One keyset page (``limit + 1`` rows) of a campaign's events of a type, newest first.

    Served by ``ix_mailtrack_events_campaign (tenant_id, campaign_id, type, occurred_at, id)``.
    """
    conds = [events.c.tenant_id == tenant, events.c.campaign_id == campaign_id, events.c.type == event_type,
             *_before(after)]
    if link_id is not None:
        conds.append(events.c.link_id == link_id)
    if created_since is not None:
        conds.append(events.c.occurred_at >= created_since)
    if not include_bots:
        conds.append(events.c.is_machine.is_(False))
    return list(state.reads.execute(
        sa.select(events.c.id, events.c.type, events.c.contact_id, events.c.email, events.c.campaign_id,
                  events.c.link_id, events.c.occurred_at, events.c.is_machine)
        .where(*conds).order_by(events.c.occurred_at.desc(), events.c.id.desc()).limit(limit + 1)
    ).all())


def campaign_link_stats(state: MailTrackState, tenant: str, campaign_id: str, *,
                        include_bots: bool = False) -> list[sa.Row[Any]]:
    """Every link the campaign carries (clicked or not) with total and unique clicks.

    Unique clicks count distinct messages per link (a recipient clicking the same link of
    the same message twice is one unique click); a click recorded without a message counts
    per contact. Clicks that a purge moved into ``mailtrack_event_rollups`` still count.
    """
    conds = [events.c.tenant_id == tenant, events.c.campaign_id == campaign_id, events.c.type == "click",
             events.c.link_id.is_not(None)]
    rolled = [event_rollups.c.tenant_id == tenant, event_rollups.c.campaign_id == campaign_id,
              event_rollups.c.type == "click", event_rollups.c.link_id != ""]
    if not include_bots:
        conds.append(events.c.is_machine.is_(False))
        rolled.append(event_rollups.c.is_machine.is_(False))
    clicker = sa.func.coalesce(events.c.message_id, sa.literal("~") + events.c.contact_id)
    both = sa.union_all(
        sa.select(events.c.link_id.label("link_id"), clicker.label("clicker"),
                  sa.literal(1, sa.BigInteger()).label("n")).where(*conds),
        sa.select(event_rollups.c.link_id, sa.func.nullif(event_rollups.c.message_id, "").label("clicker"),
                  event_rollups.c.count.label("n")).where(*rolled),
    ).subquery()
    agg = (
        sa.select(both.c.link_id, sa.func.sum(both.c.n).label("total"),
                  sa.func.count(sa.distinct(both.c.clicker)).label("uniq"))
        .group_by(both.c.link_id).subquery()
    )
    total = sa.func.coalesce(agg.c.total, 0)
    return list(state.reads.execute(
        sa.select(campaign_links.c.link_id, links.c.url, total.label("total_clicks"),
                  sa.func.coalesce(agg.c.uniq, 0).label("unique_clicks"))
        .select_from(
            campaign_links.join(links, links.c.id == campaign_links.c.link_id)
            .outerjoin(agg, agg.c.link_id == campaign_links.c.link_id)
        )
        .where(campaign_links.c.tenant_id == tenant, campaign_links.c.campaign_id == campaign_id)
        .order_by(total.desc(), links.c.url, campaign_links.c.link_id)
    ).all())
