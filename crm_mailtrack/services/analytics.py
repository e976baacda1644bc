"""Communications analytics (002 ``analytics``), computed by SQL aggregates.

Definitions (docs/metrics.md states each once): a message is *in range* when its send
time (``sent_at``, else ``created_at`` for messages never sent) falls in
``[dateFrom, dateTo)``; ``totalSent`` counts SENT messages; a message is *opened* when it
has an open or a click event (a click implies an open); *clicked* when it has a click
event; each message counts at most once. Rates are over SENT messages, except
``failureRate`` = FAILED / (SENT + FAILED). Human events only unless ``include_bots``.
Events that a purge moved into ``mailtrack_event_rollups`` count like raw ones.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from ..models import MessageStatus, event_rollups, events, messages
from ..state import MailTrackState

SENT = MessageStatus.SENT.value
FAILED = MessageStatus.FAILED.value


def _has_event(types: tuple[str, ...], include_bots: bool) -> sa.ColumnElement[int]:
    """1 when the message has an event of one of ``types`` (humans only by default), raw or
    rolled up by a purge, else 0."""
    raw = [events.c.message_id == messages.c.id, events.c.type.in_(types)]
    rolled = [event_rollups.c.message_id == messages.c.id, event_rollups.c.tenant_id == messages.c.tenant_id,
              event_rollups.c.type.in_(types), event_rollups.c.count > 0]
    if not include_bots:
        raw.append(events.c.is_machine.is_(False))
        rolled.append(event_rollups.c.is_machine.is_(False))
    return sa.case((sa.or_(sa.exists().where(*raw), sa.exists().where(*rolled)), 1), else_=0)


def _per_message(tenant: str, date_from: dt.datetime | None, date_to: dt.datetime | None,
                 include_bots: bool) -> sa.Subquery:
    """One row per SENT or FAILED message in range, with its opened/clicked flags."""
    when = sa.func.coalesce(messages.c.sent_at, messages.c.created_at)
    where = [messages.c.tenant_id == tenant, messages.c.status.in_((SENT, FAILED))]
    if date_from is not None:
        where.append(when >= date_from)
    if date_to is not None:
        where.append(when < date_to)
    return sa.select(
        messages.c.id, messages.c.status, messages.c.template_id, messages.c.template_name,
        messages.c.type, messages.c.sent_at,
        _has_event(("open", "click"), include_bots).label("opened"),
        _has_event(("click",), include_bots).label("clicked"),
    ).where(*where).subquery("m")


def _totals(m: sa.Subquery) -> list[Any]:
    is_sent = m.c.status == SENT
    return [
        sa.func.coalesce(sa.func.sum(sa.case((is_sent, 1), else_=0)), 0).label("sent"),
        sa.func.coalesce(sa.func.sum(sa.case((is_sent, m.c.opened), else_=0)), 0).label("opened"),
        sa.func.coalesce(sa.func.sum(sa.case((is_sent, m.c.clicked), else_=0)), 0).label("clicked"),
        sa.func.coalesce(sa.func.sum(sa.case((m.c.status == FAILED, 1), else_=0)), 0).label("failed"),
    ]


def rate(part: int, whole: int) -> float:
    """``part / whole`` rounded to 4 places; 0.0 when ``whole`` is 0."""
    return round(part / whole, 4) if whole else 0.0


def _group(row: Any) -> dict[str, Any]:
    sent, opened, clicked = int(row.sent), int(row.opened), int(row.clicked)
    return {"totalSent": sent, "totalOpened": opened, "totalClicked": clicked,
            "openRate": rate(opened, sent), "clickRate": rate(clicked, sent)}


def _day(state: MailTrackState, col: Any) -> Any:
    """The UTC calendar day of a timestamp column, as ``YYYY-MM-DD`` text."""
    if state.engine.dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", col), "YYYY-MM-DD")
    return sa.func.strftime("%Y-%m-%d", col)  # SQLite stores naive UTC


def analytics(state: MailTrackState, tenant: str, *, date_from: dt.datetime | None = None,
              date_to: dt.datetime | None = None, include_bots: bool = False) -> dict[str, Any]:
    """002's analytics object for one tenant (four grouped queries)."""
    m = _per_message(tenant, date_from, date_to, include_bots)
    session = state.session
    total = session.execute(sa.select(*_totals(m))).one()
    by_template = session.execute(
        sa.select(m.c.template_id, sa.func.max(m.c.template_name).label("template_name"), *_totals(m))
        .group_by(m.c.template_id).order_by(m.c.template_id.asc().nulls_last())
    ).all()
    by_type = session.execute(
        sa.select(m.c.type, *_totals(m)).group_by(m.c.type).order_by(m.c.type.asc().nulls_last())
    ).all()
    day = _day(state, m.c.sent_at).label("day")
    volume = session.execute(
        sa.select(day, sa.func.count()).where(m.c.status == SENT).group_by(day).order_by(day)
    ).all()
    overall = _group(total)
    attempted = int(total.sent) + int(total.failed)
    return {
        **overall,
        "failureRate": rate(int(total.failed), attempted),
        "byTemplate": [{"templateId": r.template_id, "templateName": r.template_name, **_group(r)}
                       for r in by_template],
        "byType": [{"type": r.type, **_group(r)} for r in by_type],
        "sendVolumeByDay": [{"date": d, "count": int(c)} for d, c in volume],
    }


__all__ = ["analytics", "rate"]
