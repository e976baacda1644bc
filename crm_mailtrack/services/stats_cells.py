"""The analytics cells themselves: their keys and flag bits, the SQL that computes cell rows
from messages, events and rollups, and adding count deltas to the cells (one upsert per
table). :mod:`.stats` decides when and what to fold; :mod:`.analytics` reads the cells.
"""
from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from ..db import dialect_name, insert, utc_day
from ..models import (
    EVENTS_UNFOLDED_PG,
    EVENTS_UNFOLDED_SQLITE,
    MessageStatus,
    event_rollups,
    events,
    messages,
    stats_days,
    stats_messages,
    stats_tenant_days,
    stats_tenant_messages,
)

SENT = MessageStatus.SENT.value
FAILED = MessageStatus.FAILED.value
COUNTED = (SENT, FAILED)
FLAG_TYPES = ("open", "click", "bounce", "unsubscribe", "complaint")
ENGAGEMENT = ("open", "click")

# stats_flags bits
OPENED, CLICKED, OPENED_ANY, CLICKED_ANY, BOUNCED, UNSUBSCRIBED, COMPLAINED = 1, 2, 4, 8, 16, 32, 64
#: message-cell count columns, in order, and the flag bit each counts (messages: all)
CELL_VALUES = ("messages", "opened", "clicked", "opened_any", "clicked_any", "bounced", "unsubscribed",
               "complained")
BITS = (None, OPENED, CLICKED, OPENED_ANY, CLICKED_ANY, BOUNCED, UNSUBSCRIBED, COMPLAINED)
MESSAGE_KEY = ("tenant_id", "campaign_id", "template_id", "template_name", "type", "status", "day")
DAY_KEY = ("tenant_id", "campaign_id", "send_day", "event_day", "type", "is_machine")
TENANT_MESSAGE_KEY = tuple(k for k in MESSAGE_KEY if k != "campaign_id")
TENANT_DAY_KEY = ("tenant_id", "event_day", "type", "is_machine")


# -- SQL pieces -----------------------------------------------------------------------------

def message_day(conn: sa.Connection, m: Any = messages) -> Any:
    return utc_day(dialect_name(conn), sa.func.coalesce(m.c.sent_at, m.c.created_at))


def unfolded(conn: sa.Connection) -> Any:
    # literal text, so that both planners match the partial index's predicate
    return sa.text(EVENTS_UNFOLDED_PG if dialect_name(conn) == "postgresql" else EVENTS_UNFOLDED_SQLITE)


def blank(col: Any) -> Any:
    # a literal, not a bind parameter: the same expression may appear in SELECT and GROUP BY
    return sa.func.coalesce(col, sa.literal_column("''"))


def flag_bits(kind: Any, machine: Any) -> list[Any]:
    """One 0/bit column per flag, for a source with ``type`` and ``is_machine``."""
    human = machine.is_(False)
    conds = [
        kind.in_(ENGAGEMENT) & human, (kind == "click") & human,
        kind.in_(ENGAGEMENT), kind == "click", kind == "bounce", kind == "unsubscribe", kind == "complaint",
    ]
    return [sa.func.max(sa.case((cond, bit), else_=0)).label(f"b{bit}")
            for cond, bit in zip(conds, BITS[1:])]


def flags_query(message_filter: Any) -> sa.Select[Any]:
    """``(mid, flags)`` for the messages ``message_filter`` (a WHERE clause on ``messages``)
    selects, from their events (same tenant) and rollups; messages without any are absent."""
    raw = (sa.select(events.c.message_id.label("mid"), *flag_bits(events.c.type, events.c.is_machine))
           .select_from(events.join(messages, sa.and_(messages.c.id == events.c.message_id,
                                                      messages.c.tenant_id == events.c.tenant_id)))
           .where(message_filter, events.c.type.in_(FLAG_TYPES))
           .group_by(events.c.message_id))
    rolled = (sa.select(event_rollups.c.message_id.label("mid"),
                        *flag_bits(event_rollups.c.type, event_rollups.c.is_machine))
              .select_from(event_rollups.join(messages, sa.and_(
                  messages.c.id == event_rollups.c.message_id, messages.c.tenant_id == event_rollups.c.tenant_id)))
              .where(message_filter, event_rollups.c.type.in_(FLAG_TYPES), event_rollups.c.count > 0)
              .group_by(event_rollups.c.message_id))
    both = sa.union_all(raw, rolled).subquery("fl")
    total = sum((sa.func.max(both.c[f"b{bit}"]) for bit in BITS[1:]), sa.literal(0))
    return sa.select(both.c.mid, total.label("flags")).group_by(both.c.mid)


