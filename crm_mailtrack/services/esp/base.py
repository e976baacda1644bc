"""What every provider module shares: the request as the route hands it over, the
normalised event, the refusals (401/403/400) and small parsing helpers.

A provider module has two functions: ``verify(config, request, now)`` checks the
signature or credentials exactly as the provider documents them and returns the parsed
body (or raises :class:`SignatureInvalid`); ``events(config, request, body)`` maps that
body to :class:`EspEvent` values. Nothing here touches the database.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from werkzeug import exceptions as wz

from ...errors import BadRequest, MailTrackError

#: The event types a webhook may store (DESIGN 8.3/8.4).
DELIVERED = "delivered"
BOUNCE = "bounce"
COMPLAINT = "complaint"
UNSUBSCRIBE = "unsubscribe"
OPEN = "open"
CLICK = "click"
EVENT_TYPES = (DELIVERED, BOUNCE, COMPLAINT, UNSUBSCRIBE, OPEN, CLICK)

#: Deepest JSON nesting a webhook body may have (SES events nest about 5 levels).
MAX_JSON_DEPTH = 32


class SignatureInvalid(MailTrackError, wz.Unauthorized):
    """A missing, malformed or wrong signature (or credentials, or a timestamp outside the
    window, or a replayed token): 401, nothing stored."""


class NotAllowed(MailTrackError, wz.Forbidden):
    """A correctly signed request from a source this app does not accept (an SNS topic
    outside ``topic_arns``): 403, nothing stored."""


class ConfirmationFailed(MailTrackError, wz.BadGateway):
    """An SNS subscription could not be confirmed (its SubscribeURL failed): 502, so that
    the operator sees it; nothing stored."""


@dataclass(frozen=True)
class WebhookRequest:
    """The parts of an HTTP request a provider verifies and reads (no ``flask.request`` in
    services): the raw body, the headers (case-insensitive mapping) and the Basic
    credentials, if any."""

    body: bytes
    headers: Mapping[str, str]
    username: str | None = None
    password: str | None = None

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value if isinstance(value, str) else None


@dataclass
class EspEvent:
    """One provider event, normalised. ``event_id`` is the provider's own id of the event
    (with the recipient when one provider event concerns several): ``provider`` and
    ``event_id`` make the dedup key. ``mailtrack_id`` is our message id when the message
    carried the header of ``MAILTRACK_ESP``; else ``message_id_header`` (the Message-ID)
    and ``recipient`` match it."""

    provider: str
    event_id: str
    type: str
    recipient: str | None
    occurred_at: dt.datetime | None = None
    mailtrack_id: str | None = None
    message_id_header: str | None = None
    url: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    #: The provider's own verdict: ``True``/``False`` when it says, ``None`` when silent.
    machine_flag: bool | None = None
    #: The reason stored when ``machine_flag`` is true (default :data:`~crm_mailtrack.bots.ESP_FLAG`).
    machine_reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def dedup_key(self) -> str:
        return f"{self.provider}:{self.event_id}"


def parse_json(raw: bytes | str) -> Any:
    """A JSON document; 400 for anything else (not UTF-8, not JSON, nested too deep)."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise BadRequest(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON.") from None
    stack = [(data, 1)] if isinstance(data, (dict, list)) else []
    while stack:  # only containers are visited: a batch of flat events costs one pass
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.")
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return data


def text(value: Any, limit: int = 1000) -> str | None:
    """A string field as stored in ``details`` (trimmed to ``limit``), ``None`` otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        return None
    return value[:limit]


def address(value: Any) -> str | None:
    """A recipient address, trimmed; ``None`` unless it looks like one."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if "<" in value and value.endswith(">"):
        value = value[value.rindex("<") + 1:-1].strip()
    return value if "@" in value and len(value) <= 320 else None


def parse_time(value: Any) -> dt.datetime | None:
    """An ISO 8601 string or a Unix time (int, float or digits) as aware UTC; ``None`` when
    it is neither (the event is then stored at the time it arrived)."""
    try:
        if isinstance(value, bool):
            return None
        if isinstance(value, (int, float)) or (isinstance(value, str) and value.replace(".", "", 1).isdigit()):
            return dt.datetime.fromtimestamp(float(value), dt.timezone.utc)
        if isinstance(value, str) and value:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.timezone.utc)
            return parsed.astimezone(dt.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def digest_id(*parts: Any) -> str:
    """A stable id for an event whose provider gives it none: a digest of what identifies it."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


def bare_message_id(value: Any) -> str | None:
    """A Message-ID without its angle brackets and spaces (``None`` if empty)."""
    if not isinstance(value, str):
        return None
    value = value.strip().strip("<>").strip()
    return value[:250] or None


def require_extra(module: str) -> Any:
    """Import an optional dependency of the ``esp`` extra, or say which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        from ...errors import ConfigurationError

        raise ConfigurationError(
            f"MAILTRACK_WEBHOOKS: verifying this provider needs the '{module.split('.')[0]}' package: "
            "pip install 'crm_mailtrack[esp]'."
        ) from None
