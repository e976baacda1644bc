"""Delivering messages through ``MAILTRACK_SMTP_URL`` and sending scheduled ones.

At most once: a message is *claimed* with one atomic
``UPDATE ... SET status = 'SENDING' WHERE id = ? AND status IN ('PENDING', 'SCHEDULED')``
committed before the SMTP conversation starts; only the process whose UPDATE changed the
row talks to the server, so two ``send-due`` runs never deliver a message twice. The
claimed row then ends as ``SENT``, ``FAILED`` (with the server's reason) or ``SUPPRESSED``
(recipient on email Do-Not-Contact). A crash between the claim and the final update leaves
the row ``SENDING``. It is never retried automatically (the server may already have
accepted the mail, so re-sending could duplicate it); instead ``send_due`` first marks every
message ``SENDING`` for longer than ``MAILTRACK_SENDING_TIMEOUT_SECONDS`` as ``FAILED`` with
:data:`INTERRUPTED` as its error, recording and announcing it as any other failure
(:func:`fail_interrupted`), and an operator may ``resend`` it, which makes a new copy.
The final update is conditional too (``WHERE status = 'SENDING'`` and the claim's
``updated_at``): a sender that outlives the timeout never overwrites that ``FAILED``.

What goes over the wire is built in :mod:`.mime`: bare addresses in the envelope, header
values as RFC 5322 writes them (``List-Unsubscribe: <https://...>`` as it is, never RFC 2047
encoded words for ASCII text). The SMTP URL and the connection are :mod:`.smtp`'s.
"""
from __future__ import annotations

import datetime as dt
import smtplib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import make_msgid
from typing import Any

import sqlalchemy as sa

from ..db import chunks, transaction
from ..errors import Conflict, DatabaseUnavailable, NotFound
from ..models import ContactEvent, EventType, Message, MessageStatus, UTCDateTime, messages, utcnow
from ..state import MailTrackState
from ..textpart import html_to_text
from . import verp
from .common import emit, log
from .esp.outbound import echo_headers
from .messages import message_id_of
from .mime import build_email, envelope, parse_mailbox
from .smtp import Mailer, parse_smtp_url

#: Longest wait for a domain's rate-limit slot inside a send; a later slot reschedules the
#: message to it (``SCHEDULED``), holding its reservation.
MAX_SLOT_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    """How a send that is part of bulk work (a campaign, ``send_due``) treats a transient
    failure and the per-domain rate limits; :func:`send` (the caller waits) has none."""

    max_attempts: int
    #: The wait after the n-th try failed transiently.
    delay: Callable[[int], dt.timedelta]
    #: Hold the recipient domain's rate limit (services/pacing.py).
    pace: bool = True


def retry_policy(state: MailTrackState) -> RetryPolicy:
    """The policy ``MAILTRACK_SEND_MAX_ATTEMPTS``, ``..._RETRY_BACKOFF_SECONDS`` and
    ``MAILTRACK_DOMAIN_RATE_LIMITS`` describe."""
    return RetryPolicy(state.settings.send_max_attempts, state.settings.retry_delay,
                       pace=bool(state.settings.domain_rate_limits))


#: Statuses a message may be claimed from.
CLAIMABLE = (MessageStatus.PENDING.value, MessageStatus.SCHEDULED.value)
#: The ``error_message`` of a message whose sender died between the claim and the outcome.
INTERRUPTED = ("Interrupted while sending: the process sending it stopped before recording the "
               "outcome. Not retried, to avoid a duplicate (the server may have accepted it); "
               "resend it to send a copy.")


def mailer_for(state: MailTrackState) -> Mailer:
    """A :class:`~.smtp.Mailer` on the app's SMTP server; use it as a context manager, which
    closes the connection."""
    return Mailer(state.settings.smtp)


# -- sending ---------------------------------------------------------------------------------

def claim(state: MailTrackState, message_id: str) -> bool:
    """Atomically move a PENDING/SCHEDULED message to SENDING; ``True`` for the one winner."""
    return _claim(state, message_id) is not None


