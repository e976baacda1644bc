"""The campaign pages: the list, one campaign (funnel, daily charts, devices and hours, the
comparison with earlier campaigns, top links, who engaged, the messages), its audiences and
the CSV downloads. Every figure is the JSON API's (``metrics``, ``insights``); the CSV
buttons hand on the API's own CSV."""
from __future__ import annotations

from typing import Any

from flask import abort, current_app, render_template, request

from . import charts, insights, metrics
from .listing import paginate
from .models import Campaign, db
from .views import _charts, as_datetime, blueprint

MESSAGE_SORTS = {
    "recipient": lambda m: m["email"].lower(),
    "status": lambda m: "BOUNCED" if m["bounces"] else str(m["status"]),
    "sent": lambda m: as_datetime(m["sent_at"]),
    "opens": lambda m: m["opens"], "clicks": lambda m: m["clicks"], "machine": lambda m: m["machine"],
}


def _campaign_or_404(slug: str) -> Campaign:
    return db.first_or_404(db.select(Campaign).filter_by(slug=slug))  # type: ignore[no-any-return]


@blueprint.route("/campaigns")
def campaigns() -> str:
    return render_template("campaigns.html", campaigns=metrics.campaigns_overview())


@blueprint.route("/campaigns/<slug>")
def campaign(slug: str) -> str:
    camp = _campaign_or_404(slug)
    rows = metrics.campaign_messages(slug)
    funnel = metrics.add_message_counts(metrics.funnel(slug), rows)
    steps = funnel.steps()
    devices = insights.breakdown(slug, "device")
    clients = insights.breakdown(slug, "client")
    hours = insights.breakdown(slug, "hour")
    compared, previous = insights.comparison(camp)
    return render_template(
        "campaign.html", campaign=camp, funnel=funnel, steps=steps,
        funnel_chart=charts.funnel_chart(steps, title=f"Funnel of {camp.name}"),
        links=metrics.top_links(slug), listing=paginate(rows, MESSAGE_SORTS, default="recipient"),
        devices=devices, clients=clients, hours=hours,
        device_chart=charts.category_chart(devices, title="Opens and clicks by device",
                                           desc="People's opens and clicks of this campaign per device type."),
        client_chart=charts.category_chart(clients, title="Opens and clicks by mail or web client",
                                           desc="People's opens and clicks of this campaign per client."),
        hour_chart=charts.hour_chart(hours, title="Opens and clicks by hour of day (UTC)",
                                     desc="People's opens and clicks of this campaign per UTC hour."),
        compared=compared, previous=previous, audiences=insights.AUDIENCES,
        **_charts(slug, since=camp.sent_at or camp.created_at))


@blueprint.route("/campaigns/<slug>/funnel.json")
def campaign_funnel_json(slug: str) -> Any:
    """The funnel the campaign page shows, as JSON (the browser test compares the two)."""
    _campaign_or_404(slug)
    return {"campaign_id": slug, "steps": metrics.funnel(slug).steps()}


def _audience_args(slug: str) -> tuple[Campaign, str, str | None]:
    camp = _campaign_or_404(slug)
    action = request.args.get("action", "clicked")
    link_id = request.args.get("link_id") or None
    if action not in insights.AUDIENCES or (link_id is not None and action != "clicked"):
        abort(404)
    return camp, action, link_id


@blueprint.route("/campaigns/<slug>/audience")
def campaign_audience(slug: str) -> str:
    """Who clicked (a link), opened, opened but did not click ...: the audience API's list."""
    camp, action, link_id = _audience_args(slug)
    link = None
    if link_id is not None:
        link = next((x for x in metrics.top_links(slug, limit=1000) if x["link_id"] == link_id), None)
        if link is None:
            abort(404)
    try:
        people = insights.with_contacts(insights.audience(slug, action, link_id))
    except metrics.APIError:
        abort(404)
    return render_template("audience.html", campaign=camp, action=action, link=link, people=people,
                           audiences=insights.AUDIENCES, help=insights.AUDIENCE_HELP[action])


@blueprint.route("/campaigns/<slug>/audience.csv")
def campaign_audience_csv(slug: str) -> Any:
    """The audience as the API's CSV, unchanged."""
    _, action, link_id = _audience_args(slug)
    try:
        body, _ = insights.audience_csv(slug, action, link_id)
    except metrics.APIError:
        abort(404)
    return _csv(body, f"{slug}-{action}{'-link-' + link_id if link_id else ''}.csv")


@blueprint.route("/campaigns/<slug>/messages.csv")
def campaign_messages_csv(slug: str) -> Any:
    """The campaign's message records as the API's CSV export, unchanged."""
    _campaign_or_404(slug)
    body, _ = insights.messages_csv(slug)
    return _csv(body, f"{slug}-messages.csv")


def _csv(body: bytes, filename: str) -> Any:
    """A download of the API's CSV bytes; the file name is the CRM's (campaign ids and link
    ids are URL-safe: the route found them)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in filename)
    return current_app.response_class(body, mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{safe}"', "Cache-Control": "no-store"})
