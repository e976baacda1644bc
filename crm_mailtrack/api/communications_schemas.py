"""Marshmallow schemas of the communications API (its field names): the query arguments
and bodies it parses. What it answers is in :mod:`.communications_responses`."""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

import marshmallow as ma
from marshmallow import fields as f
from marshmallow import validate as v

from ..services.communications import MAX_RECIPIENTS, SORT_FIELDS
from .core import iso
from .fields import JsonObject as Obj
from .fields import Pattern, Text, no_nul, single_line

UTC = dt.timezone.utc
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_SIZE = 500
MAX_IDS = 1000


#: A GET sort parameter: an allow-listed field, then optionally ``,asc`` or ``,desc``.
SORT_PARAM = Pattern(r"^ *(" + "|".join(SORT_FIELDS) + r") *(,( *([Aa][Ss][Cc]|[Dd][Ee][Ss][Cc]) *)?)?$",
                     error="Must be one of " + ", ".join(SORT_FIELDS) + ", optionally followed by ,asc or ,desc.")


def _d(text: str) -> dict[str, str]:
    return {"description": text}


#: The white space dropped around ids (what a JSON Schema ``\s`` and the document agree on;
#: ``str.strip()`` would also drop U+001C-U+001F).
_ASCII_SPACE = " \t\n\x0b\x0c\r"


class Str(f.String):
    """A string the databases can store (no NUL); ``header`` strings also have no CR/LF."""

    def __init__(self, *, max_length: int | None = None, header: bool = False, **kwargs: Any) -> None:
        # One pattern validator, so the document shows the rule (apispec copies its regex).
        validators: list[Any] = [single_line if header else no_nul]
        if max_length is not None:
            validators.append(v.Length(max=max_length))
        extra = kwargs.pop("validate", None)
        if extra is not None:
            validators.append(extra)
        super().__init__(validate=validators, **kwargs)


class Moment(f.AwareDateTime):
    """ISO 8601 date-time (naive read as UTC) or a plain date: midnight UTC, or with
    ``end_of_day`` the following midnight (so ``dateTo=2026-01-31`` includes that day)."""

    def __init__(self, *, end_of_day: bool = False, **kwargs: Any) -> None:
        super().__init__(default_timezone=UTC, **kwargs)
        self.end_of_day = end_of_day

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dt.datetime:
        if not isinstance(value, str) or "\x00" in value or len(value) > 40:
            raise ma.ValidationError("Not a valid ISO 8601 date-time.")
        if _DATE_ONLY.match(value.strip()):
            try:
                day = dt.date.fromisoformat(value.strip())
            except ValueError:
                raise ma.ValidationError("Not a valid date.") from None
            start = dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
            try:
                return start + dt.timedelta(days=1) if self.end_of_day else start
            except OverflowError:
                raise ma.ValidationError("Date out of range.") from None
        try:
            return super()._deserialize(value, attr, data, **kwargs).astimezone(UTC)
        except OverflowError:
            raise ma.ValidationError("Date out of range.") from None

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return iso(value)


