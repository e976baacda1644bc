"""Analytics pre-aggregates ("cells"), kept exact by folding every change in.

Why: analytics over a million events cannot be a scan of the events on every call
(seconds, not milliseconds). So analytics reads two small tables of counts instead:

* ``mailtrack_stats_messages``: per (tenant, campaign, template, type, status, UTC send
  day), how many SENT/FAILED messages, and how many of them were opened / clicked (by
  humans, and by anyone), bounced and unsubscribed;
* ``mailtrack_stats_days``: per (tenant, campaign, send day, event day, type, machine),
  the open and click events of SENT messages.

What the cells count is recorded beside the facts, so that a change is folded in exactly
once and is undone exactly when it is undone:

* a message's ``stats_status``/``stats_day``/``stats_flags`` are what the message cells
  count for it (status among SENT and FAILED, else NULL). It is *stale* (a partial index
  finds it) when its status moved on, or ``stats_dirty`` says its events changed;
* an event's ``folded_as`` is the ``is_machine`` the day cells counted it with (NULL: not
  counted). An open/click/bounce/unsubscribe is *unfolded* (a partial index finds it) when
  the two differ: it is new, or a burst or honeypot re-marked it as a machine since.

Invariants (a property test checks them against a full scan after random histories):

1. the message cells count every message whose ``stats_status`` is set, with its
   ``stats_flags``;
2. the day cells count, for every message whose ``stats_status`` is SENT, its folded
   open/click events (same tenant) by ``folded_as``, and its rolled-up ones;
3. a message's ``stats_flags`` are its flags as of the events it has, unless it is stale
   or has an unfolded event, both of which the next fold repairs.

The click path pays nothing for this (a new event is unfolded by default). ``fold`` runs
before analytics reads the cells (and before a purge); it takes a lock row, so folds, and
the ``forget_*`` hooks that delete paths call, never interleave. A large backlog (after a
bulk import or the migration) is rebuilt in a few set-based statements instead.

What a cell is (keys, flag bits, the SQL that computes cell rows, adding deltas) lives in
:mod:`.stats_cells`; this module decides when and what to fold.
"""
from __future__ import annotations

import collections
from typing import Any

import sqlalchemy as sa

from ..db import dialect_name, insert, utc_day
from ..models import (
    EVENTS_UNFOLDED_PG,
    EVENTS_UNFOLDED_SQLITE,
    MESSAGES_STATS_DIRTY_PG,
    MESSAGES_STATS_DIRTY_SQLITE,
    events,
    messages,
    stats_days,
    stats_messages,
    stats_state,
    stats_tenant_days,
    stats_tenant_messages,
    utcnow,
)
from ..state import MailTrackState
from .stats_cells import (
    BITS,
    CELL_VALUES,
    COUNTED,
    DAY_KEY,
    ENGAGEMENT,
    FLAG_TYPES,
    MESSAGE_KEY,
    SENT,
    TENANT_DAY_KEY,
    TENANT_MESSAGE_KEY,
    add_day_rows,
    add_vector,
    blank,
    bump_days,
    bump_messages,
    engagement_by_day,
    event_bits,
    flags_query,
    message_cell_key,
    message_day,
    norm_day,
    unfolded,
)

_BUILT, _LOCK = 1, 0  # stats_state rows: 1 exists once built; 0 is the fold lock
BATCH = 2000
REBUILD_OVER = 20_000  # a backlog this large is rebuilt set-based, not folded row by row


# -- locking and building ---------------------------------------------------------------------

def _lock(conn: sa.Connection) -> None:
    """Take the stats lock for this transaction: a write to the lock row, which serialises
    folds and forget hooks (a row lock on PostgreSQL, the write lock on SQLite)."""
    stmt = insert(dialect_name(conn), stats_state).values(id=_LOCK, built_at=utcnow(), folds=1)
    conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={"folds": stats_state.c.folds + 1}))


