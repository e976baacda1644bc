"""Webhook events into the event log: match each to our message, store it once, apply its
verdict and its Do-Not-Contact effect, announce it.

* **Matching**: by ``mailtrack_id`` (the header of ``MAILTRACK_ESP``), else by the
  Message-ID; either way the event's recipient must be the message's address (an event
  about a Cc copy is not about the contact). One ``SELECT`` per request for each. The event
  takes the message's tenant, contact and campaign, as a tracking hit does: the provider
  knows nothing of tenants.
* **Exactly once**: the event's ``uid`` is a UUID derived from ``provider:event id``; the
  insert is ``ON CONFLICT (uid) DO NOTHING``, so a provider's retry, a batch sent twice or
  two hosts receiving the same event store it once. Unmatched events are remembered the
  same way in ``mailtrack_webhook_receipts`` (``kind = 'unmatched'``): counted once, and
  readable (:func:`unmatched_count`, ``flask mailtrack stats``).
* **Replay**: a request's nonce (Mailgun's token) is inserted in the same transaction;
  when it is already there the request is refused (401) and nothing is written.
* **Verdict**: an ESP open or click carries the provider's machine flag when it has one,
  else our own user-agent and network verdict (:mod:`crm_mailtrack.bots`). A flagged one
  re-marks our own stored human opens/clicks of the message within
  :data:`RECLASSIFY_WINDOW` (the same proxy fetched our pixel too): ``events_reclassified``.
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ... import bots
from ...db import chunks, dialect_name, insert, transaction
from ...models import ContactEvent, DNCReason, events, messages, utcnow, webhook_receipts
from ...requestinfo import anonymize_ip
from ...signals import events_reclassified
from ...state import MailTrackState
from ..common import emit, has_receivers, send
from .base import BOUNCE, CLICK, COMPLAINT, OPEN, UNSUBSCRIBE, EspEvent, SignatureInvalid, bare_message_id

#: The namespace of webhook event uids (uuid5 of ``provider:event id``).
UID_NAMESPACE = uuid.UUID("6c0f3a52-3f0e-5b8e-9a57-9d1d0c2b7e15")
#: Seconds around a flagged ESP open/click within which our own hits of the message are re-marked.
RECLASSIFY_WINDOW = dt.timedelta(seconds=120)
#: Receipts older than this are purged when a nonce is stored (a replayed token this old is
#: outside every timestamp window anyway).
NONCE_RETENTION = dt.timedelta(days=2)

_MSG_COLUMNS = (messages.c.id, messages.c.tenant_id, messages.c.contact_id, messages.c.email,
                messages.c.campaign_id, messages.c.internet_message_id)


@dataclass
class Receipt:
    """What one request did: the 200 answer's body."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    unmatched: int = 0
    ignored: int = 0
    reclassified: int = 0
    event_ids: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, int]:
        return {"received": self.received, "stored": self.stored, "duplicates": self.duplicates,
                "unmatched": self.unmatched, "ignored": self.ignored, "reclassified": self.reclassified}


def event_uid(ev: EspEvent) -> str:
    return str(uuid.uuid5(UID_NAMESPACE, ev.dedup_key))


def _match(state: MailTrackState, batch: Sequence[EspEvent]) -> list[Any]:
    """The message row of each event (``None``: no match), in order."""
    session = state.session
    by_id: dict[str, Any] = {}
    ids = sorted({ev.mailtrack_id for ev in batch if ev.mailtrack_id})
    for chunk in chunks(ids):
        by_id.update((row.id, row) for row in session.execute(sa.select(*_MSG_COLUMNS).where(messages.c.id.in_(chunk))))
    wanted = sorted({mid for ev in batch if not (ev.mailtrack_id and ev.mailtrack_id in by_id)
                     and (mid := bare_message_id(ev.message_id_header))})
    by_header: dict[str, list[Any]] = {}
    for chunk in chunks(wanted):
        forms = [f"<{m}>" for m in chunk] + list(chunk)
        for row in session.execute(sa.select(*_MSG_COLUMNS).where(messages.c.internet_message_id.in_(forms))):
            by_header.setdefault(bare_message_id(row.internet_message_id) or "", []).append(row)
    out = []
    for ev in batch:
        rcpt = (ev.recipient or "").lower()
        row = by_id.get(ev.mailtrack_id or "")
        if row is not None and (not rcpt or row.email.lower() == rcpt):
            out.append(row)
            continue
        candidates = by_header.get(bare_message_id(ev.message_id_header) or "", [])
        out.append(next((r for r in candidates if rcpt and r.email.lower() == rcpt), None))
    return out


