"""The open and click path, from request facts to stored event and signals, in one place.

:func:`record_click`, :func:`record_open` and :func:`record_honeypot` are what the public
tracking routes call, once, after verifying the token; :func:`replay_journal` writes what
they journaled while the database was down, through the same steps:

1. the verdict of the request (:func:`.bots.classify`: method and headers, user agent,
   network);
2. one ``INSERT INTO mailtrack_events ... SELECT ... FROM mailtrack_messages``: the event
   takes tenant, contact, email and campaign from its message (the token carries no
   personal data, the path needs no SELECT), and the message's recent history finishes
   the verdict inside the statement (:func:`.bots.history_verdict`: honeypot, burst,
   too fast after sending);
3. in the same transaction, for a click: the after-the-fact marking of the message's
   earlier clicks when this one reveals a machine (:func:`.bots.reclassification`), and
   the contact's UTM tag when a person followed a destination with ``utm_*`` parameters
   (:func:`.utm.click_tag`);
4. the commit; on a database failure the event goes to the journal instead, and the
   recipient still gets the redirect or pixel;
5. after the commit, the signals (each subscriber isolated): ``open``/``click`` and
   ``event_recorded`` with the final verdict, ``events_reclassified``, ``utm_tag_added``.

The statements are built with SQLAlchemy Core and compiled once per dialect
(``Compiled.string`` and ``Compiled.positiontup``); each hit runs them in one transaction
on a DB-API connection of the engine's pool (``Engine.raw_connection()``, see
:class:`.prepared.PooledTransaction`): the types' bind processors, ``cursor.execute``,
``commit``; only documented interfaces, and no SQLAlchemy ``Connection``, ``Transaction``
or result objects per hit. Engine-level execution events (``before_cursor_execute``) do
not see these statements; pool events do.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from .. import bots
from ..devices import event_details
from ..instrument import link_id as make_link_id
from ..journal import Journal
from ..models import EVENT_UID_KEY, ContactEvent, UTCDateTime, events, messages, utcnow
from ..requestinfo import RequestFacts
from ..signals import events_reclassified
from ..state import MailTrackState
from . import utm as utm_service
from .common import emit, has_receivers, log, send
from .prepared import PooledTransaction, Prepared, Runner, aware_binds

CLICK = "click"
OPEN = "open"

#: Columns given back when something needs the stored row (signal receivers, a UTM tag).
_RETURNING = ("id", "tenant_id", "contact_id", "email", "campaign_id", "machine_reason")
#: What a click's after-the-fact marking needs when nothing else does (an open: nothing).
_RETURNING_VERDICT = ("machine_reason",)
#: The insert's bind parameters and their types (``details`` is JSON text, see
#: :func:`_details`; the datetimes are aware UTC: :func:`.prepared.aware_binds`).
_BINDS: dict[str, sa.types.TypeEngine[Any]] = {
    "uid": sa.String(), "type": sa.String(), "message_id": sa.String(), "link_id": sa.String(),
    "url": sa.Text(), "occurred_at": UTCDateTime(), "ip": sa.String(), "user_agent": sa.String(),
    "machine_reason": sa.String(), "details": sa.Text(),
    **{name: UTCDateTime() for name in bots.HISTORY_BOUNDS},
}
_COLUMNS = ("uid", "type", "tenant_id", "contact_id", "email", "message_id", "campaign_id", "link_id",
            "url", "occurred_at", "ip", "user_agent", "is_machine", "machine_reason", "details")


def _bind(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=_BINDS[name])


@lru_cache(maxsize=16)
def _insert(dialect: str, *, idempotent: bool, history: bool, returning: tuple[str, ...]) -> sa.Insert:
    """``INSERT INTO mailtrack_events (...) SELECT ... FROM mailtrack_messages WHERE id =
    :message_id`` with the verdict finished in SQL: the request's reason (bound), else the
    history's (:func:`.bots.history_verdict`; burst/honeypot probes only with ``history``).
    ``idempotent`` (journal replay): a ``uid`` stored before is skipped. ``returning``:
    the columns given back (none: nothing to give back)."""
    link_id = _bind("link_id")
    reason = sa.func.coalesce(_bind("machine_reason"), bots.history_verdict(link_id, clicks=history))
    details: Any = _bind("details")
    if dialect == "postgresql":
        details = sa.cast(details, JSONB())
    inner = sa.select(
        _bind("uid").label("uid"), _bind("type").label("type"), messages.c.tenant_id, messages.c.contact_id,
        messages.c.email, messages.c.id, messages.c.campaign_id, link_id.label("link_id"),
        _bind("url").label("url"), _bind("occurred_at").label("occurred_at"), _bind("ip").label("ip"),
        _bind("user_agent").label("user_agent"), reason.label("machine_reason"), details.label("details"),
    ).where(messages.c.id == _bind("message_id"))
    # LIMIT 1 (the id is unique anyway) keeps SQLite and PostgreSQL from inlining the
    # subquery, which would evaluate the verdict's probes twice (reason and is_machine).
    src = inner.limit(sa.literal_column("1")).offset(sa.literal_column("0")).subquery("src")
    select = sa.select(
        *(src.c[name] for name in ("uid", "type", "tenant_id", "contact_id", "email", "id", "campaign_id",
                                   "link_id", "url", "occurred_at", "ip", "user_agent")),
        src.c.machine_reason.is_not(None), src.c.machine_reason, src.c.details,
    ).where(sa.true())  # SQLite: INSERT ... SELECT needs a WHERE before ON CONFLICT (parse ambiguity)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(events).from_select(list(_COLUMNS), select)
    if idempotent:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(EVENT_UID_KEY))
    if returning:
        stmt = stmt.returning(*(events.c[name] for name in returning))
    return stmt


@lru_cache(maxsize=32)
def _prepared(dialect: sa.Dialect, idempotent: bool, history: bool, returning: tuple[str, ...]) -> Prepared:
    stmt = _insert(dialect.name, idempotent=idempotent, history=history, returning=returning)
    return Prepared(stmt, dialect, aware_binds(dialect, _BINDS))


_RECLASSIFY_BINDS = {"message": sa.String(), "start": UTCDateTime(), "end": UTCDateTime(), "reason": sa.String()}


@lru_cache(maxsize=8)
def _reclassify(dialect: sa.Dialect) -> Prepared:
    """The after-the-fact marking of a message's human clicks in a window."""
    stmt = (
        sa.update(events)
        .where(events.c.message_id == sa.bindparam("message", type_=sa.String()),
               events.c.type == sa.literal_column(f"'{CLICK}'"), events.c.is_machine == sa.false(),
               events.c.occurred_at.between(sa.bindparam("start", type_=UTCDateTime()),
                                            sa.bindparam("end", type_=UTCDateTime())))
        .values(is_machine=sa.true(), machine_reason=sa.bindparam("reason", type_=sa.String()))
        .returning(events.c.id, events.c.contact_id)
    )
    return Prepared(stmt, dialect, aware_binds(dialect, _RECLASSIFY_BINDS))


