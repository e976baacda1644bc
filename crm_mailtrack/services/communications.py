"""Message records of the communications API: lookup, search, paging, threads,
deletion, cancel, resend and comments, each scoped to one tenant. The record shape itself
is built in :mod:`.records`."""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ..db import chunks, like_escape, transaction
from ..errors import Conflict, InvalidDestination, NotFound, ValidationError
from ..inbound_models import InboundMessage, inbound
from ..models import ContactEvent, EventType, Message, MessageStatus, event_rollups, events, messages, utcnow
from ..state import MailTrackState
from . import stats
from .common import emit
from .messages import track_message
from .records import records, summary

#: Public sort keys (communications API field names) and the columns they order by.
SORT_FIELDS: dict[str, sa.ColumnElement[Any]] = {
    "created": messages.c.created_at,
    "updated": messages.c.updated_at,
    "sentAt": messages.c.sent_at,
    "scheduledAt": messages.c.scheduled_at,
    "subject": messages.c.subject,
    "status": messages.c.status,
    "type": messages.c.type,
    "templateId": messages.c.template_id,
    "templateName": messages.c.template_name,
    "senderEmail": messages.c.sender_email,
    "recipients": messages.c.email,
    "relatedEntityType": messages.c.related_entity_type,
    "conversationId": messages.c.conversation_id,
    "id": messages.c.id,
}
#: Filters (communications API field names) matched by equality, or IN for a list of values.
EQUALITY_FILTERS: dict[str, sa.ColumnElement[Any]] = {
    "status": messages.c.status,
    "type": messages.c.type,
    "templateId": messages.c.template_id,
    "templateName": messages.c.template_name,
    "relatedEntityType": messages.c.related_entity_type,
    "relatedEntityId": messages.c.related_entity_id,
    "conversationId": messages.c.conversation_id,
    "campaignId": messages.c.campaign_id,
    "contactId": messages.c.contact_id,
    "senderEmail": messages.c.sender_email,
    "recipient": messages.c.email,
    "id": messages.c.id,
}
#: Columns a free-text ``search`` term is looked for in (case-insensitive substring).
SEARCH_COLUMNS = (messages.c.subject, messages.c.email, messages.c.template_name,
                  messages.c.contact_id, messages.c.sender_email, messages.c.sender_name)
COMMENT = EventType.COMMENT.value


# -- selecting -------------------------------------------------------------------------------

def conditions(tenant: str, filters: Mapping[str, Any] | None = None,
               search: Sequence[str] | None = None) -> list[sa.ColumnElement[bool]]:
    """WHERE clauses for a tenant, communications API filters and free-text terms (shared by search and CSV)."""
    where: list[sa.ColumnElement[bool]] = [messages.c.tenant_id == tenant]
    for name, value in (filters or {}).items():
        if value is None:
            continue
        if name == "dateFrom":
            where.append(messages.c.created_at >= value)
        elif name == "dateTo":
            where.append(messages.c.created_at < value)
        elif name in EQUALITY_FILTERS:
            col = EQUALITY_FILTERS[name]
            values = list(value) if isinstance(value, (list, tuple, set)) else [value]
            where.append(col == values[0] if len(values) == 1 else col.in_(values))
        else:
            raise ValidationError({"filters": {name: ["Unknown filter."]}})
    for term in search or ():
        term = term.strip()
        if not term:
            continue
        pattern = f"%{like_escape(term.lower())}%"
        where.append(sa.or_(*(sa.func.lower(c).like(pattern, escape="\\") for c in SEARCH_COLUMNS)))
    return where


def order_by(sort: Sequence[tuple[str, bool]] | None) -> list[Any]:
    """ORDER BY for ``[(field, ascending), ...]`` (allow-listed), ``id`` as the tiebreaker."""
    clauses: list[Any] = []
    for name, ascending in sort or [("created", False)]:
        col = SORT_FIELDS.get(name)
        if col is None:
            raise ValidationError({"sort": [f"Cannot sort by {name!r}; use one of: {', '.join(SORT_FIELDS)}."]})
        clauses.append(col.asc().nulls_last() if ascending else col.desc().nulls_last())
    last_asc = (sort or [("created", False)])[-1][1]
    clauses.append(messages.c.id.asc() if last_asc else messages.c.id.desc())
    return clauses


