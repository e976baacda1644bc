"""Communications analytics (the communications API's ``analytics``), computed by SQL aggregates.

Definitions (docs/metrics.md states each once): a message is *in range* when its send
time (``sent_at``, else ``created_at`` for messages never sent) falls in
``[dateFrom, dateTo)``; ``totalSent`` counts SENT messages; a message is *opened* when it
has an open or a click event (a click implies an open); *clicked* when it has a click
event; each message counts at most once. ``openRate`` and ``clickRate`` are over
delivered messages (SENT minus bounced), ``clickToOpenRate`` = clicked / opened,
``failureRate`` = FAILED / (SENT + FAILED). Human events only unless ``include_bots``.
A SENT message is *bounced* / *unsubscribed* / *complained* when it has a bounce /
unsubscribe / complaint event (whoever caused it: these are facts about delivery and consent,
not engagement); *delivered* = sent minus bounced; ``bounceRate`` = bounced / sent,
``complaintRate`` = complained / delivered. ``engagementByDay`` counts the open and click events of
the sent messages in range per UTC day of the event. ``campaign_id`` narrows everything to
one campaign's messages. Events that a purge moved into ``mailtrack_event_rollups`` count
like raw ones.
"""
from __future__ import annotations

import collections
import datetime as dt
import functools
from typing import Any

import sqlalchemy as sa

from ..db import dialect_name, utc_day
from ..models import (
    event_rollups,
    events,
    messages,
    stats_days,
    stats_messages,
    stats_tenant_days,
    stats_tenant_messages,
)
from ..state import MailTrackState
from . import stats
from .stats_cells import FAILED, FLAG_TYPES, SENT


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
            flag(kind == "complaint").label("complained"),
        )
        .where(message_col.in_(ids), kind.in_(FLAG_TYPES), *extra)
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
                                 for n in ("opened", "clicked", "bounced", "unsubscribed", "complained")))
         .group_by(both.c.mid).subquery("f"))
    return (
        sa.select(
            messages.c.id, messages.c.status, messages.c.template_id, messages.c.template_name,
            messages.c.type, messages.c.sent_at,
            *(sa.func.coalesce(f.c[n], 0).label(n) for n in ("opened", "clicked", "bounced", "unsubscribed", "complained")),
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
    """Totals and rates of a group; open and click rates are over *delivered* messages
    (sent minus bounced), click-to-open over opened ones."""
    sent, opened, clicked = g["sent"], g["opened"], g["clicked"]
    delivered = sent - g["bounced"]
    return {"totalSent": sent, "totalOpened": opened, "totalClicked": clicked,
            "openRate": rate(opened, delivered), "clickRate": rate(clicked, delivered),
            "clickToOpenRate": rate(clicked, opened)}


def _day(conn: Any, col: Any) -> Any:
    """The UTC calendar day of a timestamp column (a date column is one already)."""
    return col if isinstance(col.type, sa.Date) else utc_day(dialect_name(conn), col)


def _day_text(conn: Any, day: Any) -> Any:
    """A grouped ``_day`` value as ``YYYY-MM-DD`` text."""
    if conn.dialect.name == "postgresql":
        return sa.func.to_char(day, "YYYY-MM-DD")
    return day


def _per_day(conn: Any, sent: sa.Subquery, tenant: str, include_bots: bool) -> sa.Select[Any]:
    """One grouped query for both daily series: sends per day of ``sent_at`` and the open and
    click events (raw and rolled up) of the SENT messages ``sent`` (id, sent_at) per day
    they happened."""
    n = sa.BigInteger()
    sends = sa.select(_day(conn, sent.c.sent_at).label("day"), sa.literal("send").label("kind"),
                      sa.literal(1, n).label("n"))
    raw_where = [events.c.tenant_id == tenant, events.c.type.in_(("open", "click"))]
    rolled_where = [event_rollups.c.tenant_id == tenant, event_rollups.c.type.in_(("open", "click"))]
    if not include_bots:
        raw_where.append(events.c.is_machine.is_(False))
        rolled_where.append(event_rollups.c.is_machine.is_(False))
    raw = (sa.select(_day(conn, events.c.occurred_at).label("day"), events.c.type.label("kind"),
                     sa.literal(1, n).label("n"))
           .select_from(events.join(sent, sent.c.id == events.c.message_id)).where(*raw_where))
    rolled = (sa.select(_day(conn, event_rollups.c.day).label("day"), event_rollups.c.type.label("kind"),
                        sa.cast(event_rollups.c.count, n).label("n"))
              .select_from(event_rollups.join(sent, sent.c.id == event_rollups.c.message_id)).where(*rolled_where))
    u = sa.union_all(sends, raw, rolled).subquery("u")

    def total(kind: str) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((u.c.kind == kind, u.c.n), else_=0)), 0).label(kind)

    return (sa.select(_day_text(conn, u.c.day).label("day"), total("send"), total("open"), total("click"))
            .group_by(u.c.day).order_by(u.c.day))


