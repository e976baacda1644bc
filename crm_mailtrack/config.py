"""Configuration keys of crm_mailtrack, each named once with its default.

Every key is read from ``app.config`` at :meth:`MailTrack.init_app` time (after
``app.config.setdefault``), so a host sets them before calling ``init_app``; they are
checked and resolved there, once, into a :class:`~crm_mailtrack.settings.Settings`.
"""
from __future__ import annotations

from typing import Any

#: Where the extension's blueprint is mounted.
URL_PREFIX = "MAILTRACK_URL_PREFIX"
#: External origin for tracking links (``https://crm.example.com``); else the request or
#: ``SERVER_NAME`` decides.
BASE_URL = "MAILTRACK_BASE_URL"
#: Key that signs tracking tokens; defaults to ``SECRET_KEY``.
SECRET_KEY = "MAILTRACK_SECRET_KEY"
#: Older keys still accepted, so links in mail already sent survive a key rotation.
SECRET_KEY_FALLBACKS = "MAILTRACK_SECRET_KEY_FALLBACKS"
#: Seconds a tracking link stays valid (``None``: forever).
LINK_MAX_AGE = "MAILTRACK_LINK_MAX_AGE"
#: Bearer tokens accepted by the JSON API.
API_TOKENS = "MAILTRACK_API_TOKENS"
#: Append the open pixel to outbound HTML.
TRACK_OPENS = "MAILTRACK_TRACK_OPENS"
#: Rewrite outbound links to signed click links.
TRACK_CLICKS = "MAILTRACK_TRACK_CLICKS"
#: UTM parameters added to tracked destinations, never overriding ones in the URL.
UTM_DEFAULTS = "MAILTRACK_UTM_DEFAULTS"
#: Store IPv4 /24 and IPv6 /48 prefixes only.
ANONYMIZE_IP = "MAILTRACK_ANONYMIZE_IP"
#: ``smtp://``, ``smtps://`` or ``smtp+starttls://user:pass@host:port``.
SMTP_URL = "MAILTRACK_SMTP_URL"
#: The From address of sent mail.
DEFAULT_SENDER = "MAILTRACK_DEFAULT_SENDER"
#: Seconds after which a message still ``SENDING`` counts as interrupted (its sender died
#: between the claim and the outcome): ``send_due`` marks it ``FAILED`` instead of leaving it
#: stuck, and never re-sends it (the server may have accepted it). Must exceed the SMTP
#: timeout, so that a send that is merely slow is never declared interrupted.
SENDING_TIMEOUT_SECONDS = "MAILTRACK_SENDING_TIMEOUT_SECONDS"
#: Where tracking events go while the database is unavailable, until replayed.
JOURNAL_PATH = "MAILTRACK_JOURNAL_PATH"
#: The extension's own database, used only when the host has no Flask-SQLAlchemy.
DATABASE_URI = "MAILTRACK_DATABASE_URI"
#: Optional: the journal in a Redis stream shared by every app server (``redis://host:6379/0``,
#: query parameters ``stream`` and ``claim_idle``; extra ``redis``) instead of a local file.
#: ``MAILTRACK_JOURNAL_PATH`` stays the fallback while Redis is unreachable.
JOURNAL_URL = "MAILTRACK_JOURNAL_URL"
#: Optional: a second database (a read replica of the extension's tables) that reports and
#: analytics read from; writes and the click path stay on the primary.
REPORTS_DATABASE_URI = "MAILTRACK_REPORTS_DATABASE_URI"
#: An open or click this many seconds (or fewer) after the message was sent is a machine's
#: (``too-fast-after-send``): mail security gateways fetch on delivery. ``0`` turns it off.
BOT_AFTER_SEND_SECONDS = "MAILTRACK_BOT_AFTER_SEND_SECONDS"
#: Clicks on different links of one message within this many seconds are a machine's
#: (``burst``): people click one link at a time. ``0`` turns it off.
BOT_BURST_SECONDS = "MAILTRACK_BOT_BURST_SECONDS"
#: Add a hidden honeypot link to tracked HTML; a hit marks the message's clicks around it
#: as machine (``honeypot``).
HONEYPOT = "MAILTRACK_HONEYPOT"
#: Seconds before and after a honeypot hit within which the message's clicks are machine.
HONEYPOT_WINDOW_SECONDS = "MAILTRACK_HONEYPOT_WINDOW_SECONDS"
#: Networks (CIDR) of mail security scanners; hits from them are ``scanner-network``.
#: Default: Microsoft Exchange Online Protection (Defender Safe Links).
SCANNER_NETWORKS = "MAILTRACK_SCANNER_NETWORKS"
#: Networks (CIDR) of Apple's Mail Privacy Protection proxies; opens from them are ``apple-mpp``.
APPLE_PROXY_NETWORKS = "MAILTRACK_APPLE_PROXY_NETWORKS"
#: Largest JSON request body, in bytes, of the API routes that do not carry a message's HTML
#: (events, Do-Not-Contact, UTM, searches, comments, ContactClicks): larger is 413.
MAX_BODY_BYTES = "MAILTRACK_MAX_BODY_BYTES"
#: Largest JSON request body, in bytes, of the routes that carry a message's HTML (send,
#: schedule, send-template): larger is 413.
MAX_MESSAGE_BODY_BYTES = "MAILTRACK_MAX_MESSAGE_BODY_BYTES"
#: Largest ``details`` object an event may store, in bytes of its compact UTF-8 JSON:
#: larger is refused (422 on the API, ``ValidationError`` from ``record_event``).
MAX_DETAILS_BYTES = "MAILTRACK_MAX_DETAILS_BYTES"
#: The mailbox ``flask mailtrack fetch-inbox`` reads bounces, complaints and replies from:
#: ``imaps://user:pass@host:993/INBOX``, ``imap+starttls://``, ``imap://`` (plain, a local
#: server), ``pop3s://user:pass@host:995``, ``pop3://``; query ``cafile`` (a CA bundle to
#: verify the server with) and ``timeout`` (seconds). ``None``: no mailbox.
INBOX_URL = "MAILTRACK_INBOX_URL"
#: ESP event webhooks (``POST <prefix>/hooks/<provider>``): each provider's secrets, such as
#: ``{"mailgun": {"signing_key": "..."}}`` (see docs/esp.md). A provider not named here
#: answers 404.
WEBHOOKS = "MAILTRACK_WEBHOOKS"
#: ``None`` or the provider outbound mail goes through (``ses``, ``sendgrid``, ``mailgun``,
#: ``postmark``, ``resend``): each message then carries the header that provider echoes back
#: in its events with our message id under ``mailtrack_id``, so they match it exactly.
ESP = "MAILTRACK_ESP"
#: Largest webhook request body, in bytes (a SendGrid batch of 1,000 events is ~0.5 MB):
#: larger is 413, nothing stored.
WEBHOOK_MAX_BODY_BYTES = "MAILTRACK_WEBHOOK_MAX_BODY_BYTES"
#: Soft bounces (``details.bounceType`` not hard) of one contact's address in a row, with
#: no delivery, open or click between them, that put the contact on Do-Not-Contact
#: (``BOUNCED``). ``0`` turns it off (a hard bounce still does at once).
SOFT_BOUNCE_LIMIT = "MAILTRACK_SOFT_BOUNCE_LIMIT"
#: The address bounces go to (``bounces@crm.example.com``). When set, each message's
#: envelope sender is ``bounces+<message id>-<signature>@crm.example.com`` (VERP), so a
#: bounce names the message it concerns exactly; a forged address matches nothing.
BOUNCE_ADDRESS = "MAILTRACK_BOUNCE_ADDRESS"
#: Largest received mail, in bytes, that ``ingest_mail`` reads; larger mail is skipped.
INBOUND_MAX_BYTES = "MAILTRACK_INBOUND_MAX_BYTES"
#: How many times a campaign or scheduled message is tried before it ends ``FAILED`` when
#: the failure is transient (an SMTP 4xx reply, a server that cannot be reached). A 5xx
#: reply fails at once; ``send()`` (inline, the caller waits) always tries once.
SEND_MAX_ATTEMPTS = "MAILTRACK_SEND_MAX_ATTEMPTS"
#: Seconds before the first retry of a transient failure; each further retry waits twice
#: as long (60, 120, 240, ... capped at 6 hours).
SEND_RETRY_BACKOFF_SECONDS = "MAILTRACK_SEND_RETRY_BACKOFF_SECONDS"
#: Per recipient domain, the most messages sent in a window, across every worker and
#: ``send-due`` process: ``{"gmail.com": "600/m", "outlook.com": "10/s", "*": "3000/h"}``
#: (``*``: every other domain, each counted on its own). Counted in the database.
DOMAIN_RATE_LIMITS = "MAILTRACK_DOMAIN_RATE_LIMITS"
#: Seconds an outbound webhook's receiver has to answer a delivery.
OUTBOUND_WEBHOOK_TIMEOUT_SECONDS = "MAILTRACK_OUTBOUND_WEBHOOK_TIMEOUT_SECONDS"
#: Seconds to wait before each retry of a failed webhook delivery; after the last one the
#: delivery is ``failed``. Default: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (about a day).
OUTBOUND_WEBHOOK_RETRY_SCHEDULE = "MAILTRACK_OUTBOUND_WEBHOOK_RETRY_SCHEDULE"
#: Failed attempts in a row (no success between them) after which an endpoint is disabled.
OUTBOUND_WEBHOOK_DISABLE_AFTER = "MAILTRACK_OUTBOUND_WEBHOOK_DISABLE_AFTER"
#: Allow outbound webhooks to internal destinations: loopback, private, link-local
#: (the cloud metadata address), multicast, unspecified, reserved (docs/webhooks-outbound.md).
#: Off: such URLs are refused at creation and at each delivery (server-side request forgery).
OUTBOUND_WEBHOOK_ALLOW_PRIVATE = "MAILTRACK_OUTBOUND_WEBHOOK_ALLOW_PRIVATE"