def _messages(state: MailTrackState, stmt: sa.Select[Any]) -> list[Message]:
    return list(state.session.execute(stmt).scalars())


def _check_id(message_id: Any) -> str:
    """A message id as text; one no message can have (NUL, too long) is ``NotFound``
    before it reaches the database (PostgreSQL refuses NUL in text)."""
    text = str(message_id)
    if "\x00" in text or len(text) > 64:
        raise NotFound(f"No communication {text[:64]!r}.")
    return text


def get(state: MailTrackState, tenant: str, message_id: str) -> Message:
    """The tenant's message, or ``NotFound`` (also for another tenant's id)."""
    message_id = _check_id(message_id)
    msg = state.session.execute(
        sa.select(Message).where(Message.id == str(message_id), Message.tenant_id == tenant)
    ).scalar_one_or_none()
    if msg is None:
        raise NotFound(f"No communication {message_id!r}.")
    return msg


def find_all(state: MailTrackState, tenant: str) -> list[Message]:
    return _messages(state, sa.select(Message).where(*conditions(tenant)).order_by(*order_by(None)))


def find_list(state: MailTrackState, tenant: str, ids: Sequence[str]) -> list[Message]:
    """The tenant's messages among ``ids`` (unknown ids are left out), newest first."""
    found: list[Message] = []
    unique = list(dict.fromkeys(str(i) for i in ids))
    for chunk in chunks(unique):
        found += _messages(state, sa.select(Message).where(Message.tenant_id == tenant, Message.id.in_(chunk)))
    found.sort(key=lambda m: (m.created_at, m.id), reverse=True)
    return found


def scheduled(state: MailTrackState, tenant: str) -> list[Message]:
    return _messages(state, sa.select(Message).where(
        Message.tenant_id == tenant, Message.status == MessageStatus.SCHEDULED.value,
    ).order_by(Message.scheduled_at, Message.id))


def by_entity(state: MailTrackState, tenant: str, entity_type: str, entity_id: str) -> list[Message]:
    return _messages(state, sa.select(Message).where(
        Message.tenant_id == tenant, Message.related_entity_type == entity_type,
        Message.related_entity_id == str(entity_id),
    ).order_by(Message.created_at.desc(), Message.id.desc()))


def thread(state: MailTrackState, tenant: str, message_id: str) -> list[Message]:
    """The message and every message of its conversation (a message without a
    ``conversationId`` starts one keyed by its own id), oldest first."""
    msg = get(state, tenant, message_id)
    key = msg.conversation_id or msg.id
    return _messages(state, sa.select(Message).where(
        Message.tenant_id == tenant, sa.or_(Message.conversation_id == key, Message.id == key),
    ).order_by(Message.created_at, Message.id))


def thread_inbound(state: MailTrackState, rows: Sequence[Message]) -> list[InboundMessage]:
    """The replies received to the messages ``rows`` (one tenant's thread), oldest first;
    each carries its thread's ``conversation_id``."""
    conversation = {m.id: m.conversation_id or m.id for m in rows}
    found: list[InboundMessage] = []
    for ids in chunks(list(conversation)):
        found += state.session.execute(sa.select(InboundMessage).where(InboundMessage.message_id.in_(ids))).scalars()
    found.sort(key=lambda r: (r.received_at, r.id))
    for row in found:
        row.conversation_id = conversation[row.message_id]  # type: ignore[attr-defined]
    return found


def page(
    state: MailTrackState,
    tenant: str,
    *,
    page: int = 0,
    size: int = 20,
    sort: Sequence[tuple[str, bool]] | None = None,
    filters: Mapping[str, Any] | None = None,
    search: Sequence[str] | None = None,
    include_bots: bool = False,
) -> dict[str, Any]:
    """One page of records (see :func:`records`) with ``page``, ``size``, ``total`` and
    ``sorted`` (offset paging: the API addresses pages by number)."""
    where = conditions(tenant, filters, search)
    ordering = order_by(sort)
    total = int(state.session.execute(
        sa.select(sa.func.count()).select_from(messages).where(*where)).scalar_one())
    rows = _messages(state, sa.select(Message).where(*where).order_by(*ordering)
                     .limit(size).offset(page * size))
    return {"records": records(state, rows, include_bots=include_bots), "page": page, "size": size,
            "total": total, "sorted": bool(sort)}


