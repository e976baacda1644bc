"""Campaign tracking reports and a campaign's links with click totals."""
from __future__ import annotations

from typing import Any

from ..errors import NotFound, ValidationError
from marshmallow import fields, validate

from ..services import bulk, dispatch, reports
from ..state import get_state
from . import pagination
from .core import current_tenant
from .responses import CampaignLinksSchema, CampaignProgressSchema, CampaignReportSchema
from .routing import Routes
from .fields import Pattern, Text
from .schemas import KIND_TO_TYPE, BodySchema, BotsQuerySchema, CampaignReportQuerySchema

routes = Routes()
_TAGS = ["campaigns"]
CAMPAIGN = {"campaign_id": "The campaign id given to track_message."}
_MAX_CAMPAIGN_ID = 64
_MAX_LINK_ID = 16


def _require_campaign(campaign_id: str, tenant: str) -> None:
    if (not campaign_id or len(campaign_id) > _MAX_CAMPAIGN_ID or "\x00" in campaign_id
            or not reports.campaign_known(get_state(), tenant, campaign_id)):
        raise NotFound("campaign ID not found.")


def _report(campaign_id: str, kind: str, link_id: str | None, query: dict[str, Any]) -> dict[str, Any]:
    event_type = KIND_TO_TYPE.get(kind)
    if event_type is None:
        raise NotFound(f"No report {kind!r}: use one of {', '.join(KIND_TO_TYPE)}.")
    tenant = current_tenant()
    _require_campaign(campaign_id, tenant)
    state = get_state()
    if link_id is not None and (
        len(link_id) > _MAX_LINK_ID or not reports.link_in_campaign(state, tenant, campaign_id, link_id)
    ):
        raise NotFound("No such link in this campaign.")
    scope = {"r": "campaign", "t": tenant, "c": campaign_id, "k": kind, "ln": link_id}
    limit, include_bots = query["limit"], query["include_bots"]
    since = query.get("created_since")
    after = None
    if query.get("next"):
        found, position = pagination.decode_cursor(query["next"], scope)
        limit, include_bots, since_raw = found.get("l"), found.get("b"), found.get("cs")
        if not (isinstance(limit, int) and 1 <= limit <= 500 and isinstance(include_bots, bool)) or len(position) != 2:
            raise ValidationError({"next": ["Invalid cursor."]})
        since = None if since_raw is None else pagination.parse_position_time(since_raw)
        after = (pagination.parse_position_time(position[0]), pagination.parse_position_int(position[1]))
    rows = reports.campaign_report(state, tenant, campaign_id, event_type, link_id=link_id,
                                   created_since=since, include_bots=include_bots, after=after, limit=limit)
    page: dict[str, Any] = {"results": rows[:limit]}
    if len(rows) > limit:
        last = rows[limit - 1]
        token = pagination.encode_cursor(
            {**scope, "l": limit, "b": include_bots, "cs": since}, [last.occurred_at, last.id]
        )
        page["next_link"] = pagination.next_link(token)
    return page


@routes.route("/campaigns/<campaign_id>/tracking/<kind>", summary="A campaign's tracking report", tags=_TAGS,
              query=CampaignReportQuerySchema, response=CampaignReportSchema,
              path_params={**CAMPAIGN, "kind": "clicks, opens, sends, bounces, unsubscribes, forwards, deliveries, complaints or replies."})
def campaign_tracking(campaign_id: str, kind: str, query: dict[str, Any]) -> dict[str, Any]:
    """Newest first; ``meta.pagination.next_link`` carries an opaque signed cursor (absent on
    the last page). Human events only unless ``include_bots=true``."""
    return _report(campaign_id, kind, None, query)


@routes.route("/campaigns/<campaign_id>/tracking/clicks/<link_id>", summary="Clicks on one link of a campaign",
              tags=_TAGS, query=CampaignReportQuerySchema, response=CampaignReportSchema,
              path_params={**CAMPAIGN, "link_id": "The link's id (see /links)."})
def campaign_link_clicks(campaign_id: str, link_id: str, query: dict[str, Any]) -> dict[str, Any]:
    """The contacts that clicked one link, newest first, keyset-paged like the campaign report."""
    return _report(campaign_id, "clicks", link_id, query)


