"""Contact routes: activity, events by kind, external events, DNC and UTM.

Every route is scoped to the request's tenant. A contact id the host's ``contact_loader``
does not know (or one no contact can have: too long, NUL) answers 404.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from ..errors import NotFound, ValidationError
from ..services import contact_lookup
from ..services import dnc as dnc_service
from ..services import external_events, reports
from ..services import utm as utm_service
from ..state import get_state
from . import pagination
from .core import current_tenant
from .responses import (
    ActivityItemSchema,
    ActivityPageSchema,
    ContactEventsPageSchema,
    DNCListSchema,
    UTMAddResultSchema,
    UTMListSchema,
)
from .routing import Routes
from .schemas import (
    KIND_TO_TYPE,
    ORDER_COLUMNS,
    ActivityQuerySchema,
    BotsQuerySchema,
    ContactEventsQuerySchema,
    DNCAddBodySchema,
    DNCRemoveBodySchema,
    EventBodySchema,
    Timestamp,
    UTMAddBodySchema,
)

CONTACT = {"contact_id": "The host's contact id."}
_TAGS = ["contacts"]
_MAX_CONTACT_ID = 64

routes = Routes()


def require_contact(contact_id: str) -> Mapping[str, Any] | None:
    """The host's contact mapping (``None`` without a loader); 404 for an unknown id."""
    if not contact_id or len(contact_id) > _MAX_CONTACT_ID or "\x00" in contact_id:
        raise NotFound("No such contact.")
    loader = get_state().hooks.contact_loader
    if loader is None:
        return None
    contact = loader(contact_id)
    if contact is None:
        raise NotFound("No such contact.")
    return contact


def contact_email(contact: Mapping[str, Any] | None) -> str | None:
    """The loader's ``email`` when it is a plausible one (a string that fits the column)."""
    email = (contact or {}).get("email")
    return email if isinstance(email, str) and 0 < len(email) <= 320 and "\x00" not in email else None


# -- lookup by address -------------------------------------------------------------------------

class ContactLookupQuerySchema(BotsQuerySchema):
    email = fields.Email(required=True, validate=validate.Length(max=320), metadata={
        "description": "The address to look up (case-insensitive)."})


class ContactFoundSchema(ma.Schema):
    contactId = fields.String(attribute="contact_id", metadata={"description": "The host's contact id."})
    email = fields.String(metadata={"description": "The address as last used for this contact."})
    lastActivity = Timestamp(attribute="last_activity", allow_none=True, metadata={
        "description": "The contact's latest event (a person's unless include_bots=true); null without one."})


class ContactLookupSchema(ma.Schema):
    contacts = fields.List(fields.Nested(ContactFoundSchema))


@routes.route("/contacts", summary="Find contacts by email address", tags=_TAGS,
              query=ContactLookupQuerySchema, response=ContactLookupSchema, errors=(400, 401, 406, 422))
def contacts_by_email(query: dict[str, Any]) -> dict[str, Any]:
    """The tenant's contacts that mail was sent or scheduled to at ``email`` (compared
    case-insensitively), the most recently addressed first, at most 100; an address never
    used is an empty list. With a ``contact_loader``, contacts it does not know are left
    out."""
    state = get_state()
    found = contact_lookup.contacts_by_email(state, current_tenant(), query["email"],
                                             include_bots=query["include_bots"])
    loader = state.hooks.contact_loader
    if loader is not None:
        found = [c for c in found if loader(c["contact_id"]) is not None]
    return {"contacts": found}


# -- activity ------------------------------------------------------------------------------

def _activity(contact_id: str | None, query: dict[str, Any]) -> dict[str, Any]:
    column, direction = query["order"]
    f = reports.ActivityFilters(
        search=query.get("search") or None,
        include_events=query.get("include_events") or (),
        exclude_events=query.get("exclude_events") or (),
        date_from=query.get("date_from"), date_to=query.get("date_to"),
        order_column=ORDER_COLUMNS[column], descending=direction == "desc",
        page=query["page"], limit=query["limit"], include_bots=query["include_bots"],
    )
    rows, total = reports.activity(get_state(), current_tenant(), contact_id, f)
    return {"rows": rows, "total": total, "max_pages": math.ceil(total / f.limit), "types": reports.EVENT_LABELS,
            "filters": f, "order": [column, direction.upper()]}


