"""Response schemas of the contacts, campaigns and ContactClicks routes: each route dumps
its answer through the schema the OpenAPI document shows, so these hold the whole output
shape (names, computed values, which keys are present); views return rows and plain data.

Computed fields are :func:`computed` ones: a function of the object being dumped, with the
JSON type the document states for it. A function may answer :data:`OMIT` to leave its key out
(a campaign report item has only the date key of its kind)."""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import marshmallow as ma
from marshmallow import fields

from .core import iso
from .schemas import CONTACT_PROPERTIES, Timestamp

#: Returned by a :func:`computed` function: the key is left out of the answer.
OMIT = ma.missing


def value(obj: Any, name: str) -> Any:
    """``obj[name]`` of a mapping, else the attribute (ORM objects, result rows)."""
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def computed(fn: Callable[[Any], Any], json_type: str | list[str], description: str = "",
             **openapi: Any) -> fields.Function:
    """A dump-only field whose value is ``fn(obj)``, documented as ``json_type``."""
    metadata: dict[str, Any] = {"type": json_type, **openapi}
    if description:
        metadata["description"] = description
    return fields.Function(fn, dump_only=True, metadata=metadata)


def _is_bot(obj: Any) -> bool:
    return bool(value(obj, "is_machine"))


def _event_label(obj: Any) -> str:
    from ..services.reports import EVENT_LABELS

    kind = value(obj, "type")
    return EVENT_LABELS.get(kind, kind)


def _activity_type(obj: Any) -> str:
    return "EMAIL_" + str(value(obj, "type")).upper()


# -- activity ----------------------------------------------------------------------------------

class ActivityItemSchema(ma.Schema):
    """An event (row or ``ContactEvent``) as an activity item."""

    id = fields.Integer()
    event = fields.String(attribute="type", metadata={"description": "The event type (click, open ...)."})
    eventType = computed(_event_label, "string", "Human name of the event type.")
    timestamp = Timestamp(attribute="occurred_at")
    contactId = fields.String(attribute="contact_id")
    email = fields.String(allow_none=True)
    messageId = fields.String(attribute="message_id", allow_none=True)
    campaignId = fields.String(attribute="campaign_id", allow_none=True)
    url = fields.String(allow_none=True)
    isBot = computed(_is_bot, "boolean")
    machineReason = fields.String(attribute="machine_reason", allow_none=True, metadata={
        "description": "Why the event counts as a machine's: a bot rule (head-request, prefetch, "
                       "apple-mpp, scanner-ua, honeypot, burst, too-fast-after-send ...) or import "
                       "(ContactClicks); null for a human's."})
    details = fields.Dict(allow_none=True)


class ActivityFiltersSchema(ma.Schema):
    """The applied filters (``reports.ActivityFilters``)."""

    search = fields.String(allow_none=True)
    includeEvents = fields.List(fields.String(), attribute="include_events")
    excludeEvents = fields.List(fields.String(), attribute="exclude_events")
    dateFrom = Timestamp(attribute="date_from", allow_none=True)
    dateTo = Timestamp(attribute="date_to", allow_none=True)
    includeBots = fields.Boolean(attribute="include_bots")


class ActivityPageSchema(ma.Schema):
    """Dumps ``{"rows", "total", "max_pages", "types", "filters": ActivityFilters, "order"}``."""

    events = fields.List(fields.Nested(ActivityItemSchema), attribute="rows")
    total = fields.Integer()
    page = fields.Integer(attribute="filters.page")
    limit = fields.Integer(attribute="filters.limit")
    maxPages = fields.Integer(attribute="max_pages")
    types = fields.Dict(keys=fields.String(), values=fields.String(),
                        metadata={"description": "Every event type with its human name."})
    filters = fields.Nested(ActivityFiltersSchema, metadata={"description": "The filters applied."})
    order = fields.List(fields.String(), metadata={"description": "[column, direction] applied."})


# -- contact events and cursor pages -----------------------------------------------------------

class ContactEventSchema(ma.Schema):
    id = fields.Integer()
    activity_type = computed(_activity_type, "string", "EMAIL_CLICK, EMAIL_OPEN ...")
    contact_id = fields.String()
    email_address = fields.String(attribute="email", allow_none=True)
    campaign_id = fields.String(allow_none=True)
    message_id = fields.String(allow_none=True)
    link_id = fields.String(allow_none=True)
    link_url = fields.String(attribute="url", allow_none=True)
    event_time = Timestamp(attribute="occurred_at")
    is_bot = computed(_is_bot, "boolean")
    machine_reason = fields.String(allow_none=True, metadata={
        "description": "Why the event counts as a machine's; null for a human's."})
    details = fields.Dict(allow_none=True)


class PaginationSchema(ma.Schema):
    next_link = fields.String(metadata={"description": "Relative URL of the next page; absent on the last."})


class MetaSchema(ma.Schema):
    pagination = fields.Nested(PaginationSchema)