def _built(conn: sa.Connection) -> bool:
    return conn.execute(sa.select(stats_state.c.id).where(stats_state.c.id == _BUILT)).first() is not None


def _keep_updated_at() -> dict[str, Any]:
    # stats columns are bookkeeping: they must not touch the message's updated_at
    return {"updated_at": messages.c.updated_at}


def rebuild(conn: sa.Connection) -> None:
    """Recompute every cell from the stored messages, events and rollups, set-based (the
    caller holds the lock). Every cell is computed from the ``stats_*``/``folded_as``
    columns these statements store, not from what they read, so rows that change between
    two statements (READ COMMITTED) are merely left stale for the next fold."""
    for table in (stats_messages, stats_days, stats_tenant_messages, stats_tenant_days):
        conn.execute(sa.delete(table))
    conn.execute(sa.update(events).where(unfolded(conn)).values(folded_as=events.c.is_machine))
    conn.execute(sa.update(messages).values(
        stats_status=sa.case((messages.c.status.in_(COUNTED), messages.c.status), else_=sa.null()),
        stats_day=message_day(conn), stats_flags=0, stats_dirty=False, **_keep_updated_at()))
    f = flags_query(sa.true()).subquery("f")
    conn.execute(sa.update(messages).where(messages.c.id == f.c.mid)
                 .values(stats_flags=f.c.flags, **_keep_updated_at()))
    counted = messages.c.stats_status.is_not(None)
    key = [messages.c.tenant_id, blank(messages.c.campaign_id), blank(messages.c.template_id),
           blank(messages.c.template_name), blank(messages.c.type), messages.c.stats_status, messages.c.stats_day]
    sums = [sa.func.count()] + [
        sa.func.sum(sa.case((messages.c.stats_flags.op("&")(bit) != 0, 1), else_=0)) for bit in BITS[1:]]
    conn.execute(stats_messages.insert().from_select(
        [*MESSAGE_KEY, *CELL_VALUES], sa.select(*key, *sums).where(counted).group_by(*key)))
    conn.execute(stats_days.insert().from_select(
        [*DAY_KEY, "count"], engagement_by_day(conn, messages.c.stats_status == SENT, folded_only=True)))
    # the tenant-wide sums, from the cells just written
    sm, sd = stats_messages, stats_days
    mkey = [sm.c[k] for k in TENANT_MESSAGE_KEY]
    conn.execute(stats_tenant_messages.insert().from_select(
        [*TENANT_MESSAGE_KEY, *CELL_VALUES], sa.select(*mkey, *(sa.func.sum(sm.c[v]) for v in CELL_VALUES))
        .group_by(*mkey)))
    dkey = [sd.c[k] for k in TENANT_DAY_KEY]
    conn.execute(stats_tenant_days.insert().from_select(
        [*TENANT_DAY_KEY, "count"], sa.select(*dkey, sa.func.sum(sd.c.count)).group_by(*dkey)))
    stmt = insert(dialect_name(conn), stats_state).values(id=_BUILT, built_at=utcnow(), folds=0)
    conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={"built_at": stmt.excluded.built_at}))


def rebuild_now(state: MailTrackState) -> None:
    """``rebuild`` in its own transaction under the lock (``flask mailtrack stats --rebuild``)."""
    with state.engine.begin() as conn:
        _lock(conn)
        rebuild(conn)


# -- folding ----------------------------------------------------------------------------------

class _Touched:
    """Messages a fold batch must refresh: flags gained from new events (OR-ed in: a new
    event can only add flags), and those to recount from scratch (an event was re-marked
    as a machine's, which can take a human flag away)."""

    def __init__(self) -> None:
        self.gained: dict[str, int] = collections.defaultdict(int)
        self.recount: set[str] = set()

    def ids(self) -> set[str]:
        return set(self.gained) | self.recount


