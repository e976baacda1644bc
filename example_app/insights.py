"""Who engaged, on what device, at what hour, and how a campaign compares: the CRM's
reading of the extension's insight routes (``/api/campaigns/<id>/audience``,
``.../breakdown``), the analytics API per campaign (comparison) and the thread API. Like
``metrics``, nothing here reads the extension's tables.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .metrics import ENGAGEMENT_PAGE, Funnel, api_csv, api_get, funnel
from .models import Campaign, Contact, db

#: The audiences of a campaign, in the order the page offers them, with what the list means.
AUDIENCES = {
    "clicked": "Clicked",
    "opened_not_clicked": "Opened, did not click",
    "opened": "Opened",
    "not_opened": "Did not open",
    "bounced": "Bounced",
    "unsubscribed": "Unsubscribed",
}
AUDIENCE_HELP = {
    "clicked": "People who clicked a link of this campaign (machine clicks left out).",
    "opened_not_clicked": "People who opened this campaign but clicked none of its links: worth a follow-up.",
    "opened": "People who opened this campaign (a click counts as an open).",
    "not_opened": "People whose mail was delivered but who opened none of it.",
    "bounced": "Contacts whose mail of this campaign bounced.",
    "unsubscribed": "Contacts who unsubscribed from this campaign's mail.",
}
DEVICE_LABELS = {"desktop": "Desktop", "mobile": "Mobile", "tablet": "Tablet", "unknown": "Unknown"}


def audience(campaign_id: str, action: str, link_id: str | None = None) -> list[dict[str, Any]]:
    """Every contact of ``GET /api/campaigns/<id>/audience?action=...[&link_id=]``, all pages
    (the cursor in ``meta.pagination.next_link``), in the API's order (contact id)."""
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"action": action, "link_id": link_id}
    while True:
        data = api_get(f"/campaigns/{campaign_id}/audience", source="?action=<audience>[&link_id=<link>]",
                       **params)
        out.extend(data["results"])
        nxt = (data.get("meta") or {}).get("pagination", {}).get("next_link")
        if not nxt:
            return out
        params = {"next": parse_qs(urlsplit(nxt).query)["next"][0]}


def audience_csv(campaign_id: str, action: str, link_id: str | None = None) -> tuple[bytes, str]:
    """The same list as the API's CSV (``Accept: text/csv``)."""
    return api_csv(f"/campaigns/{campaign_id}/audience", action=action, link_id=link_id)


def messages_csv(campaign_id: str) -> tuple[bytes, str]:
    """The campaign's message records as the API's CSV export
    (``GET /api/communications/csv-export?campaignId=...``)."""
    return api_csv("/communications/csv-export", campaignId=campaign_id)


def with_contacts(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Audience items with the CRM's contact (name, company) and the engagement API's score."""
    ids = [str(i["contactId"]) for i in items]
    people = {str(c.id): c for c in db.session.execute(
        db.select(Contact).where(Contact.id.in_([int(i) for i in ids if i.isdigit()]))).scalars()}
    scores: dict[str, float] = {}
    for start in range(0, len(ids), ENGAGEMENT_PAGE):
        data = api_get("/contacts/engagement", source="?contact_id=<page of contacts>",
                       contact_id=ids[start:start + ENGAGEMENT_PAGE])
        scores.update({x["contactId"]: x["score"] for x in data["contacts"]})
    return [{**i, "contact": people.get(str(i["contactId"])), "score": scores.get(str(i["contactId"]), 0.0)}
            for i in items]


@dataclass
class Bucket:
    label: str
    opens: int
    clicks: int
    unique_opens: int
    unique_clicks: int


def breakdown(campaign_id: str, by: str) -> list[Bucket]:
    """People's opens and clicks per bucket: ``GET /api/campaigns/<id>/breakdown?by=...``.
    Devices and clients are ordered by opens plus clicks (empty buckets left out), hours and
    weekdays as the API lists them (all of them)."""
    data = api_get(f"/campaigns/{campaign_id}/breakdown", source=f"?by={by}", by=by)
    rows = [Bucket(DEVICE_LABELS.get(b["bucket"], b["bucket"]) if by == "device" else b["bucket"],
                   b["opens"], b["clicks"], b["uniqueOpens"], b["uniqueClicks"]) for b in data["buckets"]]
    if by in ("device", "os", "client"):
        rows = sorted((r for r in rows if r.opens or r.clicks), key=lambda r: (-(r.opens + r.clicks), r.label))
    return rows


@dataclass
class Comparison:
    campaign: Campaign
    funnel: Funnel
    current: bool


def comparison(campaign: Campaign, limit: int = 5) -> tuple[list[Comparison], dict[str, float] | None]:
    """This campaign and the ones sent before it (newest first, ``limit`` in all), each
    with the analytics API's funnel and rates; and the previous ones together (their
    counts summed, rates over their delivered messages, as docs/metrics.md defines them),
    ``None`` when there is no earlier campaign."""
    when = campaign.sent_at or campaign.created_at
    earlier = db.session.execute(
        db.select(Campaign).where(Campaign.id != campaign.id, Campaign.sent_at <= when)
        .order_by(Campaign.sent_at.desc(), Campaign.id.desc()).limit(limit - 1)).scalars().all()
    rows = [Comparison(campaign, funnel(campaign.slug), True)] + [Comparison(c, funnel(c.slug), False)
                                                                   for c in earlier]
    previous = [r.funnel for r in rows[1:]]
    if not previous:
        return rows, None
    delivered = sum(f.delivered for f in previous)
    opened = sum(f.opened_h for f in previous)
    clicked = sum(f.clicked_h for f in previous)
    together = {
        "sent": sum(f.sent for f in previous), "delivered": delivered,
        "openRate": round(opened / delivered, 4) if delivered else 0.0,
        "clickRate": round(clicked / delivered, 4) if delivered else 0.0,
        "clickToOpenRate": round(clicked / opened, 4) if opened else 0.0,
        "unsubscribed": sum(f.unsubscribed for f in previous),
    }
    return rows, together


def thread(message_id: str) -> dict[str, list[dict[str, Any]]]:
    """``GET /api/communications/<id>/thread``: the outbound messages of the conversation and
    the replies received (``inbound``), merged oldest first for display."""
    data = api_get(f"/communications/{message_id}/thread")
    items = [{"direction": "out", "when": m.get("sentAt") or m.get("createdAt"), "from": None,
              "to": ", ".join(m.get("recipients") or []), "subject": m.get("subject") or "", "id": m["id"],
              "status": m.get("status"), "text": None} for m in data.get("outbound", [])]
    # a reply shows its own text (``replyText``: no quoted original, signature or disclaimer),
    # the whole text and the HTML part as received only on demand, the HTML as source: received
    # mail is untrusted and never rendered (the template escapes it)
    items += [{"direction": "in", "when": m.get("receivedAt"), "from": _sender(m), "to": None,
               "subject": m.get("subject") or "", "id": m.get("id"), "status": m.get("status"),
               "text": m.get("replyText") or m.get("bodyText") or "", "whole": m.get("bodyText") or "",
               "html": m.get("bodyHtml") or ""} for m in data.get("inbound", [])]
    items.sort(key=lambda i: str(i["when"] or ""))
    return {"items": items, "inbound": data.get("inbound", []), "outbound": data.get("outbound", [])}


def _sender(item: dict[str, Any]) -> str:
    name, address = item.get("fromName") or "", item.get("fromEmail") or ""
    return f"{name} <{address}>" if name and address else (address or name)
