"""Sending a campaign: its pending messages, one idempotent delivery each, and its progress.

A campaign send is a set of per-message deliveries. Each :func:`deliver` claims its message
first (the atomic claim of :mod:`.sending`), so a delivery that runs twice (a task queue
redelivering a task, ``send-due`` and a worker racing) sends once: the loser finds the
message no longer claimable and reports :data:`SKIPPED`. A delivery follows the bulk
:class:`~.sending.RetryPolicy`: a transient failure goes back to ``SCHEDULED`` at the
backoff's end and the per-domain rate limit is held. Whether the deliveries run on a task
queue (``crm_mailtrack.taskqueue``) or here, in the caller's process, they are the same
function; with no queue, what was put back to ``SCHEDULED`` is sent by ``send-due``.

Handing messages over (:func:`hand_over`) never loses one: they are stored before their
tasks are published, and when the broker does not take the tasks they become due at once
for ``send-due`` instead.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..errors import Conflict, NotFound, QueueUnavailable
from ..models import Message, MessageStatus, messages
from ..state import MailTrackState
from . import sending
from .common import log
from .messages import message_id_of
from .smtp import Mailer

#: The outcome of a delivery whose message was not claimable: another sender has it or had
#: it (it is SENDING, SENT, FAILED ...), or it was cancelled.
SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class Delivery:
    """What one :func:`deliver` did: ``status`` is the message's status afterwards
    (``SENT``, ``FAILED``, ``SUPPRESSED``, ``SCHEDULED`` for a retry or a later rate-limit
    slot, at ``retry_at``) or :data:`SKIPPED`."""

    message_id: str
    status: str
    retry_at: dt.datetime | None = None


def deliver(state: MailTrackState, message_id: str, mailer: Mailer) -> Delivery:
    """Claim and send one message under the bulk retry policy (see the module docstring)."""
    claimed_at = sending.claim_at(state, message_id)
    if claimed_at is None:
        return Delivery(message_id, SKIPPED)
    sending.send_claimed(state, message_id, mailer, claimed_at, sending.retry_policy(state))
    row = state.session.execute(
        sa.select(messages.c.status, messages.c.scheduled_at).where(messages.c.id == message_id)
    ).one()
    state.session.commit()  # end the read: a worker's session lives as long as the task
    retry_at = row.scheduled_at if row.status == MessageStatus.SCHEDULED.value else None
    return Delivery(message_id, row.status, retry_at)


def pending_ids(state: MailTrackState, tenant: str, campaign_id: str) -> list[str]:
    """The ids of a campaign's ``PENDING`` messages (prepared, never tried), oldest first."""
    ids = list(state.session.execute(
        sa.select(messages.c.id)
        .where(messages.c.tenant_id == tenant, messages.c.campaign_id == campaign_id,
               messages.c.status == MessageStatus.PENDING.value)
        .order_by(messages.c.created_at, messages.c.id)
    ).scalars())
    state.session.commit()
    return ids


def send_in_process(state: MailTrackState, ids: Iterable[str], *,
                    progress: Callable[[int], Any] | None = None) -> list[Delivery]:
    """Deliver ``ids`` one after another in this process, on one SMTP connection."""
    out: list[Delivery] = []
    with sending.mailer_for(state) as mailer:
        for message_id in ids:
            out.append(deliver(state, message_id, mailer))
            if progress is not None:
                progress(1)
    return out


def hand_to_send_due(state: MailTrackState, ids: list[str]) -> int:
    """Make ``PENDING`` messages due now for ``send-due`` (``SCHEDULED`` at this moment): the
    API's campaign send without a task queue, which must not send thousands of messages
    inside one request."""
    from ..db import chunks, transaction
    from ..models import utcnow

    changed = 0
    now = utcnow()
    with transaction(state) as session:
        for chunk in chunks(ids):
            changed += session.execute(
                sa.update(messages).where(messages.c.id.in_(chunk), messages.c.status == MessageStatus.PENDING.value)
                .values(status=MessageStatus.SCHEDULED.value, scheduled_at=now, updated_at=now)
            ).rowcount
    return changed


def hand_over(state: MailTrackState, ids: list[str]) -> None:
    """Hand stored ``PENDING`` messages to the senders without sending here. With a task
    queue: its tasks, the messages stay ``PENDING``. Without one, or when its broker does
    not take the tasks: due at once for ``send-due`` (``SCHEDULED`` now); tasks published
    before the broker failed are harmless, the claims send each message once."""
    if state.queue is not None:
        try:
            state.queue.enqueue(ids)
            return
        except QueueUnavailable:
            log.warning("mailtrack: the task queue did not take %d message(s); they are due for send-due "
                        "instead", len(ids), exc_info=True)
    hand_to_send_due(state, ids)