# -- changing --------------------------------------------------------------------------------

#: Most recipients one send, schedule or template send may name (each gets its own message,
#: sent within the request; larger audiences belong to campaigns sent with ``send_due``).
MAX_RECIPIENTS = 50
_MAX_CONTACT_ID = 64


def recipient_contacts(state: MailTrackState, contact_id: str | None,
                       recipients: Sequence[str] | None) -> list[tuple[str, str]]:
    """``[(contact_id, email), ...]``, one per copy to store.

    With ``contact_id``: one copy to ``recipients[0]`` or the ``contact_loader``'s email (an
    unknown contact is ``NotFound``); several recipients are refused, since each copy's
    opens and clicks would be credited to that one contact. Without it, every recipient is
    its own contact: the host's ``contact_resolver(email)``, else the lower-cased address.
    """
    recipients = list(recipients or [])
    if contact_id is not None:
        if len(recipients) > 1:
            raise ValidationError({"recipients": [
                "With contactId give at most one recipient (the contact's address); omit contactId "
                "to send each recipient a copy under its own contact."]})
        loader = state.hooks.contact_loader
        contact: Mapping[str, Any] | None = None
        if loader is not None:
            contact = loader(str(contact_id))
            if contact is None:
                raise NotFound(f"No contact {contact_id!r}.")
        email = recipients[0] if recipients else (contact or {}).get("email")
        if not email:
            raise ValidationError({"recipients": ["No address: give one, or let the contact_loader provide it."]})
        return [(str(contact_id), email)]
    if not recipients:
        raise ValidationError({"recipients": ["Give contactId, or at least one recipient address."]})
    if len(recipients) > MAX_RECIPIENTS:
        raise ValidationError({"recipients": [f"At most {MAX_RECIPIENTS} recipients per request."]})
    seen: set[str] = set()
    resolver = state.hooks.contact_resolver
    out = []
    for email in recipients:
        if email.lower() in seen:
            raise ValidationError({"recipients": [f"{email} is listed twice."]})
        seen.add(email.lower())
        found = resolver(email) if resolver is not None else None
        contact = email.lower() if found is None else str(found)
        if not contact or len(contact) > _MAX_CONTACT_ID or "\x00" in contact:
            why = ("the contact_resolver's id for it is not" if found is not None else
                   "no contact_resolver knows it, and the address is too long to serve as")
            raise ValidationError({"recipients": [
                f"{email}: {why} a contact id (1 to {_MAX_CONTACT_ID} characters, no NUL)."]})
        out.append((contact, email))
    return out


def compose(state: MailTrackState, tenant: str, *, contact_id: str | None, recipients: Sequence[str] | None,
            subject: str, html: str | None, text: str | None, scheduled_at: dt.datetime | None = None,
            **fields: Any) -> list[Message]:
    """Store one message per recipient (see :func:`recipient_contacts`), each with its own
    tracking links, in one transaction: every copy is stored, or none. ``cc`` and ``bcc``
    travel with the first copy only, so those addresses receive the mail once."""
    pairs = recipient_contacts(state, contact_id, recipients)
    if html is None and text is None:
        raise ValidationError({"body": ["Give a body (HTML) or bodyText."]})
    stored: list[Message] = []
    try:
        with transaction(state):
            for contact, email in pairs:
                copy_fields = fields if not stored else {k: v for k, v in fields.items() if k not in ("cc", "bcc")}
                stored.append(track_message(state, contact_id=contact, email=email, subject=subject, html=html,
                                            text=text, scheduled_at=scheduled_at, tenant_id=tenant, commit=False,
                                            **copy_fields))
    except InvalidDestination as exc:
        raise ValidationError({"body": [f"A link cannot be tracked: {exc}"]}) from None
    return stored


