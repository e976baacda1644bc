"""Every number the dashboard shows, in one place.

The dashboard is a client of crm_mailtrack: where the extension's JSON API has the
figure, it is read from the API in-process (with the demo's bearer token, exactly as an
external client would), and the page says so. Campaign funnels, daily send volume and
daily engagement (people and machines) come from ``GET /api/communications/analytics``
(with ``campaignId`` for one campaign, once for people and once with ``include_bots=true``).
Figures the API has no endpoint for yet (the contact list's DNC/UTM/engagement columns, top
links across all campaigns) are SQL aggregates over the extension's tables here, so moving them to an endpoint later is a change in this module
only. Each function appends what it used to ``g.metric_sources``.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from flask import current_app, g
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from crm_mailtrack.models import dnc, events, messages, utm_tags

from .models import Campaign, Contact, db

HUMAN = events.c.is_machine == sa.false()


# -- in-process API client -----------------------------------------------------------------


def _note(source: str) -> None:
    sources = g.setdefault("metric_sources", [])
    if source not in sources:
        sources.append(source)


def api_prefix() -> str:
    return current_app.extensions["mailtrack"].url_prefix + "/api"


def has_api_route(path: str) -> bool:
    """Whether the extension serves ``GET path`` (endpoints land issue by issue)."""
    adapter = current_app.url_map.bind("localhost")
    try:
        endpoint, _ = adapter.match(path, method="GET")
    except (NotFound, MethodNotAllowed, RequestRedirect):
        return False
    return str(endpoint).startswith("mailtrack_api.")


def api_get(path: str, *, source: str | None = None, **params: Any) -> Any | None:
    """``GET <prefix>/api<path>`` in-process with the demo token; ``None`` when the
    extension has no such route yet or it does not answer 200. ``source`` is what the
    page footer lists (default: the path)."""
    full = api_prefix() + path
    if not has_api_route(full):
        return None
    from . import API_TOKEN

    with current_app.test_client() as client:
        resp = client.get(full, query_string={k: v for k, v in params.items() if v is not None},
                          headers={"Authorization": f"Bearer {API_TOKEN}", "Accept": "application/json"})
    if resp.status_code != 200:
        current_app.logger.warning("API %s answered %s: %s", full, resp.status_code, resp.get_data(as_text=True)[:200])
        return None
    _note(f"API GET {full}{source or ''}")
    return resp.get_json()


def _sql(name: str) -> None:
    _note(f"SQL example_app/metrics.py:{name}")


# -- campaigns -------------------------------------------------------------------------------


@dataclass
class Funnel:
    """A campaign's funnel; ``*_h`` count people only, ``*_all`` include machine events.
    ``forwarded`` and ``suppressed`` come from the campaign's message records (campaign
    page only)."""

    campaign_id: str
    sent: int = 0
    bounced: int = 0
    delivered: int = 0
    opened_h: int = 0
    opened_all: int = 0
    clicked_h: int = 0
    clicked_all: int = 0
    unsubscribed: int = 0
    forwarded: int = 0
    suppressed: int = 0
    failed: int = 0

    def steps(self) -> list[dict[str, Any]]:
        """Rows of the funnel table and chart, in order."""
        return [
            {"key": "sent", "label": "Sent", "human": self.sent, "all": self.sent},
            {"key": "delivered", "label": "Delivered", "human": self.delivered, "all": self.delivered},
            {"key": "opened", "label": "Opened", "human": self.opened_h, "all": self.opened_all},
            {"key": "clicked", "label": "Clicked", "human": self.clicked_h, "all": self.clicked_all},
            {"key": "unsubscribed", "label": "Unsubscribed", "human": self.unsubscribed, "all": self.unsubscribed},
        ]

    def rate(self, part: int) -> float:
        return part / self.delivered if self.delivered else 0.0


def _distinct_when(cond: Any, col: Any = events.c.message_id) -> Any:
    return sa.func.count(sa.distinct(sa.case((cond, col))))


def campaign_analytics(campaign_id: str | None = None, *, include_bots: bool = False) -> dict[str, Any] | None:
    """``GET /api/communications/analytics`` (all time; one campaign's messages with
    ``campaignId``), fetched once per request and variant; ``None`` without the endpoint."""
    cache = g.setdefault("analytics_cache", {})
    key = (campaign_id, include_bots)
    if key not in cache:
        parts = (["campaignId=<campaign>"] if campaign_id is not None else []) + (
            ["include_bots=true"] if include_bots else [])
        query = "?" + "&".join(parts) if parts else ""
        cache[key] = api_get("/communications/analytics", source=query, campaignId=campaign_id,
                             include_bots="true" if include_bots else None)
    return cache[key]


def funnel(campaign_id: str) -> Funnel:
    """A campaign's funnel from the analytics API: people, then with ``include_bots=true``
    (sent, delivered, bounced, failed and unsubscribed are the same in both)."""
    people = campaign_analytics(campaign_id)
    everyone = campaign_analytics(campaign_id, include_bots=True)
    if people is None or everyone is None:
        return Funnel(campaign_id)  # an extension without the endpoint: nothing to show
    return Funnel(
        campaign_id, sent=people["totalSent"], bounced=people["totalBounced"], delivered=people["totalDelivered"],
        opened_h=people["totalOpened"], opened_all=everyone["totalOpened"],
        clicked_h=people["totalClicked"], clicked_all=everyone["totalClicked"],
        unsubscribed=people["totalUnsubscribed"], failed=people["totalFailed"])


def funnels(campaign_ids: list[str]) -> dict[str, Funnel]:
    """Funnels of the given campaigns (two API calls each)."""
    return {cid: funnel(cid) for cid in campaign_ids}


def add_message_counts(f: Funnel, rows: list[dict[str, Any]]) -> Funnel:
    """Fill ``suppressed`` and ``forwarded`` from the campaign's message rows
    (``campaign_messages``), which the campaign page has fetched anyway."""
    f.suppressed = sum(1 for r in rows if r["status"] == "SUPPRESSED")
    f.forwarded = sum(1 for r in rows if r["forwards"])
    return f


def campaigns_overview() -> list[tuple[Campaign, Funnel]]:
    """Every campaign of the CRM, newest first, with its funnel."""
    rows = db.session.execute(db.select(Campaign).order_by(Campaign.sent_at.desc(), Campaign.id.desc())).scalars().all()
    data = funnels([c.slug for c in rows])
    return [(c, data[c.slug]) for c in rows]


def campaign_messages(campaign_id: str) -> list[dict[str, Any]]:
    """The campaign's messages with each one's human opens and clicks, and machine events:
    ``GET /api/communications/dynamic-search?campaignId=...`` (people, then
    ``include_bots=true``) when the extension has it, else SQL."""
    people = _search_all(campaign_id, include_bots=False)
    everyone = _search_all(campaign_id, include_bots=True) if people is not None else None
    if people is not None and everyone is not None:
        def totals(rec: dict[str, Any]) -> tuple[int, int]:
            return int(rec.get("openCount") or 0), sum(int(x.get("clickCount") or 0) for x in rec.get("clickedLinks") or [])

        all_counts = {rec["id"]: totals(rec) for rec in everyone}
        rows = []
        for rec in people:
            opens, clicks = totals(rec)
            all_opens, all_clicks = all_counts.get(rec["id"], (opens, clicks))
            rows.append({
                "id": rec["id"], "contact_id": rec.get("contactId"), "email": (rec.get("recipients") or [""])[0],
                "status": rec.get("status"), "sent_at": rec.get("sentAt"), "opens": opens, "clicks": clicks,
                "machine": all_opens + all_clicks - opens - clicks,
                "bounces": sum(1 for e in rec.get("events") or [] if str(e.get("type")).upper() == "BOUNCE"),
                "forwards": sum(1 for e in rec.get("events") or [] if str(e.get("type")).upper() == "FORWARD"),
            })
        rows.sort(key=lambda r: r["email"])
        return rows
    return _campaign_messages_sql(campaign_id)


def _search_all(campaign_id: str, *, include_bots: bool) -> list[dict[str, Any]] | None:
    """Every message record of a campaign from the communications search API (all pages)."""
    out: list[dict[str, Any]] = []
    page = 0
    while True:
        data = api_get("/communications/dynamic-search", campaignId=campaign_id, size=500, page=page,
                       include_bots="true" if include_bots else "false")
        if data is None:
            return None
        out.extend(data.get("content", []))
        if data.get("last", True):
            return out
        page += 1


def _campaign_messages_sql(campaign_id: str) -> list[dict[str, Any]]:
    t = events.c.type
    counts = sa.select(
        events.c.message_id,
        sa.func.count().filter(sa.and_(t == "open", HUMAN)).label("opens"),
        sa.func.count().filter(sa.and_(t == "click", HUMAN)).label("clicks"),
        sa.func.count().filter(events.c.is_machine == sa.true()).label("machine"),
        sa.func.count().filter(t == "bounce").label("bounces"),
        sa.func.count().filter(t == "forward").label("forwards"),
    ).where(events.c.campaign_id == campaign_id).group_by(events.c.message_id).subquery()
    q = (
        sa.select(messages.c.id, messages.c.contact_id, messages.c.email, messages.c.status, messages.c.sent_at,
                  sa.func.coalesce(counts.c.opens, 0), sa.func.coalesce(counts.c.clicks, 0),
                  sa.func.coalesce(counts.c.machine, 0), sa.func.coalesce(counts.c.bounces, 0),
                  sa.func.coalesce(counts.c.forwards, 0))
        .select_from(messages.outerjoin(counts, counts.c.message_id == messages.c.id))
        .where(messages.c.tenant_id == "", messages.c.campaign_id == campaign_id)
        .order_by(messages.c.email)
    )
    _sql("campaign_messages")
    keys = ("id", "contact_id", "email", "status", "sent_at", "opens", "clicks", "machine", "bounces", "forwards")
    return [dict(zip(keys, row)) for row in db.session.execute(q)]


def top_links(campaign_id: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
    """Most clicked links: human clicks, unique humans, and all clicks (with machines).

    For one campaign this is ``GET /api/campaigns/<id>/links`` when the extension has it.
    """
    if campaign_id is not None:
        people = api_get(f"/campaigns/{campaign_id}/links")
        everyone = api_get(f"/campaigns/{campaign_id}/links", include_bots="true")
        if people is not None and everyone is not None:
            totals = {x["link_id"]: x["total_clicks"] for x in everyone.get("links", [])}
            items = [{"url": x["url"], "link_id": x["link_id"], "clicks": x["total_clicks"],
                      "unique": x["unique_clicks"], "all": totals.get(x["link_id"], 0)}
                     for x in people.get("links", [])]
            items.sort(key=lambda x: (-x["clicks"], -x["all"], x["url"]))
            return items[:limit]
    q = (
        sa.select(
            events.c.link_id, sa.func.max(events.c.url),
            sa.func.count().filter(HUMAN),
            sa.func.count(sa.distinct(sa.case((HUMAN, events.c.contact_id)))),
            sa.func.count(),
        )
        .where(events.c.tenant_id == "", events.c.type == "click", events.c.link_id.is_not(None))  # not the honeypot
        .group_by(events.c.link_id)
        .order_by(sa.func.count().filter(HUMAN).desc(), sa.func.count().desc(), sa.func.max(events.c.url))
        .limit(limit)
    )
    if campaign_id is not None:
        q = q.where(events.c.campaign_id == campaign_id)
    _sql("top_links")
    return [{"link_id": r[0], "url": r[1], "clicks": r[2], "unique": r[3], "all": r[4]} for r in db.session.execute(q)]


# -- time series -------------------------------------------------------------------------------


@dataclass
class Day:
    day: dt.date
    sent: int = 0
    opens_h: int = 0
    opens_m: int = 0
    clicks_h: int = 0
    clicks_m: int = 0


def daily(start: dt.date, end: dt.date, campaign_id: str | None = None) -> list[Day]:
    """Sends, opens and clicks per UTC day from ``start`` to ``end`` inclusive (every day
    present, zeros included), people and machines apart: ``sendVolumeByDay`` and
    ``engagementByDay`` of the analytics API, for people and with ``include_bots=true``
    (machine = all - people). All time: the chart window is cut here."""
    people = campaign_analytics(campaign_id) or {}
    everyone = campaign_analytics(campaign_id, include_bots=True) or {}
    out = {start + dt.timedelta(days=i): Day(start + dt.timedelta(days=i)) for i in range((end - start).days + 1)}

    def days(data: dict[str, Any], key: str) -> list[tuple[Day, dict[str, Any]]]:
        pairs = ((out.get(dt.date.fromisoformat(str(x["date"])[:10])), x) for x in data.get(key, []))
        return [(d, x) for d, x in pairs if d is not None]

    for d, x in days(people, "sendVolumeByDay"):
        d.sent = int(x["count"])
    for d, x in days(people, "engagementByDay"):
        d.opens_h, d.clicks_h = int(x["opens"]), int(x["clicks"])
    for d, x in days(everyone, "engagementByDay"):
        d.opens_m, d.clicks_m = int(x["opens"]) - d.opens_h, int(x["clicks"]) - d.clicks_h
    return list(out.values())


def last_day(campaign_id: str | None = None) -> dt.date | None:
    """The latest UTC day with a send, open or click (machines included), from the
    analytics API."""
    data = campaign_analytics(campaign_id, include_bots=True) or {}
    dates = [str(x["date"])[:10] for key in ("sendVolumeByDay", "engagementByDay") for x in data.get(key, [])]
    return dt.date.fromisoformat(max(dates)) if dates else None


def analytics() -> dict[str, Any]:
    """Totals and rates for the dashboard header: ``GET /api/communications/analytics``
    when the extension has it, else the same definitions in SQL (human events; rates over
    sent messages)."""
    data = campaign_analytics()
    if data is not None:
        return {"totalSent": data["totalSent"], "totalOpened": data["totalOpened"],
                "totalClicked": data["totalClicked"], "openRate": data["openRate"],
                "clickRate": data["clickRate"], "failureRate": data.get("failureRate", 0.0), "source": "api"}
    t = events.c.type
    row = db.session.execute(sa.select(
        _distinct_when(t == "send"),
        _distinct_when(sa.and_(t == "open", HUMAN)),
        _distinct_when(sa.and_(t == "click", HUMAN)),
        _distinct_when(t == "failed"),
    ).where(events.c.tenant_id == "")).one()
    sent, opened, clicked, failed = row
    _sql("analytics")
    return {"totalSent": sent, "totalOpened": opened, "totalClicked": clicked,
            "openRate": opened / sent if sent else 0.0, "clickRate": clicked / sent if sent else 0.0,
            "failureRate": failed / (sent + failed) if sent + failed else 0.0, "source": "sql"}


# -- contacts ------------------------------------------------------------------------------


@dataclass
class ContactRow:
    contact: Contact
    dnc_reason: int | None = None
    utm_campaigns: list[str] = field(default_factory=list)
    opens: int = 0
    clicks: int = 0
    last_activity: dt.datetime | None = None


def contacts(search: str = "") -> list[ContactRow]:
    """The CRM's contacts matching ``search`` (name, email, company), with DNC state, UTM
    campaigns and human engagement; three IN-queries for the page, no per-row query."""
    q = db.select(Contact).order_by(Contact.last_name, Contact.first_name)
    if search:
        like = f"%{search.strip().lower()}%"
        q = q.where(sa.or_(*(sa.func.lower(col).like(like) for col in
                             (Contact.first_name, Contact.last_name, Contact.email, Contact.company,
                              Contact.first_name + " " + Contact.last_name))))
    people = db.session.execute(q).scalars().all()
    rows = {str(c.id): ContactRow(c) for c in people}
    ids = list(rows)
    if not ids:
        return []
    for cid, reason in db.session.execute(
            sa.select(dnc.c.contact_id, dnc.c.reason).where(dnc.c.tenant_id == "", dnc.c.channel == "email",
                                                            dnc.c.contact_id.in_(ids))):
        rows[cid].dnc_reason = reason
    for cid, campaign in db.session.execute(
            sa.select(utm_tags.c.contact_id, utm_tags.c.utm_campaign).distinct()
            .where(utm_tags.c.tenant_id == "", utm_tags.c.contact_id.in_(ids)).order_by(utm_tags.c.utm_campaign)):
        if campaign:
            rows[cid].utm_campaigns.append(campaign)
    t = events.c.type
    for cid, opens, clicks, last in db.session.execute(
            sa.select(events.c.contact_id, sa.func.count().filter(sa.and_(t == "open", HUMAN)),
                      sa.func.count().filter(sa.and_(t == "click", HUMAN)), sa.func.max(events.c.occurred_at))
            .where(events.c.tenant_id == "", events.c.contact_id.in_(ids)).group_by(events.c.contact_id)):
        row = rows[cid]
        row.opens, row.clicks, row.last_activity = opens, clicks, last
    _sql("contacts")
    return list(rows.values())


def contact_dnc(contact_id: str) -> list[dict[str, Any]]:
    """``GET /api/contacts/<id>/dnc`` (``doNotContact`` items), else the same from SQL."""
    data = api_get(f"/contacts/{contact_id}/dnc")
    if data is not None:
        return data["doNotContact"]
    _sql("contact_dnc")
    return [{"id": r.id, "channel": r.channel, "reason": r.reason, "channelId": r.channel_id,
             "comments": r.comments, "dateAdded": r.date_added}
            for r in db.session.execute(sa.select(dnc).where(dnc.c.tenant_id == "", dnc.c.contact_id == contact_id))]


def contact_utm(contact_id: str) -> list[dict[str, Any]]:
    """``GET /api/contacts/<id>/utm`` (``utmtags`` items), else the same from SQL."""
    data = api_get(f"/contacts/{contact_id}/utm")
    if data is not None:
        return data["utmtags"]
    _sql("contact_utm")
    return [{"id": r.id, "utm_campaign": r.utm_campaign, "utm_source": r.utm_source,
             "utm_medium": r.utm_medium, "url": r.url, "dateAdded": r.date_added}
            for r in db.session.execute(sa.select(utm_tags).where(utm_tags.c.tenant_id == "",
                                                                  utm_tags.c.contact_id == contact_id)
                                        .order_by(utm_tags.c.id))]


def timeline(contact_id: str, limit: int = 200) -> list[dict[str, Any]]:
    """The contact's activity, newest first, in the activity API's item shape:
    ``GET /api/contacts/<id>/activity`` when present, else SQL. ``isBot`` marks machine
    events and ``machineReason`` says why (both in the API item)."""
    data = api_get(f"/contacts/{contact_id}/activity", limit=limit, include_bots="true")
    if data is not None:
        return data["events"]
    q = (sa.select(events).where(events.c.tenant_id == "", events.c.contact_id == contact_id)
         .order_by(events.c.occurred_at.desc(), events.c.id.desc()).limit(limit))
    _sql("timeline")
    return [{"id": r.id, "event": r.type, "eventType": r.type, "timestamp": r.occurred_at,
             "contactId": r.contact_id, "email": r.email, "messageId": r.message_id,
             "campaignId": r.campaign_id, "url": r.url, "isBot": bool(r.is_machine),
             "machineReason": r.machine_reason, "details": r.details}
            for r in db.session.execute(q)]


def message_links(message_id: str, *, contact_id: str) -> list[dict[str, Any]]:
    """Each clicked link of a message with its human and machine clicks, in order of first
    click: the click events of the message from ``GET /api/contacts/<id>/activity``
    (``include_bots=true``, the message id as search term, then exactly its events), counted
    per URL by ``isBot``; else SQL. The hidden honeypot link has no URL."""
    clicks = _message_clicks(message_id, contact_id)
    if clicks is not None:
        out: dict[str | None, dict[str, Any]] = {}
        for e in sorted(clicks, key=lambda e: (str(e["timestamp"]), e["id"])):
            row = out.setdefault(e["url"], {"url": e["url"], "human": 0, "machine": 0})
            row["machine" if e["isBot"] else "human"] += 1
        return list(out.values())
    q = (sa.select(sa.func.max(events.c.url), sa.func.count().filter(HUMAN),
                   sa.func.count().filter(events.c.is_machine == sa.true()))
         .where(events.c.message_id == message_id, events.c.type == "click").group_by(events.c.link_id)
         .order_by(sa.func.min(events.c.occurred_at), sa.func.min(events.c.id)))
    _sql("message_links")
    return [{"url": r[0], "human": r[1], "machine": r[2]} for r in db.session.execute(q)]


def _message_clicks(message_id: str, contact_id: str) -> list[dict[str, Any]] | None:
    """Every click activity item of one message, people and machines (all pages); ``None``
    without the endpoint."""
    out: list[dict[str, Any]] = []
    page = 1
    while True:
        data = api_get(f"/contacts/{contact_id}/activity", source="?filters[search]=<message>&include_bots=true",
                       include_bots="true", limit=500, page=page,
                       **{"filters[search]": message_id, "filters[includeEvents]": "click"})
        if data is None:
            return None
        out.extend(e for e in data["events"] if e.get("messageId") == message_id)
        if page >= data["maxPages"]:
            return out
        page += 1
