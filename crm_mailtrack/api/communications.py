"""``/api/communications/...``: the outbound message records (send, schedule,
search, page, threads, CSV export, analytics), scoped to the caller's tenant."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import Response, stream_with_context

from ..errors import NotFound
from ..errors import ValidationError as MTValidationError
from ..services import analytics as analytics_service
from ..services import communications as comms
from ..services import csv_export, dispatch
from ..state import get_state
from .communications_responses import (
    CommAnalyticsSchema,
    CommSummarySchema,
    CommThreadSchema,
    CommunicationPageSchema,
    CommunicationSchema,
    RecordEventSchema,
    SentCommunicationSchema,
)
from .communications_schemas import (
    CommAnalyticsQuery,
    CommBotsQuery,
    CommentBody,
    CommEntityQuery,
    CommFiltersSchema,
    CommFindIdsQuery,
    CommIdsQuery,
    CommPageQuery,
    CommSearchBody,
    CommSearchQuery,
    ScheduleBody,
    SendBody,
    TemplateSendBody,
)
from .core import current_tenant, json_body
from .fields import no_nul
from .routing import Routes

P = "/communications"
TAGS = ["communications"]
_ID = {"message_id": "The communication (message) id."}
routes = Routes()
_FILTER_NAMES = tuple(CommFiltersSchema().fields)

#: Body keys and the ``track_message`` keywords they become.
_MESSAGE_FIELDS = {
    "cc": "cc", "bcc": "bcc", "type": "type", "campaignId": "campaign_id",
    "relatedEntityType": "related_entity_type", "relatedEntityId": "related_entity_id",
    "conversationId": "conversation_id", "senderEmail": "sender_email", "senderName": "sender_name",
    "replyTo": "reply_to", "variables": "variables", "trackingEnabled": "track_opens",
    "linkTrackingEnabled": "track_clicks", "createdBy": "created_by", "templateId": "template_id",
    "templateName": "template_name",
}


def _one(msg: Any, include_bots: bool = False) -> dict[str, Any]:
    return comms.records(get_state(), [msg], include_bots=include_bots)[0]


def _many(rows: list[Any], include_bots: bool = False) -> list[dict[str, Any]]:
    return comms.records(get_state(), rows, include_bots=include_bots)


def _fields(body: dict[str, Any]) -> dict[str, Any]:
    return {kw: body[key] for key, kw in _MESSAGE_FIELDS.items() if key in body and body[key] is not None}


def _sent_copies(copies: list[Any]) -> dict[str, Any]:
    """Send the stored copies (unless scheduled: they are all ``SCHEDULED`` or all
    ``PENDING``), then answer 201 with the first copy's record and ``copyIds``. Without a
    task queue they are sent now, over one SMTP connection, and each copy's outcome is its
    own (``SENT``, ``FAILED``, ``SUPPRESSED``); with ``init_celery`` they are handed to the
    workers and the answer comes at once, ``PENDING`` (or ``SCHEDULED`` now, for
    ``send-due``, when the broker did not take them)."""
    state = get_state()
    copies = dispatch.send_or_hand_over(state, copies)
    return {**comms.records(state, copies[:1])[0], "copy_ids": [msg.id for msg in copies]}


@routes.route(f"{P}/send", methods=["POST"], summary="Send an ad-hoc email", tags=TAGS, body=SendBody,
              body_size="message", response=SentCommunicationSchema, status=201)
def communications_send(body: dict[str, Any]) -> dict[str, Any]:
    """Store one message per recipient (links and pixel instrumented per copy) and send them
    now. The answer is the first recipient's record, ``SENT``, ``FAILED`` (with
    ``errorMessage``) or ``SUPPRESSED`` (Do-Not-Contact), and ``copyIds`` lists every copy.
    When the host runs a task queue (``init_celery``) the copies go to its workers instead and
    the answer comes at once with ``PENDING`` (``SCHEDULED`` now, for ``send-due``, if the
    broker could not take them); read the outcome later with ``find/<id>``."""
    copies = comms.compose(get_state(), current_tenant(), contact_id=body["contactId"],
                           recipients=body["recipients"], subject=body["subject"], html=body["body"],
                           text=body["bodyText"], **_fields(body))
    return _sent_copies(copies)


@routes.route(f"{P}/schedule", methods=["POST"], summary="Schedule an email for later delivery", tags=TAGS,
              body=ScheduleBody, body_size="message", response=SentCommunicationSchema, status=201)
def communications_schedule(body: dict[str, Any]) -> dict[str, Any]:
    """Store one ``SCHEDULED`` message per recipient; ``send_due`` (``flask mailtrack
    send-due``) sends them. The answer is the first recipient's record with ``copyIds``."""
    copies = comms.compose(get_state(), current_tenant(), contact_id=body["contactId"],
                           recipients=body["recipients"], subject=body["subject"], html=body["body"],
                           text=body["bodyText"], scheduled_at=body["scheduledAt"], **_fields(body))
    return _sent_copies(copies)