def _fold_events(conn: sa.Connection, limit: int) -> tuple[int, _Touched]:
    """Fold up to ``limit`` unfolded events: day-cell deltas, ``folded_as`` set to the
    verdict counted. Returns (events folded, the messages to refresh)."""
    day = "timezone('UTC', occurred_at)::date" if dialect_name(conn) == "postgresql" else "substr(occurred_at, 1, 10)"
    batch = _partial(conn, f"SELECT id, tenant_id, message_id, type, folded_as, is_machine, {day} AS event_day "
                           "FROM mailtrack_events{events} WHERE {unfolded} ORDER BY id LIMIT :n", n=limit)
    touched = _Touched()
    if not batch:
        return 0, touched
    mids = {r.message_id for r in batch if r.message_id is not None}
    owners = {(m.id, m.tenant_id): m for m in conn.execute(
        sa.select(messages.c.id, messages.c.tenant_id, messages.c.campaign_id, messages.c.stats_status,
                  messages.c.stats_day).where(messages.c.id.in_(mids)))} if mids else {}
    deltas: dict[tuple[Any, ...], list[int]] = {}
    as_true, as_false = [], []
    for r in batch:
        (as_true if r.is_machine else as_false).append(r.id)
        m = owners.get((r.message_id, r.tenant_id))
        if m is None:
            continue
        if r.folded_as is None:
            touched.gained[m.id] |= event_bits(r.type, bool(r.is_machine))
        else:
            touched.recount.add(m.id)
        if m.stats_status != SENT or r.type not in ENGAGEMENT:
            continue
        base = (m.tenant_id, m.campaign_id or "", norm_day(m.stats_day), norm_day(r.event_day), r.type)
        if r.folded_as is not None:
            deltas.setdefault((*base, bool(r.folded_as)), [0])[0] -= 1
        deltas.setdefault((*base, bool(r.is_machine)), [0])[0] += 1
    bump_days(conn, deltas)
    # the verdict we counted, not "= is_machine": a re-mark committed meanwhile stays unfolded
    for value, ids in ((True, as_true), (False, as_false)):
        if ids:
            conn.execute(sa.update(events).where(events.c.id.in_(ids)).values(folded_as=value))
    return len(batch), touched


def _refresh_messages(conn: sa.Connection, touched: _Touched, stale: set[str]) -> None:
    """Refresh the messages of ``touched`` and the ``stale`` ones: flags (gained ones OR-ed
    in; recounted from the events where a flag may have gone), status and day from the row;
    move their contribution in both cell tables from what was counted to what is true."""
    ids = touched.ids() | stale
    if not ids:
        return
    id_list = sorted(ids)
    rows = conn.execute(
        sa.select(messages.c.id, messages.c.tenant_id, messages.c.campaign_id, messages.c.template_id,
                  messages.c.template_name, messages.c.type, messages.c.status, message_day(conn).label("day"),
                  messages.c.stats_status, messages.c.stats_day, messages.c.stats_flags, messages.c.stats_dirty)
        .where(messages.c.id.in_(id_list))
    ).all()
    recount = sorted(touched.recount | {r.id for r in rows if r.stats_dirty})
    flags = {r.id: (r.stats_flags or 0) | touched.gained.get(r.id, 0) for r in rows}
    if recount:
        counted = dict(conn.execute(flags_query(messages.c.id.in_(recount))).all())
        flags.update({mid: counted.get(mid, 0) for mid in recount})
    cells: dict[tuple[Any, ...], list[int]] = {}
    moved_out: list[str] = []  # were counted SENT: their day rows leave the old key
    moved_in: list[str] = []   # are SENT now: their day rows join the new key
    updates = []
    for r in rows:
        new_status = r.status if r.status in COUNTED else None
        new_day = norm_day(r.day)
        new_flags = int(flags[r.id])
        old_day = norm_day(r.stats_day)
        if r.stats_status is not None:
            add_vector(cells, message_cell_key(r, r.stats_status, old_day), r.stats_flags or 0, -1)
        if new_status is not None:
            add_vector(cells, message_cell_key(r, new_status, new_day), new_flags, 1)
        was_sent, is_sent = r.stats_status == SENT, new_status == SENT
        if (was_sent, was_sent and old_day) != (is_sent, is_sent and new_day):
            if was_sent:
                moved_out.append(r.id)
            if is_sent:
                moved_in.append(r.id)
        updates.append({"mid": r.id, "s": new_status, "d": new_day, "f": new_flags})
    bump_messages(conn, cells)
    days: dict[tuple[Any, ...], list[int]] = {}
    if moved_out:  # keyed by the stats_day still stored
        add_day_rows(days, conn.execute(engagement_by_day(conn, messages.c.id.in_(moved_out), folded_only=True)), -1)
    if updates:
        conn.execute(
            sa.update(messages).where(messages.c.id == sa.bindparam("mid"))
            .values(stats_status=sa.bindparam("s"), stats_day=sa.bindparam("d"), stats_flags=sa.bindparam("f"),
                    stats_dirty=False, **_keep_updated_at()),
            updates,
        )
    if moved_in:  # keyed by the new stats_day
        add_day_rows(days, conn.execute(engagement_by_day(conn, messages.c.id.in_(moved_in), folded_only=True)), 1)
    bump_days(conn, days)


