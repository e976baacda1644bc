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


_FLAG_TYPES = ("open", "click", "bounce", "unsubscribe")


def _in_range(tenant: str, date_from: dt.datetime | None, date_to: dt.datetime | None,
              campaign_id: str | None) -> list[Any]:
    """WHERE clauses of the SENT or FAILED messages in range (of one campaign when given)."""
    when = sa.func.coalesce(messages.c.sent_at, messages.c.created_at)
    where = [messages.c.tenant_id == tenant, messages.c.status.in_((SENT, FAILED))]
    if campaign_id is not None:
        where.append(messages.c.campaign_id == campaign_id)
    if date_from is not None:
        where.append(when >= date_from)
    if date_to is not None:
        where.append(when < date_to)
    return where


def _flags(source: Any, message_col: Any, ids: sa.Select[Any], include_bots: bool,
           extra: list[Any]) -> sa.Select[Any]:
    """Per message of ``ids``: 1/0 flags opened (open or click), clicked, bounced,
    unsubscribed, from one grouped pass over ``source`` (events or their rollups).
    Engagement counts humans unless ``include_bots``; bounces and unsubscribes count
    whoever caused them."""
    human = sa.true() if include_bots else source.c.is_machine.is_(False)

    def flag(cond: Any) -> Any:
        return sa.func.max(sa.case((cond, 1), else_=0))

    kind = source.c.type
    return (
        sa.select(
            message_col.label("mid"),
            flag(kind.in_(("open", "click")) & human).label("opened"),
            flag((kind == "click") & human).label("clicked"),
            flag(kind == "bounce").label("bounced"),
            flag(kind == "unsubscribe").label("unsubscribed"),
        )
        .where(message_col.in_(ids), kind.in_(_FLAG_TYPES), *extra)
        .group_by(message_col)
    )


def _per_message(tenant: str, date_from: dt.datetime | None, date_to: dt.datetime | None,
                 include_bots: bool, campaign_id: str | None) -> sa.Subquery:
    """One row per SENT or FAILED message in range, with its opened/clicked/bounced/
    unsubscribed flags: events and rollups are each aggregated once per message (a hash
    aggregate over the tenant's events), then joined, never probed per message."""
    where = _in_range(tenant, date_from, date_to, campaign_id)
    ids = sa.select(messages.c.id).where(*where)
    raw = _flags(events, events.c.message_id, ids, include_bots, [events.c.tenant_id == tenant])
    rolled = _flags(event_rollups, event_rollups.c.message_id, ids, include_bots,
                    [event_rollups.c.tenant_id == tenant, event_rollups.c.count > 0])
    both = sa.union_all(raw, rolled).subquery("both")
    f = (sa.select(both.c.mid, *(sa.func.max(both.c[n]).label(n)
                                 for n in ("opened", "clicked", "bounced", "unsubscribed")))
         .group_by(both.c.mid).subquery("f"))
    return (
        sa.select(
            messages.c.id, messages.c.status, messages.c.template_id, messages.c.template_name,
            messages.c.type, messages.c.sent_at,
            *(sa.func.coalesce(f.c[n], 0).label(n) for n in ("opened", "clicked", "bounced", "unsubscribed")),
        )
        .select_from(messages.outerjoin(f, f.c.mid == messages.c.id))
        .where(*where)
        .subquery("m")
    )


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


def _group(g: dict[str, Any]) -> dict[str, Any]:
    sent, opened, clicked = g["sent"], g["opened"], g["clicked"]
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


def _per_day(state: MailTrackState, sent: sa.Subquery, tenant: str, include_bots: bool) -> sa.Select[Any]:
    """One grouped query for both daily series: sends per day of ``sent_at`` and the open and
    click events (raw and rolled up) of the SENT messages ``sent`` (id, sent_at) per day
    they happened."""
    n = sa.BigInteger()
    sends = sa.select(_day(state, sent.c.sent_at).label("day"), sa.literal("send").label("kind"),
                      sa.literal(1, n).label("n"))
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
    totals and daily engagement added: two grouped queries. The first groups by
    (template, type); overall, per-template and per-type sums are shaped from its few rows."""
    m = _per_message(tenant, date_from, date_to, include_bots, campaign_id)
    session = state.session
    if state.engine.dialect.name == "postgresql":
        # Grouped, index-driven queries that cost more to JIT-compile than to run on
        # PostgreSQL's defaults (measured); LOCAL ends with the transaction.
        session.execute(sa.text("SET LOCAL jit = off"))
    groups = session.execute(
        sa.select(m.c.template_id, sa.func.max(m.c.template_name).label("template_name"), m.c.type,
                  *_totals(m), _sent_with(m, "bounced"), _sent_with(m, "unsubscribed"))
        .group_by(m.c.template_id, m.c.type)
    ).all()
    sent_ids = sa.select(messages.c.id, messages.c.sent_at).where(
        *_in_range(tenant, date_from, date_to, campaign_id), messages.c.status == SENT
    ).subquery("s")
    days = session.execute(_per_day(state, sent_ids, tenant, include_bots)).all()

    fields = ("sent", "opened", "clicked", "failed", "bounced", "unsubscribed")
    overall = dict.fromkeys(fields, 0)
    by_template: dict[Any, dict[str, Any]] = {}
    by_type: dict[Any, dict[str, Any]] = {}
    for row in groups:  # one row per (template, type): a handful, not one per message
        tpl = by_template.setdefault(row.template_id, {"name": None, **dict.fromkeys(fields, 0)})
        typ = by_type.setdefault(row.type, dict.fromkeys(fields, 0))
        if row.template_name is not None and (tpl["name"] is None or row.template_name > tpl["name"]):
            tpl["name"] = row.template_name
        for name in fields:
            value = int(getattr(row, name))
            overall[name] += value
            tpl[name] += value
            typ[name] += value

    def nulls_last(key: Any) -> tuple[bool, Any]:
        return (key is None, key if key is not None else "")

    sent, failed, bounced = overall["sent"], overall["failed"], overall["bounced"]
    return {
        **_group(overall),
        "failureRate": rate(failed, sent + failed),
        "byTemplate": [{"templateId": key, "templateName": g["name"], **_group(g)}
                       for key, g in sorted(by_template.items(), key=lambda kv: nulls_last(kv[0]))],
        "byType": [{"type": key, **_group(g)} for key, g in sorted(by_type.items(), key=lambda kv: nulls_last(kv[0]))],
        "sendVolumeByDay": [{"date": r.day, "count": int(r.send)} for r in days if r.send],
        "totalFailed": failed,
        "totalBounced": bounced,
        "totalDelivered": sent - bounced,
        "totalUnsubscribed": overall["unsubscribed"],
        "engagementByDay": [{"date": r.day, "opens": int(r.open), "clicks": int(r.click)}
                            for r in days if r.open or r.click],
    }


__all__ = ["analytics", "rate"]
