"""Amazon SES events, delivered through SNS (event publishing of a configuration set, or
the identity's feedback notifications): ``eventType`` (or ``notificationType``) ``Delivery``,
``Bounce``, ``Complaint``, ``Open``, ``Click`` and ``Subscription`` are stored; ``Send``,
``Reject``, ``DeliveryDelay`` and ``Rendering Failure`` are ignored.

One SNS message is one SES event; a bounce, complaint or delivery naming several
recipients gives one event per recipient (the SNS MessageId with the address is the id).
Our message id comes back in ``mail.tags.mailtrack_id`` (``X-SES-MESSAGE-TAGS``, published
with event publishing only); else ``mail.commonHeaders.messageId`` and the recipient match.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from . import sns
from .base import (
    BOUNCE, CLICK, COMPLAINT, DELIVERED, OPEN, UNSUBSCRIBE, EspEvent, WebhookRequest, address, parse_json,
    parse_time, text,
)
from .config import EspSettings, ProviderConfig

NAME = "ses"


def verify(esp: EspSettings, config: ProviderConfig, request: WebhookRequest, now: dt.datetime) -> Any:
    return sns.verify(esp, config, request, now)


def _message_id_header(mail: Mapping[str, Any]) -> str | None:
    common = mail.get("commonHeaders")
    if isinstance(common, Mapping) and isinstance(common.get("messageId"), str):
        return common["messageId"]
    for header in mail.get("headers") or ():
        if isinstance(header, Mapping) and str(header.get("name", "")).lower() == "message-id":
            return text(header.get("value"))
    return None


def _tag(mail: Mapping[str, Any]) -> str | None:
    tags = mail.get("tags")
    value = tags.get("mailtrack_id") if isinstance(tags, Mapping) else None
    if isinstance(value, list) and value:
        value = value[0]
    return text(value, 64)


def ses_events(record: Any, sns_id: str) -> list[EspEvent]:
    """The events of one SES record (the parsed SNS ``Message``)."""
    if not isinstance(record, Mapping):
        return []
    kind = record.get("eventType") or record.get("notificationType")
    mail = record.get("mail") if isinstance(record.get("mail"), Mapping) else {}
    common = {"mailtrack_id": _tag(mail), "message_id_header": _message_id_header(mail)}

    def event(type_: str, recipient: Any, when: Any, **extra: Any) -> EspEvent:
        rcpt = address(recipient)
        return EspEvent(NAME, f"{sns_id}:{rcpt or ''}", type_, rcpt, parse_time(when), **common, **extra)

    out: list[EspEvent] = []
    if kind == "Delivery":
        delivery = record.get("delivery") or {}
        details = {"smtpResponse": text(delivery.get("smtpResponse")), "reportingMTA": text(delivery.get("reportingMTA"))}
        for rcpt in delivery.get("recipients") or mail.get("destination") or ():
            out.append(event(DELIVERED, rcpt, delivery.get("timestamp"), details=_clean(details)))
    elif kind == "Bounce":
        bounce = record.get("bounce") or {}
        hard = bounce.get("bounceType") == "Permanent"
        for rcpt in bounce.get("bouncedRecipients") or ():
            if not isinstance(rcpt, Mapping):
                continue
            details = {"bounceType": "hard" if hard else "soft", "status": text(rcpt.get("status"), 32),
                       "diagnostic": text(rcpt.get("diagnosticCode")), "sesBounceType": text(bounce.get("bounceType")),
                       "sesBounceSubType": text(bounce.get("bounceSubType"))}
            out.append(event(BOUNCE, rcpt.get("emailAddress"), bounce.get("timestamp"), details=_clean(details)))
    elif kind == "Complaint":
        complaint = record.get("complaint") or {}
        details = {"feedbackType": text(complaint.get("complaintFeedbackType"))}
        for rcpt in complaint.get("complainedRecipients") or ():
            if isinstance(rcpt, Mapping):
                out.append(event(COMPLAINT, rcpt.get("emailAddress"), complaint.get("timestamp"),
                                 details=_clean(details)))
    elif kind in ("Open", "Click"):
        hit = record.get(kind.lower()) or {}
        for rcpt in mail.get("destination") or ():
            out.append(event(OPEN if kind == "Open" else CLICK, rcpt, hit.get("timestamp"),
                             url=text(hit.get("link"), 4000) if kind == "Click" else None,
                             ip=text(hit.get("ipAddress"), 45), user_agent=text(hit.get("userAgent"), 512)))
    elif kind == "Subscription":
        sub = record.get("subscription") or {}
        prefs = sub.get("newTopicPreferences") or {}
        if isinstance(prefs, Mapping) and prefs.get("unsubscribeAll") is True:
            for rcpt in mail.get("destination") or ():
                out.append(event(UNSUBSCRIBE, rcpt, sub.get("timestamp"),
                                 details={"source": text(sub.get("source")) or "ses"}))
    return out


def events(config: ProviderConfig, request: WebhookRequest, message: Mapping[str, Any]) -> list[EspEvent | None]:
    """The SES events of a verified SNS Notification (``[None]``: nothing to store)."""
    try:
        record = parse_json(message.get("Message") or "")
    except Exception:  # noqa: BLE001 - a signed notification that is not an SES event: ignored
        return [None]
    return list(ses_events(record, str(message.get("MessageId")))) or [None]


def _clean(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if v is not None}