class StrOrList(f.List):
    """One string or a list of strings (a filter matching any of them)."""

    def __init__(self, **kwargs: Any) -> None:
        # Documented as what it accepts: a list, or one string or integer (the string rules apply).
        kwargs["metadata"] = {"type": ["array", "string", "integer"], "maxLength": 320,
                              "pattern": no_nul.regex.pattern, **kwargs.get("metadata", {})}
        super().__init__(Str(max_length=320), validate=v.Length(max=MAX_IDS), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [str(value)]
        return super()._deserialize(value, attr, data, **kwargs)


# -- input -------------------------------------------------------------------------------------

class CommFiltersSchema(ma.Schema):
    """Dynamic-search filters: equality (or any of a list), and a creation date range."""

    class Meta:
        unknown = ma.RAISE

    status = StrOrList(metadata=_d("PENDING, SCHEDULED, SENDING, SENT, FAILED, SUPPRESSED or CANCELLED."))
    type = StrOrList(metadata=_d("The message type (e.g. OFFERTE)."))
    templateId = StrOrList(metadata=_d("Template id."))
    templateName = StrOrList(metadata=_d("Template name."))
    relatedEntityType = StrOrList(metadata=_d("Type of the related CRM entity."))
    relatedEntityId = StrOrList(metadata=_d("Id of the related CRM entity."))
    conversationId = StrOrList(metadata=_d("Conversation (thread) id."))
    campaignId = StrOrList(metadata=_d("Campaign id."))
    contactId = StrOrList(metadata=_d("Contact id."))
    senderEmail = StrOrList(metadata=_d("From address."))
    recipient = StrOrList(metadata=_d("Recipient address."))
    dateFrom = Moment(metadata=_d("Created at or after (ISO 8601 or YYYY-MM-DD)."))
    dateTo = Moment(end_of_day=True, metadata=_d("Created before (a plain date includes that day)."))


class PagingMixin(ma.Schema):
    page = f.Integer(load_default=0, validate=v.Range(min=0, max=10_000_000), metadata=_d("Page number, from 0."))
    size = f.Integer(load_default=20, validate=v.Range(min=1, max=MAX_SIZE), metadata=_d("Page size, 1-500."))


class IncludeBotsMixin(ma.Schema):
    include_bots = f.Boolean(load_default=False, metadata=_d("Count machine opens and clicks too."))


class CommPageQuery(PagingMixin, IncludeBotsMixin):
    class Meta:
        unknown = ma.EXCLUDE

    sortBy = f.String(load_default="created", validate=v.OneOf(list(SORT_FIELDS)), metadata=_d("Field to sort by."))
    direction = f.String(load_default="DESC", validate=v.OneOf(["ASC", "DESC", "asc", "desc"]),
                         metadata=_d("ASC or DESC."))


class CommSearchQuery(CommFiltersSchema, PagingMixin, IncludeBotsMixin):
    """GET dynamic-search and csv-export: filters as query parameters."""

    class Meta:
        unknown = ma.EXCLUDE

    search = f.List(Str(max_length=200), load_default=list,
                    metadata=_d("Free-text terms; each must appear in subject, recipient, template, contact or sender."))
    sort = f.List(Text(max_length=100, pattern=SORT_PARAM), load_default=list,
                  metadata=_d("'field', 'field,asc' or 'field,desc' (repeatable)."))


class CommSortItem(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    field = Str(required=True, validate=v.OneOf(list(SORT_FIELDS)), metadata=_d("Field to sort by."))
    ascending = f.Boolean(load_default=True, metadata=_d("Ascending order."))


class CommSearchBody(PagingMixin, IncludeBotsMixin):
    """POST dynamic-search."""

    class Meta:
        unknown = ma.RAISE

    filters = f.Nested(CommFiltersSchema, load_default=dict, metadata=_d("Field filters."))
    search = f.List(Str(max_length=200), load_default=list, metadata=_d("Free-text terms."))
    sort = f.List(f.Nested(CommSortItem), load_default=list, metadata=_d("Sort order."))


class CommBotsQuery(IncludeBotsMixin):
    """Read routes whose records count opens and clicks."""

    class Meta:
        unknown = ma.EXCLUDE


class CommIdsQuery(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    ids = f.List(Str(max_length=64, validate=v.Length(min=1), metadata={
                     # a value holds an id: something besides commas and ASCII white space, no NUL
                     "pattern": r"^[^\x00]*[^\x00,\t\n\x0b\x0c\r ][^\x00]*$"}), required=True,
                 validate=v.Length(min=1, max=MAX_IDS), metadata=_d("Ids, repeated or comma-separated."))

    @ma.pre_load
    def split_commas(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        ids = data.get("ids")
        if isinstance(ids, list):
            parts = (p.strip(_ASCII_SPACE) for item in ids for p in str(item).split(","))
            data = {**data, "ids": [p for p in parts if p]}
        return data


class CommFindIdsQuery(CommIdsQuery, IncludeBotsMixin):
    """find and find-list: ids, and whether machine opens and clicks count."""

    class Meta:
        unknown = ma.EXCLUDE


class CommEntityQuery(IncludeBotsMixin):
    class Meta:
        unknown = ma.EXCLUDE

    entityType = Str(required=True, max_length=64, validate=v.Length(min=1), metadata=_d("CRM entity type."))
    entityId = Str(required=True, max_length=64, validate=v.Length(min=1), metadata=_d("CRM entity id."))


class CommAnalyticsQuery(IncludeBotsMixin):
    class Meta:
        unknown = ma.EXCLUDE

    dateFrom = Moment(metadata=_d("Messages sent at or after (ISO 8601 or YYYY-MM-DD)."))
    dateTo = Moment(end_of_day=True, metadata=_d("Messages sent before (a plain date includes that day)."))
    campaignId = Str(load_default=None, max_length=64, validate=v.Length(min=1),
                     metadata=_d("Only the messages of this campaign."))


_RECIPIENT_RULE = [
    {"required": ["contactId"], "properties": {
        "contactId": {"type": "string"}, "recipients": {"type": ["array", "null"], "maxItems": 1}}},
    {"required": ["recipients"], "properties": {
        "contactId": {"type": "null"}, "recipients": {"type": "array", "minItems": 1}}},
]


class _Outbound(ma.Schema):
    """Fields shared by every body that creates a message."""

    class Meta:
        unknown = ma.RAISE

    #: The rule across fields, as the OpenAPI document states it: a contact id with at most
    #: one recipient, or no contact id and one or more recipients.
    openapi_extra: dict = {"anyOf": _RECIPIENT_RULE}

    contactId = Str(load_default=None, max_length=64, validate=v.Length(min=1), metadata=_d(
        "The host's contact id. With it, at most one recipient (default: the contact_loader's email). "
        "Without it, each recipient is its own contact: the host's contact_resolver(email), else the "
        "lower-cased address."))
    recipients = f.List(f.Email(validate=v.Length(max=254)), load_default=None,
                        validate=v.Length(max=MAX_RECIPIENTS, error="At most {max} recipients per request."), metadata={
        **_d(f"Addresses (1-{MAX_RECIPIENTS}, each once, compared without letter case). Every recipient "
             "gets a copy of its own: its own message id and tracking links. The answer is the first "
             "recipient's record; copyIds lists every copy. Required without contactId."),
        "uniqueItems": True})
    cc = f.List(f.Email(), load_default=None, metadata=_d("Cc addresses."))
    bcc = f.List(f.Email(), load_default=None, metadata=_d("Bcc addresses."))
    type = Str(load_default=None, max_length=64, metadata=_d("Message type (e.g. OFFERTE)."))
    campaignId = Str(load_default=None, max_length=64, metadata=_d("Campaign id."))
    relatedEntityType = Str(load_default=None, max_length=64, metadata=_d("Related CRM entity type."))
    relatedEntityId = Str(load_default=None, max_length=64, metadata=_d("Related CRM entity id."))
    conversationId = Str(load_default=None, max_length=64, metadata=_d("Conversation (thread) id."))
    senderEmail = f.Email(load_default=None, metadata=_d("From address (default MAILTRACK_DEFAULT_SENDER)."))
    senderName = Str(load_default=None, max_length=255, header=True, metadata=_d("From display name."))
    replyTo = f.Email(load_default=None, metadata=_d("Reply-To address."))
    variables = Obj(keys=Str(), load_default=None, metadata=_d("Template or merge variables."))
    trackingEnabled = f.Boolean(load_default=None, metadata=_d("Add the open pixel (default MAILTRACK_TRACK_OPENS)."))
    linkTrackingEnabled = f.Boolean(load_default=None, metadata=_d("Rewrite links (default MAILTRACK_TRACK_CLICKS)."))
    createdBy = Str(load_default=None, max_length=64, metadata=_d("Author id."))


class SendBody(_Outbound):
    #: And an HTML body or a text body (either may be empty).
    openapi_extra = {"allOf": [{"anyOf": _RECIPIENT_RULE}, {"anyOf": [
        {"required": ["body"], "properties": {"body": {"type": "string"}}},
        {"required": ["bodyText"], "properties": {"bodyText": {"type": "string"}}}]}]}
    subject = Str(required=True, max_length=998, header=True, metadata=_d("Subject line."))
    body = Str(load_default=None, metadata=_d("HTML body (links and pixel are instrumented)."))
    bodyText = Str(load_default=None, metadata=_d("Plain-text body (default: derived from the HTML)."))
    templateId = Str(load_default=None, max_length=64, metadata=_d("Template id, for reports."))
    templateName = Str(load_default=None, max_length=255, metadata=_d("Template name, for reports."))


class ScheduleBody(SendBody):
    scheduledAt = Moment(required=True, metadata=_d("When to send (ISO 8601; naive is UTC)."))


class TemplateSendBody(_Outbound):
    templateName = Str(load_default=None, max_length=255, metadata=_d("Template name, for reports."))
    scheduledAt = Moment(load_default=None, metadata=_d("Send later instead of now."))


class CommentBody(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    comment = Str(required=True, max_length=10_000, validate=v.Length(min=1), metadata=_d("The comment."))
    authorId = Str(load_default=None, max_length=64, metadata=_d("Who wrote it."))


__all__ = [name for name in dir() if name.endswith(("Schema", "Query", "Body"))]