def _stale_messages(conn: sa.Connection, limit: int) -> set[str]:
    return {r.id for r in _partial(
        conn, "SELECT id FROM mailtrack_messages{messages} WHERE {stale} ORDER BY id LIMIT :n", n=limit)}


def _probe(conn: sa.Connection, limit: int) -> tuple[bool, int]:
    """Whether the cells are built, and the unfolded events plus stale messages counted up
    to ``limit`` each: one statement, two partial-index probes."""
    row = _partial(
        conn,
        "SELECT EXISTS (SELECT 1 FROM mailtrack_stats_state WHERE id = 1) AS built, "
        "(SELECT count(*) FROM (SELECT 1 FROM mailtrack_events{events} WHERE {unfolded} LIMIT :n) AS e) AS ev, "
        "(SELECT count(*) FROM (SELECT 1 FROM mailtrack_messages{messages} WHERE {stale} LIMIT :n) AS m) AS ms",
        n=limit)[0]
    return bool(row.built), int(row.ev) + int(row.ms)


def _partial(conn: sa.Connection, sql: str, **params: Any) -> list[Any]:
    """Run a query that reads the unfolded events / stale messages through their partial
    indexes, which hold exactly those rows (usually none). Planners need telling:
    PostgreSQL cannot estimate ``a IS DISTINCT FROM b`` (it guesses nearly every row
    matches, so for a LIMIT it scans the table), and SQLite's statistics from a time the
    index was full say the same. ``INDEXED BY`` (SQLite) and ``enable_seqscan = off``
    for this one statement (PostgreSQL) make the plan the index's, always."""
    pg = dialect_name(conn) == "postgresql"
    text = sql.format(
        events="" if pg else " INDEXED BY ix_mailtrack_events_unfolded",
        messages="" if pg else " INDEXED BY ix_mailtrack_messages_stats_dirty",
        unfolded=EVENTS_UNFOLDED_PG if pg else EVENTS_UNFOLDED_SQLITE,
        stale=MESSAGES_STATS_DIRTY_PG if pg else MESSAGES_STATS_DIRTY_SQLITE,
    )
    if not pg:
        return conn.execute(sa.text(text), params).all()
    conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
    try:
        return conn.execute(sa.text(text), params).all()
    finally:
        conn.execute(sa.text("SET LOCAL enable_seqscan = on"))


def up_to_date(conn: sa.Connection) -> bool:
    """Whether the cells count every committed change: the common case, found out with one
    statement of two index probes, no lock and no write (what a concurrent fold has not
    committed yet still shows as backlog here)."""
    built, backlog = _probe(conn, 1)
    return built and not backlog