def engagement_by_day(conn: sa.Connection, message_filter: Any, *, folded_only: bool) -> sa.Select[Any]:
    """Day-cell rows ``(tenant, campaign, send_day, event_day, type, machine, n)`` of the
    open/click events and rollups of the messages ``message_filter`` selects, keyed by the
    message's ``stats_day`` (callers select SENT-counted messages)."""
    n = sa.BigInteger()
    machine = events.c.folded_as if folded_only else events.c.is_machine
    raw = (sa.select(messages.c.tenant_id, blank(messages.c.campaign_id).label("campaign_id"),
                     messages.c.stats_day.label("send_day"), utc_day(dialect_name(conn), events.c.occurred_at).label("event_day"),
                     events.c.type, machine.label("is_machine"), sa.cast(sa.literal(1), n).label("n"))
           .select_from(events.join(messages, sa.and_(messages.c.id == events.c.message_id,
                                                      messages.c.tenant_id == events.c.tenant_id)))
           .where(message_filter, events.c.type.in_(ENGAGEMENT)))
    if folded_only:
        raw = raw.where(events.c.folded_as.is_not(None))
    rolled = (sa.select(messages.c.tenant_id, blank(messages.c.campaign_id).label("campaign_id"),
                        messages.c.stats_day.label("send_day"), event_rollups.c.day.label("event_day"),
                        event_rollups.c.type, event_rollups.c.is_machine, sa.cast(event_rollups.c.count, n).label("n"))
              .select_from(event_rollups.join(messages, sa.and_(
                  messages.c.id == event_rollups.c.message_id, messages.c.tenant_id == event_rollups.c.tenant_id)))
              .where(message_filter, event_rollups.c.type.in_(ENGAGEMENT), event_rollups.c.count > 0))
    u = sa.union_all(raw, rolled).subquery("u")
    key = [u.c[k] for k in DAY_KEY]
    return sa.select(*key, sa.func.sum(u.c.n).label("n")).group_by(*key)


# -- applying deltas --------------------------------------------------------------------------



def bump(conn: sa.Connection, table: sa.Table, key: Sequence[str], values: Sequence[str],
          deltas: dict[tuple[Any, ...], list[int]]) -> None:
    """Add ``deltas`` (key tuple -> list of increments) to ``table``'s counts: one upsert."""
    rows = [{**dict(zip(key, k)), **dict(zip(values, v))} for k, v in deltas.items() if any(v)]
    if not rows:
        return
    stmt = insert(dialect_name(conn), table)
    stmt = stmt.on_conflict_do_update(index_elements=list(key),
                                      set_={v: table.c[v] + stmt.excluded[v] for v in values})
    conn.execute(stmt, rows)


def coarse(deltas: dict[tuple[Any, ...], list[int]], drop: tuple[int, ...]) -> dict[tuple[Any, ...], list[int]]:
    """``deltas`` summed over the key positions ``drop``."""
    out: dict[tuple[Any, ...], list[int]] = {}
    for key, values in deltas.items():
        acc = out.setdefault(tuple(k for i, k in enumerate(key) if i not in drop), [0] * len(values))
        for i, v in enumerate(values):
            acc[i] += v
    return out


def bump_messages(conn: sa.Connection, deltas: dict[tuple[Any, ...], list[int]]) -> None:
    """Message-cell deltas, into the per-campaign cells and their tenant-wide sums."""
    bump(conn, stats_messages, MESSAGE_KEY, CELL_VALUES, deltas)
    bump(conn, stats_tenant_messages, TENANT_MESSAGE_KEY, CELL_VALUES, coarse(deltas, (1,)))


def bump_days(conn: sa.Connection, deltas: dict[tuple[Any, ...], list[int]]) -> None:
    """Day-cell deltas, into the per-campaign, per-send-day cells and their tenant-wide sums."""
    bump(conn, stats_days, DAY_KEY, ("count",), deltas)
    bump(conn, stats_tenant_days, TENANT_DAY_KEY, ("count",), coarse(deltas, (1, 2)))


@functools.lru_cache(maxsize=4096)
def _day_from_text(value: str) -> dt.date:
    return dt.date.fromisoformat(value[:10])


def norm_day(value: Any) -> dt.date | None:
    if value is None or type(value) is dt.date:
        return value
    if isinstance(value, str):  # SQLite: 'YYYY-MM-DD...' text, a few distinct values per batch
        return _day_from_text(value)
    if isinstance(value, dt.datetime):
        return value.date()
    return dt.date.fromisoformat(str(value)[:10])


def message_cell_key(row: Any, status: str, day: dt.date) -> tuple[Any, ...]:
    return (row.tenant_id, row.campaign_id or "", row.template_id or "", row.template_name or "",
            row.type or "", status, day)


def add_vector(cells: dict[tuple[Any, ...], list[int]], key: tuple[Any, ...], flags: int, sign: int) -> None:
    """Add one message with ``flags`` (``sign`` +1/-1) to the message-cell delta ``key``."""
    acc = cells.get(key)
    if acc is None:
        acc = cells[key] = [0] * len(BITS)
    for i, bit in enumerate(BITS):
        if bit is None or flags & bit:
            acc[i] += sign


def add_day_rows(deltas: dict[tuple[Any, ...], list[int]], rows: Iterable[Any], sign: int,
                  send_day: dt.date | None = None) -> None:
    for r in rows:
        key = (r.tenant_id, r.campaign_id, send_day or norm_day(r.send_day), norm_day(r.event_day),
               r.type, bool(r.is_machine))
        deltas.setdefault(key, [0])[0] += sign * int(r.n)


def event_bits(kind: str, machine: bool) -> int:
    """The flags one event gives its message (the same rules as ``flag_bits``)."""
    if kind in ENGAGEMENT:
        bits = OPENED_ANY | (0 if machine else OPENED)
        return bits | (CLICKED_ANY | (0 if machine else CLICKED) if kind == "click" else 0)
    return {"bounce": BOUNCED, "unsubscribe": UNSUBSCRIBED, "complaint": COMPLAINED}.get(kind, 0)


__all__ = ["SENT", "FAILED", "COUNTED", "FLAG_TYPES", "ENGAGEMENT", "CELL_VALUES", "BITS", "MESSAGE_KEY",
           "DAY_KEY", "TENANT_MESSAGE_KEY", "TENANT_DAY_KEY", "flags_query", "engagement_by_day",
           "bump_messages", "bump_days", "norm_day", "add_vector", "add_day_rows", "event_bits"]
