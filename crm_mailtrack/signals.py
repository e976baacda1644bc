"""Blinker signals of crm_mailtrack, on the extension's own namespace.

The sender of every signal is the Flask application (``current_app._get_current_object()``),
as with Flask's own signals, so ``signal.connect_via(app)`` works. Signals are sent after the
database commit. On the public tracking routes (and journal replay) a subscriber that raises
is logged and never breaks the redirect, pixel or unsubscribe.

``event``, where a signal carries it, is a :class:`~crm_mailtrack.models.ContactEvent` model
instance (not a mapping) holding the stored row: ``id``, ``type``, ``tenant_id`` (``""`` for no
tenant), ``contact_id``, ``email``, ``message_id``, ``campaign_id``, ``link_id``, ``url``,
``occurred_at`` (aware UTC), ``ip``, ``user_agent``, ``is_machine``, ``machine_reason`` and
``details`` (a dict of its own: changing it changes nothing stored). For opens and clicks of
the tracking routes, their journal replay and new tags of a click it is a transient instance
built from the row the insert returned, attached to no session; for events recorded through the
Python or JSON API it is the session's instance (expired by the commit: reading an attribute
reloads it). Treat it as read-only.

Opens and clicks (``email_opened``, ``link_clicked``, and ``event_recorded`` for them) also carry
``is_machine`` and ``machine_reason``: the verdict known when the signal goes out. A verdict
changed afterwards (a burst or a honeypot hit revealing a scanner) is announced by
``events_reclassified``, so a subscriber that counted a click can take it back.
"""
from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

message_sent = _signals.signal("mailtrack.message-sent", doc="""A message was delivered to the SMTP server.
Kwargs: message (the Message), event (its ``send`` ContactEvent), contact_id, message_id, campaign_id.""")
message_failed = _signals.signal("mailtrack.message-failed", doc="""A delivery failed.
Kwargs: message (the Message), event (its ``failed`` ContactEvent), error (str), contact_id, message_id,
campaign_id.""")
email_opened = _signals.signal("mailtrack.email-opened", doc="""An open was recorded.
Kwargs: event (the ``open`` ContactEvent), contact_id, message_id, campaign_id, url (None),
is_machine (bool), machine_reason (str or None: ``head-request``, ``prefetch``, ``apple-mpp``,
``too-fast-after-send`` ...).""")
link_clicked = _signals.signal("mailtrack.link-clicked", doc="""A click was recorded.
Kwargs: event (the ``click`` ContactEvent), contact_id, message_id, campaign_id, url (the destination),
is_machine (bool), machine_reason (str or None: ``head-request``, ``prefetch``, ``scanner-ua``, ``burst``,
``honeypot`` ...). A human click re-marked later is announced by ``events_reclassified``.""")
email_bounced = _signals.signal("mailtrack.email-bounced", doc="""A bounce was recorded (``event.details``:
``bounceType`` ``hard``/``soft``, ``status``, ``diagnostic`` where known). A hard bounce, or the
``MAILTRACK_SOFT_BOUNCE_LIMIT``-th soft bounce in a row, puts the contact on Do-Not-Contact
(``BOUNCED``) in the same transaction, announced by ``dnc_added`` first.
Kwargs: event (the ``bounce`` ContactEvent), contact_id, message_id, campaign_id, url.""")
email_delivered = _signals.signal("mailtrack.email-delivered", doc="""The receiving server reported a
message delivered (a positive DSN, an ESP's delivery event).
Kwargs: event (the ``delivered`` ContactEvent), contact_id, message_id, campaign_id, url (None).""")
email_replied = _signals.signal("mailtrack.email-replied", doc="""A person replied to a message (received
mail matched to it; auto-replies are not replies and send only ``event_recorded``).
Kwargs: event (the ``reply`` ContactEvent), contact_id, message_id, campaign_id, url (None),
inbound (the stored InboundMessage: ``from_email``, ``subject``, ``body_text`` ...).""")
email_complained = _signals.signal("mailtrack.email-complained", doc="""The recipient reported a message as
spam (an ARF feedback-loop report, an ESP's complaint); the contact is put on Do-Not-Contact
(``UNSUBSCRIBED``, comments ``complaint``) in the same transaction, announced by ``dnc_added`` first.
Kwargs: event (the ``complaint`` ContactEvent), contact_id, message_id, campaign_id, url (None).""")
email_forwarded = _signals.signal("mailtrack.email-forwarded", doc="""A forward was recorded.
Kwargs: event (the ``forward`` ContactEvent), contact_id, message_id, campaign_id, url.""")
contact_unsubscribed = _signals.signal("mailtrack.contact-unsubscribed", doc="""A contact unsubscribed.
Kwargs: event (the ``unsubscribe`` ContactEvent), contact_id, message_id, campaign_id, url.""")
dnc_added = _signals.signal("mailtrack.dnc-added", doc="""A Do-Not-Contact entry was added or updated.
Kwargs: event (the ``dnc_added`` ContactEvent), contact_id, channel (str), reason (DNCReason), message_id,
campaign_id, url.""")
dnc_removed = _signals.signal("mailtrack.dnc-removed", doc="""A Do-Not-Contact entry was removed.
Kwargs: event (the ``dnc_removed`` ContactEvent), contact_id, channel (str), message_id, campaign_id, url.""")
utm_tag_added = _signals.signal("mailtrack.utm-tag-added", doc="""A new UTM tag was stored (a combination
the contact did not have; a repeat only counts ``hits`` and sends nothing).
Kwargs: event (the ``utm_added`` ContactEvent, ``details`` holds ``utmId`` and the utm_* values),
contact_id, utm (the UtmTag), message_id (None), campaign_id (None), url.""")
utm_tag_removed = _signals.signal("mailtrack.utm-tag-removed", doc="""A UTM tag was removed.
Kwargs: event (the ``utm_removed`` ContactEvent), contact_id, utm_id (int), message_id, campaign_id, url.""")
event_recorded = _signals.signal("mailtrack.event-recorded", doc="""Any contact event was recorded, after
its own signal. Kwargs: those of the type's own signal (for opens and clicks is_machine and
machine_reason too).""")
events_reclassified = _signals.signal("mailtrack.events-reclassified", doc="""Stored events changed
verdict after the fact: a burst of clicks or a honeypot hit showed that earlier "human" clicks of a
message were a machine's, or an ESP webhook flagged an open/click as a machine's and our own hits of
the message around it were the same machine (``esp-flag``, ``apple-mpp`` ...). Sent once per change,
after its commit.
Kwargs: event_ids (list of int: the ContactEvent ids changed), message_id, contact_id,
machine_reason (the new reason, e.g. ``burst``, ``honeypot``), is_machine (the new verdict).""")

#: The type-specific signal sent (besides ``event_recorded``) for each event type.
SIGNAL_FOR_TYPE = {
    "open": email_opened,
    "click": link_clicked,
    "bounce": email_bounced,
    "delivered": email_delivered,
    "reply": email_replied,
    "complaint": email_complained,
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
    "utm_tag_removed", "event_recorded", "events_reclassified", "email_delivered", "email_replied",
    "email_complained",
]
