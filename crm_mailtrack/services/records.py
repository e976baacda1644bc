"""The communication record of a message: fields mapped from the message row,
engagement (``openCount``, ``opened``, ``openedAt``, ``clickedLinks``) and lifecycle
``events``, built with a fixed number of grouped queries per list, never one per message.
Definitions of the numbers: docs/metrics.md."""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ..db import chunks
from ..models import ContactEvent, Message, event_rollups, events, links
from ..state import MailTrackState
from .messages import click_url

#: Event types summarised elsewhere in a record (``openCount``, ``clickedLinks``).
_SUMMARISED = ("open", "click")


def engagement(state: MailTrackState, ids: list[str], *, include_bots: bool = False) -> tuple[
        dict[str, tuple[int, dt.datetime | None]], dict[str, list[tuple[str, int, dt.datetime]]]]:
    """``({message_id: (open_count, first_open)}, {message_id: [(url, clicks, first_click)]})``
    from grouped queries per chunk of ids: raw events, plus the daily counts a purge left in
    ``mailtrack_event_rollups`` (their time is the start of their UTC day)."""
    opens: dict[str, tuple[int, dt.datetime | None]] = {}
    clicks: dict[str, dict[str, tuple[int, dt.datetime]]] = {}

    def add_open(mid: str, count: int, when: dt.datetime | None) -> None:
        old_count, old_when = opens.get(mid, (0, None))
        opens[mid] = (old_count + int(count), _earliest(old_when, when))

    def add_click(mid: str, url: str, count: int, when: dt.datetime) -> None:
        old_count, old_when = clicks.setdefault(mid, {}).get(url, (0, None))
        clicks[mid][url] = (old_count + int(count), _earliest(old_when, when))  # type: ignore[assignment]

    human = [] if include_bots else [events.c.is_machine.is_(False)]
    r_human = [] if include_bots else [event_rollups.c.is_machine.is_(False)]
    first = sa.func.min(events.c.occurred_at).label("first")
    r_first = sa.func.min(event_rollups.c.day).label("first")
    r_sum = sa.func.sum(event_rollups.c.count)
    for chunk in chunks(ids):
        for mid, count, when in state.session.execute(
            sa.select(events.c.message_id, sa.func.count(), first)
            .where(events.c.message_id.in_(chunk), events.c.type == "open", *human)
            .group_by(events.c.message_id)
        ):
            add_open(mid, count, when)
        for mid, url, count, when in state.session.execute(
            sa.select(events.c.message_id, events.c.url, sa.func.count(), first)
            .where(events.c.message_id.in_(chunk), events.c.type == "click", *human)
            .group_by(events.c.message_id, events.c.url)
        ):
            add_click(mid, url, count, when)
        for mid, count, day in state.session.execute(
            sa.select(event_rollups.c.message_id, r_sum, r_first)
            .where(event_rollups.c.message_id.in_(chunk), event_rollups.c.type == "open", *r_human)
            .group_by(event_rollups.c.message_id)
        ):
            add_open(mid, count, _midnight(day))
        for mid, url, count, day in state.session.execute(
            sa.select(event_rollups.c.message_id, links.c.url, r_sum, r_first)
            .join(links, links.c.id == event_rollups.c.link_id)
            .where(event_rollups.c.message_id.in_(chunk), event_rollups.c.type == "click", *r_human)
            .group_by(event_rollups.c.message_id, links.c.url)
        ):
            add_click(mid, url, count, _midnight(day))
    ordered = {mid: sorted(((url, c, w) for url, (c, w) in per.items()), key=lambda t: (t[2], t[0] or ""))
               for mid, per in clicks.items()}
    return opens, ordered


def _earliest(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _midnight(day: Any) -> dt.datetime | None:
    if day is None:
        return None
    if isinstance(day, str):
        day = dt.date.fromisoformat(day[:10])
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)


def _lifecycle(state: MailTrackState, ids: list[str]) -> dict[str, list[ContactEvent]]:
    out: dict[str, list[ContactEvent]] = {}
    for chunk in chunks(ids):
        for ev in state.session.execute(
            sa.select(ContactEvent).where(ContactEvent.message_id.in_(chunk),
                                          ContactEvent.type.not_in(_SUMMARISED))
            .order_by(ContactEvent.occurred_at, ContactEvent.id)
        ).scalars():
            out.setdefault(ev.message_id, []).append(ev)  # type: ignore[arg-type]
    return out


def records(state: MailTrackState, rows: Sequence[Message], *, include_bots: bool = False) -> list[dict[str, Any]]:
    """The data of ``rows``' communication records, in their order: per message
    ``{"message", "open_count", "opened_at" (first open or click), "clicked_links": [{"url",
    "tracked_url", "clicks", "first_click"}], "events": [its lifecycle ContactEvents]}``. The API's
    ``CommunicationSchema`` gives it its shape."""
    ids = [m.id for m in rows]
    opens, clicks = engagement(state, ids, include_bots=include_bots)
    lifecycle = _lifecycle(state, ids)
    out = []
    for m in rows:
        open_count, first_open = opens.get(m.id, (0, None))
        links = clicks.get(m.id, [])
        first_click = min((when for _, _, when in links), default=None)
        out.append({
            "message": m,
            "open_count": open_count,
            "opened_at": min((t for t in (first_open, first_click) if t is not None), default=None),
            "clicked_links": [{"url": url, "tracked_url": _tracked(state, m.id, url), "clicks": count,
                               "first_click": when} for url, count, when in links],
            "events": lifecycle.get(m.id, []),
        })
    return out


def _tracked(state: MailTrackState, message_id: str, url: str | None) -> str | None:
    if not url:
        return None
    try:
        return click_url(state, message_id, url)
    except Exception:  # noqa: BLE001 - an odd stored URL must not break a listing
        return None


def summary(state: MailTrackState, rows: Sequence[Message], *, include_bots: bool = False) -> list[dict[str, Any]]:
    """The data of the short ``by-entity`` items: ``{"message", "date" (sent, else created),
    "from_email" (the sender, else the default sender), "opened"}`` (by a person, or by anyone
    with ``include_bots``)."""
    opens, clicks = engagement(state, [m.id for m in rows], include_bots=include_bots)
    return [{"message": m, "date": m.sent_at or m.created_at, "from_email": m.sender_email or state.default_sender,
             "opened": m.id in opens or m.id in clicks} for m in rows]


__all__ = ["records", "summary", "engagement"]
