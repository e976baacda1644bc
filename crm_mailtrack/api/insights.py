"""Marketer insights: a contact's engagement and score (one or a page of contacts), a
campaign's audiences (who clicked, opened, did not open ...; JSON or CSV), breakdowns by
device, OS, client, hour and weekday, and the top links across campaigns.

Definitions (people vs machines, the score's formula): docs/metrics.md, "Insights".
"""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import Response, request, stream_with_context
from marshmallow import fields, validate

from ..errors import NotFound, ValidationError
from ..services import insights, reports
from ..state import get_state
from . import pagination
from .contacts import CONTACT, require_contact
from .core import current_tenant
from .routing import Routes
from .fields import Text, Timestamp
from .responses import MetaSchema
from .schemas import QuerySchema, _bots

_CONTACT_TAGS = ["contacts"]
_CAMPAIGN_TAGS = ["campaigns"]
CAMPAIGN = {"campaign_id": "The campaign id given to track_message."}
MAX_CONTACTS = 500
_MAX_CAMPAIGN_ID = 64
_MAX_LINK_ID = 16


# -- schemas ---------------------------------------------------------------------------------


class EngagementSchema(ma.Schema):
    contactId = fields.String(attribute="contact_id")
    score = fields.Float(metadata={"description": (
        "Recency-weighted human activity: each human reply counts 5, click 3, forward 2, open 0.5, "
        "times 1 within 7 days, 0.5 within 30, 0.25 within 90, 0.1 within 365, 0 after; rounded to 2 places.")})
    opens = fields.Integer(metadata={"description": "Human open events (every pixel load), all time."})
    clicks = fields.Integer(metadata={"description": "Human click events, all time."})
    replies = fields.Integer(metadata={"description": "Human reply events, all time."})
    forwards = fields.Integer(metadata={"description": "Forward events, all time."})
    lastHumanActivity = Timestamp(attribute="last_human_activity", allow_none=True, metadata={
        "description": "The latest human open, click, reply or forward (null: none)."})
    dnc = fields.Boolean(metadata={"description": "On Do-Not-Contact for email."})
    dncReason = fields.Integer(attribute="dnc_reason", allow_none=True, metadata={
        "description": "1 unsubscribed, 2 bounced, 3 manual (null: not on DNC)."})
    utmCampaigns = fields.List(fields.String(), attribute="utm_campaigns", metadata={
        "description": "The utm_campaign values of the contact's UTM tags."})


class EngagementListSchema(ma.Schema):
    contacts = fields.List(fields.Nested(EngagementSchema))


class EngagementQuerySchema(QuerySchema):
    contact_id = fields.List(Text(max_length=64, validate=[validate.Length(min=1)]), required=True,
                             validate=validate.Length(min=1, max=MAX_CONTACTS), metadata={
                                 "description": f"A contact id; repeat it for up to {MAX_CONTACTS} contacts."})


class AudienceQuerySchema(QuerySchema):
    action = fields.String(validate=validate.OneOf(insights.AUDIENCE_ACTIONS), metadata={
        "description": "Required on the first page: " + ", ".join(insights.AUDIENCE_ACTIONS) + "."})
    link_id = Text(max_length=_MAX_LINK_ID, metadata={"description": "With action=clicked: only this link."})
    limit = fields.Integer(load_default=500, validate=validate.Range(1, 500), metadata={
        "description": "Contacts per page, 1-500 (default 500)."})
    next = Text(max_length=4096, metadata={
        "description": "Opaque cursor from meta.pagination.next_link; it carries the other parameters."})
    include_bots = _bots()


class AudienceItemSchema(ma.Schema):
    contactId = fields.String(attribute="contact_id")
    email = fields.String(allow_none=True)
    messageId = fields.String(attribute="message_id", metadata={
        "description": "One of the contact's messages of the campaign (the smallest id)."})


class AudienceSchema(ma.Schema):
    meta = fields.Nested(MetaSchema)
    results = fields.List(fields.Nested(AudienceItemSchema))


