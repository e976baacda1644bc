"""Per-recipient-domain rate limits (``MAILTRACK_DOMAIN_RATE_LIMITS``), held across every
worker and ``send-due`` process by one row per domain in the database.

Why the database and not Redis: it is the one store every sender already shares (a Celery
worker on either broker, ``send-due`` from cron, an in-process campaign), and its row lock
makes the reservation atomic on SQLite and PostgreSQL alike. One domain's sends update one
row, which serialises them; at the rates receiving domains allow (hundreds a minute) that
costs nothing measurable.

The limit is *paced*, not windowed: a domain limited to ``count`` per ``seconds`` gets one
slot every ``seconds / count`` seconds, so no window of that length (aligned or sliding)
ever holds more than ``count`` sends, and mail reaches the domain evenly instead of in a
burst at each window's start (what Gmail and Microsoft throttle). Each send reserves the
next free slot with one atomic upsert (``next_at = max(next_at, now) + interval``); a
message whose slot is in the future waits for it: briefly in the worker, else rescheduled
to the slot (holding its reservation in ``send_slot_at``), so a backlog is spread over
exact future slots rather than retried in a herd.
"""
from __future__ import annotations

import datetime as dt
import time

import sqlalchemy as sa

from ..db import dialect_name, insert, transaction
from ..models import send_pacing
from ..state import MailTrackState


def domain_of(address: str) -> str:
    """The lower-cased domain of a recipient address (``""`` without one)."""
    return address.rpartition("@")[2].strip().rstrip(">").lower()


def reserve(state: MailTrackState, address: str) -> dt.datetime | None:
    """Reserve the next slot of the recipient's domain: ``None`` when the domain has no
    limit, else the moment the slot opens (now or later). Commits at once, so concurrent
    senders see each other's reservations."""
    domain = domain_of(address)
    limit = state.settings.rate_limit_for(domain)
    if limit is None:
        return None
    interval = limit.seconds / limit.count
    now = time.time()
    table = send_pacing
    start = sa.case((table.c.next_at > now, table.c.next_at), else_=sa.literal(now, sa.Float))
    stmt = (insert(dialect_name(state), table).values(domain=domain, next_at=now + interval)
            .on_conflict_do_update(index_elements=[table.c.domain], set_={"next_at": start + interval})
            .returning(table.c.next_at))
    with transaction(state) as session:
        next_at = float(session.execute(stmt).scalar_one())
    return dt.datetime.fromtimestamp(next_at - interval, dt.timezone.utc)


__all__ = ["reserve", "domain_of"]
