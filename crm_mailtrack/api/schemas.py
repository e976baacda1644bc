"""Marshmallow schemas of the contacts, campaigns and ContactClicks API (issue 3).

Query-argument schemas use ``unknown = EXCLUDE``; body schemas ``unknown = RAISE``. Every
text field refuses NUL characters and over-long values (PostgreSQL would refuse them later
with a 500), every number has a range, every JSON object is checked for values a database
cannot store (NUL, NaN): bad input is a 422, never a 500.
"""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from ..models import EVENT_TYPES
from .fields import http_url, JsonObject, MAX_INT32, QueryField, Text, Timestamp

#: Event types a client may record through ``POST /contacts/<id>/events``; the others
#: (``dnc_*``, ``utm_*``) are written by their own routes.
EXTERNAL_EVENT_TYPES = ("send", "open", "click", "bounce", "forward", "unsubscribe", "failed", "delivered",
                        "complaint")

#: ``/events/<kind>`` and ``/tracking/<kind>`` names -> stored event type.
KIND_TO_TYPE = {
    "sends": "send", "opens": "open", "clicks": "click", "bounces": "bounce",
    "forwards": "forward", "unsubscribes": "unsubscribe",
}

#: Activity ``order`` columns (allow-list) -> event column name.
ORDER_COLUMNS = {
    "timestamp": "occurred_at", "date_added": "occurred_at", "id": "id", "event": "type",
    "eventType": "type", "type": "type", "contactId": "contact_id", "contact_id": "contact_id",
    "email": "email",
}

def _lower_choice(choices: tuple[str, ...]) -> validate.Validator:
    return validate.OneOf(choices + tuple(c.upper() for c in choices))


def _bots() -> fields.Boolean:
    return fields.Boolean(load_default=False, metadata={
        "description": "Include machine events (scanner pre-clicks, privacy-proxy opens); default humans only."})


class QuerySchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE


class BodySchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE


# -- activity ----------------------------------------------------------------------------------

class ActivityQuerySchema(QuerySchema):
    search = Text(max_length=200, data_key="filters[search]", metadata={
        "description": "Case-insensitive text matched against email, URL, contact, campaign and message ids."})
    include_events = fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)),
                                 data_key="filters[includeEvents]", metadata={
        "description": "Only these event types (repeat the key, or use filters[includeEvents][])."})
    exclude_events = fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)),
                                 data_key="filters[excludeEvents]", metadata={
        "description": "Leave these event types out (repeat the key, or use filters[excludeEvents][])."})
    date_from = Timestamp(data_key="filters[dateFrom]", metadata={
        "description": "Events at or after this time (ISO 8601 or 'Y-m-d H:i:s'; naive = UTC)."})
    date_to = Timestamp(end_of_day=True, data_key="filters[dateTo]", metadata={
        "description": "Events at or before this time; a bare date includes the whole day."})
    order_column = fields.String(data_key="order[0]", validate=validate.OneOf(tuple(ORDER_COLUMNS)), metadata={
        "description": "The order array, column part: order[0]=timestamp&order[1]=DESC."})
    order_direction = fields.String(data_key="order[1]", validate=_lower_choice(("asc", "desc")), metadata={
        "description": "The order array, direction part (asc or desc)."})
    order_by = fields.String(data_key="orderBy", validate=validate.OneOf(tuple(ORDER_COLUMNS)), metadata={
        "description": "Alternative to order[0] (the /contacts/activity form)."})
    order_by_dir = fields.String(data_key="orderByDir", validate=_lower_choice(("asc", "desc")), metadata={
        "description": "Alternative to order[1]."})
    page = fields.Integer(load_default=1, validate=validate.Range(1, 100_000), metadata={
        "description": "Page number, from 1."})
    limit = fields.Integer(load_default=30, validate=validate.Range(1, 500), metadata={
        "description": "Events per page, 1-500 (default 30)."})
    include_bots = _bots()

    @ma.post_load
    def _order(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        column = data.pop("order_column", None) or data.pop("order_by", None) or "timestamp"
        direction = data.pop("order_direction", None) or data.pop("order_by_dir", None) or "desc"
        data.pop("order_by", None)
        data.pop("order_by_dir", None)
        data["order"] = (column, direction.lower())
        return data


# -- contact events ----------------------------------------------------------------------------

class CursorQuerySchema(QuerySchema):
    next = Text(max_length=4096, metadata={
        "description": "Opaque cursor from meta.pagination.next_link; it carries the other parameters."})
    include_bots = _bots()


class ContactEventsQuerySchema(CursorQuerySchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500), metadata={
        "description": "Events per page, 1-500 (default 50)."})


