"""The contact event log: the tracking hot path, external events, replay, erasure."""
from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from ..errors import DatabaseUnavailable, ValidationError
from ..journal import Journal
from ..models import (
    EVENT_TYPES,
    ContactEvent,
    UTCDateTime,
    dnc,
    events,
    messages,
    utcnow,
    utm_tags,
)
from ..state import MailTrackState
from .common import UNSET, dialect_insert, emit, has_receivers, log, tenant_key

#: Columns the tracking insert fills from the message row (the rest come from the request).
_FROM_MESSAGE = ("tenant_id", "contact_id", "email", "campaign_id")
_RETURNING = ("id", "tenant_id", "contact_id", "email", "campaign_id")


@lru_cache(maxsize=8)
def _tracking_insert(dialect: str, idempotent: bool) -> sa.Insert:
    """``INSERT INTO events ... SELECT ... FROM messages WHERE id = :message_id``.

    One statement, one round trip: the event takes tenant, contact, email and campaign
    from its message (so the token needs no personal data and the click path no SELECT),
    and RETURNING gives the signal its fields. Built once per dialect; SQLAlchemy caches
    its compiled form.
    """
    src = sa.select(
        sa.bindparam("uid", type_=sa.String()),
        sa.bindparam("type", type_=sa.String()),
        messages.c.tenant_id,
        messages.c.contact_id,
        messages.c.email,
        messages.c.id,
        messages.c.campaign_id,
        sa.bindparam("link_id", type_=sa.String()),
        sa.bindparam("url", type_=sa.Text()),
        sa.bindparam("occurred_at", type_=UTCDateTime()),
        sa.bindparam("ip", type_=sa.String()),
        sa.bindparam("user_agent", type_=sa.String()),
        sa.bindparam("is_machine", type_=sa.Boolean()),
        sa.bindparam("machine_reason", type_=sa.String()),
    ).where(messages.c.id == sa.bindparam("message_id", type_=sa.String()))
    cols = [
        "uid", "type", "tenant_id", "contact_id", "email", "message_id", "campaign_id",
        "link_id", "url", "occurred_at", "ip", "user_agent", "is_machine", "machine_reason",
    ]
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(events).from_select(cols, src)
    if idempotent:
        stmt = stmt.on_conflict_do_nothing(index_elements=["uid"])
    return stmt.returning(*(events.c[name] for name in _RETURNING))


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
) -> dict[str, Any]:
    return {
        "uid": uid or uuid.uuid4().hex,
        "type": event_type,
        "message_id": message_id,
        "link_id": link_id,
        "url": url,
        "occurred_at": occurred_at or utcnow(),
        "ip": ip,
        "user_agent": user_agent,
        "is_machine": machine_reason is not None,
        "machine_reason": machine_reason,
    }


def _notify_tracking(params: Mapping[str, Any], row: sa.Row[Any], *, safe: bool) -> None:
    event_type = params["type"]
    if not has_receivers(event_type):
        return
    event = ContactEvent(**{**{k: v for k, v in params.items()}, **row._mapping})
    emit(
        event_type,
        safe=safe,
        event=event,
        contact_id=row.contact_id,
        message_id=params["message_id"],
        campaign_id=row.campaign_id,
        url=params["url"],
    )


def record_tracking_event(state: MailTrackState, event_type: str, message_id: str, **fields: Any) -> bool:
    """Store an open or click from a public route; never raises.

    On any database failure the event goes to the journal instead (returns ``False``).
    Signals go out after the commit, each subscriber isolated.
    """
    params = _tracking_params(event_type, message_id, **fields)
    try:
        engine = state.engine
        stmt = _tracking_insert(engine.dialect.name, False)
        with engine.begin() as conn:
            row = conn.execute(stmt, params).first()
    except Exception:  # noqa: BLE001 - the recipient's redirect/pixel must not fail
        log.warning("mailtrack: database unavailable, %s event journaled", event_type, exc_info=True)
        try:
            state.journal.append(params)
        except Exception:  # noqa: BLE001
            log.exception("mailtrack: journal write failed; %s event lost", event_type)
        return False
    if row is not None:
        _notify_tracking(params, row, safe=True)
    return True


def replay_journal(state: MailTrackState, progress: Any = None) -> tuple[int, int]:
    """Write journaled events to the database, each exactly once.

    Returns ``(inserted, skipped)``; skipped are entries already stored (an earlier replay)
    or whose message no longer exists. A file is removed only after all of its entries are
    committed, so an interrupted replay is simply run again.
    """
    journal: Journal = state.journal
    inserted = skipped = 0
    engine = state.engine
    stmt = _tracking_insert(engine.dialect.name, True)
    for path in journal.claim():
        stored: list[tuple[dict[str, Any], sa.Row[Any]]] = []
        with engine.begin() as conn:
            for entry in journal.read(path):
                entry["occurred_at"] = _parse_time(entry.get("occurred_at"))
                row = conn.execute(stmt, entry).first()
                if row is None:
                    skipped += 1
                else:
                    inserted += 1
                    stored.append((entry, row))
                if progress is not None:
                    progress(1)
        os.remove(path)
        for entry, row in stored:
            _notify_tracking(entry, row, safe=True)
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
    session = state.session
    session.add(event)
    if commit:
        commit_or_503(session)
        emit(str(type), event=event, contact_id=event.contact_id, message_id=message_id,
             campaign_id=campaign_id, url=url)
    return event


def commit_or_503(session: Any) -> None:
    """Commit, turning a database failure into :class:`DatabaseUnavailable` (after rollback)."""
    try:
        session.commit()
    except sa.exc.IntegrityError:
        session.rollback()
        raise
    except sa.exc.SQLAlchemyError as exc:
        session.rollback()
        raise DatabaseUnavailable() from exc


def erase_contact(state: MailTrackState, contact_id: str, *, tenant_id: Any = UNSET) -> int:
    """Delete every tracked row of a contact in one transaction; return rows deleted."""
    tenant = tenant_key(state, tenant_id)
    total = 0
    session = state.session
    try:
        for table in (events, dnc, utm_tags, messages):
            result = session.execute(
                sa.delete(table).where(table.c.tenant_id == tenant, table.c.contact_id == str(contact_id))
            )
            total += result.rowcount or 0
        session.commit()
    except sa.exc.SQLAlchemyError as exc:
        session.rollback()
        raise DatabaseUnavailable() from exc
    return total