def _scan(conn: sa.Connection, tenant: str, date_from: dt.datetime | None, date_to: dt.datetime | None,
          include_bots: bool, campaign_id: str | None) -> tuple[list[Any], list[Any]]:
    """The (template, type) groups and the daily rows of the messages in range, computed
    from the messages and events themselves: two grouped queries."""
    m = _per_message(tenant, date_from, date_to, include_bots, campaign_id)
    groups = conn.execute(
        sa.select(m.c.template_id, sa.func.max(m.c.template_name).label("template_name"), m.c.type,
                  *_totals(m), _sent_with(m, "bounced"), _sent_with(m, "unsubscribed"),
                  _sent_with(m, "complained"))
        .group_by(m.c.template_id, m.c.type)
    ).all()
    sent_ids = sa.select(messages.c.id, messages.c.sent_at).where(
        *_in_range(tenant, date_from, date_to, campaign_id), messages.c.status == SENT
    ).subquery("s")
    return groups, conn.execute(_per_day(conn, sent_ids, tenant, include_bots)).all()


@functools.lru_cache(maxsize=32)
def _cell_statements(include_bots: bool, campaign: bool, first: bool, end: bool) -> tuple[Any, Any, Any]:
    """The three reads of the cells for one shape of query, built once (bind parameters
    ``tenant``, ``campaign``, ``first``, ``end``): groups by (template, type), sends per
    day, engagement per event day. Without a campaign they read the tenant-wide sums (and,
    without a range either, the per-day engagement sums): a few rows per day."""
    c = stats_messages if campaign else stats_tenant_messages
    d = stats_days if campaign or first or end else stats_tenant_days
    where, day_where = [c.c.tenant_id == sa.bindparam("tenant")], [d.c.tenant_id == sa.bindparam("tenant")]
    if campaign:
        where.append(c.c.campaign_id == sa.bindparam("campaign"))
        day_where.append(d.c.campaign_id == sa.bindparam("campaign"))
    if first:
        where.append(c.c.day >= sa.bindparam("first", type_=sa.Date))
        day_where.append(d.c.send_day >= sa.bindparam("first", type_=sa.Date))
    if end:
        where.append(c.c.day < sa.bindparam("end", type_=sa.Date))
        day_where.append(d.c.send_day < sa.bindparam("end", type_=sa.Date))
    if not include_bots:
        day_where.append(d.c.is_machine.is_(False))
    opened, clicked = (c.c.opened_any, c.c.clicked_any) if include_bots else (c.c.opened, c.c.clicked)
    groups = (
        # a cell folded down to zero messages still holds its name: it names no message in range
        sa.select(c.c.template_id, c.c.type, c.c.status,
                  sa.func.max(sa.case((c.c.messages > 0, c.c.template_name))), sa.func.sum(c.c.messages),
                  sa.func.sum(opened), sa.func.sum(clicked), sa.func.sum(c.c.bounced), sa.func.sum(c.c.unsubscribed),
                  sa.func.sum(c.c.complained))
        .where(*where).group_by(c.c.template_id, c.c.type, c.c.status).having(sa.func.sum(c.c.messages) > 0)
    )
    sends = sa.select(c.c.day, sa.func.sum(c.c.messages)).where(*where, c.c.status == SENT).group_by(c.c.day)
    engaged = (sa.select(d.c.event_day, d.c.type, sa.func.sum(d.c.count)).where(*day_where)
               .group_by(d.c.event_day, d.c.type))
    return groups, sends, engaged