def cancel(state: MailTrackState, tenant: str, message_id: str) -> Message:
    """SCHEDULED or PENDING -> CANCELLED, atomically (a message being sent cannot be cancelled)."""
    message_id = _check_id(message_id)
    with transaction(state) as session:
        result = session.execute(
            sa.update(messages)
            .where(messages.c.id == str(message_id), messages.c.tenant_id == tenant,
                   messages.c.status.in_((MessageStatus.SCHEDULED.value, MessageStatus.PENDING.value)))
            .values(status=MessageStatus.CANCELLED.value, updated_at=utcnow())
        )
    msg = get(state, tenant, message_id)
    state.session.refresh(msg)
    if result.rowcount != 1:
        raise Conflict(f"Communication {message_id} is {msg.status}; only scheduled or pending ones can be cancelled.")
    return msg


def resend(state: MailTrackState, tenant: str, message_id: str) -> Message:
    """A new copy of a SENT or FAILED message (same content, fresh tracking links, same
    conversation), stored PENDING; the caller sends it. The original stays as it was."""
    old = get(state, tenant, message_id)
    if old.status not in (MessageStatus.SENT.value, MessageStatus.FAILED.value):
        raise Conflict(f"Communication {message_id} is {old.status}; only sent or failed ones are resent.")
    return track_message(
        state, contact_id=old.contact_id, email=old.email, subject=old.subject, html=old.original_html,
        text=old.text, campaign_id=old.campaign_id, template_id=old.template_id,
        template_name=old.template_name, type=old.type, related_entity_type=old.related_entity_type,
        related_entity_id=old.related_entity_id, track_opens=old.track_opens,
        track_clicks=old.track_clicks, tenant_id=tenant, conversation_id=old.conversation_id or old.id,
        sender_email=old.sender_email, sender_name=old.sender_name, reply_to=old.reply_to,
        cc=old.cc, bcc=old.bcc, variables=old.variables,
    )


def delete(state: MailTrackState, tenant: str, ids: Sequence[str], *, must_exist: bool = False) -> int:
    """Delete the tenant's messages among ``ids`` with their events and received replies;
    return how many.
    With ``must_exist`` an unknown id is ``NotFound`` and nothing is deleted."""
    unique = list(dict.fromkeys(_check_id(i) for i in ids)) if must_exist else [
        i for i in dict.fromkeys(str(i) for i in ids) if "\x00" not in i]
    deleted = 0
    with transaction(state) as session:
        for chunk in chunks(unique):
            owned = sa.select(messages.c.id).where(messages.c.tenant_id == tenant, messages.c.id.in_(chunk))
            stats.forget_messages(session.connection(),
                                  sa.and_(messages.c.tenant_id == tenant, messages.c.id.in_(chunk)))
            session.execute(sa.delete(events).where(events.c.tenant_id == tenant, events.c.message_id.in_(owned)))
            session.execute(sa.delete(event_rollups).where(event_rollups.c.tenant_id == tenant,
                                                           event_rollups.c.message_id.in_(owned)))
            session.execute(sa.delete(inbound).where(inbound.c.tenant_id == tenant, inbound.c.message_id.in_(owned)))
            deleted += session.execute(
                sa.delete(messages).where(messages.c.tenant_id == tenant, messages.c.id.in_(chunk))).rowcount or 0
        if must_exist and deleted != len(unique):
            raise NotFound("No such communication.")
    return deleted


def comment(state: MailTrackState, tenant: str, message_id: str, text: str,
            author_id: str | None = None) -> ContactEvent:
    """Store a comment on a message as a ``comment`` event of its contact."""
    msg = get(state, tenant, message_id)
    if not text or not text.strip():
        raise ValidationError({"comment": ["A comment cannot be empty."]})
    event = ContactEvent(
        tenant_id=tenant, type=COMMENT, contact_id=msg.contact_id, email=msg.email, message_id=msg.id,
        campaign_id=msg.campaign_id, occurred_at=utcnow(), is_machine=False,
        details={"comment": text, "authorId": author_id},
    )
    with transaction(state) as session:
        session.add(event)
    emit(COMMENT, event=event, contact_id=msg.contact_id, message_id=msg.id,
         campaign_id=msg.campaign_id, url=None)
    return event


__all__ = ["get", "find_all", "find_list", "scheduled", "by_entity", "thread", "thread_inbound", "page", "records",
           "summary", "compose", "recipient_contacts", "MAX_RECIPIENTS", "cancel", "resend", "delete", "comment", "conditions",
           "order_by", "SORT_FIELDS", "EQUALITY_FILTERS"]