def _verdict(state: MailTrackState, ev: EspEvent) -> tuple[bool, str | None]:
    if ev.type not in (OPEN, CLICK):
        return False, None
    if ev.machine_flag is True:
        return True, ev.machine_reason or bots.ESP_FLAG
    if ev.machine_flag is False:
        return False, None
    if ev.user_agent is None and ev.ip is None:
        return False, None  # the provider told us nothing about who fetched
    reason = bots.classify_user_agent(ev.user_agent, ev.type)
    if reason is None and ev.ip:
        reason = state.settings.bot_policy.network_reason(ev.ip, ev.type)
    return reason is not None, reason


def _row(state: MailTrackState, ev: EspEvent, msg: Any, now: dt.datetime) -> dict[str, Any]:
    is_machine, reason = _verdict(state, ev)
    details = dict(ev.details)
    details["provider"] = ev.provider
    link = None
    if ev.url:
        from ...instrument import link_id

        link = link_id(ev.url)
    return {
        "uid": event_uid(ev), "tenant_id": msg.tenant_id, "type": ev.type, "contact_id": msg.contact_id,
        "email": msg.email, "message_id": msg.id, "campaign_id": msg.campaign_id, "link_id": link, "url": ev.url,
        "occurred_at": ev.occurred_at or now, "ip": anonymize_ip(ev.ip, state.anonymize_ip),
        "user_agent": ev.user_agent, "is_machine": is_machine, "machine_reason": reason, "details": details,
    }


def _remember(session: Any, dialect: str, provider: str, kind: str, keys: Iterable[str], now: dt.datetime,
              event_type: dict[str, str] | None = None) -> int:
    rows = [{"provider": provider, "kind": kind, "key": key, "event_type": (event_type or {}).get(key),
             "received_at": now} for key in keys]
    if not rows:
        return 0
    stmt = insert(dialect, webhook_receipts).on_conflict_do_nothing(
        index_elements=["provider", "kind", "key"]).returning(webhook_receipts.c.key)
    return len(session.execute(stmt, rows).all())


