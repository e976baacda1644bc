"""Marketer insights: contact engagement and score, campaign audiences, breakdowns by device
and time, top links across campaigns.

Every answer is one SQL aggregate scoped by tenant first (docs/metrics.md, "Insights").
"People" means human events (``is_machine = false``); ``include_bots`` counts every event.
Bounces and unsubscribes are facts about a message, never filtered as a machine's.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..models import MessageStatus, campaign_links, dnc, event_rollups, events, links, messages, utcnow, utm_tags
from ..state import MailTrackState
from .csv_export import BATCH, neutralise

#: How much one human event adds to a contact's score (before its age is weighed in). Opens
#: weigh little: privacy proxies open most mail, and an open says less than a click.
SCORE_WEIGHTS: dict[str, float] = {"reply": 5.0, "click": 3.0, "forward": 2.0, "open": 0.5}
#: ``(max age in days, factor)``, youngest first: an event's weight is multiplied by the
#: factor of the first step its age fits in; older events count 0.
SCORE_DECAY: tuple[tuple[int, float], ...] = ((7, 1.0), (30, 0.5), (90, 0.25), (365, 0.1))

#: Audience actions and what a contact must have done (with one of its campaign messages).
AUDIENCE_ACTIONS = ("clicked", "opened", "opened_not_clicked", "not_opened", "bounced", "unsubscribed", "complained",
                    "replied")
BREAKDOWNS = ("device", "os", "client", "hour", "weekday")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
AUDIENCE_HEADER = ("contactId", "email", "messageId")

_HUMAN = events.c.is_machine.is_(False)


# -- engagement ------------------------------------------------------------------------------


@dataclass
class Engagement:
    """One contact's engagement (people only)."""

    contact_id: str
    score: float = 0.0
    opens: int = 0
    clicks: int = 0
    replies: int = 0
    forwards: int = 0
    last_human_activity: dt.datetime | None = None
    dnc: bool = False
    dnc_reason: int | None = None
    utm_campaigns: tuple[str, ...] = ()


def _score_expr(now: dt.datetime) -> sa.ColumnElement[Any]:
    weight = sa.case(*((events.c.type == t, sa.literal(w)) for t, w in SCORE_WEIGHTS.items()), else_=sa.literal(0.0))
    decay = sa.case(
        *((events.c.occurred_at >= sa.literal(now - dt.timedelta(days=days), events.c.occurred_at.type),
           sa.literal(factor)) for days, factor in SCORE_DECAY),
        else_=sa.literal(0.0),
    )
    return sa.func.coalesce(sa.func.sum(weight * decay), 0)


def engagement(state: MailTrackState, tenant: str, contact_ids: Sequence[str], *,
               now: dt.datetime | None = None) -> list[Engagement]:
    """Engagement of each contact in ``contact_ids`` (in that order, duplicates dropped):
    three IN-queries for the whole list, the event one along ``ix_mailtrack_events_contact``."""
    ids = list(dict.fromkeys(contact_ids))
    out = {cid: Engagement(cid) for cid in ids}
    if not ids:
        return []
    now = now or utcnow()
    t = events.c.type
    rows = state.reads.execute(
        sa.select(
            events.c.contact_id,
            _score_expr(now).label("score"),
            sa.func.count().filter(t == "open").label("opens"),
            sa.func.count().filter(t == "click").label("clicks"),
            sa.func.count().filter(t == "reply").label("replies"),
            sa.func.count().filter(t == "forward").label("forwards"),
            sa.func.max(events.c.occurred_at).label("last"),
        )
        .where(events.c.tenant_id == tenant, events.c.contact_id.in_(ids), _HUMAN,
               t.in_(list(SCORE_WEIGHTS)))
        .group_by(events.c.contact_id)
    )
    for r in rows:
        e = out[r.contact_id]
        e.score = round(float(r.score or 0), 2)
        e.opens, e.clicks, e.replies, e.forwards = int(r.opens), int(r.clicks), int(r.replies), int(r.forwards)
        e.last_human_activity = r.last
    for cid, reason in state.reads.execute(
            sa.select(dnc.c.contact_id, dnc.c.reason)
            .where(dnc.c.tenant_id == tenant, dnc.c.channel == "email", dnc.c.contact_id.in_(ids))):
        out[cid].dnc, out[cid].dnc_reason = True, int(reason)
    campaigns: dict[str, list[str]] = {}
    for cid, campaign in state.reads.execute(
            sa.select(utm_tags.c.contact_id, utm_tags.c.utm_campaign).distinct()
            .where(utm_tags.c.tenant_id == tenant, utm_tags.c.contact_id.in_(ids),
                   utm_tags.c.utm_campaign.is_not(None))
            .order_by(utm_tags.c.contact_id, utm_tags.c.utm_campaign)):
        campaigns.setdefault(cid, []).append(campaign)
    for cid, names in campaigns.items():
        out[cid].utm_campaigns = tuple(names)
    return list(out.values())