def _claim(state: MailTrackState, message_id: str) -> dt.datetime | None:
    """:func:`claim`, returning the claim's stamp (the row's ``updated_at`` while it is
    ``SENDING``) for the winner: the outcome is written only while the row still has it."""
    stamp = utcnow()
    with transaction(state) as session:
        result = session.execute(
            sa.update(messages)
            .where(messages.c.id == message_id, messages.c.status.in_(CLAIMABLE))
            .values(status=MessageStatus.SENDING.value, updated_at=stamp)
        )
    return stamp if result.rowcount == 1 else None


def send(state: MailTrackState, message: Message | str, *, mailer: Mailer | None = None) -> Message:
    """Deliver a PENDING or SCHEDULED message (see the module docstring).

    ``NotFound`` for an unknown message, ``Conflict`` when it is in any other status (it was
    sent, is being sent by another process, or was cancelled).
    """
    message_id = message_id_of(message)
    claimed_at = _claim(state, message_id)
    if claimed_at is None:
        row = state.session.get(Message, message_id, populate_existing=True)
        if row is None:
            raise NotFound(f"No message {message_id!r}.")
        raise Conflict(f"Message {message_id} is {row.status}; only PENDING or SCHEDULED messages are sent.")
    if mailer is not None:
        msg = _send_claimed(state, message_id, mailer, claimed_at)
    else:
        with mailer_for(state) as own:
            msg = _send_claimed(state, message_id, own, claimed_at)
    # The outcome was written with an UPDATE: reload it for hosts whose session keeps loaded
    # objects across commits (``expire_on_commit=False``), or they would see SENDING.
    state.session.refresh(msg)
    return msg


def _on_dnc(state: MailTrackState, message: Message) -> bool:
    """On Do-Not-Contact for email: the contact's entry, or its address's suppression."""
    from . import dnc as dnc_service

    return not dnc_service.can_contact(state, message.contact_id, "email", tenant_id=message.tenant_id,
                                       email=message.email)


def send_claimed(state: MailTrackState, message_id: str, mailer: Mailer, claimed_at: dt.datetime,
                 policy: RetryPolicy | None = None) -> Message:
    """Deliver a message this process claimed (:func:`claim_at`). With a ``policy``, a
    transient failure (an SMTP 4xx reply; a server that could not be reached) before the
    last attempt puts the message back to ``SCHEDULED`` at the backoff's end, and the
    recipient domain's rate limit is held; the returned row then says ``SCHEDULED``."""
    return _send_claimed(state, message_id, mailer, claimed_at, policy)


def claim_at(state: MailTrackState, message_id: str) -> dt.datetime | None:
    """:func:`claim`, returning the claim's stamp for :func:`send_claimed` (``None``: not won)."""
    return _claim(state, message_id)


