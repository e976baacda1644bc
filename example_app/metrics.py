"""Every number the dashboard shows, in one place.

The CRM is a client of crm_mailtrack's JSON API and nothing else: every figure is read from
the API in-process (the app's test client with the demo's bearer token, exactly the
request an external client would send), never from the extension's tables. Campaign funnels,
rates, daily send volume and engagement come from ``GET /api/communications/analytics``
(with ``campaignId`` for one campaign, once for people and once with ``include_bots=true``);
the contact list from ``GET /api/contacts/engagement``; top links from ``GET /api/links`` and
``GET /api/campaigns/<id>/links``. Audiences, breakdowns, the campaign comparison and the
thread are in ``insights``. Each function appends the calls it made to
``g.metric_sources`` (the page footer lists them).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from flask import current_app, g

from .models import Campaign, Contact, db

#: How many contacts one engagement call may name (the API's limit).
ENGAGEMENT_PAGE = 500


# -- in-process API client -----------------------------------------------------------------


def _note(source: str) -> None:
    sources = g.setdefault("metric_sources", [])
    if source not in sources:
        sources.append(source)


def api_prefix() -> str:
    return current_app.config["MAILTRACK_URL_PREFIX"].rstrip("/") + "/api"


class APIError(RuntimeError):
    """The extension's API did not answer 200 (the page shows an error instead of numbers)."""


def api_csv(path: str, **params: Any) -> tuple[bytes, str]:
    """``GET <prefix>/api<path>`` with ``Accept: text/csv``: the API's CSV as it sent it, and
    its ``Content-Disposition`` (the CRM's download buttons hand both on unchanged)."""
    from . import API_TOKEN

    full = api_prefix() + path
    with current_app.test_client() as client:
        resp = client.get(full, query_string={k: v for k, v in params.items() if v is not None},
                          headers={"Authorization": f"Bearer {API_TOKEN}", "Accept": "text/csv"})
    if resp.status_code != 200 or not resp.mimetype == "text/csv":
        raise APIError(f"API {full} answered {resp.status_code} {resp.mimetype}")
    return resp.get_data(), resp.headers.get("Content-Disposition", "attachment")


def api_get(path: str, *, source: str | None = None, **params: Any) -> Any:
    """``GET <prefix>/api<path>`` in-process with the demo token; the JSON answer.
    ``source`` is what the page footer lists (default: the path)."""
    from . import API_TOKEN

    full = api_prefix() + path
    with current_app.test_client() as client:
        resp = client.get(full, query_string={k: v for k, v in params.items() if v is not None},
                          headers={"Authorization": f"Bearer {API_TOKEN}", "Accept": "application/json"})
    if resp.status_code != 200:
        raise APIError(f"API {full} answered {resp.status_code}: {resp.get_data(as_text=True)[:200]}")
    _note(f"API GET {full}{source or ''}")
    return resp.get_json()


# -- campaigns -------------------------------------------------------------------------------


@dataclass
class Funnel:
    """A campaign's funnel; ``*_h`` count people only, ``*_all`` include machine events.
    ``forwarded`` and ``suppressed`` come from the campaign's message records (campaign
    page only); ``complained`` is ``None`` while the analytics API has no
    ``totalComplained``."""

    campaign_id: str
    sent: int = 0
    bounced: int = 0
    delivered: int = 0
    opened_h: int = 0
    opened_all: int = 0
    clicked_h: int = 0
    clicked_all: int = 0
    unsubscribed: int = 0
    complained: int | None = None
    forwarded: int = 0
    suppressed: int = 0
    failed: int = 0
    open_rate: float = 0.0
    click_rate: float = 0.0
    click_to_open_rate: float = 0.0

    def steps(self) -> list[dict[str, Any]]:
        """Rows of the funnel table and chart, in order. ``of`` names the step a row is a
        share of (sent for bounced and delivered, delivered for the rest; none for sent)."""
        steps = [
            {"key": "sent", "label": "Sent", "human": self.sent, "all": self.sent, "of": None},
            {"key": "bounced", "label": "Bounced", "human": self.bounced, "all": self.bounced, "of": "sent"},
            {"key": "delivered", "label": "Delivered", "human": self.delivered, "all": self.delivered, "of": "sent"},
            {"key": "opened", "label": "Opened", "human": self.opened_h, "all": self.opened_all, "of": "delivered"},
            {"key": "clicked", "label": "Clicked", "human": self.clicked_h, "all": self.clicked_all, "of": "delivered"},
            {"key": "unsubscribed", "label": "Unsubscribed", "human": self.unsubscribed, "all": self.unsubscribed,
             "of": "delivered"},
        ]
        if self.complained is not None:
            steps.append({"key": "complained", "label": "Complained (spam)", "human": self.complained,
                          "all": self.complained, "of": "delivered"})
        return steps

    def share(self, step: dict[str, Any]) -> float | None:
        """The step's share of the step it is measured against (docs/metrics.md: engagement
        over delivered, bounces and deliveries over sent); ``None`` for sent. The opened and
        clicked shares are the API's own rates."""
        if step["of"] is None:
            return None
        if step["key"] == "opened":
            return self.open_rate
        if step["key"] == "clicked":
            return self.click_rate
        base = self.sent if step["of"] == "sent" else self.delivered
        return step["human"] / base if base else 0.0


