"""What the communications API answers: its records, pages, threads, summaries and
analytics, dumped from the services' data (messages, events, counts) by these schemas,
which hold the whole output shape (see :mod:`.responses` for :func:`computed`)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import marshmallow as ma
from marshmallow import fields as f

from ..services.common import tenant_out
from .communications_schemas import Moment
from .responses import computed, value

_STRINGS = {"items": {"type": "string"}}


def _d(text: str) -> dict[str, str]:
    return {"description": text}


def _message(name: str) -> str:
    return f"message.{name}"


def _details(ev: Any) -> Mapping[str, Any]:
    return value(ev, "details") or {}


class ClickedLinkSchema(ma.Schema):
    """Dumps ``{"url", "tracked_url", "clicks", "first_click"}``."""

    originalUrl = f.String(attribute="url", metadata=_d("The destination."))
    url = f.String(attribute="tracked_url", allow_none=True, metadata=_d("The signed tracking URL of the destination."))
    clickCount = f.Integer(attribute="clicks", metadata=_d("Clicks on this link in this message."))
    clickedAt = Moment(attribute="first_click", metadata=_d("First click."))


class RecordEventSchema(ma.Schema):
    """A lifecycle event (a ``ContactEvent``, or the record's creation)."""

    id = computed(lambda ev: str(value(ev, "id")), "string")
    type = computed(lambda ev: str(value(ev, "type")).upper(), "string",
                    "CREATE, SEND, FAILED, BOUNCE, FORWARD, UNSUBSCRIBE, COMMENT ...")
    date = Moment(attribute="occurred_at")
    authorId = computed(lambda ev: _details(ev).get("authorId"), ["string", "null"])
    description = computed(lambda ev: _details(ev).get("comment") or _details(ev).get("error")
                           or _details(ev).get("description"), ["string", "null"])


def _creation(record: Any) -> dict[str, Any]:
    """The record's first lifecycle event: its creation."""
    m = record["message"]
    return {"id": f"{m.id}:create", "type": "create", "occurred_at": m.created_at,
            "details": {"authorId": m.created_by}}


class CommunicationSchema(ma.Schema):
    """A communication record: dumps ``{"message": Message, "open_count", "opened_at",
    "clicked_links", "events"}`` (``services.records.records``)."""

    id = f.String(attribute=_message("id"), dump_only=True)
    messageId = f.String(attribute=_message("id"), dump_only=True, metadata=_d("The tracking id (same as id)."))
    internetMessageId = f.String(attribute=_message("internet_message_id"), allow_none=True,
                                 metadata=_d("The Message-ID header sent."))
    tenantId = computed(lambda r: tenant_out(r["message"].tenant_id), ["string", "null"])
    contactId = f.String(attribute=_message("contact_id"))
    recipients = computed(lambda r: [r["message"].email], "array", **_STRINGS)
    cc = computed(lambda r: list(r["message"].cc or []), "array", **_STRINGS)
    bcc = computed(lambda r: list(r["message"].bcc or []), "array", **_STRINGS)
    subject = f.String(attribute=_message("subject"))
    body = computed(lambda r: r["message"].html if r["message"].html is not None else r["message"].text,
                    ["string", "null"], "The HTML as sent (instrumented).")
    originalBody = computed(lambda r: (r["message"].original_html if r["message"].original_html is not None
                                       else r["message"].text), ["string", "null"], "The HTML as given.")
    bodyText = f.String(attribute=_message("text"), allow_none=True)
    status = f.String(attribute=_message("status"))
    errorMessage = f.String(attribute=_message("error_message"), allow_none=True)
    type = f.String(attribute=_message("type"), allow_none=True)
    templateId = f.String(attribute=_message("template_id"), allow_none=True)
    templateName = f.String(attribute=_message("template_name"), allow_none=True)
    variables = f.Dict(attribute=_message("variables"), allow_none=True)
    campaignId = f.String(attribute=_message("campaign_id"), allow_none=True)
    recipientListId = f.String(attribute=_message("campaign_id"), allow_none=True, dump_only=True, metadata=_d("The campaign id."))
    relatedEntityType = f.String(attribute=_message("related_entity_type"), allow_none=True)
    relatedEntityId = f.String(attribute=_message("related_entity_id"), allow_none=True)
    conversationId = f.String(attribute=_message("conversation_id"), allow_none=True)
    senderEmail = f.String(attribute=_message("sender_email"), allow_none=True)
    senderName = f.String(attribute=_message("sender_name"), allow_none=True)
    replyTo = f.String(attribute=_message("reply_to"), allow_none=True)
    providerType = computed(lambda r: "SMTP", "string")
    trackingEnabled = f.Boolean(attribute=_message("track_opens"))
    linkTrackingEnabled = f.Boolean(attribute=_message("track_clicks"))
    scheduledAt = Moment(attribute=_message("scheduled_at"), allow_none=True)
    sentAt = Moment(attribute=_message("sent_at"), allow_none=True)
    created = Moment(attribute=_message("created_at"))
    createdBy = f.String(attribute=_message("created_by"), allow_none=True)
    updated = Moment(attribute=_message("updated_at"))
    updatedBy = f.String(attribute=_message("updated_by"), allow_none=True)
    openCount = f.Integer(attribute="open_count", metadata=_d("Human open events."))
    opened = computed(lambda r: r["opened_at"] is not None, "boolean", "Opened or clicked (a click implies an open).")
    openedAt = Moment(attribute="opened_at", allow_none=True, metadata=_d("First open (or first click)."))
    clickedLinks = f.List(f.Nested(ClickedLinkSchema), attribute="clicked_links")
    events = f.List(f.Nested(RecordEventSchema), attribute="lifecycle",
                    metadata=_d("Its creation, then its lifecycle events, oldest first."))

    @ma.pre_dump
    def _lifecycle(self, record: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {**record, "lifecycle": [_creation(record), *record["events"]]}


class SentCommunicationSchema(CommunicationSchema):
    """The answer to send, schedule and send-template: the record of the first recipient's
    copy, plus the ids of every copy the request created."""

    copyIds = f.List(f.String(), attribute="copy_ids", metadata=_d(
        "Ids of every copy this request created, one per recipient in the order given (this "
        "record's id first); read them with find-list?ids=..."))


class _SortInfo(ma.Schema):
    empty = f.Boolean()
    sorted = f.Boolean()
    unsorted = f.Boolean()


class _Pageable(ma.Schema):
    offset = f.Integer()
    pageNumber = f.Integer()
    pageSize = f.Integer()
    paged = f.Boolean()
    unpaged = f.Boolean()
    sort = f.Nested(_SortInfo)


class CommunicationPageSchema(ma.Schema):
    """The (Spring Data) page envelope: dumps ``{"records", "page", "size", "total",
    "sorted"}`` (``services.communications.page``)."""

    content = f.List(f.Nested(CommunicationSchema))
    empty = f.Boolean()
    first = f.Boolean()
    last = f.Boolean()
    number = f.Integer()
    numberOfElements = f.Integer()
    pageable = f.Nested(_Pageable)
    size = f.Integer()
    sort = f.Nested(_SortInfo)
    totalElements = f.Integer()
    totalPages = f.Integer()

    @ma.pre_dump
    def _envelope(self, data: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        content, page, size, total = data["records"], data["page"], data["size"], data["total"]
        total_pages = math.ceil(total / size) if size else 0
        sort = {"empty": not data["sorted"], "sorted": data["sorted"], "unsorted": not data["sorted"]}
        return {
            "content": content, "empty": not content, "first": page == 0, "last": page >= total_pages - 1,
            "number": page, "numberOfElements": len(content),
            "pageable": {"offset": page * size, "pageNumber": page, "pageSize": size, "paged": True,
                         "unpaged": False, "sort": sort},
            "size": size, "sort": sort, "totalElements": total, "totalPages": total_pages,
        }


class CommSummarySchema(ma.Schema):
    """The short by-entity item: dumps ``{"message": Message, "date", "from_email", "opened"}``
    (``services.records.summary``)."""

    id = f.String(attribute=_message("id"))
    subject = f.String(attribute=_message("subject"))
    status = f.String(attribute=_message("status"))
    direction = computed(lambda r: "OUTBOUND", "string", "Always OUTBOUND: the extension records outbound mail.")
    date = Moment(metadata=_d("Sent at, else created."))
    fromEmail = f.String(attribute="from_email", allow_none=True)
    fromName = f.String(attribute=_message("sender_name"), allow_none=True)
    recipients = computed(lambda r: [r["message"].email], "array", **_STRINGS)
    cc = computed(lambda r: list(r["message"].cc or []), "array", **_STRINGS)
    conversationId = f.String(attribute=_message("conversation_id"), allow_none=True)
    bodyHtml = f.String(attribute=_message("html"), allow_none=True)
    bodyText = f.String(attribute=_message("text"), allow_none=True)
    opened = f.Boolean()


class CommThreadSchema(ma.Schema):
    inbound = f.List(f.Dict(), metadata=_d("Always empty: inbound mail is not tracked."))
    outbound = f.List(f.Nested(CommunicationSchema))


class _Rates(ma.Schema):
    totalSent = f.Integer()
    totalOpened = f.Integer()
    totalClicked = f.Integer()
    openRate = f.Float(metadata=_d("totalOpened / delivered (sent minus bounced); 0.0 when none was delivered."))
    clickRate = f.Float(metadata=_d("totalClicked / delivered (sent minus bounced)."))
    clickToOpenRate = f.Float(metadata=_d("totalClicked / totalOpened (click-to-open rate)."))


class _ByTemplate(_Rates):
    templateId = f.String(allow_none=True)
    templateName = f.String(allow_none=True)


class _ByType(_Rates):
    type = f.String(allow_none=True)


class _Volume(ma.Schema):
    date = f.String(metadata=_d("UTC day, YYYY-MM-DD."))
    count = f.Integer()


class _Engagement(ma.Schema):
    date = f.String(metadata=_d("UTC day of the events, YYYY-MM-DD."))
    opens = f.Integer(metadata=_d("Open events that day (every pixel load)."))
    clicks = f.Integer(metadata=_d("Click events that day."))


class CommAnalyticsSchema(_Rates):
    failureRate = f.Float()
    byTemplate = f.List(f.Nested(_ByTemplate))
    byType = f.List(f.Nested(_ByType))
    sendVolumeByDay = f.List(f.Nested(_Volume))
    totalFailed = f.Integer(metadata=_d("Failed messages in range."))
    totalBounced = f.Integer(metadata=_d("Sent messages in range with a bounce event."))
    totalDelivered = f.Integer(metadata=_d("totalSent minus totalBounced."))
    totalUnsubscribed = f.Integer(metadata=_d("Sent messages in range with an unsubscribe event."))
    totalComplained = f.Integer(metadata=_d("Sent messages in range with a complaint (spam report) event."))
    bounceRate = f.Float(metadata=_d("totalBounced / totalSent; 0.0 when none was sent."))
    complaintRate = f.Float(metadata=_d("totalComplained / totalDelivered; 0.0 when none was delivered."))
    engagementByDay = f.List(f.Nested(_Engagement), metadata=_d("Open and click events per UTC day."))
