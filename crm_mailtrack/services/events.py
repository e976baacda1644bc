"""The contact event log: the tracking hot path, external events, replay, erasure."""
from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from .. import bots
from ..db import transaction
from ..errors import ValidationError
from ..journal import Journal
from ..models import (
    EVENT_TYPES,
    ContactEvent,
    JSONType,
    UTCDateTime,
    events,
    messages,
    utcnow,
)
from ..state import MailTrackState
from ..signals import events_reclassified
from . import rawexec, stats
from . import utm as utm_service
from .common import UNSET, check_lengths, emit, has_receivers, log, send, tenant_key

#: Columns the tracking insert fills from the message row (the rest come from the request).
_FROM_MESSAGE = ("tenant_id", "contact_id", "email", "campaign_id")
_RETURNING = ("id", "tenant_id", "contact_id", "email", "campaign_id", "is_machine", "machine_reason")
#: What a click's own follow-up (the after-the-fact marking) needs when nobody wants the row.
_RETURNING_VERDICT = ("is_machine", "machine_reason")


def _history_reason(link_id: sa.BindParameter[Any]) -> sa.ColumnElement[Any]:
    """``honeypot`` / ``burst`` from the message's earlier clicks, as two index seeks inside
    the insert: a honeypot hit in the window (partial index ``ix_mailtrack_events_honeypot``,
    hence the inlined literal), else the message's latest click, if within the burst window,
    being on another link or itself part of a burst (one backward seek of
    ``ix_mailtrack_events_message``, however many clicks the message has)."""
    hit = events.alias("honeypot_hit")
    honeypot = sa.exists().where(
        hit.c.message_id == messages.c.id,
        hit.c.machine_reason == sa.literal_column(f"'{bots.HONEYPOT}'"),
        hit.c.link_id.is_(None),
        hit.c.occurred_at >= sa.bindparam("honeypot_after", type_=UTCDateTime()),
    )
    prior = events.alias("prior")
    latest = (
        sa.select(sa.case(((prior.c.link_id != link_id) | (prior.c.machine_reason == bots.BURST), 1), else_=0))
        .where(prior.c.message_id == messages.c.id, prior.c.type == "click",
               prior.c.occurred_at >= sa.bindparam("burst_after", type_=UTCDateTime()))
        .order_by(prior.c.occurred_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    return sa.case((honeypot, bots.HONEYPOT), (latest == 1, bots.BURST))


@lru_cache(maxsize=16)
def _tracking_insert(dialect: str, idempotent: bool, with_history: bool = True,
                     returning: tuple[str, ...] = _RETURNING) -> sa.Insert:
    """``INSERT INTO events ... SELECT ... FROM messages WHERE id = :message_id``.

    One statement, one round trip: the event takes tenant, contact, email and campaign
    from its message (so the token needs no personal data and the click path no SELECT),
    and RETURNING gives the signal its fields. The machine verdict is finished here too:
    the request's own reason (bound), else ``honeypot``/``burst`` from the message's earlier
    clicks (``with_history``, clicks only), else ``too-fast-after-send`` from
    ``messages.sent_at``. Built once per variant; SQLAlchemy caches its compiled form.
    ``returning`` names the columns given back: fewer when nobody wants the row (a click
    then needs only its verdict), none for an open nobody listens to; on SQLite each
    returned column and the RETURNING buffer itself cost measurable time per hit.
    """
    link_id = sa.bindparam("link_id", type_=sa.String())
    reasons: list[Any] = [sa.bindparam("machine_reason", type_=sa.String())]
    if with_history:
        reasons.append(_history_reason(link_id))
    reasons.append(sa.case(
        (messages.c.sent_at > sa.bindparam("fast_after", type_=UTCDateTime()), bots.TOO_FAST)))
    inner = sa.select(
        sa.bindparam("uid", type_=sa.String()).label("uid"),
        sa.bindparam("type", type_=sa.String()).label("type"),
        messages.c.tenant_id,
        messages.c.contact_id,
        messages.c.email,
        messages.c.id,
        messages.c.campaign_id,
        link_id.label("link_id"),
        sa.bindparam("url", type_=sa.Text()).label("url"),
        sa.bindparam("occurred_at", type_=UTCDateTime()).label("occurred_at"),
        sa.bindparam("ip", type_=sa.String()).label("ip"),
        sa.bindparam("user_agent", type_=sa.String()).label("user_agent"),
        sa.func.coalesce(*reasons).label("machine_reason"),
        sa.bindparam("details", type_=JSONType).label("details"),
    ).where(messages.c.id == sa.bindparam("message_id", type_=sa.String()))
    # LIMIT 1 (the id is unique anyway) keeps SQLite and PostgreSQL from inlining the
    # subquery, which would evaluate the verdict's probes twice (reason and is_machine).
    inner = inner.limit(1).subquery("src")
    src = sa.select(
        *(inner.c[name] for name in ("uid", "type", "tenant_id", "contact_id", "email", "id",
                                     "campaign_id", "link_id", "url", "occurred_at", "ip",
                                     "user_agent")),
        inner.c.machine_reason.is_not(None),
        inner.c.machine_reason,
        inner.c.details,
    ).where(sa.true())  # SQLite: INSERT ... SELECT needs a WHERE before ON CONFLICT (parse ambiguity)
    cols = [
        "uid", "type", "tenant_id", "contact_id", "email", "message_id", "campaign_id",
        "link_id", "url", "occurred_at", "ip", "user_agent", "is_machine", "machine_reason",
        "details",
    ]
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(events).from_select(cols, src)
    if idempotent:
        stmt = stmt.on_conflict_do_nothing(index_elements=["uid"])
    if returning:
        stmt = stmt.returning(*(events.c[name] for name in returning))
    # ``details`` is the per-user-agent dict of devices.event_details (never changed): on
    # the raw path its JSON is made once per dict, not per hit
    return stmt.execution_options(**{rawexec.SHARED_BINDS: ("details",)})


def _tracking_params(
    event_type: str,
    message_id: str,
    *,
    url: str | None,
    link_id: str | None,
    ip: str | None,
    user_agent: str | None,
    machine_reason: str | None,
    occurred_at: dt.datetime | None = None,
    uid: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "uid": uid or _new_uid(),
        "type": event_type,
        "message_id": message_id,
        "link_id": link_id,
        "url": url,
        "occurred_at": occurred_at or utcnow(),
        "ip": ip,
        "user_agent": user_agent,
        "is_machine": machine_reason is not None,
        "machine_reason": machine_reason,
        # as given (not copied): the insert serializes each shared details dict once;
        # what leaves this module (signals) gets its own copy
        "details": (details if details.__class__ is dict else dict(details)) if details else None,
    }


def _new_uid() -> str:
    """``uuid.uuid4().hex``, built straight from 16 random bytes (half the time)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def _statement_params(rules: bots.BotPolicy, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` plus the time bounds the insert's verdict compares with (``None``
    disables a rule: a comparison with NULL is never true)."""
    at: dt.datetime = params["occurred_at"]
    fast, burst, honeypot = rules.windows
    out = dict(params)
    out["details"] = params.get("details")
    out["fast_after"] = at - fast if fast is not None else None
    out["burst_after"] = at - burst if burst is not None else None
    out["honeypot_after"] = at - honeypot if honeypot is not None else None
    return out


@lru_cache(maxsize=1)
def _retro_update() -> sa.Update:
    """The after-the-fact marking of a message's human clicks in a window (built once)."""
    return (
        sa.update(events)
        .where(events.c.message_id == sa.bindparam("retro_message", type_=sa.String()),
               events.c.type == "click", events.c.is_machine == sa.false(),
               events.c.occurred_at.between(sa.bindparam("retro_from", type_=UTCDateTime()),
                                            sa.bindparam("retro_to", type_=UTCDateTime())))
        .values(is_machine=True, machine_reason=sa.bindparam("retro_reason", type_=sa.String()))
        .returning(events.c.id, events.c.contact_id)
    )


class Reclassified:
    """Clicks of one message re-marked as a machine's after the fact (``events_reclassified``)."""

    def __init__(self, message_id: str, rows: list[Any], reason: str) -> None:
        self.message_id = message_id
        self.event_ids = sorted(row.id for row in rows)
        self.contact_id = rows[0].contact_id
        self.reason = reason

    def notify(self, *, safe: bool) -> None:
        send(events_reclassified, safe=safe, event_ids=self.event_ids, message_id=self.message_id,
             contact_id=self.contact_id, machine_reason=self.reason, is_machine=True)


def _retro_mark(conn: Any, rules: bots.BotPolicy, params: Mapping[str, Any],
                row: Any) -> Reclassified | None:
    """When a click reveals a machine after the fact (a honeypot hit, a burst), mark the
    message's human clicks in the window around it: one UPDATE, only when triggered.
    Returns what changed (``None``: nothing)."""
    if params["type"] != "click":
        return None
    at: dt.datetime = params["occurred_at"]
    if params.get("machine_reason") == bots.HONEYPOT and params.get("link_id") is None:
        reason, window = bots.HONEYPOT, rules.honeypot_window_seconds
    elif row.machine_reason == bots.BURST:
        reason, window = bots.BURST, rules.burst_seconds
    else:
        return None
    delta = dt.timedelta(seconds=window)
    changed = conn.execute(_retro_update(), {
        "retro_message": params["message_id"], "retro_from": at - delta, "retro_to": at + delta,
        "retro_reason": reason}).all()
    return Reclassified(params["message_id"], changed, reason) if changed else None


def _notify_tracking(params: Mapping[str, Any], row: Any, *, safe: bool) -> None:
    event_type = params["type"]
    if not has_receivers(event_type):
        return
    details = params.get("details")
    event = ContactEvent(**{**params, "details": dict(details) if details else None, **row._mapping})
    emit(
        event_type,
        safe=safe,
        event=event,
        contact_id=row.contact_id,
        message_id=params["message_id"],
        campaign_id=row.campaign_id,
        url=params["url"],
        is_machine=bool(row.is_machine),
        machine_reason=row.machine_reason,
    )


class _Followups:
    """What a tracking event's own transaction wrote besides the event: the earlier clicks
    it re-marked and the UTM tag of a click. Their signals go out after the commit."""

    __slots__ = ("reclassified", "tag")

    def __init__(self) -> None:
        self.reclassified: Reclassified | None = None
        self.tag: utm_service.TagWrite | None = None

    def write(self, conn: Any, dialect: str, rules: bots.BotPolicy, params: Mapping[str, Any], row: Any,
              utm: Mapping[str, str] | None) -> None:
        self.reclassified = _retro_mark(conn, rules, params, row)
        self.tag = utm_service.click_tag(conn, dialect, row, params, utm)

    def notify(self) -> None:
        if self.reclassified is not None:
            self.reclassified.notify(safe=True)
        if self.tag is not None:
            self.tag.notify(safe=True)


def record_tracking_event(state: MailTrackState, event_type: str, message_id: str, *,
                          want_row: bool = True, utm: Mapping[str, str] | None = None, **fields: Any) -> Any:
    """Store an open or click from a public route; never raises.

    Returns the stored row (``tenant_id``, ``contact_id``, ``campaign_id``, ``is_machine``,
    ``machine_reason``: the final verdict), or ``None`` when nothing was stored: the message
    no longer exists, or the database failed and the event went to the journal. In the
    same transaction, a click re-marks the message's earlier clicks when it reveals a
    machine (burst, honeypot), and a human click whose destination carries ``utm``
    parameters tags the contact (see :mod:`.utm`). Signals go out after the commit, each
    subscriber isolated. A caller that does not use the result passes ``want_row=False``:
    unless something needs the row (signal receivers, a UTM tag), the insert then returns
    only what a click's follow-up needs (an open: nothing) and the result is ``None``.
    """
    params = _tracking_params(event_type, message_id, **fields)
    followups = _Followups()
    try:
        engine = state.engine
        dialect = engine.dialect.name
        rules = state.settings.bot_policy
        is_click = event_type == "click"
        full = want_row or has_receivers(event_type) or bool(utm)
        returning = _RETURNING if full else (_RETURNING_VERDICT if is_click else ())
        stmt = _tracking_insert(dialect, False, is_click and rules.history, returning)
        # one transaction on the DBAPI connection (see rawexec): the insert, then for a click
        # the after-the-fact marking of the message's earlier clicks and its UTM tag
        after = (lambda conn, row: followups.write(conn, dialect, rules, params, row, utm)) if is_click else None
        row = rawexec.first_committed(engine, stmt, _statement_params(rules, params), after=after)
    except Exception:  # noqa: BLE001 - the recipient's redirect/pixel must not fail
        log.warning("mailtrack: database unavailable, %s event journaled", event_type, exc_info=True)
        try:
            state.journal.append(params)
        except Exception:  # noqa: BLE001
            log.exception("mailtrack: journal write failed; %s event lost", event_type)
        return None
    if row is None:
        return None
    if full:
        _notify_tracking(params, row, safe=True)
    followups.notify()
    return row if full else None


def replay_journal(state: MailTrackState, progress: Any = None) -> tuple[int, int]:
    """Write journaled events to the database, each exactly once.

    Returns ``(inserted, skipped)``; skipped are entries already stored (an earlier replay)
    or whose message no longer exists. Each event goes through what the tracking route
    does in its transaction: a click's after-the-fact marking and its UTM tag. A file is
    removed only after all of its entries are committed, so an interrupted replay is
    simply run again.
    """
    journal: Journal = state.journal
    inserted = skipped = 0
    engine = state.engine
    dialect = engine.dialect.name
    rules = state.settings.bot_policy
    for path in journal.claim():
        stored: list[tuple[dict[str, Any], Any, _Followups]] = []
        with engine.begin() as conn:
            for entry in journal.read(path):
                entry["occurred_at"] = _parse_time(entry.get("occurred_at"))
                entry.setdefault("details", None)
                is_click = entry.get("type") == "click"
                stmt = _tracking_insert(dialect, True, is_click and rules.history)
                row = conn.execute(stmt, _statement_params(rules, entry)).first()
                if row is None:
                    skipped += 1
                else:
                    inserted += 1
                    followups = _Followups()
                    if is_click:
                        url = entry.get("url")
                        utm = utm_service.utm_params(url) if isinstance(url, str) and "utm_" in url else None
                        followups.write(conn, dialect, rules, entry, row, utm)
                    stored.append((entry, row, followups))
                if progress is not None:
                    progress(1)
        os.remove(path)
        for entry, row, followups in stored:
            _notify_tracking(entry, row, safe=True)
            followups.notify()
    return inserted, skipped


def _parse_time(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def record_event(
    state: MailTrackState,
    contact_id: str,
    type: str,
    *,
    email: str | None = None,
    message_id: str | None = None,
    campaign_id: str | None = None,
    url: str | None = None,
    occurred_at: dt.datetime | None = None,
    details: Mapping[str, Any] | None = None,
    tenant_id: Any = UNSET,
    uid: str | None = None,
    link_id: str | None = None,
    commit: bool = True,
) -> ContactEvent:
    """Record an event that happened outside the tracking routes (ESP webhook, import)."""
    if type not in EVENT_TYPES:
        raise ValidationError({"type": [f"Must be one of: {', '.join(EVENT_TYPES)}."]})
    if contact_id is None or str(contact_id) == "":
        raise ValidationError({"contact_id": ["Missing data for required field."]})
    check_lengths(events, contact_id=str(contact_id), email=email, message_id=message_id,
                  campaign_id=campaign_id)
    if occurred_at is not None and occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=dt.timezone.utc)
    if url is not None and link_id is None:
        from ..instrument import link_id as make_link_id

        link_id = make_link_id(url)
    event = ContactEvent(
        uid=uid,
        tenant_id=tenant_key(state, tenant_id),
        type=str(type),
        contact_id=str(contact_id),
        email=email,
        message_id=message_id,
        campaign_id=campaign_id,
        link_id=link_id,
        url=url,
        occurred_at=occurred_at or utcnow(),
        is_machine=False,
        details=dict(details) if details else None,
    )
    with transaction(state, commit=commit) as session:
        session.add(event)
    if commit:
        emit(str(type), event=event, contact_id=event.contact_id, message_id=message_id,
             campaign_id=campaign_id, url=url)
    return event


def erase_contact(state: MailTrackState, contact_id: str, *, tenant_id: Any = UNSET) -> int:
    """Delete every tracked row of a contact; see :func:`.privacy.erase_contact`."""
    from . import privacy

    return privacy.erase_contact(state, contact_id, tenant_id=tenant_id)