def store(state: MailTrackState, provider: str, batch: Sequence[EspEvent], *, nonce: str | None = None,
          ignored: int = 0) -> Receipt:
    """Store ``batch`` (see the module docstring) in one transaction; signals and the
    Do-Not-Contact effects of new events follow its commit."""
    now = utcnow()
    receipt = Receipt(received=len(batch) + ignored, ignored=ignored)
    dialect = dialect_name(state)
    new_rows: list[dict[str, Any]] = []
    changed: list[tuple[list[int], dict[str, Any]]] = []
    with transaction(state) as session:
        if nonce is not None:
            if not _remember(session, dialect, provider, "nonce", [nonce], now):
                raise SignatureInvalid("This signed request was received before (a replay).")
            session.execute(sa.delete(webhook_receipts).where(
                webhook_receipts.c.kind == "nonce", webhook_receipts.c.received_at < now - NONCE_RETENTION))
        matches = _match(state, batch)
        rows: dict[str, dict[str, Any]] = {}
        unmatched: dict[str, str] = {}
        for ev, msg in zip(batch, matches):
            if msg is None:
                unmatched[event_uid(ev)] = ev.type
            else:
                row = _row(state, ev, msg, now)
                rows.setdefault(row["uid"], row)
        receipt.duplicates = len(batch) - len(rows) - len(unmatched)
        if rows:
            stmt = insert(dialect, events).on_conflict_do_nothing(index_elements=["uid"]).returning(
                events.c.id, events.c.uid)
            for chunk in chunks(list(rows.values())):
                for event_id, uid in session.execute(stmt, list(chunk)).all():
                    rows[uid]["id"] = event_id
                    new_rows.append(rows[uid])
        receipt.stored = len(new_rows)
        receipt.duplicates += len(rows) - len(new_rows)
        new_unmatched = _remember(session, dialect, provider, "unmatched", unmatched, now, unmatched)
        receipt.unmatched = len(unmatched)
        receipt.duplicates += len(unmatched) - new_unmatched
        for row in new_rows:
            if row["is_machine"] and row["type"] in (OPEN, CLICK):
                ids = _reclassify(session, row)
                if ids:
                    changed.append((ids, row))
    receipt.reclassified = sum(len(ids) for ids, _ in changed)
    receipt.event_ids = [row["id"] for row in new_rows]
    _effects(state, new_rows)
    _announce(new_rows, changed)
    return receipt


def _reclassify(session: Any, row: dict[str, Any]) -> list[int]:
    """Re-mark the message's stored human hits of the same type near a flagged ESP hit."""
    at = row["occurred_at"]
    result = session.execute(
        sa.update(events)
        .where(events.c.message_id == row["message_id"], events.c.type == row["type"],
               events.c.is_machine.is_(False), events.c.id != row["id"],
               events.c.occurred_at >= at - RECLASSIFY_WINDOW, events.c.occurred_at <= at + RECLASSIFY_WINDOW)
        .values(is_machine=True, machine_reason=row["machine_reason"])
        .returning(events.c.id)
    )
    return sorted(r[0] for r in result)


def _effects(state: MailTrackState, new_rows: list[dict[str, Any]]) -> None:
    """Do-Not-Contact for the new events that imply it: a hard bounce (``BOUNCED``), a
    complaint and an unsubscribe (``UNSUBSCRIBED``); an existing entry is kept."""
    from .. import dnc as dnc_service
    from ..external_events import implied_dnc

    for row in new_rows:
        reason = implied_dnc(row["type"], row["details"])
        comment = None
        if row["type"] == COMPLAINT:
            reason, comment = DNCReason.UNSUBSCRIBED, "complaint"
        if reason is None:
            continue
        dnc_service.add_dnc(state, row["contact_id"], "email", reason, row["message_id"], comment,
                            tenant_id=row["tenant_id"], update_existing=False)


def _announce(new_rows: list[dict[str, Any]], changed: list[tuple[list[int], dict[str, Any]]]) -> None:
    for row in new_rows:
        if not has_receivers(row["type"]):
            continue
        event = ContactEvent(**{k: v for k, v in row.items()})
        emit(row["type"], event=event, contact_id=row["contact_id"], message_id=row["message_id"],
             campaign_id=row["campaign_id"], url=row["url"])
    for ids, row in changed:
        send(events_reclassified, event_ids=ids, message_id=row["message_id"], contact_id=row["contact_id"],
             machine_reason=row["machine_reason"], is_machine=True)


def unmatched_count(state: MailTrackState, provider: str | None = None) -> int:
    """How many distinct webhook events matched no message (per provider, or all)."""
    query = sa.select(sa.func.count()).select_from(webhook_receipts).where(webhook_receipts.c.kind == "unmatched")
    if provider is not None:
        query = query.where(webhook_receipts.c.provider == provider)
    return int(state.session.execute(query).scalar_one())


__all__ = ["store", "Receipt", "event_uid", "unmatched_count", "UID_NAMESPACE"]