def campaign_analytics(campaign_id: str | None = None, *, include_bots: bool = False) -> dict[str, Any]:
    """``GET /api/communications/analytics`` (all time; one campaign's messages with
    ``campaignId``), fetched once per request and variant."""
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
    (sent, delivered, bounced, failed and unsubscribed are the same in both); the rates are
    the API's own (over delivered messages)."""
    people = campaign_analytics(campaign_id)
    everyone = campaign_analytics(campaign_id, include_bots=True)
    return Funnel(
        campaign_id, sent=people["totalSent"], bounced=people["totalBounced"], delivered=people["totalDelivered"],
        opened_h=people["totalOpened"], opened_all=everyone["totalOpened"],
        clicked_h=people["totalClicked"], clicked_all=everyone["totalClicked"],
        unsubscribed=people["totalUnsubscribed"], failed=people["totalFailed"],
        complained=people.get("totalComplained"),
        open_rate=people["openRate"], click_rate=people["clickRate"], click_to_open_rate=people["clickToOpenRate"])


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
    ``include_bots=true``)."""
    people = _search_all(campaign_id, include_bots=False)
    everyone = _search_all(campaign_id, include_bots=True)

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


def _search_all(campaign_id: str, *, include_bots: bool) -> list[dict[str, Any]]:
    """Every message record of a campaign from the communications search API (all pages)."""
    out: list[dict[str, Any]] = []
    page = 0
    while True:
        data = api_get("/communications/dynamic-search", campaignId=campaign_id, size=500, page=page,
                       include_bots="true" if include_bots else "false")
        out.extend(data.get("content", []))
        if data.get("last", True):
            return out
        page += 1


def message(message_id: str) -> dict[str, Any] | None:
    """One message record (``GET /api/communications/find/<id>``); ``None`` if unknown."""
    try:
        return api_get(f"/communications/find/{message_id}")  # type: ignore[no-any-return]
    except APIError:
        return None


def top_links(campaign_id: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
    """Most clicked links: human clicks, unique humans, and all clicks (with machines).
    Across campaigns ``GET /api/links?order=clicks`` (unique = distinct contacts); for one
    campaign ``GET /api/campaigns/<id>/links``, people and ``include_bots=true`` (unique =
    distinct messages)."""
    if campaign_id is None:
        data = api_get("/links", order="clicks", limit=limit)
        return [{"url": x["url"], "link_id": x["linkId"], "clicks": x["clicks"], "unique": x["uniqueClicks"],
                 "all": x["allClicks"]} for x in data["links"]]
    people = api_get(f"/campaigns/{campaign_id}/links")
    everyone = api_get(f"/campaigns/{campaign_id}/links", include_bots="true")
    totals = {x["link_id"]: x["total_clicks"] for x in everyone.get("links", [])}
    items = [{"url": x["url"], "link_id": x["link_id"], "clicks": x["total_clicks"],
              "unique": x["unique_clicks"], "all": totals.get(x["link_id"], 0)}
             for x in people.get("links", [])]
    items.sort(key=lambda x: (-x["clicks"], -x["all"], x["url"]))
    return items[:limit]


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
    people = campaign_analytics(campaign_id)
    everyone = campaign_analytics(campaign_id, include_bots=True)
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
    data = campaign_analytics(campaign_id, include_bots=True)
    dates = [str(x["date"])[:10] for key in ("sendVolumeByDay", "engagementByDay") for x in data.get(key, [])]
    return dt.date.fromisoformat(max(dates)) if dates else None


def analytics() -> dict[str, Any]:
    """Totals and rates for the dashboard header: ``GET /api/communications/analytics``
    (human events; open and click rates over delivered messages, click-to-open over opened)."""
    data = campaign_analytics()
    return {k: data[k] for k in ("totalSent", "totalDelivered", "totalOpened", "totalClicked", "openRate",
                                 "clickRate", "clickToOpenRate", "failureRate")}


# -- contacts ------------------------------------------------------------------------------


@dataclass
class ContactRow:
    contact: Contact
    dnc_reason: int | None = None
    utm_campaigns: list[str] = field(default_factory=list)
    opens: int = 0
    clicks: int = 0
    score: float = 0.0
    last_activity: dt.datetime | None = None


def contacts(search: str = "") -> list[ContactRow]:
    """The CRM's contacts matching ``search`` (name, email, company), with email DNC state,
    UTM campaigns, human opens and clicks, score and last human activity: one
    ``GET /api/contacts/engagement`` per 500 contacts of the page."""
    q = db.select(Contact).order_by(Contact.last_name, Contact.first_name)
    if search:
        like = f"%{search.strip().lower()}%"
        q = q.where(sa.or_(*(sa.func.lower(col).like(like) for col in
                             (Contact.first_name, Contact.last_name, Contact.email, Contact.company,
                              Contact.first_name + " " + Contact.last_name))))
    people = db.session.execute(q).scalars().all()
    rows = {str(c.id): ContactRow(c) for c in people}
    ids = list(rows)
    for i in range(0, len(ids), ENGAGEMENT_PAGE):
        data = api_get("/contacts/engagement", source="?contact_id=<page of contacts>",
                       contact_id=ids[i:i + ENGAGEMENT_PAGE])
        for item in data["contacts"]:
            row = rows[item["contactId"]]
            row.dnc_reason = item["dncReason"]
            row.utm_campaigns = list(item["utmCampaigns"])
            row.opens, row.clicks, row.score = item["opens"], item["clicks"], item["score"]
            row.last_activity = item["lastHumanActivity"]
    return list(rows.values())


def engagement(contact_id: str) -> dict[str, Any]:
    """``GET /api/contacts/<id>/engagement``: the contact's score and people's counts."""
    return api_get(f"/contacts/{contact_id}/engagement")  # type: ignore[no-any-return]


def contact_dnc(contact_id: str) -> list[dict[str, Any]]:
    """``GET /api/contacts/<id>/dnc`` (``doNotContact`` items)."""
    return api_get(f"/contacts/{contact_id}/dnc")["doNotContact"]  # type: ignore[no-any-return]


def contact_utm(contact_id: str) -> list[dict[str, Any]]:
    """``GET /api/contacts/<id>/utm`` (``utmtags`` items)."""
    return api_get(f"/contacts/{contact_id}/utm")["utmtags"]  # type: ignore[no-any-return]


def timeline(contact_id: str, limit: int = 200) -> list[dict[str, Any]]:
    """The contact's activity, newest first: ``GET /api/contacts/<id>/activity`` with
    ``include_bots=true``; ``isBot`` marks machine events and ``machineReason`` says why."""
    return api_get(f"/contacts/{contact_id}/activity", limit=limit, include_bots="true")["events"]  # type: ignore[no-any-return]


def message_links(message_id: str, *, contact_id: str) -> list[dict[str, Any]]:
    """Each clicked link of a message with its human and machine clicks, in order of first
    click: the click events of the message from ``GET /api/contacts/<id>/activity``
    (``include_bots=true``, the message id as search term, then exactly its events), counted
    per URL by ``isBot``. The hidden honeypot link has no URL."""
    out: dict[str | None, dict[str, Any]] = {}
    for e in sorted(_message_clicks(message_id, contact_id), key=lambda e: (str(e["timestamp"]), e["id"])):
        row = out.setdefault(e["url"], {"url": e["url"], "human": 0, "machine": 0})
        row["machine" if e["isBot"] else "human"] += 1
    return list(out.values())


def _message_clicks(message_id: str, contact_id: str) -> list[dict[str, Any]]:
    """Every click activity item of one message, people and machines (all pages)."""
    out: list[dict[str, Any]] = []
    page = 1
    while True:
        data = api_get(f"/contacts/{contact_id}/activity", source="?filters[search]=<message>&include_bots=true",
                       include_bots="true", limit=500, page=page,
                       **{"filters[search]": message_id, "filters[includeEvents]": "click"})
        out.extend(e for e in data["events"] if e.get("messageId") == message_id)
        if page >= data["maxPages"]:
            return out
        page += 1