@lru_cache(maxsize=4096)
def _details(user_agent: str | None, honeypot: bool = False) -> tuple[dict[str, Any] | None, str | None]:
    """The event's ``details`` (device data of the user agent, the honeypot flag) and their
    JSON text, made once per user agent."""
    details = event_details(user_agent)
    if honeypot:
        details = {**(details or {}), "honeypot": True}
    return details, (json.dumps(details) if details else None)


def _new_uid() -> str:
    """``uuid.uuid4().hex``, built straight from 16 random bytes (half the time)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


class _Hit:
    """One open or click on its way to the database: the journal entry's fields and what
    its transaction wrote besides the event (signalled after the commit)."""

    __slots__ = ("entry", "details_json", "utm", "full", "row", "reclassified", "tag")

    def __init__(self, entry: dict[str, Any], details_json: str | None, utm: Mapping[str, str] | None) -> None:
        self.entry = entry
        self.details_json = details_json
        self.utm = utm
        self.full = False
        self.row: Any = None
        self.reclassified: tuple[str, list[Any], str] | None = None
        self.tag: utm_service.TagWrite | None = None

    def write(self, tx: Runner, rules: bots.BotPolicy, *, idempotent: bool) -> bool:
        """The insert and its follow-ups in ``tx``'s transaction. Whether the event was
        stored (known only when something asked for the row: a replay always does)."""
        entry = self.entry
        is_click = entry["type"] == CLICK
        self.full = idempotent or bool(self.utm) or has_receivers(entry["type"])
        returning = _RETURNING if self.full else (_RETURNING_VERDICT if is_click else ())
        prepared = _prepared(tx.dialect, idempotent, is_click and rules.history, returning)
        values = {**entry, "details": self.details_json, **bots.history_bounds(rules, entry["occurred_at"])}
        if not returning:
            tx.run(prepared, values)
            return True
        row = self.row = tx.first(prepared, values)
        if row is None:
            return False  # the message no longer exists, or (replay) the event is stored already
        if is_click:
            self._reclassify(tx, rules)
            if self.utm and row.machine_reason is None:
                self.tag = utm_service.click_tag(tx, row, entry, self.utm)
        return True

    def _reclassify(self, tx: Runner, rules: bots.BotPolicy) -> None:
        entry = self.entry
        found = bots.reclassification(rules, CLICK, entry.get("link_id"), self.row.machine_reason)
        if found is None:
            return
        reason, seconds = found
        window = dt.timedelta(seconds=seconds)
        at = entry["occurred_at"]
        changed = tx.all(_reclassify(tx.dialect), {"message": entry["message_id"], "start": at - window,
                                                   "end": at + window, "reason": reason})
        if changed:
            self.reclassified = (reason, changed, entry["message_id"])

    def notify(self) -> None:
        """The signals of what was stored; call after the commit."""
        entry, row = self.entry, self.row
        if row is not None and self.full and has_receivers(entry["type"]):
            reason = row.machine_reason
            details = entry.get("details")
            event = ContactEvent(
                id=row.id, uid=entry["uid"], tenant_id=row.tenant_id, type=entry["type"],
                contact_id=row.contact_id, email=row.email, message_id=entry["message_id"],
                campaign_id=row.campaign_id, link_id=entry.get("link_id"), url=entry.get("url"),
                occurred_at=entry["occurred_at"], ip=entry.get("ip"), user_agent=entry.get("user_agent"),
                is_machine=reason is not None, machine_reason=reason,
                details=dict(details) if details else None,
            )
            emit(entry["type"], safe=True, event=event, contact_id=row.contact_id,
                 message_id=entry["message_id"], campaign_id=row.campaign_id, url=entry.get("url"),
                 is_machine=reason is not None, machine_reason=reason)
        if self.reclassified is not None:
            reason, changed, message_id = self.reclassified
            send(events_reclassified, safe=True, event_ids=sorted(r.id for r in changed), message_id=message_id,
                 contact_id=changed[0].contact_id, machine_reason=reason, is_machine=True)
        if self.tag is not None:
            self.tag.notify(safe=True)


def _record(state: MailTrackState, event_type: str, message_id: str, facts: RequestFacts, *,
            url: str | None = None, honeypot: bool = False) -> None:
    rules = state.settings.bot_policy
    reason = bots.HONEYPOT if honeypot else bots.classify(rules, event_type, facts)
    details, details_json = _details(facts.user_agent, honeypot)
    entry = {
        "uid": _new_uid(), "type": event_type, "message_id": message_id,
        "link_id": make_link_id(url) if url is not None else None, "url": url, "occurred_at": utcnow(),
        "ip": facts.ip, "user_agent": facts.user_agent, "is_machine": reason is not None,
        "machine_reason": reason, "details": details,
    }
    # a person's click on a destination with utm_* parameters also tags the contact
    utm = utm_service.utm_params(url) if url is not None and "utm_" in url else None
    hit = _Hit(entry, details_json, utm)
    try:
        with PooledTransaction(state.engine) as tx:
            hit.write(tx, rules, idempotent=False)
    except Exception:  # noqa: BLE001 - the recipient's redirect/pixel must not fail
        log.warning("mailtrack: database unavailable, %s event journaled", event_type, exc_info=True)
        try:
            state.journal.append(entry)
        except Exception:  # noqa: BLE001
            log.exception("mailtrack: journal write failed; %s event lost", event_type)
        return
    hit.notify()


def record_click(state: MailTrackState, message_id: str, url: str, facts: RequestFacts) -> None:
    """Store a click on ``url`` (the signed destination) of a message; never raises."""
    _record(state, CLICK, message_id, facts, url=url)


def record_open(state: MailTrackState, message_id: str, facts: RequestFacts) -> None:
    """Store an open of a message; never raises."""
    _record(state, OPEN, message_id, facts)


def record_honeypot(state: MailTrackState, message_id: str, facts: RequestFacts) -> None:
    """Store a hit of a message's honeypot link: a machine click (``honeypot``) that marks
    the message's clicks around it; never raises."""
    _record(state, CLICK, message_id, facts, honeypot=True)


