"""The host CRM's own tables: contacts, campaigns, and the demo mailbox.

These belong to the example CRM, not to crm_mailtrack: the extension only ever sees a
contact through ``@mailtrack.contact_loader`` and a campaign as an opaque ``campaign_id``.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

#: ``expire_on_commit=False``: pages and the demo generator read rows after committing
#: them without a reload query per attribute.
db = SQLAlchemy(session_options={"expire_on_commit": False})


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Contact(db.Model):  # type: ignore[name-defined,misc]
    """A person the CRM knows; ``str(id)`` is the contact id given to crm_mailtrack."""

    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    first_name: Mapped[str] = mapped_column(db.String(80))
    last_name: Mapped[str] = mapped_column(db.String(80))
    email: Mapped[str] = mapped_column(db.String(320), unique=True)
    company: Mapped[str] = mapped_column(db.String(120), default="")
    title: Mapped[str] = mapped_column(db.String(120), default="")

    @property
    def display_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    def as_mapping(self) -> dict[str, Any]:
        """What ``contact_loader`` hands to crm_mailtrack."""
        return {
            "id": str(self.id),
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "display_name": self.display_name,
            "company": self.company,
            "title": self.title,
        }


class Campaign(db.Model):  # type: ignore[name-defined,misc]
    """A mailing. Its ``slug`` is the ``campaign_id`` (and ``template_id``) of its messages."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(db.String(64), unique=True)
    name: Mapped[str] = mapped_column(db.String(200))
    subject: Mapped[str] = mapped_column(db.String(300))
    html: Mapped[str] = mapped_column(db.Text)
    sent_at: Mapped[dt.datetime | None] = mapped_column(db.DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(db.DateTime, default=utcnow)


class InboxMail(db.Model):  # type: ignore[name-defined,misc]
    """A mail received by the demo's local SMTP server: the recipients' "mail client"."""

    __tablename__ = "inbox_mail"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(db.DateTime, default=utcnow)
    mail_from: Mapped[str] = mapped_column(db.String(320), default="")
    rcpt_to: Mapped[str] = mapped_column(db.Text, default="")
    subject: Mapped[str] = mapped_column(db.Text, default="")
    message_id: Mapped[str | None] = mapped_column(db.String(255))
    list_unsubscribe: Mapped[str | None] = mapped_column(db.Text)
    html: Mapped[str | None] = mapped_column(db.Text)
    text: Mapped[str | None] = mapped_column(db.Text)
    size: Mapped[int] = mapped_column(default=0)