def _send_claimed(state: MailTrackState, message_id: str, mailer: Mailer, claimed_at: dt.datetime,
                  policy: RetryPolicy | None = None) -> Message:
    session = state.session
    msg = session.get(Message, message_id, populate_existing=True)
    assert msg is not None
    if _on_dnc(state, msg):
        _finish(state, msg, claimed_at, None, status=MessageStatus.SUPPRESSED.value,
                error_message="Recipient is on the email Do-Not-Contact list.", send_slot_at=None)
        return msg
    if policy is not None and policy.pace and not _wait_for_slot(state, msg, claimed_at):
        return msg
    attempts = (msg.send_attempts or 0) + 1
    transient = False
    error: str | None = None
    refused: dict[str, Any] = {}
    from_value = msg.sender_email or state.default_sender
    header_id = make_msgid(domain=_domain_of(from_value))
    if not from_value:
        error = "No sender: set MAILTRACK_DEFAULT_SENDER or the message's sender_email."
    else:
        try:
            sender = parse_mailbox(from_value)
            mail = build_email(msg, sender, header_id, echo_headers(state.settings.webhooks, msg.id))
            try:
                conn = mailer.connection()
            except (smtplib.SMTPResponseException, ssl.SSLError):
                raise  # judged by its reply code below; a TLS failure is set-up, not transient
            except (OSError, smtplib.SMTPException):
                transient = True  # nothing was sent: the server could not be reached
                raise
            # the envelope: bare addresses (a display name there would demand SMTPUTF8)
            bounce_to = verp.envelope_sender(state, msg.id) or sender.addr_spec
            refused = mailer.transact(conn, mail, bounce_to, envelope(msg))
        except smtplib.SMTPRecipientsRefused as exc:
            error = "; ".join(f"{rcpt}: {_reply(code, text)}" for rcpt, (code, text) in exc.recipients.items())
            transient = all(_is_transient(code) for code, _ in exc.recipients.values())
        except smtplib.SMTPResponseException as exc:
            error = _reply(exc.smtp_code, exc.smtp_error)
            transient = _is_transient(exc.smtp_code)
        except Exception as exc:  # noqa: BLE001 - any failure must end the claim as FAILED
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        to = parse_mailbox(msg.email).addr_spec if error is None else None
        if to is not None and to in refused:
            code, text = refused[to]
            error = f"{msg.email}: {_reply(code, text)}"
            transient = _is_transient(code)
    now = utcnow()
    if error is not None and transient and policy is not None and attempts < policy.max_attempts:
        _reschedule(state, msg, claimed_at, now + policy.delay(attempts), send_attempts=attempts, send_slot_at=None,
                    error_message=f"{error} (attempt {attempts} of {policy.max_attempts}; will retry)")
        return msg
    if error is not None and attempts > 1:
        error = f"{error} (after {attempts} attempts)"
    if error is None:
        details: dict[str, Any] = {"internetMessageId": header_id}
        if refused:
            details["refused"] = {r: _reply(c, t) for r, (c, t) in refused.items()}
        event = _outcome_event(msg, EventType.SEND.value, details, now)
        if not _finish(state, msg, claimed_at, event, status=MessageStatus.SENT.value, sent_at=now,
                       internet_message_id=header_id, error_message=None, send_attempts=attempts,
                       send_slot_at=None):
            _late_outcome(state, msg, f"delivered after all, as {header_id}", internet_message_id=header_id)
            return msg
    else:
        event = _failure_event(msg, error, now)
        if not _finish(state, msg, claimed_at, event, status=MessageStatus.FAILED.value, error_message=error,
                       send_attempts=attempts, send_slot_at=None):
            _late_outcome(state, msg, f"failed: {error}")
            return msg
    _announce(msg, event, error)
    return msg


def _is_transient(code: int) -> bool:
    """An SMTP reply that says "try again later" (RFC 5321's 4yz)."""
    return 400 <= code < 500


def _wait_for_slot(state: MailTrackState, msg: Message, claimed_at: dt.datetime) -> bool:
    """Hold the recipient domain's rate limit: ``True`` once this message's slot is open
    (waiting up to :data:`MAX_SLOT_WAIT_SECONDS` for it), ``False`` when it was rescheduled
    to a later slot, which it keeps (``send_slot_at``)."""
    from . import pacing

    slot = msg.send_slot_at
    if slot is None:
        slot = pacing.reserve(state, msg.email)
        if slot is None:
            return True
    wait = (slot - utcnow()).total_seconds()
    if wait > MAX_SLOT_WAIT_SECONDS:
        _reschedule(state, msg, claimed_at, slot, send_slot_at=slot)
        return False
    if wait > 0:
        time.sleep(wait)
    return True


def _reschedule(state: MailTrackState, msg: Message, claimed_at: dt.datetime, at: dt.datetime,
                **values: Any) -> bool:
    """Put a claimed message back to ``SCHEDULED`` at ``at`` (a retry, or a later rate-limit
    slot), while the claim is still this one's; no event, no signal: nothing final happened."""
    with transaction(state) as session:
        return session.execute(
            sa.update(messages)
            .where(messages.c.id == msg.id, messages.c.status == MessageStatus.SENDING.value,
                   messages.c.updated_at == claimed_at)
            .values(status=MessageStatus.SCHEDULED.value, scheduled_at=at, updated_at=utcnow(), **values)
        ).rowcount == 1