# -- audiences -------------------------------------------------------------------------------


def _has(types: Sequence[str], *, human: bool, link_id: str | None = None) -> sa.ColumnElement[bool]:
    """The message (``messages.c.id``) has an event of ``types``, in the log or rolled up."""
    raw = [events.c.message_id == messages.c.id, events.c.type.in_(list(types))]
    rolled = [event_rollups.c.message_id == messages.c.id, event_rollups.c.type.in_(list(types))]
    if human:
        raw.append(_HUMAN)
        rolled.append(event_rollups.c.is_machine.is_(False))
    if link_id is not None:
        raw.append(events.c.link_id == link_id)
        rolled.append(event_rollups.c.link_id == link_id)
    return sa.or_(sa.exists().where(*raw), sa.exists().where(*rolled))


def _flag(cond: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.func.max(sa.case((cond, 1), else_=0))


def audience_query(tenant: str, campaign_id: str, action: str, *, link_id: str | None = None,
                   include_bots: bool = False) -> sa.Select[Any]:
    """Contacts of the campaign's sent messages who did ``action``, ordered by contact id.

    Decided per contact over its sent messages of the campaign: ``clicked`` (a link, or
    ``link_id``), ``opened`` (an open or a click), ``opened_not_clicked``, ``not_opened``
    (a delivered message and no open or click), ``bounced``, ``unsubscribed``, ``complained``
    (a spam report), ``replied`` (a person's reply; auto-replies are not)."""
    if action not in AUDIENCE_ACTIONS:
        raise ValueError(f"unknown audience action: {action}")
    human = not include_bots
    opened = _flag(_has(("open", "click"), human=human))
    clicked = _flag(_has(("click",), human=human, link_id=link_id))
    having = {
        "clicked": lambda: clicked == 1,
        "opened": lambda: opened == 1,
        "opened_not_clicked": lambda: sa.and_(opened == 1, clicked == 0),
        "not_opened": lambda: sa.and_(opened == 0, _flag(~_has(("bounce",), human=False)) == 1),
        "bounced": lambda: _flag(_has(("bounce",), human=False)) == 1,
        "unsubscribed": lambda: _flag(_has(("unsubscribe",), human=False)) == 1,
        "complained": lambda: _flag(_has(("complaint",), human=False)) == 1,
        "replied": lambda: _flag(_has(("reply",), human=False)) == 1,
    }[action]()
    return (
        sa.select(messages.c.contact_id, sa.func.min(messages.c.email).label("email"),
                  sa.func.min(messages.c.id).label("message_id"))
        .where(messages.c.tenant_id == tenant, messages.c.campaign_id == campaign_id,
               messages.c.status == MessageStatus.SENT.value)
        .group_by(messages.c.contact_id)
        .having(having)
        .order_by(messages.c.contact_id)
    )


def audience_page(state: MailTrackState, query: sa.Select[Any], *, after: str | None, limit: int) -> list[sa.Row[Any]]:
    """One keyset page (``limit + 1`` rows) of an audience: contacts after ``after``."""
    if after is not None:
        query = query.where(messages.c.contact_id > after)
    return list(state.reads.execute(query.limit(limit + 1)).all())


def stream_audience_csv(state: MailTrackState, query: sa.Select[Any]) -> Iterator[str]:
    """The whole audience as CSV (header, then one line per contact), read through a
    server-side cursor in batches; cells that a spreadsheet could run are neutralised."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC)
    yield ",".join(AUDIENCE_HEADER) + "\r\n"
    with (state.reports_engine or state.engine).connect() as conn:
        for row in conn.execution_options(stream_results=True, yield_per=BATCH).execute(query):
            buffer.seek(0)
            buffer.truncate()
            writer.writerow([neutralise(v or "") for v in (row.contact_id, row.email, row.message_id)])
            yield buffer.getvalue()


# -- breakdowns ------------------------------------------------------------------------------


def _bucket(dialect: str, by: str) -> sa.ColumnElement[Any]:
    if by in ("device", "os", "client"):
        key = "type" if by == "device" else by
        return events.c.details[("device", key)].as_string()
    at = events.c.occurred_at
    if dialect == "postgresql":
        utc = sa.func.timezone("UTC", at)
        return sa.cast(sa.extract("hour" if by == "hour" else "isodow", utc), sa.Integer)
    # SQLite stores naive UTC text: strftime reads it as UTC. %w: 0 = Sunday.
    return sa.cast(sa.func.strftime("%H" if by == "hour" else "%w", at), sa.Integer)


def breakdown(state: MailTrackState, tenant: str, campaign_id: str, by: str, *,
              include_bots: bool = False) -> list[dict[str, Any]]:
    """Opens and clicks of the campaign per bucket: ``opens``/``clicks`` count events,
    ``uniqueOpens``/``uniqueClicks`` distinct messages. Hours (UTC, ``"00"``-``"23"``) and
    weekdays (``"monday"``...) are all listed, zeros included; device, OS and client list the
    values seen, most opens first, ``"unknown"`` where the user agent told nothing."""
    if by not in BREAKDOWNS:
        raise ValueError(f"unknown breakdown: {by}")
    bucket = _bucket(state.engine.dialect.name, by).label("bucket")
    t = events.c.type
    conds = [events.c.tenant_id == tenant, events.c.campaign_id == campaign_id, t.in_(["open", "click"])]
    if not include_bots:
        conds.append(_HUMAN)
    rows = state.reads.execute(
        sa.select(bucket,
                  sa.func.count().filter(t == "open").label("opens"),
                  sa.func.count().filter(t == "click").label("clicks"),
                  sa.func.count(sa.distinct(sa.case((t == "open", events.c.message_id)))).label("u_opens"),
                  sa.func.count(sa.distinct(sa.case((t == "click", events.c.message_id)))).label("u_clicks"))
        .where(*conds).group_by(bucket)
    ).all()

    def item(name: str, r: Any = None) -> dict[str, Any]:
        return {"bucket": name, "opens": int(r.opens) if r else 0, "clicks": int(r.clicks) if r else 0,
                "uniqueOpens": int(r.u_opens) if r else 0, "uniqueClicks": int(r.u_clicks) if r else 0}

    if by == "hour":
        found = {int(r.bucket): r for r in rows if r.bucket is not None}
        return [item(f"{h:02d}", found.get(h)) for h in range(24)]
    if by == "weekday":
        # PostgreSQL's isodow is 1-7 from Monday, SQLite's %w 0-6 from Sunday: both to 0-6 from Monday.
        pg = state.engine.dialect.name == "postgresql"
        found = {(int(r.bucket) - 1) % 7 if pg else (int(r.bucket) + 6) % 7: r for r in rows if r.bucket is not None}
        return [item(name, found.get(i)) for i, name in enumerate(WEEKDAYS)]
    merged: dict[str, dict[str, Any]] = {}
    for r in rows:
        name = r.bucket or "unknown"
        acc = merged.setdefault(name, item(name))
        for key, value in item(name, r).items():
            if key != "bucket":
                acc[key] += value
    return sorted(merged.values(), key=lambda x: (-x["opens"], -x["clicks"], x["bucket"]))


# -- links -----------------------------------------------------------------------------------


def top_links(state: MailTrackState, tenant: str, *, limit: int = 20) -> list[sa.Row[Any]]:
    """The most clicked links across campaigns: people's clicks (``clicks``, and distinct
    contacts ``unique_clicks``) and every click (``all_clicks``, ``all_unique_clicks``),
    with the number of campaigns that carry the link. Clicks a purge rolled up count in the
    totals (they name no contact, so not in the uniques). The hidden honeypot link (no
    link id) is never listed. People's clicks first, then all clicks, then the URL."""
    human = events.c.is_machine.is_(False)
    raw = sa.select(
        events.c.link_id.label("link_id"),
        sa.func.count().filter(human).label("clicks"),
        sa.func.count().label("all_clicks"),
        sa.func.count(sa.distinct(sa.case((human, events.c.contact_id)))).label("unique_clicks"),
        sa.func.count(sa.distinct(events.c.contact_id)).label("all_unique_clicks"),
        sa.func.max(events.c.url).label("url"),
    ).where(events.c.tenant_id == tenant, events.c.type == "click", events.c.link_id.is_not(None)) \
        .group_by(events.c.link_id)
    rolled = sa.select(
        event_rollups.c.link_id.label("link_id"),
        sa.func.sum(sa.case((event_rollups.c.is_machine.is_(False), event_rollups.c.count), else_=0)).label("clicks"),
        sa.func.sum(event_rollups.c.count).label("all_clicks"),
        sa.literal(0).label("unique_clicks"), sa.literal(0).label("all_unique_clicks"),
        sa.null().label("url"),
    ).where(event_rollups.c.tenant_id == tenant, event_rollups.c.type == "click", event_rollups.c.link_id != "") \
        .group_by(event_rollups.c.link_id)
    both = sa.union_all(raw, rolled).subquery()
    agg = sa.select(
        both.c.link_id,
        sa.func.sum(both.c.clicks).label("clicks"), sa.func.sum(both.c.all_clicks).label("all_clicks"),
        sa.func.sum(both.c.unique_clicks).label("unique_clicks"),
        sa.func.sum(both.c.all_unique_clicks).label("all_unique_clicks"),
        sa.func.max(both.c.url).label("url"),
    ).group_by(both.c.link_id).subquery()

    carried = (sa.select(sa.func.count()).where(campaign_links.c.tenant_id == tenant,
                                                campaign_links.c.link_id == agg.c.link_id)
               .scalar_subquery())
    # A click recorded from outside (record_event, the events API) has a link id but no
    # tracked link: its URL is the event's own.
    url = sa.func.coalesce(links.c.url, agg.c.url)
    return list(state.reads.execute(
        sa.select(agg.c.link_id, url.label("url"), agg.c.clicks, agg.c.unique_clicks, agg.c.all_clicks,
                  agg.c.all_unique_clicks, carried.label("campaigns"))
        .select_from(agg.outerjoin(links, links.c.id == agg.c.link_id))
        .order_by(agg.c.clicks.desc(), agg.c.all_clicks.desc(), url, agg.c.link_id)
        .limit(limit)
    ).all())


__all__ = ["AUDIENCE_ACTIONS", "BREAKDOWNS", "SCORE_DECAY", "SCORE_WEIGHTS", "Engagement", "audience_page",
           "audience_query", "breakdown", "engagement", "stream_audience_csv", "top_links"]
