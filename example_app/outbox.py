"""Compose-and-send: a campaign to the CRM's contacts, through crm_mailtrack.

Each recipient gets a message stored with ``mailtrack.track_message`` (signed links, open
pixel, List-Unsubscribe headers) and delivered with ``mailtrack.send`` through
``MAILTRACK_SMTP_URL``, which in the demo is the local aiosmtpd server of ``mailbox.py``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from markupsafe import escape

from .models import Campaign, Contact, db, utcnow

DEFAULT_HTML = """\
<h1>Hello {first_name},</h1>
<p>Our autumn release is out: faster reports, a new pipeline board and calendar sync.</p>
<p><a href="{base}/go/release-notes?utm_campaign={campaign}">Read the release notes</a></p>
<p>Want a walk-through? <a href="{base}/go/book-a-demo?utm_campaign={campaign}">Book a 20-minute demo</a>.</p>
<p>Cheers,<br>The Northwind team</p>
"""


@dataclass
class SendResult:
    """What happened to one campaign send."""

    campaign: Campaign
    sent: int = 0
    suppressed: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48] or "campaign"
    base, n = slug, 2
    while db.session.execute(db.select(Campaign.id).filter_by(slug=slug)).first():
        slug, n = f"{base}-{n}", n + 1
    return slug


def personalise(template: str, contact: Contact) -> str:
    """Fill ``{first_name}``-style placeholders with the contact's (escaped) fields."""
    values = {k: str(escape(v)) for k, v in contact.as_mapping().items()}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def send_campaign(name: str, subject: str, html: str, contacts: list[Contact]) -> SendResult:
    """Create a campaign and send it to ``contacts``; suppressed and failed ones are counted."""
    from . import mailtrack

    campaign = Campaign(slug=slugify(name), name=name, subject=subject, html=html, sent_at=utcnow())
    db.session.add(campaign)
    db.session.commit()
    result = SendResult(campaign)
    html = html.replace("{campaign}", campaign.slug)
    for contact in contacts:
        message = mailtrack.track_message(
            contact_id=str(contact.id), email=contact.email,
            subject=personalise(subject, contact), html=personalise(html, contact),
            text=None, campaign_id=campaign.slug, template_id=campaign.slug,
            template_name=campaign.name, type="CAMPAIGN",
        )
        message = deliver(message)
        status = str(message.status)
        if status == "SENT":
            result.sent += 1
        elif status == "SUPPRESSED":
            result.suppressed += 1
        else:
            result.failed += 1
            if message.error_message and message.error_message not in result.errors:
                result.errors.append(message.error_message)
    return result


def deliver(message: Any) -> Any:
    """``mailtrack.send(message)``: SMTP delivery, DNC suppression, ``send``/``failed`` events."""
    from . import mailtrack

    return mailtrack.send(message)