class EventBodySchema(BodySchema):
    type = fields.String(required=True, validate=validate.OneOf(EXTERNAL_EVENT_TYPES))
    email = Text(max_length=320, allow_none=True, metadata={
        "description": "Defaults to the message's (or the contact loader's) email."})
    message_id = Text(max_length=32, allow_none=True, metadata={"description": "A message of this tenant."})
    campaign_id = Text(max_length=64, allow_none=True, metadata={"description": "Defaults to the message's."})
    url = Text(max_length=4096, allow_none=True, pattern=http_url, metadata={
        "description": "The link's destination: an absolute http:// or https:// URL (anything else is a 422)."})
    occurred_at = Timestamp(allow_none=True, metadata={"description": "Default: now. Naive = UTC."})
    details = JsonObject(allow_none=True, metadata={
        "description": "Free-form; a bounce with bounceType 'hard' (or 'permanent'), or the "
        "MAILTRACK_SOFT_BOUNCE_LIMIT-th other bounce in a row, also adds DNC reason 2; a complaint "
        "adds DNC reason 1 with comments 'complaint'."})


# -- DNC and UTM -------------------------------------------------------------------------------

class DNCAddBodySchema(BodySchema):
    reason = fields.Integer(load_default=3, validate=validate.Range(1, 3), metadata={
        "description": "1 unsubscribed, 2 bounced, 3 manual (default)."})
    channelId = Text(max_length=64, allow_none=True, attribute="channel_id", metadata={
        "description": "Id of the entity that caused the entry (e.g. a message id)."})
    comments = Text(max_length=10_000, allow_none=True)
    channel = Text(max_length=32, metadata={"description": "Optional; must equal the channel in the path."})


class DNCRemoveBodySchema(BodySchema):
    channel = Text(max_length=32, metadata={"description": "Optional; must equal the channel in the path."})


_UTM_TEXT = ("utm_campaign", "utm_source", "utm_medium", "utm_content", "utm_term")


class UTMAddBodySchema(BodySchema):
    #: "At least one field": one of them is a non-empty string, an object with a key, or a date-time.
    openapi_extra = {"anyOf": [
        *({"required": [name], "properties": {name: {"type": "string", "minLength": 1}}}
          for name in (*_UTM_TEXT, "useragent", "url", "referer", "remotehost")),
        {"required": ["query"], "properties": {"query": {"type": "object", "minProperties": 1}}},
        {"required": ["lastActive"], "properties": {"lastActive": {"type": "string"}}},
    ]}

    utm_campaign = Text(max_length=255, allow_none=True)
    utm_source = Text(max_length=255, allow_none=True)
    utm_medium = Text(max_length=255, allow_none=True)
    utm_content = Text(max_length=255, allow_none=True)
    utm_term = Text(max_length=255, allow_none=True)
    useragent = Text(max_length=4096, allow_none=True)
    url = Text(max_length=4096, allow_none=True)
    referer = Text(max_length=4096, allow_none=True)
    query = QueryField(allow_none=True, metadata={
        "type": ["object", "string", "null"], "maxLength": 8192, "pattern": r"^(?:[^\x00%]|%(?!00))*$",
        "description": "An object, or a query string such as 'a=1&b=2' (at most 8192 characters; no NUL, "
                       "also not as %00)."})
    remotehost = Text(max_length=255, allow_none=True)
    lastActive = Timestamp(strict=True, allow_none=True, attribute="last_active", metadata={
        "description": "ISO 8601 date-time, e.g. 2017-01-17T00:30:08+00:00 (naive = UTC)."})

    @ma.validates_schema
    def _not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not any(v not in (None, "", {}) for v in data.values()):
            raise ma.ValidationError("Give at least one UTM field.", "_schema")


