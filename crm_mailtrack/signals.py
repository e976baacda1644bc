"""Blinker signals of crm_mailtrack, on the extension's own namespace.

The sender of every signal is the Flask application (``current_app._get_current_object()``),
as with Flask's own signals, so ``signal.connect_via(app)`` works. Keyword arguments carry
``event`` (the stored :class:`~crm_mailtrack.models.ContactEvent` as a mapping) and the plain
fields ``contact_id``, ``message_id``, ``campaign_id``, ``url`` where they apply; message
signals carry ``message``. Signals are sent after the database commit. On the public
tracking routes a subscriber that raises is logged and never breaks the redirect, pixel or
unsubscribe.
"""
from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

message_sent = _signals.signal("mailtrack.message-sent", doc="A message was delivered to the SMTP server. Kwargs: message, event, contact_id, message_id, campaign_id.")
message_failed = _signals.signal("mailtrack.message-failed", doc="A delivery failed. Kwargs: message, event, error, contact_id, message_id, campaign_id.")
email_opened = _signals.signal("mailtrack.email-opened", doc="An open was recorded. Kwargs: event, contact_id, message_id, campaign_id.")
link_clicked = _signals.signal("mailtrack.link-clicked", doc="A click was recorded. Kwargs: event, contact_id, message_id, campaign_id, url.")
email_bounced = _signals.signal("mailtrack.email-bounced", doc="A bounce was recorded. Kwargs: event, contact_id, message_id, campaign_id.")
email_forwarded = _signals.signal("mailtrack.email-forwarded", doc="A forward was recorded. Kwargs: event, contact_id, message_id, campaign_id.")
contact_unsubscribed = _signals.signal("mailtrack.contact-unsubscribed", doc="A contact unsubscribed. Kwargs: event, contact_id, message_id, campaign_id.")
dnc_added = _signals.signal("mailtrack.dnc-added", doc="A Do-Not-Contact entry was added or updated. Kwargs: event, contact_id, channel, reason.")
dnc_removed = _signals.signal("mailtrack.dnc-removed", doc="A Do-Not-Contact entry was removed. Kwargs: event, contact_id, channel.")
utm_tag_added = _signals.signal("mailtrack.utm-tag-added", doc="A UTM tag was added. Kwargs: event, contact_id, utm.")
utm_tag_removed = _signals.signal("mailtrack.utm-tag-removed", doc="A UTM tag was removed. Kwargs: event, contact_id, utm_id.")
event_recorded = _signals.signal("mailtrack.event-recorded", doc="Any contact event was recorded. Kwargs: event, contact_id, message_id, campaign_id, url.")

#: The type-specific signal sent (besides ``event_recorded``) for each event type.
SIGNAL_FOR_TYPE = {
    "open": email_opened,
    "click": link_clicked,
    "bounce": email_bounced,
    "forward": email_forwarded,
    "unsubscribe": contact_unsubscribed,
    "dnc_added": dnc_added,
    "dnc_removed": dnc_removed,
    "utm_added": utm_tag_added,
    "utm_removed": utm_tag_removed,
    "send": message_sent,
    "failed": message_failed,
}

__all__ = [
    "message_sent", "message_failed", "email_opened", "link_clicked", "email_bounced",
    "email_forwarded", "contact_unsubscribed", "dnc_added", "dnc_removed", "utm_tag_added",
    "utm_tag_removed", "event_recorded",
]
