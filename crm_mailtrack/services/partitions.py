"""The event log's monthly partitions on PostgreSQL (declarative range partitioning).

``mailtrack_events`` is partitioned by ``RANGE (occurred_at)`` (``models.py``; migration
``0010_mailtrack_events_partition`` converts an existing table). Each UTC month is one
partition, ``mailtrack_events_pYYYY_MM``; ``mailtrack_events_default`` takes rows no month
covers, so an insert never fails for want of a partition. :func:`ensure` makes the months
ahead (``flask mailtrack partitions --ahead N``, from cron, monthly or more often), moving
rows the default partition holds for a month it makes into it. :func:`droppable` lists the
months a purge may drop whole (``services/privacy.py``); reports that bound
``occurred_at`` read only the months they cover (partition pruning).

pg_partman can manage the same table instead (``partman.create_parent('<schema>.
mailtrack_events', 'occurred_at', 'native', 'monthly')``): its monthly names and default
partition are the ones used here, so purge drops its partitions too.

On SQLite (and on a PostgreSQL table not converted yet) there are no partitions: every
function here says so (:func:`is_partitioned` is ``False``) and purge deletes rows.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import sqlalchemy as sa

from ..db import dialect_name, unavailable_as_503
from ..models import EVENTS_DEFAULT_PARTITION, EVENTS_PARTITION_NAME, events, events_partition_name, utcnow
from ..state import MailTrackState

_BOUNDS = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")
UTC = dt.timezone.utc
#: How long making or dropping a partition waits for the table's lock (a transaction that
#: holds it, e.g. a long report) before it gives up; run the command again later.
LOCK_TIMEOUT = "10s"


@dataclass(frozen=True)
class Partition:
    """One partition of the event log: ``[start, end)`` in UTC (``None`` for the default)."""

    name: str
    start: dt.datetime | None
    end: dt.datetime | None

    @property
    def is_default(self) -> bool:
        return self.start is None


def month_start(moment: dt.datetime | dt.date) -> dt.datetime:
    """Midnight UTC of the first day of ``moment``'s UTC month."""
    if isinstance(moment, dt.datetime):
        moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).date()
    return dt.datetime(moment.year, moment.month, 1, tzinfo=UTC)


def next_month(start: dt.datetime) -> dt.datetime:
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def is_partitioned(conn: sa.Connection) -> bool:
    """Whether ``mailtrack_events`` (on the connection's search path) is partitioned."""
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(sa.text(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass('mailtrack_events'))"
    )).scalar())


def _time(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def partitions(conn: sa.Connection) -> list[Partition]:
    """The event log's partitions, months in order, then the default one (empty list when
    the table is not partitioned)."""
    if not is_partitioned(conn):
        return []
    rows = conn.execute(sa.text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass('mailtrack_events')"
    )).all()
    found = []
    for name, bound in rows:
        if bound == "DEFAULT":
            found.append(Partition(name, None, None))
            continue
        match = _BOUNDS.search(bound or "")
        if match:  # a range partition (ours or pg_partman's), whatever its name
            found.append(Partition(name, _time(match.group(1)), _time(match.group(2))))
    return sorted(found, key=lambda p: (p.start is None, p.start or dt.datetime.min.replace(tzinfo=UTC)))


def _literal(moment: dt.datetime) -> str:
    return f"'{moment.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S')}+00'"


def create_month(conn: sa.Connection, start: dt.datetime) -> str:
    """Create the partition of the month starting at ``start`` (in the caller's transaction)
    and move into it the rows the default partition holds for that month; return its name."""
    start = month_start(start)
    end = next_month(start)
    name = events_partition_name(start.date())
    quote = conn.dialect.identifier_preparer.quote
    bounds = f"FOR VALUES FROM ({_literal(start)}) TO ({_literal(end)})"
    default = next((p for p in partitions(conn) if p.is_default), None)
    stray = default is not None and conn.execute(sa.text(
        f"SELECT EXISTS (SELECT 1 FROM {quote(default.name)} WHERE occurred_at >= :s AND occurred_at < :e)"),
        {"s": start, "e": end}).scalar()
    if not stray:
        conn.execute(sa.text(f"CREATE TABLE {quote(name)} PARTITION OF mailtrack_events {bounds}"))
        return name
    # The default partition holds rows of this month: PostgreSQL refuses the new partition
    # until they leave it. Detach it, make the month, move the rows, attach it again.
    assert default is not None
    cols = ", ".join(quote(c.name) for c in events.c)
    conn.execute(sa.text(f"ALTER TABLE mailtrack_events DETACH PARTITION {quote(default.name)}"))
    conn.execute(sa.text(f"CREATE TABLE {quote(name)} PARTITION OF mailtrack_events {bounds}"))
    conn.execute(sa.text(
        f"WITH moved AS (DELETE FROM {quote(default.name)} WHERE occurred_at >= :s AND occurred_at < :e "
        f"RETURNING {cols}) INSERT INTO mailtrack_events ({cols}) SELECT {cols} FROM moved"),
        {"s": start, "e": end})
    conn.execute(sa.text(f"ALTER TABLE mailtrack_events ATTACH PARTITION {quote(default.name)} DEFAULT"))
    return name


def ensure(state: MailTrackState, *, ahead: int = 3, now: dt.datetime | None = None) -> list[str]:
    """Make the monthly partitions of this month and the ``ahead`` months after it that do
    not exist yet (and the default partition, if missing); return the names made. A no-op
    (empty list) on SQLite; ``RuntimeError`` on a PostgreSQL event log that is not
    partitioned (an installation that has not run its migrations)."""
    if isinstance(ahead, bool) or not isinstance(ahead, int) or ahead < 0:
        raise ValueError("ahead must be a whole number of months >= 0")
    if dialect_name(state.engine) != "postgresql":
        return []
    made: list[str] = []
    first = month_start(now or utcnow())
    with unavailable_as_503(), state.engine.begin() as conn:
        if not is_partitioned(conn):
            raise RuntimeError("mailtrack_events is not partitioned: run `flask mailtrack init-db` "
                               "(migration 0010_mailtrack_events_partition converts it)")
        # Making a partition locks the whole table: give up after a while rather than
        # queue every click behind a long transaction. One maker at a time (cron on
        # several hosts): the advisory lock ends with the transaction.
        conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.mailtrack_events partitions'))"))
        existing = partitions(conn)
        if not any(p.is_default for p in existing):
            conn.execute(sa.text(f"CREATE TABLE {EVENTS_DEFAULT_PARTITION} PARTITION OF mailtrack_events DEFAULT"))
            made.append(EVENTS_DEFAULT_PARTITION)
        start = first
        for _ in range(ahead + 1):
            end = next_month(start)
            if not any(p.start is not None and p.start < end and p.end > start  # type: ignore[operator]
                       for p in existing):
                made.append(create_month(conn, start))
            start = end
    return made


def droppable(conn: sa.Connection, cutoff: dt.datetime) -> list[Partition]:
    """Monthly partitions whose whole range lies before ``cutoff``, oldest first."""
    return [p for p in partitions(conn) if p.end is not None and p.end <= cutoff]


def is_partition_name(name: str) -> bool:
    return bool(EVENTS_PARTITION_NAME.match(name))


__all__ = ["Partition", "is_partitioned", "partitions", "ensure", "create_month", "droppable",
           "month_start", "next_month", "is_partition_name"]