class BreakdownQuerySchema(QuerySchema):
    by = fields.String(required=True, validate=validate.OneOf(insights.BREAKDOWNS), metadata={
        "description": "device (desktop, mobile, tablet), os, client, hour (UTC) or weekday."})
    include_bots = _bots()


class BucketSchema(ma.Schema):
    bucket = fields.String()
    opens = fields.Integer(metadata={"description": "Open events."})
    clicks = fields.Integer(metadata={"description": "Click events."})
    uniqueOpens = fields.Integer(metadata={"description": "Distinct messages with an open in the bucket."})
    uniqueClicks = fields.Integer(metadata={"description": "Distinct messages with a click in the bucket."})


class BreakdownSchema(ma.Schema):
    campaignId = fields.String()
    by = fields.String()
    includeBots = fields.Boolean()
    buckets = fields.List(fields.Nested(BucketSchema))


class LinksQuerySchema(QuerySchema):
    order = fields.String(load_default="clicks", validate=validate.OneOf(["clicks"]), metadata={
        "description": "clicks: people's clicks, then all clicks, then the URL."})
    limit = fields.Integer(load_default=20, validate=validate.Range(1, 100), metadata={
        "description": "Links, 1-100 (default 20)."})


class TopLinkSchema(ma.Schema):
    linkId = fields.String(attribute="link_id")
    url = fields.String()
    clicks = fields.Integer(metadata={"description": "Human clicks."})
    uniqueClicks = fields.Integer(attribute="unique_clicks", metadata={
        "description": "Distinct contacts with a human click."})
    allClicks = fields.Integer(attribute="all_clicks", metadata={"description": "Clicks, machines included."})
    allUniqueClicks = fields.Integer(attribute="all_unique_clicks", metadata={
        "description": "Distinct contacts with a click, machines included."})
    campaigns = fields.Integer(metadata={"description": "Campaigns whose messages carry the link."})


class TopLinksSchema(ma.Schema):
    links = fields.List(fields.Nested(TopLinkSchema))


routes = Routes()


# -- routes ----------------------------------------------------------------------------------


@routes.route("/contacts/<contact_id>/engagement", summary="A contact's engagement and score", tags=_CONTACT_TAGS,
       response=EngagementSchema, path_params=CONTACT, errors=(401, 404, 406))
def contact_engagement(contact_id: str) -> dict[str, Any]:
    """People-only opens, clicks, replies and forwards, the latest human activity, email DNC
    state and a score that decays with time."""
    require_contact(contact_id)
    (item,) = insights.engagement(get_state(), current_tenant(), [contact_id])
    return item


@routes.route("/contacts/engagement", summary="Engagement of a page of contacts", tags=_CONTACT_TAGS,
       query=EngagementQuerySchema, response=EngagementListSchema, errors=(400, 401, 406, 422))
def contacts_engagement(query: dict[str, Any]) -> dict[str, Any]:
    """The engagement of each ``contact_id`` given (repeatable, up to 500), in the order
    given; a contact without events has zeros. Contacts are not looked up with the
    ``contact_loader`` (a page of 500 would be 500 host calls)."""
    items = insights.engagement(get_state(), current_tenant(), query["contact_id"])
    return {"contacts": items}


def _require_campaign(campaign_id: str, tenant: str) -> None:
    if (not campaign_id or len(campaign_id) > _MAX_CAMPAIGN_ID or "\x00" in campaign_id
            or not reports.campaign_known(get_state(), tenant, campaign_id)):
        raise NotFound("campaign ID not found.")


def _wants_csv() -> bool:
    return request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv"


@routes.route("/campaigns/<campaign_id>/audience", summary="The contacts of a campaign who did something",
       tags=_CAMPAIGN_TAGS, query=AudienceQuerySchema, response=AudienceSchema, path_params=CAMPAIGN,
       alternatives=("text/csv",))