@routes.route("/campaigns/<campaign_id>/links", summary="A campaign's links with click totals", tags=_TAGS,
              query=BotsQuerySchema, response=CampaignLinksSchema, path_params=CAMPAIGN, errors=(401, 404, 406, 422))
def campaign_links(campaign_id: str, query: dict[str, Any]) -> dict[str, Any]:
    """Every tracked link of the campaign, clicked or not; ``unique_clicks`` counts distinct
    messages per link."""
    tenant = current_tenant()
    _require_campaign(campaign_id, tenant)
    rows = reports.campaign_link_stats(get_state(), tenant, campaign_id,
                                       include_bots=query["include_bots"])
    return {"links": rows}


@routes.route("/campaigns/<campaign_id>/progress", summary="A campaign's sending progress", tags=_TAGS,
              response=CampaignProgressSchema, path_params=CAMPAIGN, errors=(401, 404, 406))
def campaign_progress(campaign_id: str) -> dict[str, Any]:
    """How many of the campaign's messages are queued (retrying among them), being sent,
    sent, failed, suppressed or cancelled, counted from the messages themselves, whichever
    process sends them (``MailTrack.send_campaign`` on workers or in-process, ``send-due``)."""
    tenant = current_tenant()
    _require_campaign(campaign_id, tenant)
    return dispatch.progress(get_state(), tenant, campaign_id)


#: What ``track_messages`` takes as an address (one ``@``, no space or control character),
#: spelled out so that it means the same in Python and in the document (ECMA ``\s`` differs).
_NOT_IN_ADDRESS = r"@\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_ADDRESS = Pattern(rf"^[^{_NOT_IN_ADDRESS}]+@[^{_NOT_IN_ADDRESS}]+$", error="Not a valid email address.")
_CONTACT_ID = Pattern(r"^[^\x00]+$", error="Must be a non-empty text without NUL characters.")


class CampaignRecipientSchema(BodySchema):
    contact_id = Text(required=True, max_length=64, pattern=_CONTACT_ID, data_key="contactId")
    email = Text(required=True, max_length=320, pattern=_ADDRESS)


class CampaignSendBodySchema(BodySchema):
    subject = Text(load_default=None, allow_none=True, metadata={
        "description": "The recipients' subject (empty when absent)."})
    html = Text(load_default=None, allow_none=True, metadata={
        "description": "The campaign's HTML: links and the open pixel are tracked per recipient."})
    text = Text(load_default=None, allow_none=True, metadata={"description": "Else derived from the HTML."})
    recipients = fields.List(fields.Nested(CampaignRecipientSchema), load_default=None,
                             validate=validate.Length(min=1, max=50_000), metadata={
                                 "description": "One message each. Absent: send the campaign's prepared messages."})


@routes.route("/campaigns/<campaign_id>/send", methods=["POST"], summary="Send a campaign", tags=_TAGS,
              body=CampaignSendBodySchema, body_size="message", response=CampaignProgressSchema, status=202,
              path_params=CAMPAIGN, errors=(400, 401, 404, 406, 422))
def campaign_send(campaign_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Stores one tracked message per recipient (if any are given), then hands every PENDING
    message of the campaign to the senders: one Celery task each with ``init_celery``, else
    (or when the broker does not take them) ``flask mailtrack send-due`` (due at once);
    nothing is sent inside this request. Answers
    the campaign's progress; a campaign without messages is 404."""
    state, tenant = get_state(), current_tenant()
    if len(campaign_id) > _MAX_CAMPAIGN_ID or "\x00" in campaign_id:
        raise NotFound("campaign ID not found.")
    if body.get("recipients"):
        bulk.track_messages(state, [{"contact_id": r["contact_id"], "email": r["email"]} for r in body["recipients"]],
                            subject=body.get("subject") or "", html=body.get("html"), text=body.get("text"), tenant_id=tenant,
                            campaign_id=campaign_id)
    _require_campaign(campaign_id, tenant)
    dispatch.hand_over(state, dispatch.pending_ids(state, tenant, campaign_id))
    return dispatch.progress(state, tenant, campaign_id)
