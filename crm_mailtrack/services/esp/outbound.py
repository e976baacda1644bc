"""The header each provider echoes back in its events, holding our message id under
``mailtrack_id`` (``MAILTRACK_ESP``), so that events match their message exactly.

* SendGrid: ``X-SMTPAPI: {"unique_args": {"mailtrack_id": "<id>"}}`` (events carry
  ``mailtrack_id`` at the top level);
* Mailgun: ``X-Mailgun-Variables: {"mailtrack_id": "<id>"}`` (``user-variables``);
* Postmark: ``X-PM-Metadata-mailtrack_id: <id>`` (``Metadata``);
* SES: ``X-SES-MESSAGE-TAGS: mailtrack_id=<id>`` (``mail.tags``; published by event
  publishing, so a configuration set is needed: ``X-SES-CONFIGURATION-SET`` is added when
  ``MAILTRACK_WEBHOOKS["ses"]["configuration_set"]`` names one);
* Resend: none (its SMTP service documents no such header).
"""
from __future__ import annotations

import json

from .config import EspSettings

TAG = "mailtrack_id"


def echo_headers(esp: EspSettings, message_id: str) -> list[tuple[str, str]]:
    """The headers for a message of id ``message_id`` under ``esp`` (``[]`` without one)."""
    if esp.esp == "sendgrid":
        return [("X-SMTPAPI", json.dumps({"unique_args": {TAG: message_id}}, separators=(", ", ": ")))]
    if esp.esp == "mailgun":
        return [("X-Mailgun-Variables", json.dumps({TAG: message_id}, separators=(", ", ": ")))]
    if esp.esp == "postmark":
        return [(f"X-PM-Metadata-{TAG}", message_id)]
    if esp.esp == "ses":
        headers = [("X-SES-MESSAGE-TAGS", f"{TAG}={message_id}")]
        ses = esp.providers.get("ses")
        config_set = ses.options.get("configuration_set") if ses is not None else None
        if config_set:
            headers.append(("X-SES-CONFIGURATION-SET", str(config_set)))
        return headers
    return []


__all__ = ["echo_headers", "TAG"]