@routes.route(f"{P}/send-template/<template_id>", methods=["POST"], summary="Send email using a template",
              tags=TAGS, body=TemplateSendBody, body_size="message", response=SentCommunicationSchema, status=201,
              path_params={"template_id": "The host's template id."})
def communications_send_template(template_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Render through the host's ``template_loader(template_id, variables)`` (once: every
    recipient's copy has the same content); an unknown template (or no loader) is 404. With
    ``scheduledAt`` the copies are scheduled."""
    state = get_state()
    loader = state.hooks.template_loader
    rendered = loader(template_id, dict(body.get("variables") or {})) if loader is not None else None
    if rendered is None:
        raise NotFound(f"No template {template_id!r}.")
    subject, html, text = rendered
    fields = _fields(body)
    fields["template_id"] = template_id
    copies = comms.compose(state, current_tenant(), contact_id=body["contactId"], recipients=body["recipients"],
                           subject=subject, html=html, text=text, scheduled_at=body.get("scheduledAt"), **fields)
    return _sent_copies(copies)


@routes.route(f"{P}/<message_id>/resend", methods=["POST"], summary="Resend a failed or sent email", tags=TAGS,
              response=CommunicationSchema, status=201, errors=(401, 404, 406, 409), path_params=_ID)
def communications_resend(message_id: str) -> dict[str, Any]:
    """Send a new copy (new id, same conversation) as ``send`` does (through the task queue
    when there is one); the original record is left as it was."""
    msg = comms.resend(get_state(), current_tenant(), message_id)
    return _one(dispatch.send_or_hand_over(get_state(), [msg])[0])


@routes.route(f"{P}/<message_id>/cancel", methods=["POST"], summary="Cancel a scheduled email", tags=TAGS,
              response=CommunicationSchema, errors=(401, 404, 406, 409), path_params=_ID)
def communications_cancel(message_id: str) -> dict[str, Any]:
    """``SCHEDULED`` or ``PENDING`` becomes ``CANCELLED``; any other status is 409."""
    return _one(comms.cancel(get_state(), current_tenant(), message_id))


@routes.route(f"{P}/scheduled", summary="Get all scheduled emails", tags=TAGS, query=CommBotsQuery,
              response=CommunicationSchema(many=True), errors=(401, 406, 422))
def communications_scheduled(query: dict[str, Any]) -> list[dict[str, Any]]:
    return _many(comms.scheduled(get_state(), current_tenant()), query["include_bots"])


@routes.route(f"{P}/find/<message_id>", summary="Find by id in current tenant", tags=TAGS, query=CommBotsQuery,
              response=CommunicationSchema, errors=(401, 404, 406, 422), path_params=_ID)
def communications_find(message_id: str, query: dict[str, Any]) -> dict[str, Any]:
    """``openCount``, ``opened``, ``openedAt`` and ``clickedLinks`` count people unless
    ``include_bots=true``."""
    return _one(comms.get(get_state(), current_tenant(), message_id), include_bots=query["include_bots"])


@routes.route(f"{P}/find", summary="Find by list of ids in current tenant", tags=TAGS, query=CommFindIdsQuery,
              response=CommunicationSchema(many=True))
def communications_find_ids(query: dict[str, Any]) -> list[dict[str, Any]]:
    """Unknown ids (and other tenants' ids) are left out."""
    return _many(comms.find_list(get_state(), current_tenant(), query["ids"]), query["include_bots"])


@routes.route(f"{P}/find-list", summary="Find a list of entities by their IDs", tags=TAGS, query=CommFindIdsQuery,
              response=CommunicationSchema(many=True))
def communications_find_list(query: dict[str, Any]) -> list[dict[str, Any]]:
    """Unknown ids (and other tenants' ids) are left out."""
    return _many(comms.find_list(get_state(), current_tenant(), query["ids"]), query["include_bots"])


@routes.route(f"{P}/find-all", summary="Find all for current tenant", tags=TAGS, query=CommBotsQuery,
              response=CommunicationSchema(many=True), errors=(401, 406, 422))
def communications_find_all(query: dict[str, Any]) -> list[dict[str, Any]]:
    """Every record of the tenant, newest first (use ``page`` for large sets)."""
    return _many(comms.find_all(get_state(), current_tenant()), query["include_bots"])


@routes.route(f"{P}/page", summary="Get page by page number and size with optional sorting", tags=TAGS,
              query=CommPageQuery, response=CommunicationPageSchema)
def communications_page(query: dict[str, Any]) -> dict[str, Any]:
    sort = [(query["sortBy"], query["direction"].upper() == "ASC")]
    data = comms.page(get_state(), current_tenant(), page=query["page"], size=query["size"], sort=sort,
                      include_bots=query["include_bots"])
    return data


def _parse_sort(values: list[str]) -> list[tuple[str, bool]]:
    """``field``, ``field,asc`` or ``field,desc`` (Spring style)."""
    out = []
    for value in values:
        name, _, direction = value.partition(",")
        direction = (direction or "asc").strip().lower()
        if direction not in ("asc", "desc"):
            raise MTValidationError({"sort": [f"Direction must be asc or desc, not {direction!r}."]})
        out.append((name.strip(), direction == "asc"))
    return out


@routes.route(f"{P}/dynamic-search", summary="Dynamic search (query parameters)", tags=TAGS, query=CommSearchQuery,
              response=CommunicationPageSchema)
def communications_search_get(query: dict[str, Any]) -> dict[str, Any]:
    """Filters as query parameters (``status=SENT&type=OFFERTE``), ``search`` terms,
    ``sort=field,desc``, ``page``, ``size``."""
    filters = {k: query[k] for k in _FILTER_NAMES if k in query}
    data = comms.page(get_state(), current_tenant(), page=query["page"], size=query["size"],
                      sort=_parse_sort(query["sort"]), filters=filters, search=query["search"],
                      include_bots=query["include_bots"])
    return data


@routes.route(f"{P}/dynamic-search", methods=["POST"], summary="Dynamic search (JSON body)", tags=TAGS,
              body=CommSearchBody, response=CommunicationPageSchema)
def communications_search_post(body: dict[str, Any]) -> dict[str, Any]:
    """Body: ``{"filters": {...}, "search": [...], "sort": [{"field", "ascending"}], "page", "size"}``."""
    sort = [(s["field"], s["ascending"]) for s in body["sort"]]
    data = comms.page(get_state(), current_tenant(), page=body["page"], size=body["size"], sort=sort,
                      filters=body["filters"], search=body["search"], include_bots=body["include_bots"])
    return data


@routes.route(f"{P}/by-entity", summary="Get all communications for a CRM entity", tags=TAGS, query=CommEntityQuery,
              response=CommSummarySchema(many=True))
def communications_by_entity(query: dict[str, Any]) -> list[dict[str, Any]]:
    state = get_state()
    rows = comms.by_entity(state, current_tenant(), query["entityType"], query["entityId"])
    return comms.summary(state, rows, include_bots=query["include_bots"])


@routes.route(f"{P}/<message_id>/thread", summary="Get conversation thread for a communication", tags=TAGS,
              query=CommBotsQuery, response=CommThreadSchema, errors=(401, 404, 406, 422), path_params=_ID)
def communications_thread(message_id: str, query: dict[str, Any]) -> dict[str, Any]:
    """Every outbound message sharing the conversation id, oldest first, and the replies
    received to them (``inbound``)."""
    state = get_state()
    rows = comms.thread(state, current_tenant(), message_id)
    outbound = comms.records(state, rows, include_bots=query["include_bots"])
    return {"inbound": comms.thread_inbound(state, rows), "outbound": outbound}


@routes.route(f"{P}/delete-list", methods=["DELETE"], summary="Delete a list of entities by their IDs", tags=TAGS,
              query=CommIdsQuery, status=204)
def communications_delete_list(query: dict[str, Any]) -> None:
    """Deletes the tenant's messages among ``ids`` with their events; unknown ids are ignored."""
    comms.delete(get_state(), current_tenant(), query["ids"])
    return None


@routes.route(f"{P}/<message_id>", methods=["DELETE"], summary="Delete by id in current tenant", tags=TAGS,
              status=204, errors=(401, 404, 406), path_params=_ID)
def communications_delete(message_id: str) -> None:
    """Deletes the message and its events."""
    comms.delete(get_state(), current_tenant(), [message_id], must_exist=True)
    return None


@routes.route(f"{P}/<message_id>/comment", methods=["POST"], summary="Add a comment to a communication", tags=TAGS,
              response=RecordEventSchema, status=201, path_params=_ID, body_size="small", body_doc={"anyOf": [
                  {"type": "string", "minLength": 1, "maxLength": 10_000, "pattern": no_nul.regex.pattern}, CommentBody]})
def communications_comment(message_id: str) -> dict[str, Any]:
    """Body: a JSON string (as the communications API defines it) or ``{"comment": "...", "authorId": "..."}``; stored
    as a ``comment`` event of the message's contact."""
    data = json_body()
    if isinstance(data, str):
        data = {"comment": data}
    if not isinstance(data, dict):
        raise MTValidationError({"comment": ["Send a JSON string or {\"comment\": \"...\"}."]})
    try:
        body = CommentBody().load(data)
    except ma.ValidationError as exc:
        raise MTValidationError(exc.messages if isinstance(exc.messages, dict) else {"comment": exc.messages}) from None
    event = comms.comment(get_state(), current_tenant(), message_id, body["comment"], body["authorId"])
    return event


@routes.route(f"{P}/analytics", summary="Get communication analytics", tags=TAGS, query=CommAnalyticsQuery,
              response=CommAnalyticsSchema)
def communications_analytics(query: dict[str, Any]) -> dict[str, Any]:
    """Totals, rates, funnel counts, per template, per type and per day, optionally for one
    campaign; see docs/metrics.md."""
    data = analytics_service.analytics(get_state(), current_tenant(), date_from=query.get("dateFrom"),
                                       date_to=query.get("dateTo"), include_bots=query["include_bots"],
                                       campaign_id=query.get("campaignId"))
    return data


@routes.route(f"{P}/csv-export", summary="Download communication records as CSV", tags=TAGS, query=CommSearchQuery,
              content_type="text/csv")
def communications_csv_export(query: dict[str, Any]) -> Response:
    """Same filters, search and sort as GET dynamic-search (``page``/``size`` are ignored:
    every matching row is streamed). Text cells are quoted; cells a spreadsheet could run
    as a formula (also after spaces, in full-width signs, or after a ``;``) get a leading ``'``."""
    state = get_state()
    filters = {k: query[k] for k in _FILTER_NAMES if k in query}
    stmt = csv_export.export_query(current_tenant(), filters=filters, search=query["search"],
                                   sort=_parse_sort(query["sort"]), include_bots=query["include_bots"])
    return Response(
        stream_with_context(csv_export.stream_csv(state, stmt)),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="communications.csv"',
                 "Cache-Control": "no-store"},
    )
