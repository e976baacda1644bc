"""Inferred forwards: one message read by someone else, somewhere else.

Rule (defined in ``docs/metrics-bots.md``): among a message's *human* opens and clicks, the
first one is the recipient's (network, mail client). A later human open or click from a
different network (IPv4 /24, IPv6 /48) **and** a different client family is a likely
forward, stored once per message as a ``forward`` event with
``details = {"inferred": true, "reason": "different-network-and-client", ...}``.

It runs as a batch (``flask mailtrack infer-forwards``, or :func:`infer_forwards` from the
host's scheduler) instead of on the click path: SQL picks only the messages whose human
events come from two or more addresses and user agents and have no inferred forward yet,
and the rule is applied to those few in Python (the client family comes from the parser).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa

from ..devices import parse
from ..models import events
from ..requestinfo import anonymize_ip
from ..state import MailTrackState
from .events import record_event

REASON = "different-network-and-client"
#: ``uid`` prefix of inferred forwards: one per message, idempotent across runs.
UID_PREFIX = "fwd-"


def candidates(state: MailTrackState, since: dt.datetime | None = None) -> list[str]:
    """Messages worth a look: human events from 2+ addresses and user agents, no inferred
    forward yet."""
    human = (events.c.type.in_(("open", "click")) & (events.c.is_machine == sa.false())
             & events.c.ip.is_not(None) & events.c.message_id.is_not(None))
    if since is not None:
        human &= events.c.occurred_at >= since
    already = sa.select(events.c.uid).where(events.c.uid.like(UID_PREFIX + "%"))
    query = (
        sa.select(events.c.message_id)
        .where(human)
        .group_by(events.c.message_id)
        .having((sa.func.count(sa.distinct(events.c.ip)) > 1)
                & (sa.func.count(sa.distinct(events.c.user_agent)) > 1))
    )
    with state.engine.connect() as conn:
        ids = [row[0] for row in conn.execute(query)]
        done = {uid[len(UID_PREFIX):] for uid in conn.execute(already).scalars()}
    return [i for i in ids if i not in done]


def _network(ip: str) -> str | None:
    return anonymize_ip(ip, True)


def _forward_of(rows: Iterable[Any]) -> tuple[Any, str, str] | None:
    """The first event that differs from the first one in network and client family."""
    first_net = first_client = None
    for row in rows:
        client = parse(row.user_agent).client
        net = _network(row.ip)
        if client is None or net is None:
            continue
        if first_net is None:
            first_net, first_client = net, client
            continue
        if net != first_net and client != first_client:
            return row, first_client, client
    return None


def infer_forwards(state: MailTrackState, *, since: dt.datetime | None = None,
                   message_ids: list[str] | None = None,
                   progress: Callable[[int], Any] | None = None) -> int:
    """Record an inferred ``forward`` for each message that shows one; returns how many.
    ``message_ids`` defaults to :func:`candidates`."""
    found = 0
    for message_id in candidates(state, since) if message_ids is None else message_ids:
        with state.engine.connect() as conn:
            rows = conn.execute(
                sa.select(events.c.tenant_id, events.c.contact_id, events.c.email,
                          events.c.campaign_id, events.c.ip, events.c.user_agent,
                          events.c.occurred_at)
                .where(events.c.message_id == message_id, events.c.type.in_(("open", "click")),
                       events.c.is_machine == sa.false(), events.c.ip.is_not(None))
                .order_by(events.c.occurred_at, events.c.id)
            ).all()
        hit = _forward_of(rows)
        if progress is not None:
            progress(1)
        if hit is None:
            continue
        row, original, other = hit
        try:
            record_event(
                state, row.contact_id, "forward", email=row.email, message_id=message_id,
                campaign_id=row.campaign_id, occurred_at=row.occurred_at, tenant_id=row.tenant_id,
                uid=UID_PREFIX + message_id,
                details={"inferred": True, "reason": REASON, "clients": [original, other]},
            )
        except sa.exc.IntegrityError:  # another run recorded it first
            continue
        found += 1
    return found


__all__ = ["infer_forwards", "candidates", "REASON"]