def fold(state: MailTrackState, *, batch: int = BATCH, rebuild_over: int = REBUILD_OVER) -> dict[str, Any]:
    """Bring the cells up to date with every committed change; returns what it did.

    Each batch is one short transaction under the lock (on SQLite it holds the write lock,
    so batches stay small to let clicks through). The first call builds the cells; a
    backlog of ``rebuild_over`` or more is rebuilt set-based instead of folded."""
    engine = state.engine
    done = {"events": 0, "messages": 0, "rebuilt": False}
    with engine.connect() as conn:
        if up_to_date(conn):
            return done
    while True:
        with engine.connect() as conn, conn.begin():
            _lock(conn)
            built, backlog = _probe(conn, rebuild_over)
            if not built or backlog >= rebuild_over:
                rebuild(conn)
                done["rebuilt"] = True
                return done
            if not backlog:
                return done
            n, touched = _fold_events(conn, batch)
            stale = _stale_messages(conn, batch)
            _refresh_messages(conn, touched, stale)
        done["events"] += n
        done["messages"] += len(touched.ids() | stale)
        if n < batch and len(stale) < batch:
            return done


# -- hooks for delete paths -------------------------------------------------------------------

def forget_messages(conn: sa.Connection, message_filter: Any) -> None:
    """Take out of the cells the messages ``message_filter`` selects, which the caller is
    about to delete in this transaction (with their events and rollups)."""
    _lock(conn)
    if not _built(conn):
        return
    rows = conn.execute(
        sa.select(messages.c.id, messages.c.tenant_id, messages.c.campaign_id, messages.c.template_id,
                  messages.c.template_name, messages.c.type, messages.c.stats_status, messages.c.stats_day,
                  messages.c.stats_flags)
        .where(message_filter, messages.c.stats_status.is_not(None))
    ).all()
    cells: dict[tuple[Any, ...], list[int]] = {}
    for r in rows:
        add_vector(cells, message_cell_key(r, r.stats_status, norm_day(r.stats_day)), r.stats_flags or 0, -1)
    bump_messages(conn, cells)
    days: dict[tuple[Any, ...], list[int]] = {}
    add_day_rows(days, conn.execute(engagement_by_day(
        conn, sa.and_(message_filter, messages.c.stats_status == SENT), folded_only=True)), -1)
    bump_days(conn, days)


def forget_events(conn: sa.Connection, event_filter: Any) -> None:
    """Take out of the cells the events ``event_filter`` selects, which the caller is about
    to delete in this transaction: their day rows now, their messages' flags at the next
    fold (the messages are marked stale)."""
    _lock(conn)
    if not _built(conn):
        return
    e, m = events, messages
    joined = e.join(m, sa.and_(m.c.id == e.c.message_id, m.c.tenant_id == e.c.tenant_id))
    event_day = utc_day(dialect_name(conn), e.c.occurred_at)
    rows = conn.execute(
        sa.select(m.c.tenant_id, blank(m.c.campaign_id).label("campaign_id"), m.c.stats_day.label("send_day"),
                  event_day.label("event_day"), e.c.type, e.c.folded_as.label("is_machine"),
                  sa.func.count().label("n"))
        .select_from(joined)
        .where(event_filter, m.c.stats_status == SENT, e.c.type.in_(ENGAGEMENT), e.c.folded_as.is_not(None))
        .group_by(m.c.tenant_id, blank(m.c.campaign_id), m.c.stats_day, event_day, e.c.type, e.c.folded_as)
    ).all()
    days: dict[tuple[Any, ...], list[int]] = {}
    add_day_rows(days, rows, -1)
    bump_days(conn, days)
    owners = sa.select(e.c.message_id).where(event_filter, e.c.message_id.is_not(None), e.c.type.in_(FLAG_TYPES))
    conn.execute(sa.update(m).where(m.c.id.in_(owners)).values(stats_dirty=True, **_keep_updated_at()))


__all__ = ["CELL_VALUES", "FLAG_TYPES", "flags_query", "fold", "up_to_date", "forget_events", "forget_messages", "rebuild", "rebuild_now"]
