"""Resend webhooks, signed by Svix: ``svix-id``, ``svix-timestamp`` and ``svix-signature``
headers, an HMAC-SHA256 of ``id.timestamp.body`` with the endpoint's ``whsec_`` secret,
verified by the ``standardwebhooks`` library (the Standard Webhooks reference code, which
Svix's own verifier wraps; it also refuses timestamps more than 5 minutes away).

``type``: ``email.delivered``, ``email.bounced`` (``bounce.type`` ``Permanent`` is hard, else
soft), ``email.complained``, ``email.opened`` and ``email.clicked`` are stored, one event
per address in ``to``; the others are ignored. The ``svix-id`` is the event's id (the same
on every retry). Resend has no header that echoes our id over SMTP: events match through
a ``mailtrack_id`` tag (when the host sends through Resend's API with tags) or a
``Message-ID`` in ``headers`` and the recipient, else they are counted as unmatched.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from .base import (
    BOUNCE, CLICK, COMPLAINT, DELIVERED, OPEN, EspEvent, SignatureInvalid, WebhookRequest, address, parse_json,
    parse_time, text,
)
from .config import EspSettings, ProviderConfig

NAME = "resend"
_TYPES = {"email.delivered": DELIVERED, "email.bounced": BOUNCE, "email.complained": COMPLAINT,
          "email.opened": OPEN, "email.clicked": CLICK}


def verify(esp: EspSettings, config: ProviderConfig, request: WebhookRequest, now: dt.datetime) -> Any:
    headers = {f"webhook-{part}": request.header(f"svix-{part}") or "" for part in ("id", "timestamp", "signature")}
    try:
        body = request.body.decode("utf-8")
        config.key.verify(body, headers, json_parse=False)
    except Exception:  # noqa: BLE001 - the library raises ValueError/binascii.Error on malformed headers too
        raise SignatureInvalid("The Svix signature of this Resend webhook does not match.") from None
    return parse_json(body)


def _tag(data: Mapping[str, Any]) -> str | None:
    tags = data.get("tags")
    if isinstance(tags, Mapping):
        return text(tags.get("mailtrack_id"), 64)
    for tag in tags if isinstance(tags, list) else ():
        if isinstance(tag, Mapping) and tag.get("name") == "mailtrack_id":
            return text(tag.get("value"), 64)
    return None


def _message_id(data: Mapping[str, Any]) -> str | None:
    headers = data.get("headers")
    for header in headers if isinstance(headers, list) else ():
        if isinstance(header, Mapping) and str(header.get("name", "")).lower() == "message-id":
            return text(header.get("value"))
    return None


def events(config: ProviderConfig, request: WebhookRequest, body: Any) -> list[EspEvent | None]:
    if not isinstance(body, Mapping):
        from ...errors import BadRequest

        raise BadRequest("A Resend webhook body is a JSON object.")
    kind = _TYPES.get(body.get("type"))  # type: ignore[arg-type]
    data = body.get("data")
    if kind is None or not isinstance(data, Mapping):
        return [None]
    svix_id = request.header("svix-id") or ""
    details: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if kind == BOUNCE:
        bounce = data.get("bounce") if isinstance(data.get("bounce"), Mapping) else {}
        diagnostic = bounce.get("diagnosticCode")
        if isinstance(diagnostic, list):
            diagnostic = "; ".join(str(d) for d in diagnostic)
        details = {"bounceType": "hard" if bounce.get("type") == "Permanent" else "soft",
                   "diagnostic": text(diagnostic) or text(bounce.get("message")),
                   "resendBounceType": text(bounce.get("type")), "resendBounceSubType": text(bounce.get("subType"))}
    elif kind == CLICK:
        click = data.get("click") if isinstance(data.get("click"), Mapping) else {}
        extra = {"url": text(click.get("link"), 4000), "ip": text(click.get("ipAddress"), 45),
                 "user_agent": text(click.get("userAgent"), 512)}
    to = data.get("to")
    recipients = to if isinstance(to, list) else [to]
    when = (data.get(kind) or {}).get("timestamp") if isinstance(data.get(kind), Mapping) else None
    return [EspEvent(NAME, f"{svix_id}:{address(rcpt) or ''}", kind, address(rcpt),
                     parse_time(when or body.get("created_at")), mailtrack_id=_tag(data),
                     message_id_header=_message_id(data),
                     details={k: v for k, v in details.items() if v is not None}, **extra)
            for rcpt in recipients]