def _cells(conn: sa.Connection, tenant: str, first: dt.date | None, end: dt.date | None,
           include_bots: bool, campaign_id: str | None) -> tuple[list[Any], list[Any]]:
    """The same two results from the pre-aggregated cells (services/stats.py), for the
    messages sent on the whole UTC days ``[first, end)``: a read of a few rows per day."""
    groups, sends, engaged = _cell_statements(include_bots, campaign_id is not None, first is not None,
                                              end is not None)
    params = {"tenant": tenant, "campaign": campaign_id, "first": first, "end": end}
    days = [_Day(_day_str(day), n, 0, 0) for day, n in conn.execute(sends, params)]
    for day, kind, n in conn.execute(engaged, params):
        days.append(_Day(_day_str(day), 0, n if kind == "open" else 0, n if kind == "click" else 0))
    rows = []
    for template_id, kind, status, name, n, opened, clicked, *outcomes in conn.execute(groups, params):
        sent = status == SENT
        rows.append(_Group(template_id or None, name or None, kind or None, n if sent else 0,
                           opened if sent else 0, clicked if sent else 0, 0 if sent else n,
                           *(v if sent else 0 for v in outcomes)))
    return rows, days


_Group = collections.namedtuple(
    "_Group", "template_id template_name type sent opened clicked failed bounced unsubscribed complained")
_Day = collections.namedtuple("_Day", "day send open click")


def _day_str(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.date) else str(value)[:10]


def _midnight_after(moment: dt.datetime) -> dt.datetime:
    """The first UTC midnight at or after ``moment``."""
    moment = moment.astimezone(dt.timezone.utc) if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
    floor = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return floor if floor == moment else floor + dt.timedelta(days=1)


def _midnight_before(moment: dt.datetime) -> dt.datetime:
    moment = moment.astimezone(dt.timezone.utc) if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _split(date_from: dt.datetime | None, date_to: dt.datetime | None
           ) -> tuple[tuple[dt.date | None, dt.date | None] | None, list[tuple[dt.datetime | None, dt.datetime | None]]]:
    """Split ``[date_from, date_to)`` into whole UTC days (read from the cells) and the
    partial days at either end (scanned): ``(days or None, [scanned ranges])``."""
    lo = _midnight_after(date_from) if date_from is not None else None
    hi = _midnight_before(date_to) if date_to is not None else None
    if lo is not None and hi is not None and lo >= hi:
        return None, [(date_from, date_to)]  # within one day: scan it all
    edges = []
    if date_from is not None and lo != date_from:
        edges.append((date_from, lo))
    if date_to is not None and hi != date_to:
        edges.append((hi, date_to))
    return (lo.date() if lo else None, hi.date() if hi else None), edges