def replay_journal(state: MailTrackState, progress: Any = None) -> tuple[int, int]:
    """Write journaled events to the database, each exactly once.

    Returns ``(inserted, skipped)``; skipped are entries already stored (an earlier replay)
    or whose message no longer exists. Each event goes through what the tracking route
    does in its transaction: a click's after-the-fact marking and its UTM tag. A batch (a
    claimed file, or entries read from a Redis stream) leaves the journal only after all of
    its entries are committed, so an interrupted replay is simply run again: an entry
    written but not yet removed is skipped by the event's unique ``(uid, occurred_at)``.
    """
    journal: Journal = state.journal
    inserted = skipped = 0
    rules = state.settings.bot_policy
    for batch in journal.batches():
        stored: list[_Hit] = []
        try:
            with PooledTransaction(state.engine) as tx:
                for entry in batch.entries():
                    entry["occurred_at"] = _parse_time(entry["occurred_at"])
                    details = entry.get("details")
                    url = entry.get("url")
                    utm = (utm_service.utm_params(url)
                           if entry.get("type") == CLICK and isinstance(url, str) and "utm_" in url else None)
                    hit = _Hit(entry, json.dumps(details) if details else None, utm)
                    if hit.write(tx, rules, idempotent=True):
                        inserted += 1
                        stored.append(hit)
                    else:
                        skipped += 1
                    if progress is not None:
                        progress(1)
        except BaseException:
            batch.release()  # back to the journal, for the next replay
            raise
        batch.done()
        for hit in stored:
            hit.notify()
    return inserted, skipped


def _parse_time(value: str) -> dt.datetime:
    """A journal entry's ``occurred_at``: ISO 8601 (the journal hands out no other entry),
    read as UTC when it names no offset."""
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


__all__ = ["record_click", "record_open", "record_honeypot", "replay_journal"]