@routes.route("/contacts/<contact_id>/activity", summary="A contact's activity", tags=_TAGS,
              query=ActivityQuerySchema, response=ActivityPageSchema, path_params=CONTACT)
def contact_activity(contact_id: str, query: dict[str, Any]) -> dict[str, Any]:
    """Events of one contact, filtered, ordered and paged (page/limit); humans only unless
    ``include_bots=true``."""
    require_contact(contact_id)
    return _activity(contact_id, query)


@routes.route("/activity", summary="Activity of all contacts", tags=_TAGS,
              query=ActivityQuerySchema, response=ActivityPageSchema, errors=(400, 401, 406, 422))
def all_activity(query: dict[str, Any]) -> dict[str, Any]:
    """Events of every contact of the tenant, filtered, ordered and paged."""
    return _activity(None, query)


# -- events by kind and external events ----------------------------------------------------

@routes.route("/contacts/<contact_id>/events/<kind>", summary="A contact's events of one kind", tags=_TAGS,
              query=ContactEventsQuerySchema, response=ContactEventsPageSchema,
              path_params={**CONTACT, "kind": "sends, opens, clicks, bounces, forwards, unsubscribes, "
                                              "deliveries, complaints or replies."})
def contact_events(contact_id: str, kind: str, query: dict[str, Any]) -> dict[str, Any]:
    """Newest first, keyset-paged through ``meta.pagination.next_link``."""
    event_type = KIND_TO_TYPE.get(kind)
    if event_type is None:
        raise NotFound(f"No event kind {kind!r}: use one of {', '.join(KIND_TO_TYPE)}.")
    require_contact(contact_id)
    tenant = current_tenant()
    scope = {"r": "contact-events", "t": tenant, "c": contact_id, "k": kind}
    limit, include_bots, after = query["limit"], query["include_bots"], None
    if query.get("next"):
        found, position = pagination.decode_cursor(query["next"], scope)
        limit, include_bots = found.get("l"), found.get("b")
        if not (isinstance(limit, int) and 1 <= limit <= 500 and isinstance(include_bots, bool)) or len(position) != 2:
            raise ValidationError({"next": ["Invalid cursor."]})
        after = (pagination.parse_position_time(position[0]), pagination.parse_position_int(position[1]))
    rows = reports.contact_events(get_state(), tenant, contact_id, event_type,
                                  include_bots=include_bots, after=after, limit=limit)
    page: dict[str, Any] = {"events": rows[:limit]}
    if len(rows) > limit:
        last = rows[limit - 1]
        token = pagination.encode_cursor({**scope, "l": limit, "b": include_bots}, [last.occurred_at, last.id])
        page["next_link"] = pagination.next_link(token)
    return page


@routes.route("/contacts/<contact_id>/events", methods=["POST"], summary="Record an external event", tags=_TAGS,
              body=EventBodySchema, response=ActivityItemSchema, status=201, path_params=CONTACT)
