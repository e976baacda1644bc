"""The webhook request flow: verify a provider's request, map its events, store them.

:func:`receive` is what the route calls, once: the provider module verifies the request
exactly as the provider documents it (``verify``; a failure is 401 and nothing is
stored), maps the body to :class:`~.base.EspEvent` values (``events``), and
:func:`.store.store` writes them. Provider modules: :mod:`.ses` (through :mod:`.sns`),
:mod:`.sendgrid`, :mod:`.mailgun`, :mod:`.postmark`, :mod:`.resend`.
"""
from __future__ import annotations

import datetime as dt
from types import ModuleType

from ...errors import NotFound
from ...models import utcnow
from ...state import MailTrackState
from . import mailgun, postmark, resend, sendgrid, ses, sns
from .base import EspEvent, WebhookRequest
from .config import PROVIDERS
from .store import Receipt, store, unmatched_count

MODULES: dict[str, ModuleType] = {"ses": ses, "sendgrid": sendgrid, "mailgun": mailgun, "postmark": postmark,
                                  "resend": resend}


def receive(state: MailTrackState, provider: str, request: WebhookRequest, *,
            now: dt.datetime | None = None) -> tuple[Receipt, dict[str, object] | None]:
    """Verify, map and store one webhook request of ``provider``; the receipt, and for an
    SNS subscription message what was done with it. ``NotFound`` for a provider this app
    has not configured."""
    esp = state.settings.webhooks
    config = esp.providers.get(provider)
    if config is None:
        raise NotFound("No webhook is configured for this provider (MAILTRACK_WEBHOOKS).")
    module = MODULES[provider]
    now = now or utcnow()
    body = module.verify(esp, config, request, now)
    if provider == "ses" and body.get("Type") != "Notification":
        return Receipt(), _subscription(config, body)
    items: list[EspEvent | None] = module.events(config, request, body)  # None: deliberately ignored
    found = [ev for ev in items if ev is not None]
    nonce = module.nonce(body) if hasattr(module, "nonce") else None
    return store(state, provider, found, nonce=nonce, ignored=len(items) - len(found)), None


def _subscription(config: object, message: dict[str, object]) -> dict[str, object]:
    if message.get("Type") == "SubscriptionConfirmation":
        if config.options.get("auto_confirm", True):  # type: ignore[attr-defined]
            sns.confirm(config, message)  # type: ignore[arg-type]
            return {"subscription": "confirmed", "topicArn": message.get("TopicArn")}
        return {"subscription": "not confirmed (auto_confirm is off)", "topicArn": message.get("TopicArn")}
    return {"subscription": "unsubscribed", "topicArn": message.get("TopicArn")}


__all__ = ["PROVIDERS", "MODULES", "receive", "WebhookRequest", "EspEvent", "Receipt", "unmatched_count"]