def _finish(state: MailTrackState, msg: Message, claimed_at: dt.datetime, event: ContactEvent | None,
            **values: Any) -> bool:
    """Write a send's outcome and its ``event`` in one transaction, only while the row is
    still ``SENDING`` under this claim. ``False``, with nothing written, when
    :func:`fail_interrupted` has taken the row meanwhile."""
    try:
        with transaction(state) as session:
            changed = session.execute(
                sa.update(messages)
                .where(messages.c.id == msg.id, messages.c.status == MessageStatus.SENDING.value,
                       messages.c.updated_at == claimed_at)
                .values(updated_at=utcnow(), **values)
            ).rowcount == 1
            if changed and event is not None:
                session.add(event)
    except DatabaseUnavailable:
        log.error("mailtrack: could not store the outcome of a send; message %s left SENDING", msg.id,
                  exc_info=True)
        raise
    return changed


def _late_outcome(state: MailTrackState, msg: Message, outcome: str, **values: Any) -> None:
    """A sender that outlived ``MAILTRACK_SENDING_TIMEOUT_SECONDS`` finished a message that
    :func:`fail_interrupted` had already marked FAILED (with its ``failed`` event and
    signals). The row stays FAILED and nothing more is recorded or announced; its
    ``error_message`` gains what really happened, so that no one resends a delivered
    message unawares (with the Message-ID, which replies and bounces refer to)."""
    log.warning("mailtrack: message %s finished after it was marked FAILED as interrupted: %s; it stays FAILED",
                msg.id, outcome)
    with transaction(state) as session:
        session.execute(
            sa.update(messages)
            .where(messages.c.id == msg.id, messages.c.status == MessageStatus.FAILED.value,
                   messages.c.error_message == INTERRUPTED)
            .values(error_message=f"{INTERRUPTED} The sender finished later: {outcome}.", **values)
        )


# -- the outcome: one home for what SENT and FAILED record and announce --------------------

def _outcome_event(msg: Message, event_type: str, details: dict[str, Any], now: dt.datetime) -> ContactEvent:
    """The ``send``/``failed`` event row of a message's outcome (the caller adds it)."""
    return ContactEvent(
        tenant_id=msg.tenant_id, type=event_type, contact_id=msg.contact_id, email=msg.email,
        message_id=msg.id, campaign_id=msg.campaign_id, occurred_at=now, is_machine=False,
        details=details,
    )


def _failure_event(msg: Message, error: str, now: dt.datetime) -> ContactEvent:
    """The ``failed`` event of a message that ended ``FAILED`` with ``error``."""
    return _outcome_event(msg, EventType.FAILED.value, {"error": error}, now)


def _announce(msg: Message, event: ContactEvent, error: str | None) -> None:
    """After the commit: ``message_sent`` or ``message_failed`` (with ``error``), and
    ``event_recorded``."""
    extra = {"error": error} if error is not None else {}
    emit(event.type, message=msg, event=event, contact_id=msg.contact_id, message_id=msg.id,
         campaign_id=msg.campaign_id, url=None, **extra)


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {text}".strip()


def _domain_of(address: str | None) -> str | None:
    """The domain of a From address, for its Message-ID (``None``: the local host's name)."""
    try:
        return parse_mailbox(address).domain or None
    except ValueError:
        return None


def _due_query(now: dt.datetime) -> sa.Select[Any]:
    return sa.select(messages.c.id, messages.c.scheduled_at).where(
        messages.c.status == MessageStatus.SCHEDULED.value, messages.c.scheduled_at <= now
    )


def count_due(state: MailTrackState, now: dt.datetime | None = None) -> int:
    """How many SCHEDULED messages are due at ``now`` (for a progress bar)."""
    now = now or utcnow()
    return int(state.session.execute(
        sa.select(sa.func.count()).select_from(_due_query(now).subquery())
    ).scalar_one())


def sending_timeout(state: MailTrackState) -> dt.timedelta:
    """``MAILTRACK_SENDING_TIMEOUT_SECONDS`` as validated by ``init_app``."""
    return state.settings.sending_timeout