# -- campaign reports --------------------------------------------------------------------------

class CampaignReportQuerySchema(CursorQuerySchema):
    created_since = Timestamp(metadata={"description": "Only events on or after this ISO 8601 time."})
    limit = fields.Integer(load_default=500, validate=validate.Range(1, 500), metadata={
        "description": "Results per page, 1-500 (default 500)."})


class BotsQuerySchema(QuerySchema):
    include_bots = _bots()


# -- ContactClicks -----------------------------------------------------------------------------

ODATA_ORDER = ("ID", "ID asc", "ID desc", "ClickCount", "ClickCount asc", "ClickCount desc")


class ODataQuerySchema(QuerySchema):
    top = fields.Integer(data_key="$top", load_default=100, validate=validate.Range(1, 1000), metadata={
        "description": "Page size, 1-1000 (default 100)."})
    skip = fields.Integer(data_key="$skip", load_default=0, validate=validate.Range(0, 10**9))
    orderby = fields.String(data_key="$orderby", load_default="ID", validate=validate.OneOf(ODATA_ORDER))
    include_bots = _bots()


#: The OData contact properties, filled from the host's contact_loader mapping.
CONTACT_PROPERTIES = {
    "DisplayName": "display_name", "FirstName": "first_name", "LastName": "last_name",
    "Email": "email", "ActiveState": "active_state", "CreationDate": "creation_date",
    "Shared": "shared", "OwnerID": "owner_id", "CategoryID": "category_id", "StageID": "stage_id",
    "Company": "company", "WebAddress": "web_address", "Title": "title", "FileAs": "file_as",
    "Source": "source", "Notes": "notes",
    **{f"Custom{i}": f"custom{i}" for i in range(1, 21)},
    "BusinessID": "business_id", "RegionID": "region_id",
}


def _contact_click_body_fields(*, id_required: bool) -> dict[str, fields.Field]:
    out: dict[str, fields.Field] = {
        "ID": fields.Raw(required=id_required, metadata={
            "type": ["integer", "string"], "minLength": 1, "maxLength": 64,
            # surrounding ASCII white space is dropped, so it must hold something else; no NUL
            "pattern": r"^[^\x00]*[^\x00\t\n\x0b\x0c\r ][^\x00]*$",
            "description": "The contact id (an integer, or a string of 1 to 64 characters, not only "
                           "ASCII white space, without NUL; surrounding ASCII white space is dropped)."}),
        "ClickCount": fields.Integer(required=True, strict=False, validate=validate.Range(0, MAX_INT32),
                                     metadata={"description": "Clicks to import (POST) or the corrected total (PUT)."}),
    }
    for name in [*CONTACT_PROPERTIES, "CatergoryID"]:
        out[name] = fields.Raw(allow_none=True, load_only=True, metadata={
            "description": "Accepted for compatibility; contact properties come from the host."})
    return out


# Schema.from_dict keeps marshmallow's default ``unknown = RAISE``, as body schemas must.
ContactClickPostSchema = ma.Schema.from_dict(_contact_click_body_fields(id_required=True),
                                             name="ContactClickPostSchema")
ContactClickPutSchema = ma.Schema.from_dict(_contact_click_body_fields(id_required=False),
                                            name="ContactClickPutSchema")
