"""Twilio SendGrid's Event Webhook, signed (ECDSA P-256 with SHA-256): the signature in
``X-Twilio-Email-Event-Webhook-Signature`` (base64 DER) covers the timestamp of
``X-Twilio-Email-Event-Webhook-Timestamp`` followed by the raw body, verified with the
public key the console shows (base64 DER). The timestamp must be within
``tolerance_seconds`` of now (SendGrid documents no window; a replay inside it stores
nothing new, since each ``sg_event_id`` is stored once).

The body is a JSON array of events: ``delivered``, ``bounce`` (``type`` ``bounce`` is hard,
``blocked`` soft), ``spamreport`` (complaint), ``unsubscribe`` / ``group_unsubscribe``,
``open`` (``sg_machine_open`` is SendGrid's machine verdict) and ``click`` are stored;
``processed``, ``deferred``, ``dropped`` and ``group_resubscribe`` are ignored. Our id
comes back as the top-level ``mailtrack_id`` (``X-SMTPAPI`` ``unique_args``); else
``smtp-id`` (the Message-ID) and ``email`` match.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping
from typing import Any

from ... import bots
from .base import (
    BOUNCE, CLICK, COMPLAINT, DELIVERED, OPEN, UNSUBSCRIBE, EspEvent, SignatureInvalid, WebhookRequest, address,
    digest_id, parse_json, parse_time, require_extra, text,
)
from .config import EspSettings, ProviderConfig

NAME = "sendgrid"
SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"

_TYPES = {"delivered": DELIVERED, "bounce": BOUNCE, "spamreport": COMPLAINT, "unsubscribe": UNSUBSCRIBE,
          "group_unsubscribe": UNSUBSCRIBE, "open": OPEN, "click": CLICK}


def check_timestamp(value: str | None, tolerance: float, now: dt.datetime) -> None:
    """401 unless ``value`` is a Unix time within ``tolerance`` seconds of ``now``."""
    try:
        stamp = float(value or "")
    except ValueError:
        raise SignatureInvalid("The signature timestamp is missing or not a number.") from None
    if not abs(now.timestamp() - stamp) <= tolerance:
        raise SignatureInvalid("The signature timestamp is outside the accepted window.")


def verify(esp: EspSettings, config: ProviderConfig, request: WebhookRequest, now: dt.datetime) -> Any:
    signature, timestamp = request.header(SIGNATURE), request.header(TIMESTAMP)
    if not signature or not timestamp:
        raise SignatureInvalid(f"{SIGNATURE} and {TIMESTAMP} are required.")
    check_timestamp(timestamp, config.tolerance, now)
    hashes = require_extra("cryptography.hazmat.primitives.hashes")
    ec = require_extra("cryptography.hazmat.primitives.asymmetric.ec")
    exceptions = require_extra("cryptography.exceptions")
    try:
        config.key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + request.body,
                          ec.ECDSA(hashes.SHA256()))
    except (exceptions.InvalidSignature, binascii.Error, ValueError, TypeError):
        raise SignatureInvalid("The SendGrid signature does not match.") from None
    return parse_json(request.body)


def _event(item: Mapping[str, Any]) -> EspEvent | None:
    kind = _TYPES.get(item.get("event"))  # type: ignore[arg-type]
    if kind is None:
        return None
    event_id = text(item.get("sg_event_id"), 100) or digest_id(item)
    ev = EspEvent(NAME, event_id, kind, address(item.get("email")), parse_time(item.get("timestamp")),
                  mailtrack_id=text(item.get("mailtrack_id"), 64), message_id_header=text(item.get("smtp-id")))
    if kind == BOUNCE:
        ev.details = {"bounceType": "soft" if item.get("type") == "blocked" else "hard",
                      "status": text(item.get("status"), 32), "diagnostic": text(item.get("reason")),
                      "classification": text(item.get("bounce_classification"))}
    elif kind in (OPEN, CLICK):
        ev.ip, ev.user_agent = text(item.get("ip"), 45), text(item.get("useragent"), 512)
        if kind == OPEN and isinstance(item.get("sg_machine_open"), bool):
            ev.machine_flag = item["sg_machine_open"]
            if ev.machine_flag:
                ev.details, ev.machine_reason = {"machineFlag": "sg_machine_open"}, bots.ESP_FLAG
        if kind == CLICK:
            ev.url = text(item.get("url"), 4000)
    elif kind == UNSUBSCRIBE and item.get("asm_group_id") is not None:
        ev.details = {"asmGroupId": text(item.get("asm_group_id"))}
    ev.details = {k: v for k, v in ev.details.items() if v is not None}
    return ev


def events(config: ProviderConfig, request: WebhookRequest, body: Any) -> list[EspEvent | None]:
    if isinstance(body, dict):
        body = [body]
    if not isinstance(body, list):
        from ...errors import BadRequest

        raise BadRequest("A SendGrid event webhook body is a JSON array of events.")
    return [_event(item) if isinstance(item, dict) else None for item in body]
