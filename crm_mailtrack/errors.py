"""One exception hierarchy. HTTP-facing errors also inherit from werkzeug's, so the
blueprint's handler (and any host handler) sees a proper HTTP status."""
from __future__ import annotations

from typing import Any

from werkzeug import exceptions as wz


class MailTrackError(Exception):
    """Base class of every error crm_mailtrack raises on purpose."""


class ConfigurationError(MailTrackError, RuntimeError):
    """Missing or unsafe configuration, raised at ``init_app`` and naming the key."""


class InvalidDestination(MailTrackError, ValueError):
    """A link destination that will never be signed: not http(s), or carrying CR/LF."""


class DatabaseUnavailable(MailTrackError, wz.ServiceUnavailable):
    """The database could not store a change that must not be lost silently."""

    description = "The tracking database is unavailable; nothing was changed. Try again later."


class QueueUnavailable(MailTrackError):
    """The task queue's broker did not take a message's task (down, refusing connections),
    after Celery's own publish retries. The senders fall back to ``send-due``: nothing is lost."""


class NotFound(MailTrackError, wz.NotFound):
    """No such row in the caller's tenant (also the answer for rows of another tenant)."""


class BadRequest(MailTrackError, wz.BadRequest):
    """Malformed request: unparseable JSON, a tampered cursor, a bad query string."""


class PayloadTooLarge(MailTrackError, wz.RequestEntityTooLarge):
    """A request body over the limit of its route (``MAILTRACK_MAX_BODY_BYTES``,
    ``MAILTRACK_MAX_MESSAGE_BODY_BYTES``)."""


class Conflict(MailTrackError, wz.Conflict):
    """The request conflicts with the current state of the row."""


class ValidationError(MailTrackError, wz.UnprocessableEntity):
    """Well-formed input that fails validation; ``errors`` maps fields to messages.

    Its text names the fields and their messages (``email: Not a valid email address.``),
    so a failed Python call says what was wrong without looking at ``errors``."""

    def __init__(self, errors: dict[str, Any] | None = None, description: str | None = None):
        self.errors = errors or {}
        summary = _summarise(self.errors)
        description = description or "The request body or query failed validation."
        super().__init__(f"{description} {summary}" if summary else description)


def _summarise(errors: Any, prefix: str = "") -> str:
    """``{"email": ["Bad."], "to": {0: ["Bad."]}}`` -> ``"email: Bad.; to.0: Bad."``."""
    if isinstance(errors, dict):
        parts = [_summarise(v, f"{prefix}{k}." if k != "_schema" else prefix) for k, v in errors.items()]
        return "; ".join(p for p in parts if p)
    if isinstance(errors, (list, tuple)):
        texts = [m for m in errors if isinstance(m, str)]
        nested = "; ".join(p for p in (_summarise(m, prefix) for m in errors if not isinstance(m, str)) if p)
        own = f"{prefix.rstrip('.') + ': ' if prefix else ''}{' '.join(texts)}" if texts else ""
        return "; ".join(p for p in (own, nested) if p)
    return f"{prefix.rstrip('.')}: {errors}" if prefix else str(errors)


class Unauthorized(MailTrackError, wz.Unauthorized):
    """The API request is not authorised."""


class NotAcceptable(MailTrackError, wz.NotAcceptable):
    """The client does not accept ``application/json``."""