class CursorPageSchema(ma.Schema):
    """A keyset page: dumps ``{<items>: rows, "next_link": url}`` (no ``next_link`` on the
    last page) as ``{"meta": {"pagination": {"next_link"}}, <items>: [...]}``."""

    meta = fields.Nested(MetaSchema)

    @ma.pre_dump
    def _meta(self, page: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {**page, "meta": {"pagination": page}}


class ContactEventsPageSchema(CursorPageSchema):
    events = fields.List(fields.Nested(ContactEventSchema))


# -- DNC and UTM -------------------------------------------------------------------------------

class DNCItemSchema(ma.Schema):
    id = fields.Integer()
    channel = fields.String()
    reason = fields.Integer(metadata={"description": "1 unsubscribed, 2 bounced, 3 manual."})
    channelId = fields.String(attribute="channel_id", allow_none=True)
    comments = fields.String(allow_none=True)
    dateAdded = Timestamp(attribute="date_added")


class DNCListSchema(ma.Schema):
    doNotContact = fields.List(fields.Nested(DNCItemSchema))


class UTMItemSchema(ma.Schema):
    id = fields.Integer()
    utm_campaign = fields.String(allow_none=True)
    utm_source = fields.String(allow_none=True)
    utm_medium = fields.String(allow_none=True)
    utm_content = fields.String(allow_none=True)
    utm_term = fields.String(allow_none=True)
    useragent = fields.String(allow_none=True)
    url = fields.String(allow_none=True)
    referer = fields.String(allow_none=True)
    query = fields.Dict(allow_none=True)
    remotehost = fields.String(allow_none=True)
    lastActive = Timestamp(attribute="last_active", allow_none=True, metadata={
        "description": "When the combination was last seen (a click, an add)."})
    dateAdded = Timestamp(attribute="date_added")
    hits = fields.Integer(metadata={
        "description": "How many times this combination of utm_* values was seen for the contact (one tag each)."})


class UTMListSchema(ma.Schema):
    utmtags = fields.List(fields.Nested(UTMItemSchema))


class UTMAddResultSchema(UTMListSchema):
    utmtag = fields.Nested(UTMItemSchema, metadata={"description": "The tag just added."})


# -- campaign reports --------------------------------------------------------------------------

def _on_kind(kind: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn(row)`` for an event of type ``kind``, else :data:`OMIT`."""
    return lambda row: fn(row) if value(row, "type") == kind else OMIT


def _date_of(kind: str) -> fields.Function:
    return computed(_on_kind(kind, lambda row: iso(value(row, "occurred_at"))), "string",
                    f"{kind.capitalize()} reports only: when it happened.", format="date-time")


class CampaignReportItemSchema(ma.Schema):
    """A campaign event row; only the date key of the row's type is present (and ``link_id``
    for clicks)."""

    activity_type = computed(_activity_type, "string", "EMAIL_CLICK, EMAIL_OPEN, EMAIL_SEND ...")
    campaign_id = fields.String()
    contact_id = fields.String()
    email_address = fields.String(attribute="email", allow_none=True)
    link_id = computed(_on_kind("click", lambda row: value(row, "link_id")), ["string", "null"], "Clicks only.")
    click_date = _date_of("click")
    open_date = _date_of("open")
    send_date = _date_of("send")
    bounce_date = _date_of("bounce")
    unsubscribe_date = _date_of("unsubscribe")
    forward_date = _date_of("forward")
    delivered_date = _date_of("delivered")
    complaint_date = _date_of("complaint")
    reply_date = _date_of("reply")
    is_bot = computed(_is_bot, "boolean")


class CampaignReportSchema(CursorPageSchema):
    results = fields.List(fields.Nested(CampaignReportItemSchema))


class CampaignLinkSchema(ma.Schema):
    link_id = fields.String()
    url = fields.String()
    total_clicks = fields.Integer()
    unique_clicks = fields.Integer(metadata={"description": "Distinct messages that clicked the link."})


class CampaignLinksSchema(ma.Schema):
    links = fields.List(fields.Nested(CampaignLinkSchema))


class CampaignProgressSchema(ma.Schema):
    """Where a campaign's messages are: ``queued + sending + sent + failed + suppressed +
    cancelled == total``."""

    campaign_id = fields.String()
    total = fields.Integer(metadata={"description": "The campaign's messages."})
    queued = fields.Integer(metadata={"description": "Waiting to be sent: PENDING, or SCHEDULED (a later "
                                                     "time, a retry's backoff or a rate-limit slot)."})
    retrying = fields.Integer(metadata={"description": "Of the queued, those that failed transiently "
                                                       "(SMTP 4xx, server unreachable) and will be tried again."})
    sending = fields.Integer(metadata={"description": "Claimed by a sender, outcome not yet recorded."})
    sent = fields.Integer(metadata={"description": "Accepted by the SMTP server."})
    failed = fields.Integer(metadata={"description": "Refused for good (5xx), or out of attempts."})
    suppressed = fields.Integer(metadata={"description": "Not sent: the recipient is on Do-Not-Contact."})
    cancelled = fields.Integer()


# -- ContactClicks -----------------------------------------------------------------------------

_INT32 = re.compile(r"^(0|-?[1-9][0-9]{0,9})$")


def public_id(contact_id: str) -> int | str:
    """``"42"`` -> ``42`` (OData's Int32), anything else stays a string."""
    if _INT32.match(contact_id) and -(2**31) <= int(contact_id) < 2**31:
        return int(contact_id)
    return contact_id


def _property(prop: str, key: str) -> Callable[[Any], Any]:
    """The host's contact mapping's ``key`` (or ``prop``) value."""
    def get(entity: Any) -> Any:
        contact = value(entity, "contact") or {}
        return contact.get(key, contact.get(prop))
    return get


def _contact_click_fields() -> dict[str, fields.Field]:
    out: dict[str, fields.Field] = {
        "ID": computed(lambda e: public_id(value(e, "contact_id")), ["integer", "string"],
                       "The contact id: an integer when it is one, else a string."),
        "ClickCount": fields.Integer(attribute="clicks"),
    }
    for prop, key in CONTACT_PROPERTIES.items():
        out[prop] = fields.Function(_property(prop, key), dump_only=True, allow_none=True)
    return out


#: Dumps ``{"contact_id", "clicks", "contact": the contact_loader's mapping or None}``.
ContactClickSchema = ma.Schema.from_dict(_contact_click_fields(), name="ContactClickSchema")


class ContactClickListSchema(ma.Schema):
    value = fields.List(fields.Nested(ContactClickSchema))
