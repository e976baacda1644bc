"""Communications analytics (002 ``analytics``), computed by SQL aggregates.

Definitions (docs/metrics.md states each once): a message is *in range* when its send
time (``sent_at``, else ``created_at`` for messages never sent) falls in
``[dateFrom, dateTo)``; ``totalSent`` counts SENT messages; a message is *opened* when it
has an open or a click event (a click implies an open); *clicked* when it has a click
event; each message counts at most once. Rates are over SENT messages, except
``failureRate`` = FAILED / (SENT + FAILED). Human events only unless ``include_bots``.
A SENT message is *bounced* / *unsubscribed* when it has a bounce / unsubscribe event
(whoever caused it: these are facts about delivery and consent, not engagement);
*delivered* = sent minus bounced. ``engagementByDay`` counts the open and click events of
the sent messages in range per UTC day of the event. ``campaign_id`` narrows everything to
one campaign's messages. Events that a purge moved into ``mailtrack_event_rollups`` count
like raw ones.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from ..models import MessageStatus, event_rollups, events, messages
from ..state import MailTrackState

SENT = MessageStatus.SENT.value
FAILED = MessageStatus.FAILED.value


def _has_event(types: tuple[str, ...], include_bots: bool) -> sa.ColumnElement[int]:
    """1 when the message has an event of one of ``types`` (humans only by default), raw or
    rolled up by a purge, else 0."""
    raw = [events.c.message_id == messages.c.id, events.c.type.in_(types)]
    rolled = [event_rollups.c.message_id == messages.c.id, event_rollups.c.tenant_id == messages.c.tenant_id,
              event_rollups.c.type.in_(types), event_rollups.c.count > 0]
    if not include_bots:
        raw.append(events.c.is_machine.is_(False))
        rolled.append(event_rollups.c.is_machine.is_(False))
    return sa.case((sa.or_(sa.exists().where(*raw), sa.exists().where(*rolled)), 1), else_=0)


def _per_message(tenant: str, date_from: dt.datetime | None, date_to: dt.datetime | None,
                 include_bots: bool, campaign_id: str | None) -> sa.Subquery:
    """One row per SENT or FAILED message in range (of one campaign when given), with its
    opened/clicked/bounced/unsubscribed flags."""
    when = sa.func.coalesce(messages.c.sent_at, messages.c.created_at)
    where = [messages.c.tenant_id == tenant, messages.c.status.in_((SENT, FAILED))]
    if campaign_id is not None:
        where.append(messages.c.campaign_id == campaign_id)
    if date_from is not None:
        where.append(when >= date_from)
    if date_to is not None:
        where.append(when < date_to)
    return sa.select(
        messages.c.id, messages.c.status, messages.c.template_id, messages.c.template_name,
        messages.c.type, messages.c.sent_at,
        _has_event(("open", "click"), include_bots).label("opened"),
        _has_event(("click",), include_bots).label("clicked"),
        _has_event(("bounce",), True).label("bounced"),
        _has_event(("unsubscribe",), True).label("unsubscribed"),
    ).where(*where).subquery("m")


def _totals(m: sa.Subquery) -> list[Any]:
    is_sent = m.c.status == SENT
    return [
        sa.func.coalesce(sa.func.sum(sa.case((is_sent, 1), else_=0)), 0).label("sent"),
        sa.func.coalesce(sa.func.sum(sa.case((is_sent, m.c.opened), else_=0)), 0).label("opened"),
        sa.func.coalesce(sa.func.sum(sa.case((is_sent, m.c.clicked), else_=0)), 0).label("clicked"),
        sa.func.coalesce(sa.func.sum(sa.case((m.c.status == FAILED, 1), else_=0)), 0).label("failed"),
    ]


def rate(part: int, whole: int) -> float:
    """``part / whole`` rounded to 4 places; 0.0 when ``whole`` is 0."""
    return round(part / whole, 4) if whole else 0.0


def _sent_with(m: sa.Subquery, flag: str) -> Any:
    """Number of SENT messages of ``m`` whose ``flag`` column is 1."""
    return sa.func.coalesce(sa.func.sum(sa.case((m.c.status == SENT, m.c[flag]), else_=0)), 0).label(flag)


def _group(row: Any) -> dict[str, Any]:
    sent, opened, clicked = int(row.sent), int(row.opened), int(row.clicked)
    return {"totalSent": sent, "totalOpened": opened, "totalClicked": clicked,
            "openRate": rate(opened, sent), "clickRate": rate(clicked, sent)}


def _day(state: MailTrackState, col: Any) -> Any:
    """The UTC calendar day of a timestamp (or date) column, cheap to group by: a DATE on
    PostgreSQL, the ``YYYY-MM-DD`` prefix of the stored text on SQLite (naive UTC)."""
    if state.engine.dialect.name == "postgresql":
        if isinstance(col.type, sa.Date):
            return col
        return sa.cast(sa.func.timezone("UTC", col), sa.Date)
    return sa.func.substr(col, 1, 10)


def _day_text(state: MailTrackState, day: Any) -> Any:
    """A grouped ``_day`` value as ``YYYY-MM-DD`` text."""
    if state.engine.dialect.name == "postgresql":
        return sa.func.to_char(day, "YYYY-MM-DD")
    return day


def _per_day(state: MailTrackState, m: sa.Subquery, tenant: str, include_bots: bool) -> sa.Select[Any]:
    """One grouped query for both daily series: sends per day of ``sent_at`` and the open and
    click events (raw and rolled up) of the SENT messages of ``m`` per day they happened."""
    sent = sa.select(m.c.id).where(m.c.status == SENT).subquery("s")
    n = sa.BigInteger()
    sends = sa.select(_day(state, m.c.sent_at).label("day"), sa.literal("send").label("kind"),
                      sa.literal(1, n).label("n")).where(m.c.status == SENT)
    raw_where = [events.c.tenant_id == tenant, events.c.type.in_(("open", "click"))]
    rolled_where = [event_rollups.c.tenant_id == tenant, event_rollups.c.type.in_(("open", "click"))]
    if not include_bots:
        raw_where.append(events.c.is_machine.is_(False))
        rolled_where.append(event_rollups.c.is_machine.is_(False))
    raw = (sa.select(_day(state, events.c.occurred_at).label("day"), events.c.type.label("kind"),
                     sa.literal(1, n).label("n"))
           .select_from(events.join(sent, sent.c.id == events.c.message_id)).where(*raw_where))
    rolled = (sa.select(_day(state, event_rollups.c.day).label("day"), event_rollups.c.type.label("kind"),
                        sa.cast(event_rollups.c.count, n).label("n"))
              .select_from(event_rollups.join(sent, sent.c.id == event_rollups.c.message_id)).where(*rolled_where))
    u = sa.union_all(sends, raw, rolled).subquery("u")

    def total(kind: str) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((u.c.kind == kind, u.c.n), else_=0)), 0).label(kind)

    return (sa.select(_day_text(state, u.c.day).label("day"), total("send"), total("open"), total("click"))
            .group_by(u.c.day).order_by(u.c.day))


def analytics(state: MailTrackState, tenant: str, *, date_from: dt.datetime | None = None,
              date_to: dt.datetime | None = None, include_bots: bool = False,
              campaign_id: str | None = None) -> dict[str, Any]:
    """002's analytics object for one tenant (optionally one campaign), with the funnel
    totals and daily engagement added: four grouped queries."""
    m = _per_message(tenant, date_from, date_to, include_bots, campaign_id)
    session = state.session
    total = session.execute(sa.select(*_totals(m), _sent_with(m, "bounced"), _sent_with(m, "unsubscribed"))).one()
    by_template = session.execute(
        sa.select(m.c.template_id, sa.func.max(m.c.template_name).label("template_name"), *_totals(m))
        .group_by(m.c.template_id).order_by(m.c.template_id.asc().nulls_last())
    ).all()
    by_type = session.execute(
        sa.select(m.c.type, *_totals(m)).group_by(m.c.type).order_by(m.c.type.asc().nulls_last())
    ).all()
    days = session.execute(_per_day(state, m, tenant, include_bots)).all()
    overall = _group(total)
    sent, failed, bounced = int(total.sent), int(total.failed), int(total.bounced)
    return {
        **overall,
        "failureRate": rate(failed, sent + failed),
        "byTemplate": [{"templateId": r.template_id, "templateName": r.template_name, **_group(r)}
                       for r in by_template],
        "byType": [{"type": r.type, **_group(r)} for r in by_type],
        "sendVolumeByDay": [{"date": r.day, "count": int(r.send)} for r in days if r.send],
        "totalFailed": failed,
        "totalBounced": bounced,
        "totalDelivered": sent - bounced,
        "totalUnsubscribed": int(total.unsubscribed),
        "engagementByDay": [{"date": r.day, "opens": int(r.open), "clicks": int(r.click)}
                            for r in days if r.open or r.click],
    }


__all__ = ["analytics", "rate"]