def record_contact_event(contact_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """An ESP webhook's bounce or forward, an import. A hard bounce (``details.bounceType``
    ``hard`` or ``permanent``) also puts the contact on Do-Not-Contact for email with reason
    2 (bounced), an ``unsubscribe`` with reason 1; an existing entry is kept. One transaction."""
    contact = require_contact(contact_id)
    event = external_events.record_external_event(
        get_state(), current_tenant(), contact_id, body["type"], email=body.get("email"),
        message_id=body.get("message_id"), campaign_id=body.get("campaign_id"), url=body.get("url"),
        occurred_at=body.get("occurred_at"), details=body.get("details"), fallback_email=contact_email(contact),
    )
    return event


# -- Do-Not-Contact -------------------------------------------------------------------------------

def _dnc_response(contact_id: str, tenant: str) -> dict[str, Any]:
    return {"doNotContact": dnc_service.list_dnc(get_state(), contact_id, tenant_id=tenant)}


def _check_body_channel(body: Mapping[str, Any], channel: str) -> None:
    if body.get("channel") not in (None, channel):
        raise ValidationError({"channel": ["Must equal the channel in the path."]})


@routes.route("/contacts/<contact_id>/dnc", summary="A contact's Do-Not-Contact entries", tags=_TAGS,
              response=DNCListSchema, path_params=CONTACT, errors=(401, 404, 406))
def dnc_list(contact_id: str) -> dict[str, Any]:
    """One entry per channel."""
    require_contact(contact_id)
    return _dnc_response(contact_id, current_tenant())


CHANNEL = {**CONTACT, "channel": "A lowercase channel name: email, sms ..."}


@routes.route("/contacts/<contact_id>/dnc/<channel>/add", methods=["POST"], summary="Add to Do-Not-Contact", tags=_TAGS,
              body=DNCAddBodySchema, response=DNCListSchema, path_params=CHANNEL)
def dnc_add(contact_id: str, channel: str, body: dict[str, Any]) -> dict[str, Any]:
    """Adding twice keeps one row per channel and updates reason, channelId and comments."""
    require_contact(contact_id)
    dnc_service.check_channel(channel)
    _check_body_channel(body, channel)
    tenant = current_tenant()
    dnc_service.add_dnc(get_state(), contact_id, channel, body["reason"], body.get("channel_id"),
                        body.get("comments"), tenant_id=tenant)
    return _dnc_response(contact_id, tenant)


@routes.route("/contacts/<contact_id>/dnc/<channel>/remove", methods=["POST"], summary="Remove from Do-Not-Contact",
              tags=_TAGS, body=DNCRemoveBodySchema, response=DNCListSchema, path_params=CHANNEL)
def dnc_remove(contact_id: str, channel: str, body: dict[str, Any]) -> dict[str, Any]:
    """404 when the contact has no entry for the channel."""
    require_contact(contact_id)
    dnc_service.check_channel(channel)
    _check_body_channel(body, channel)
    tenant = current_tenant()
    if not dnc_service.remove_dnc(get_state(), contact_id, channel, tenant_id=tenant):
        raise NotFound(f"The contact has no Do-Not-Contact entry for {channel!r}.")
    return _dnc_response(contact_id, tenant)


# -- UTM tags --------------------------------------------------------------------------------------

def _utm_payload(contact_id: str, tenant: str) -> dict[str, Any]:
    return {"utmtags": utm_service.list_utm(get_state(), contact_id, tenant_id=tenant)}


@routes.route("/contacts/<contact_id>/utm", summary="A contact's UTM tags", tags=_TAGS,
              response=UTMListSchema, path_params=CONTACT, errors=(401, 404, 406))
def utm_list(contact_id: str) -> dict[str, Any]:
    """Oldest first."""
    require_contact(contact_id)
    return _utm_payload(contact_id, current_tenant())


@routes.route("/contacts/<contact_id>/utm/add", methods=["POST"], summary="Add a UTM tag", tags=_TAGS,
              body=UTMAddBodySchema, response=UTMAddResultSchema, status=201, path_params=CONTACT)
def utm_add(contact_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Every field is optional but at least one must be given. ``lastActive`` is a strict
    ISO 8601 date-time; ``query`` an object or a query string."""
    require_contact(contact_id)
    tenant = current_tenant()
    tag = utm_service.add_utm(get_state(), contact_id, tenant_id=tenant, **body)
    return {**_utm_payload(contact_id, tenant), "utmtag": tag}


@routes.route("/contacts/<contact_id>/utm/<utm_id>/remove", methods=["POST"], summary="Remove a UTM tag", tags=_TAGS,
              response=UTMListSchema, path_params={**CONTACT, "utm_id": "The tag's id."}, errors=(401, 404, 406))
def utm_remove(contact_id: str, utm_id: str) -> dict[str, Any]:
    """404 when the contact has no such tag (in this tenant)."""
    require_contact(contact_id)
    if not utm_id.isascii() or not utm_id.isdigit() or int(utm_id) > 2**63 - 1:
        raise NotFound(f"No UTM tag {utm_id!r} for this contact.")
    tenant = current_tenant()
    utm_service.remove_utm(get_state(), contact_id, int(utm_id), tenant_id=tenant)
    return _utm_payload(contact_id, tenant)