def analytics(state: MailTrackState, tenant: str, *, date_from: dt.datetime | None = None,
              date_to: dt.datetime | None = None, include_bots: bool = False,
              campaign_id: str | None = None, use_cells: bool = True) -> dict[str, Any]:
    """The analytics object for one tenant (optionally one campaign), with the funnel
    totals and daily engagement added.

    Whole UTC days of the range are read from the pre-aggregated cells, brought up to date
    first (``stats.fold``: O(changes since the last call)); the partial days at the ends of
    a range that does not start or end at midnight are scanned. ``use_cells=False`` scans
    everything (the reference the cells are tested against)."""
    engine = state.engine
    whole, scanned = _split(date_from, date_to) if use_cells else (None, [(date_from, date_to)])
    groups: list[Any] = []
    days: list[Any] = []
    if use_cells and state.reports_engine is not None:  # fold on the primary, read the replica
        with engine.connect() as primary:
            stale = not stats.up_to_date(primary)
        if stale:
            stats.fold(state)
    if state.reports_engine is not None:
        engine = state.reports_engine
    with engine.connect() as conn:
        if use_cells and state.reports_engine is None and not stats.up_to_date(conn):
            conn.rollback()  # the reads below start a new transaction: they see the fold
            stats.fold(state)
        if scanned and engine.dialect.name == "postgresql":
            # Grouped, index-driven queries that cost more to JIT-compile than to run on
            # PostgreSQL's defaults (measured); LOCAL ends with the transaction.
            conn.execute(sa.text("SET LOCAL jit = off"))
        if whole is not None:
            g, d = _cells(conn, tenant, whole[0], whole[1], include_bots, campaign_id)
            groups += g
            days += d
        for start, end in scanned:
            g, d = _scan(conn, tenant, start, end, include_bots, campaign_id)
            groups += g
            days += d
    return _shape(groups, days)


def _shape(groups: list[Any], day_rows: list[Any]) -> dict[str, Any]:
    fields = ("sent", "opened", "clicked", "failed", "bounced", "unsubscribed", "complained")
    overall = dict.fromkeys(fields, 0)
    by_template: dict[Any, dict[str, Any]] = {}
    by_type: dict[Any, dict[str, Any]] = {}
    for row in groups:  # one row per (template, type) and source: a handful, not one per message
        tpl = by_template.setdefault(row.template_id, {"name": None, **dict.fromkeys(fields, 0)})
        typ = by_type.setdefault(row.type, dict.fromkeys(fields, 0))
        if row.template_name is not None and (tpl["name"] is None or row.template_name > tpl["name"]):
            tpl["name"] = row.template_name
        for name in fields:
            value = int(getattr(row, name))
            overall[name] += value
            tpl[name] += value
            typ[name] += value
    days: dict[str, list[int]] = {}
    for r in day_rows:
        if r.day is None:
            continue
        acc = days.setdefault(_day_str(r.day), [0, 0, 0])
        acc[0] += int(r.send or 0)
        acc[1] += int(r.open or 0)
        acc[2] += int(r.click or 0)
    ordered = sorted(days.items())

    def nulls_last(key: Any) -> tuple[bool, Any]:
        return (key is None, key if key is not None else "")

    sent, failed, bounced = overall["sent"], overall["failed"], overall["bounced"]
    return {
        **_group(overall),
        "failureRate": rate(failed, sent + failed),
        "byTemplate": [{"templateId": key, "templateName": g["name"], **_group(g)}
                       for key, g in sorted(by_template.items(), key=lambda kv: nulls_last(kv[0]))],
        "byType": [{"type": key, **_group(g)} for key, g in sorted(by_type.items(), key=lambda kv: nulls_last(kv[0]))],
        "sendVolumeByDay": [{"date": day, "count": v[0]} for day, v in ordered if v[0]],
        "totalFailed": failed,
        "totalBounced": bounced,
        "totalDelivered": sent - bounced,
        "totalUnsubscribed": overall["unsubscribed"],
        "totalComplained": overall["complained"],
        "bounceRate": rate(bounced, sent),
        "complaintRate": rate(overall["complained"], sent - bounced),
        "engagementByDay": [{"date": day, "opens": v[1], "clicks": v[2]} for day, v in ordered if v[1] or v[2]],
    }


__all__ = ["analytics", "rate"]