def _reloaded(state: MailTrackState, msgs: list[Message]) -> list[Message]:
    """``msgs`` with their rows read again (they were changed by UPDATE statements)."""
    ids = [m.id for m in msgs]
    rows = {m.id: m for m in state.session.execute(
        sa.select(Message).where(Message.id.in_(ids)).execution_options(populate_existing=True)).scalars()}
    state.session.commit()
    return [rows.get(i, m) for i, m in zip(ids, msgs)]


def send_or_hand_over(state: MailTrackState, msgs: list[Message]) -> list[Message]:
    """The API's send of freshly stored copies. ``PENDING`` ones are handed to the task
    queue when the app has one (:func:`hand_over`: the caller does not wait for SMTP, and
    the workers' delivery has the bulk retry policy); without a queue they are sent here,
    over one SMTP connection, one attempt each (the caller waits for the outcome). Scheduled
    copies are left to ``send-due``. The copies are all ``PENDING`` or all ``SCHEDULED``
    (as :func:`~.communications.compose` stores them). Returns the messages as they are now."""
    if not msgs or msgs[0].status != MessageStatus.PENDING.value:
        return msgs
    if state.queue is None:
        with sending.mailer_for(state) as mailer:
            return [sending.send(state, m, mailer=mailer) for m in msgs]
    ids = [m.id for m in msgs]
    state.session.commit()  # end the read before the broker's round trip
    hand_over(state, ids)
    return _reloaded(state, msgs)


def send_later(state: MailTrackState, message: Message | str) -> Message:
    """Hand a ``PENDING`` message to the senders, never sending it here (see
    ``MailTrack.send_later``); a ``SCHEDULED`` one is returned as it is (``send-due`` sends
    it at its time). ``NotFound`` for an unknown message, ``Conflict`` for any other status."""
    message_id = message_id_of(message)
    msg = state.session.get(Message, message_id, populate_existing=True)
    status = msg.status if msg is not None else None
    state.session.commit()  # end the read before the broker's round trip
    if msg is None:
        raise NotFound(f"No message {message_id!r}.")
    if status == MessageStatus.SCHEDULED.value:
        return msg
    if status != MessageStatus.PENDING.value:
        raise Conflict(f"Message {message_id} is {status}; only PENDING or SCHEDULED messages are sent.")
    hand_over(state, [message_id])
    return _reloaded(state, [msg])[0]


#: Progress keys and the statuses each one counts.
_BUCKETS = {
    "queued": (MessageStatus.PENDING.value, MessageStatus.SCHEDULED.value),
    "sending": (MessageStatus.SENDING.value,),
    "sent": (MessageStatus.SENT.value,),
    "failed": (MessageStatus.FAILED.value,),
    "suppressed": (MessageStatus.SUPPRESSED.value,),
    "cancelled": (MessageStatus.CANCELLED.value,),
}


def progress(state: MailTrackState, tenant: str, campaign_id: str) -> dict[str, Any]:
    """A campaign's messages counted by where they are: ``queued`` (PENDING or SCHEDULED,
    of which ``retrying`` have failed transiently before), ``sending``, ``sent``, ``failed``,
    ``suppressed``, ``cancelled``, and ``total``. One indexed GROUP BY."""
    retrying = sa.func.sum(sa.case((messages.c.send_attempts > 0, 1), else_=0))
    rows = state.session.execute(
        sa.select(messages.c.status, sa.func.count(), retrying)
        .where(messages.c.tenant_id == tenant, messages.c.campaign_id == campaign_id)
        .group_by(messages.c.status)
    ).all()
    state.session.commit()
    by_status = {status: (int(count), int(retry or 0)) for status, count, retry in rows}
    out: dict[str, Any] = {"campaign_id": campaign_id}
    for key, statuses in _BUCKETS.items():
        out[key] = sum(by_status.get(s, (0, 0))[0] for s in statuses)
    out["retrying"] = sum(by_status.get(s, (0, 0))[1] for s in _BUCKETS["queued"])
    out["total"] = sum(count for count, _ in by_status.values())
    return out


__all__ = ["deliver", "pending_ids", "send_in_process", "hand_to_send_due", "hand_over", "send_or_hand_over",
           "send_later", "progress", "Delivery", "SKIPPED"]
