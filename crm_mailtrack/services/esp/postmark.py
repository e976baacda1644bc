"""Postmark webhooks, authenticated by HTTP Basic credentials in the webhook URL
(``https://user:password@crm.example.com/mailtrack/hooks/postmark``), compared in
constant time. Postmark signs nothing else, so serve the hook over HTTPS only.

``RecordType``: ``Delivery``, ``Bounce`` (``Type`` decides: ``HardBounce``,
``BadEmailAddress``, ``ManuallyDeactivated``, ``Blocked``, ``DMARCPolicy`` are hard; the
other delivery failures soft; ``SpamComplaint``/``SpamNotification`` are complaints,
``Unsubscribe`` an unsubscribe; auto-replies and the like are ignored), ``SpamComplaint``,
``Open``, ``Click`` and ``SubscriptionChange`` (a recipient's own suppression is an
unsubscribe) are stored. Our id comes back in ``Metadata.mailtrack_id``
(``X-PM-Metadata-mailtrack_id``); Postmark's events carry no Message-ID of ours, so events
of messages sent without it match nothing (and are counted).
"""
from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Mapping
from typing import Any

from .base import (
    BOUNCE, CLICK, COMPLAINT, DELIVERED, OPEN, UNSUBSCRIBE, EspEvent, SignatureInvalid, WebhookRequest, address,
    digest_id, parse_json, parse_time, text,
)
from .config import EspSettings, ProviderConfig

NAME = "postmark"
HARD = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "Blocked", "DMARCPolicy"})
SOFT = frozenset({"Transient", "SoftBounce", "DnsError", "Unknown", "SMTPApiError", "VirusNotification"})
COMPLAINTS = frozenset({"SpamComplaint", "SpamNotification"})


def verify(esp: EspSettings, config: ProviderConfig, request: WebhookRequest, now: dt.datetime) -> Any:
    user, password = config.key
    given_user = (request.username or "").encode("utf-8", "replace")
    given_password = (request.password or "").encode("utf-8", "replace")
    # both compared, always: the answer's time says nothing about which one was wrong
    ok = hmac.compare_digest(user, given_user) & hmac.compare_digest(password, given_password)
    if not ok or request.username is None:
        raise SignatureInvalid("The Postmark webhook credentials do not match.")
    return parse_json(request.body)


def events(config: ProviderConfig, request: WebhookRequest, body: Any) -> list[EspEvent | None]:
    if not isinstance(body, Mapping):
        from ...errors import BadRequest

        raise BadRequest("A Postmark webhook body is a JSON object.")
    record = body.get("RecordType")
    metadata = body.get("Metadata") if isinstance(body.get("Metadata"), Mapping) else {}
    recipient = address(body.get("Recipient") or body.get("Email"))
    message = text(body.get("MessageID"), 100)

    def event(kind: str, when: Any, event_id: Any = None, **extra: Any) -> EspEvent:
        ident = text(event_id, 100) or digest_id(record, message, recipient, when)
        return EspEvent(NAME, f"{record}:{ident}", kind, recipient, parse_time(when),
                        mailtrack_id=text(metadata.get("mailtrack_id"), 64), **extra)

    if record == "Delivery":
        return [event(DELIVERED, body.get("DeliveredAt"), details={"smtpResponse": text(body.get("Details"))})]
    if record in ("Bounce", "SpamComplaint"):
        kind_name = body.get("Type")
        details = {"status": text(body.get("TypeCode"), 32), "diagnostic": text(body.get("Details")),
                   "postmarkType": text(kind_name)}
        when = body.get("BouncedAt")
        if record == "SpamComplaint" or kind_name in COMPLAINTS:
            return [event(COMPLAINT, when, body.get("ID"), details={"postmarkType": text(kind_name)})]
        if kind_name == "Unsubscribe":
            return [event(UNSUBSCRIBE, when, body.get("ID"), details={"source": "postmark"})]
        if kind_name in HARD or kind_name in SOFT:
            details["bounceType"] = "hard" if kind_name in HARD else "soft"
            return [event(BOUNCE, when, body.get("ID"), details={k: v for k, v in details.items() if v})]
        return [None]
    if record in ("Open", "Click"):
        kind = OPEN if record == "Open" else CLICK
        return [event(kind, body.get("ReceivedAt"), user_agent=text(body.get("UserAgent"), 512),
                      url=text(body.get("OriginalLink"), 4000) if kind == CLICK else None)]
    if record == "SubscriptionChange":
        if body.get("SuppressSending") is True and body.get("SuppressionReason") == "ManualSuppression":
            return [event(UNSUBSCRIBE, body.get("ChangedAt"), details={"source": "postmark"})]
    return [None]
