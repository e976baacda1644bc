"""Mailgun webhooks (JSON): ``{"signature": {"timestamp", "token", "signature"},
"event-data": {...}}``. The signature is the hex HMAC-SHA256 of ``timestamp`` + ``token``
with the webhook signing key (a subaccount's events also carry ``parent-signature``, made
with the parent account's key: either may match). The timestamp must be within
``tolerance_seconds`` of now, and a token is accepted once: the signature does not cover
the body, so a captured signature could otherwise carry any body. Used tokens are stored in
the database (``mailtrack_webhook_receipts``), so every host of the app refuses a replay.

``event-data.event``: ``delivered``, ``failed`` (``severity`` ``permanent`` is a hard bounce,
``temporary`` a soft one), ``complained``, ``unsubscribed``, ``opened`` and ``clicked``
(``client-info.bot``, when Mailgun names one, is its machine verdict) are stored; ``accepted``,
``rejected`` and ``stored`` are ignored. Our id comes back in ``user-variables.mailtrack_id``
(``X-Mailgun-Variables``); else ``message.headers.message-id`` and ``recipient`` match.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from ... import bots
from .base import (
    BOUNCE, CLICK, COMPLAINT, DELIVERED, OPEN, UNSUBSCRIBE, EspEvent, SignatureInvalid, WebhookRequest, address,
    digest_id, parse_json, parse_time, text,
)
from .config import EspSettings, ProviderConfig
from .sendgrid import check_timestamp

NAME = "mailgun"
_TYPES = {"delivered": DELIVERED, "failed": BOUNCE, "complained": COMPLAINT, "unsubscribed": UNSUBSCRIBE,
          "opened": OPEN, "clicked": CLICK}


def verify(esp: EspSettings, config: ProviderConfig, request: WebhookRequest, now: dt.datetime) -> Any:
    body = parse_json(request.body)
    sig = body.get("signature") if isinstance(body, Mapping) else None
    if not isinstance(sig, Mapping):
        raise SignatureInvalid("A Mailgun webhook carries its signature in the body's 'signature' object.")
    timestamp, token = sig.get("timestamp"), sig.get("token")
    if isinstance(timestamp, int) and not isinstance(timestamp, bool):
        timestamp = str(timestamp)
    if not isinstance(timestamp, str) or not isinstance(token, str) or not token or len(token) > 200:
        raise SignatureInvalid("The Mailgun signature has no timestamp or token.")
    check_timestamp(timestamp, config.tolerance, now)
    expected = hmac.new(config.key, (timestamp + token).encode(), hashlib.sha256).hexdigest()
    given = [s for s in (sig.get("signature"), sig.get("parent-signature")) if isinstance(s, str)]
    if not any(hmac.compare_digest(expected.encode(), s.strip().lower().encode("utf-8", "replace")) for s in given):
        raise SignatureInvalid("The Mailgun signature does not match.")
    return body


def nonce(body: Mapping[str, Any]) -> str:
    """The token of a verified request: stored, and refused when seen again."""
    return str(body["signature"]["token"])


def _machine(info: Any) -> tuple[bool | None, str | None]:
    bot = info.get("bot") if isinstance(info, Mapping) else None
    if bot is True:
        return True, None
    if isinstance(bot, str) and bot.strip():
        return True, bot.strip().lower()[:32]
    return None, None


def events(config: ProviderConfig, request: WebhookRequest, body: Mapping[str, Any]) -> list[EspEvent | None]:
    data = body.get("event-data")
    kind = _TYPES.get(data.get("event")) if isinstance(data, Mapping) else None  # type: ignore[arg-type]
    if kind is None or not isinstance(data, Mapping):
        return [None]
    message = data.get("message") if isinstance(data.get("message"), Mapping) else {}
    headers = message.get("headers") if isinstance(message.get("headers"), Mapping) else {}
    variables = data.get("user-variables") if isinstance(data.get("user-variables"), Mapping) else {}
    ev = EspEvent(NAME, text(data.get("id"), 100) or digest_id(data), kind, address(data.get("recipient")),
                  parse_time(data.get("timestamp")), mailtrack_id=text(variables.get("mailtrack_id"), 64),
                  message_id_header=text(headers.get("message-id")))
    if kind == BOUNCE:
        status = data.get("delivery-status") if isinstance(data.get("delivery-status"), Mapping) else {}
        ev.details = {"bounceType": "hard" if data.get("severity") == "permanent" else "soft",
                      "status": text(status.get("code"), 32),
                      "diagnostic": text(status.get("description")) or text(status.get("message")),
                      "reason": text(data.get("reason"))}
    elif kind in (OPEN, CLICK):
        info = data.get("client-info")
        ev.ip = text(data.get("ip"), 45)
        ev.user_agent = text(info.get("user-agent"), 512) if isinstance(info, Mapping) else None
        ev.machine_flag, bot = _machine(info)
        if ev.machine_flag:
            ev.details = {"machineFlag": f"client-info.bot={bot}" if bot else "client-info.bot"}
            ev.machine_reason = bots.esp_reason(bot)
        if kind == CLICK:
            ev.url = text(data.get("url"), 4000)
    ev.details = {k: v for k, v in ev.details.items() if v is not None}
    return [ev]