def campaign_audience(campaign_id: str, query: dict[str, Any]) -> dict[str, Any] | Response:
    """The contacts (ordered by contact id) whose sent messages of the campaign were clicked
    (or a link of it, ``link_id``), opened (an open or a click), opened but not clicked, not
    opened (delivered, no open or click), bounced, unsubscribed, complained (a spam report)
    or replied; people's events only unless ``include_bots=true`` (bounces, unsubscribes,
    complaints and replies always count). Keyset-paged:
    ``meta.pagination.next_link`` carries a signed cursor. With ``Accept: text/csv`` the
    whole list is streamed as CSV (``contactId,email,messageId``; no paging), formula-like
    cells prefixed with a single quote."""
    tenant = current_tenant()
    _require_campaign(campaign_id, tenant)
    scope = {"r": "audience", "t": tenant, "c": campaign_id}
    action, link_id = query.get("action"), query.get("link_id")
    limit, include_bots, after = query["limit"], query["include_bots"], None
    if query.get("next"):
        found, position = pagination.decode_cursor(query["next"], scope)
        action, link_id, limit, include_bots = found.get("a"), found.get("ln"), found.get("l"), found.get("b")
        if not (action in insights.AUDIENCE_ACTIONS and isinstance(limit, int) and 1 <= limit <= 500
                and isinstance(include_bots, bool) and len(position) == 1 and isinstance(position[0], str)):
            raise ValidationError({"next": ["Invalid cursor."]})
        after = position[0]
    if action is None:
        raise ValidationError({"action": ["Missing data for required field."]})
    state = get_state()
    if link_id is not None:
        if action != "clicked":
            raise ValidationError({"link_id": ["Only with action=clicked."]})
        if not reports.link_in_campaign(state, tenant, campaign_id, link_id):
            raise NotFound("No such link in this campaign.")
    stmt = insights.audience_query(tenant, campaign_id, action, link_id=link_id, include_bots=include_bots)
    if _wants_csv():
        return Response(
            stream_with_context(insights.stream_audience_csv(get_state(), stmt)), mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="audience-{action}.csv"',
                     "Cache-Control": "no-store"})
    rows = insights.audience_page(state, stmt, after=after, limit=limit)
    page, meta = rows[:limit], {}
    if len(rows) > limit:
        token = pagination.encode_cursor(
            {**scope, "a": action, "ln": link_id, "l": limit, "b": include_bots}, [page[-1].contact_id])
        meta["next_link"] = pagination.next_link(token)
    return {"meta": {"pagination": meta}, "results": [r._mapping for r in page]}


@routes.route("/campaigns/<campaign_id>/breakdown", summary="A campaign's opens and clicks by device or time",
       tags=_CAMPAIGN_TAGS, query=BreakdownQuerySchema, response=BreakdownSchema, path_params=CAMPAIGN)
def campaign_breakdown(campaign_id: str, query: dict[str, Any]) -> dict[str, Any]:
    """People's opens and clicks of the campaign per device type, operating system, mail or
    web client (from the user agent), UTC hour or weekday; every event with
    ``include_bots=true``."""
    tenant = current_tenant()
    _require_campaign(campaign_id, tenant)
    buckets = insights.breakdown(get_state(), tenant, campaign_id, query["by"],
                                 include_bots=query["include_bots"])
    return {"campaignId": campaign_id, "by": query["by"], "includeBots": query["include_bots"],
            "buckets": buckets}


@routes.route("/links", summary="Top links across campaigns", tags=_CAMPAIGN_TAGS, query=LinksQuerySchema,
       response=TopLinksSchema, errors=(400, 401, 406, 422))
def top_links(query: dict[str, Any]) -> dict[str, Any]:
    """The most clicked links of all campaigns: people's clicks and distinct contacts, and
    the same with machines."""
    rows = insights.top_links(get_state(), current_tenant(), limit=query["limit"])
    return {"links": [r._mapping for r in rows]}
