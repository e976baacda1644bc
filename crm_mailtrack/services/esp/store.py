"""Webhook events into the event log: match each to our message, store it once, apply its
verdict and its Do-Not-Contact effect, announce it.

* **Matching**: by ``mailtrack_id`` (the header of ``MAILTRACK_ESP``), else by the
  Message-ID; either way the event's recipient must be the message's address (an event
  about a Cc copy is not about the contact). One ``SELECT`` per request for each. The event
  takes the message's tenant, contact and campaign, as a tracking hit does: the provider
  knows nothing of tenants.
* **Exactly once**: the event's ``uid`` is the outcome policy's
  :func:`~..external_events.event_uid` of ``(provider, event id)``; the insert is
  ``ON CONFLICT (uid) DO NOTHING``, so a provider's retry, a batch sent twice or two hosts
  receiving the same event store it once. Unmatched events are remembered the same way in
  ``mailtrack_webhook_receipts`` (``kind = 'unmatched'``, keyed by a digest of the dedup
  key): counted once, and readable (:func:`unmatched_count`, ``flask mailtrack stats``).
* **Policy**: bounces, complaints and unsubscribes go through the one home of the outcome
  policy, :func:`~..external_events.record_outcome` (Do-Not-Contact, the soft-bounce run,
  their signals), one event per transaction. Deliveries, opens and clicks imply no
  Do-Not-Contact (``DELIVERY_EVIDENCE``), so a batch of them is one multi-row insert.
* **Replay**: a request's nonce (Mailgun's token) is inserted in the same transaction;
  when it is already there the request is refused (401) and nothing is written.
* **Verdict**: an ESP open or click carries the provider's machine flag when it has one,
  else our own user-agent and network verdict (:mod:`crm_mailtrack.bots`). A flagged one
  re-marks our own stored human opens/clicks of the message within
  :data:`RECLASSIFY_WINDOW` (the same proxy fetched our pixel too): ``events_reclassified``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ... import bots
from ...db import chunks, dialect_name, insert, transaction
from ...inbound_models import webhook_receipts
from ...models import EVENT_UID_KEY, ContactEvent, Message, events, messages, utcnow
from ...requestinfo import anonymize_ip
from ...signals import events_reclassified
from ...state import MailTrackState
from .. import external_events
from ..common import emit, has_receivers, send
from .base import CLICK, OPEN, EspEvent, SignatureInvalid, bare_message_id
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


def event_uid(ev: EspEvent, msg: Any) -> str:
    """The stored event's ``uid``: the outcome policy's, for ``(provider, event id)``."""
    return external_events.event_uid(msg.tenant_id, msg.id, (ev.provider, ev.event_id))


def _receipt_key(ev: EspEvent) -> str:
    return hashlib.sha256(ev.dedup_key.encode()).hexdigest()


def _message(row: Any) -> Message:
    """A transient :class:`Message` with the columns the policy reads (no full row load)."""
    return Message(id=row.id, tenant_id=row.tenant_id, contact_id=row.contact_id, email=row.email,
                   campaign_id=row.campaign_id, internet_message_id=row.internet_message_id)


def _match(session: Any, batch: Sequence[EspEvent]) -> list[Any]:
    """The message row of each event (``None``: no match), in order (``session``: the
    transaction's connection)."""
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
        "uid": event_uid(ev, msg), "tenant_id": msg.tenant_id, "type": ev.type, "contact_id": msg.contact_id,
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
    """Store ``batch`` (see the module docstring): the nonce, unmatched events and the
    deliveries, opens and clicks in one transaction (their signals after its commit), then
    each bounce, complaint and unsubscribe through the outcome policy."""
    now = utcnow()
    receipt = Receipt(received=len(batch) + ignored, ignored=ignored)
    dialect = dialect_name(state)
    new_rows: list[dict[str, Any]] = []
    changed: list[tuple[list[int], dict[str, Any]]] = []
    policy: list[tuple[EspEvent, Any]] = []
    with transaction(state) as orm_session:
        # Core statements on the transaction's connection: no ORM work per statement
        session = orm_session.connection()
        if nonce is not None:
            if not _remember(session, dialect, provider, "nonce", [nonce], now):
                raise SignatureInvalid("This signed request was received before (a replay).")
            session.execute(sa.delete(webhook_receipts).where(
                webhook_receipts.c.kind == "nonce", webhook_receipts.c.received_at < now - NONCE_RETENTION))
        matches = _match(session, batch)
        rows: dict[str, dict[str, Any]] = {}
        unmatched: dict[str, str] = {}
        policy_uids: set[str] = set()
        for ev, msg in zip(batch, matches):
            if msg is None:
                unmatched[_receipt_key(ev)] = ev.type
            elif ev.type not in external_events.DELIVERY_EVIDENCE:
                uid = event_uid(ev, msg)
                if uid not in policy_uids:
                    policy_uids.add(uid)
                    policy.append((ev, msg))
            else:
                row = _row(state, ev, msg, now)
                rows.setdefault(row["uid"], row)
        for uid in external_events.stored_uids(session, list(rows)):
            del rows[uid]  # stored before (perhaps reported then with another time)
        receipt.duplicates = len(batch) - len(rows) - len(unmatched) - len(policy)
        if rows:
            stmt = insert(dialect, events).on_conflict_do_nothing(index_elements=list(EVENT_UID_KEY)).returning(
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
    _announce(new_rows, changed)
    for ev, msg in policy:
        event = external_events.record_outcome(
            state, _message(msg), ev.type, details=dict(ev.details, provider=ev.provider),
            occurred_at=ev.occurred_at, dedup=(ev.provider, ev.event_id), url=ev.url)
        if event is None:
            receipt.duplicates += 1
        else:
            receipt.stored += 1
            receipt.event_ids.append(event.id)
    return receipt


def _reclassify(session: Any, row: dict[str, Any]) -> list[int]:
    """Re-mark the message's stored human hits of the same type near a flagged ESP hit: our
    own tracking hits only (an ESP event carries its ``details.provider``; its verdict is the
    provider's and stays)."""
    at = row["occurred_at"]
    result = session.execute(
        sa.update(events)
        .where(events.c.message_id == row["message_id"], events.c.type == row["type"],
               events.c.is_machine.is_(False), events.c.id != row["id"],
               events.c.details["provider"].as_string().is_(None),
               events.c.occurred_at >= at - RECLASSIFY_WINDOW, events.c.occurred_at <= at + RECLASSIFY_WINDOW)
        .values(is_machine=True, machine_reason=row["machine_reason"])
        .returning(events.c.id)
    )
    return sorted(r[0] for r in result)


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


__all__ = ["store", "Receipt", "event_uid", "unmatched_count"]