def fail_interrupted(state: MailTrackState, *, batch_size: int = 500) -> int:
    """Mark every message ``SENDING`` for longer than the sending timeout (all tenants) as
    ``FAILED`` with :data:`INTERRUPTED`; return how many. Never re-sends anything.

    Such a row's sender died between the claim and the outcome (crash, kill, deploy): the
    claim set ``updated_at``, and a live sender ends its row long before the timeout. The
    change is one conditional ``UPDATE ... WHERE status = 'SENDING' AND updated_at < cutoff``
    with ``RETURNING``, in the same transaction as the ``failed`` events: a row that a sender
    finishes meanwhile no longer matches (PostgreSQL re-checks the condition on a row that
    was updated concurrently; SQLite runs writers one at a time), and of two concurrent runs
    only one changes a row. Each row then gets the normal failure's event and signals.

    The cutoff is the wall clock (not ``send_due``'s ``now``), because ``updated_at`` is.
    A sender still alive past the timeout (``init_app`` makes the timeout exceed the SMTP
    timeout, so it would have to be very slow) does not overwrite ``FAILED``: its outcome is
    written only while the row is still ``SENDING`` under its claim. It records no event and
    sends no signal (this message's ``failed`` went out already); it appends what really
    happened to ``error_message`` (for a delivery, with the Message-ID) and logs a warning.
    """
    now = utcnow()
    cutoff = now - sending_timeout(state)
    with transaction(state) as session:
        ids = list(session.execute(
            sa.update(messages)
            .where(messages.c.status == MessageStatus.SENDING.value, messages.c.updated_at < cutoff)
            .values(status=MessageStatus.FAILED.value, error_message=INTERRUPTED, updated_at=now)
            .returning(messages.c.id)
        ).scalars())
        failed: list[tuple[Message, ContactEvent]] = []
        for chunk in chunks(ids, batch_size):
            rows = session.execute(
                sa.select(Message).where(Message.id.in_(chunk))
                .execution_options(populate_existing=True)
            ).scalars()
            failed.extend((msg, _failure_event(msg, INTERRUPTED, now)) for msg in rows)
        session.add_all(event for _, event in failed)
    for msg, event in failed:
        log.warning("mailtrack: message %s was interrupted while sending (SENDING for over %s); "
                    "marked FAILED, not retried", msg.id, now - cutoff)
        _announce(msg, event, INTERRUPTED)
    return len(failed)


def send_due(
    state: MailTrackState,
    now: dt.datetime | None = None,
    *,
    batch_size: int = 100,
    progress: Callable[[int], Any] | None = None,
    reclaim: bool = True,
) -> int:
    """Send every SCHEDULED message whose ``scheduled_at`` is at or before ``now`` (all
    tenants); return how many this call handled (sent, failed or suppressed).

    First (unless ``reclaim`` is false: the CLI calls :func:`fail_interrupted` itself, to
    report its count) messages left ``SENDING`` by a dead sender are marked ``FAILED``.
    Due rows are read in keyset batches of ``(scheduled_at, id)``; each one is claimed
    atomically, so a row another process claimed first is skipped, never sent twice. One
    SMTP connection serves the whole run.
    """
    now = now or utcnow()
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.timezone.utc)
    if reclaim:
        fail_interrupted(state)
    handled = 0
    last: tuple[dt.datetime, str] | None = None
    policy = retry_policy(state)
    with mailer_for(state) as mailer:
        while True:
            query = _due_query(now).order_by(messages.c.scheduled_at, messages.c.id).limit(batch_size)
            if last is not None:
                query = query.where(sa.tuple_(messages.c.scheduled_at, messages.c.id) > sa.tuple_(
                    sa.literal(last[0], UTCDateTime()), sa.literal(last[1], sa.String())))
            rows = state.session.execute(query).all()
            state.session.commit()  # end the read transaction before the claims
            if not rows:
                break
            for message_id, scheduled_at in rows:
                last = (scheduled_at, message_id)
                claimed_at = _claim(state, message_id)
                if claimed_at is not None:
                    _send_claimed(state, message_id, mailer, claimed_at, policy)
                    handled += 1
                if progress is not None:
                    progress(1)
    return handled


__all__ = ["send", "send_due", "count_due", "claim", "claim_at", "send_claimed", "fail_interrupted",
           "retry_policy", "RetryPolicy", "parse_smtp_url", "html_to_text", "build_email", "INTERRUPTED"]