#: Defaults applied with ``app.config.setdefault``. ``None`` for the keys whose default is
#: derived from other config (``SECRET_KEY``, the instance path) at ``init_app``.
DEFAULTS: dict[str, Any] = {
    URL_PREFIX: "/mailtrack",
    BASE_URL: None,
    SECRET_KEY: None,
    SECRET_KEY_FALLBACKS: None,
    LINK_MAX_AGE: None,
    API_TOKENS: [],
    TRACK_OPENS: True,
    TRACK_CLICKS: True,
    UTM_DEFAULTS: {},
    ANONYMIZE_IP: True,
    SMTP_URL: "smtp://localhost:25",
    DEFAULT_SENDER: None,
    SENDING_TIMEOUT_SECONDS: 900,
    JOURNAL_PATH: None,
    DATABASE_URI: None,
    JOURNAL_URL: None,
    REPORTS_DATABASE_URI: None,
    BOT_AFTER_SEND_SECONDS: 5,
    BOT_BURST_SECONDS: 1,
    HONEYPOT: True,
    HONEYPOT_WINDOW_SECONDS: 60,
    SCANNER_NETWORKS: None,  # None: crm_mailtrack.bots.DEFAULT_SCANNER_NETWORKS
    APPLE_PROXY_NETWORKS: None,  # None: crm_mailtrack.bots.DEFAULT_APPLE_PROXY_NETWORKS
    MAX_BODY_BYTES: 64 * 1024,
    MAX_MESSAGE_BODY_BYTES: 5 * 1024 * 1024,
    MAX_DETAILS_BYTES: 16 * 1024,
    INBOX_URL: None,
    WEBHOOKS: {},
    ESP: None,
    WEBHOOK_MAX_BODY_BYTES: 2 * 1024 * 1024,
    SOFT_BOUNCE_LIMIT: 3,
    BOUNCE_ADDRESS: None,
    INBOUND_MAX_BYTES: 25 * 1024 * 1024,
    SEND_MAX_ATTEMPTS: 5,
    SEND_RETRY_BACKOFF_SECONDS: 60,
    DOMAIN_RATE_LIMITS: {},
    OUTBOUND_WEBHOOK_TIMEOUT_SECONDS: 10,
    OUTBOUND_WEBHOOK_RETRY_SCHEDULE: [5, 300, 1800, 7200, 18000, 36000, 36000],
    OUTBOUND_WEBHOOK_DISABLE_AFTER: 20,
    OUTBOUND_WEBHOOK_ALLOW_PRIVATE: False,
}

#: Shortest signing key accepted: a shorter one can be brute-forced offline from one link.
MIN_SECRET_KEY_LENGTH = 16
#: Longest ``MAILTRACK_SENDING_TIMEOUT_SECONDS`` accepted (30 days): a send is minutes at
#: most, and a bound keeps the cutoff arithmetic finite.
MAX_SENDING_TIMEOUT_SECONDS = 30 * 24 * 3600

#: Longest local part of ``MAILTRACK_BOUNCE_ADDRESS``: with ``+``, a message id (24
#: characters), ``-`` and a 16-character signature, the VERP local part stays within
#: RFC 5321's 64 octets.
MAX_BOUNCE_LOCAL_PART = 22
#: Longest wait between two tries of a transiently failed message (6 hours).
MAX_RETRY_BACKOFF_SECONDS = 6 * 3600
