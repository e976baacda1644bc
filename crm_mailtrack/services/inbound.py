"""Received mail into the event log: ``MailTrack.ingest_mail`` and ``flask mailtrack ingest-mail``.

One received mail is read (:mod:`.mailparse`), matched to the sent message it concerns
(its VERP envelope tag first, :mod:`.verp`, then the Message-IDs it names,
:mod:`.matching`) and recorded through the outcome policy
(:func:`.external_events.record_outcome`: the DNC entry it implies, signals after the
commit). A reply also stores an :class:`~crm_mailtrack.inbound_models.InboundMessage` for the
message's thread, in the same transaction.

Exactly once: the received mail's Message-ID (else a digest of its bytes) is the event's
dedup key, so the same mail ingested twice (two fetchers, a re-delivered pipe) is stored
once. Mail that is too large, malformed, nested absurdly deep, of no known kind or naming
no message of ours is skipped with a reason and never raises; a database that cannot
serve raises :class:`~crm_mailtrack.errors.DatabaseUnavailable`, so a fetcher keeps the
mail for the next run.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from ..db import unavailable_as_503
from ..inbound_models import InboundMessage
from ..models import ContactEvent, Message, utcnow
from ..state import MailTrackState
from . import external_events, mailparse, matching, verp
from .common import UNSET, log, tenant_key
from .messages import new_message_id

#: What :func:`ingest` reports: stored; stored before; and the reasons mail is skipped.
RECORDED, DUPLICATE = "recorded", "duplicate"
TOO_LARGE, MALFORMED, TOO_DEEP, IGNORED, UNMATCHED = "too-large", "malformed", "too-deep", "ignored", "unmatched"


@dataclasses.dataclass
class IngestResult:
    """The outcome of one received mail: ``status`` (``recorded``, ``duplicate``,
    ``too-large``, ``malformed``, ``too-deep``, ``ignored``, ``unmatched``), the events
    stored (empty unless recorded), the kind read, the matched message's id and a reason."""

    status: str
    events: list[ContactEvent] = dataclasses.field(default_factory=list)
    kind: str | None = None
    message_id: str | None = None
    reason: str = ""

    def __str__(self) -> str:
        if self.status == RECORDED:
            return "; ".join(f"recorded {e.type} (event {e.id}) for message {e.message_id}, contact "
                             f"{e.contact_id}" for e in self.events)
        what = f"{self.kind} for message {self.message_id}" if self.message_id else (self.kind or "mail")
        return f"{self.status}: {what}" + (f" ({self.reason})" if self.reason else "")


def ingest(state: MailTrackState, raw: bytes, *, tenant_id: Any = UNSET, recipient: str | None = None) -> IngestResult:
    """Read, match and record one received mail (see the module). ``tenant_id``: only that
    tenant's messages match (default: any tenant's; the message decides). ``recipient``:
    the envelope recipient, when the mail server passes it (a pipe transport's
    ``${recipient}``), for the VERP tag."""
    mailparse.require_libraries()
    limit = state.settings.inbound_max_bytes
    if not isinstance(raw, (bytes, bytearray)):
        return _skipped(IngestResult(MALFORMED, reason="not bytes"))
    if len(raw) > limit:
        return _skipped(IngestResult(TOO_LARGE, reason=f"{len(raw)} bytes, over MAILTRACK_INBOUND_MAX_BYTES ({limit})"))
    try:
        reading = mailparse.read(bytes(raw))
    except mailparse.Unreadable as exc:
        return _skipped(IngestResult(exc.reason, reason=str(exc)))
    except Exception as exc:  # noqa: BLE001 - no mail, however odd, may break a fetcher
        log.exception("mailtrack: reading a received mail failed")
        return _skipped(IngestResult(MALFORMED, reason=f"{type(exc).__name__}: {exc}"))
    if reading.kind is None:
        return _skipped(IngestResult(IGNORED, reason=reading.reason))
    with unavailable_as_503():
        message = _match(state, reading, recipient, None if tenant_id is UNSET else tenant_key(state, tenant_id))
    if message is None:
        return _skipped(IngestResult(UNMATCHED, kind=reading.kind, reason="names no message of ours"))
    if not _about_the_contact(reading, message):
        return _skipped(IngestResult(IGNORED, kind=reading.kind, message_id=message.id,
                                     reason="about a cc/bcc recipient, not the contact"))
    message_id, details, also = message.id, dict(reading.details), None
    if reading.kind == "reply":
        details["inboundId"] = new_message_id()
        also = _store_reply(reading, message, details["inboundId"])
    event = external_events.record_outcome(
        state, message, reading.kind, details=details or None, occurred_at=_when(reading, message),
        dedup=reading.dedup, also=also,
    )
    if event is None:
        return _skipped(IngestResult(DUPLICATE, kind=reading.kind, message_id=message_id,
                                     reason="this mail was stored before"))
    return IngestResult(RECORDED, [event], kind=reading.kind, message_id=message_id)


def _about_the_contact(reading: mailparse.Reading, message: Message) -> bool:
    """Whether the report concerns the message's contact, choosing the contact's outcome
    among a DSN's recipients. A report naming other addresses only is about a cc/bcc
    recipient when the message had some (an alias or forward may rename the contact's
    address, so a message without cc/bcc takes the report as its contact's)."""
    address = message.email.strip().lower()
    for addresses, kind, details in reading.per_recipient:
        if address in addresses:
            reading.kind, reading.details = kind, details
            return True
    if not reading.recipients or address in reading.recipients:
        return True
    return not (message.cc or message.bcc)


def _skipped(result: IngestResult) -> IngestResult:
    log.info("mailtrack: received mail skipped: %s", result)
    return result


def _match(state: MailTrackState, reading: mailparse.Reading, recipient: str | None,
           tenant: str | None) -> Message | None:
    """The VERP tag (exact, signed) first; replies never come back through it. Then the
    Message-IDs the mail names."""
    message = None
    if reading.kind != "reply":
        sources = [recipient] if recipient else []
        for mid in verp.message_ids_in(state, [*sources, *reading.verp_sources]):
            message = matching.by_id(state, mid)
            if message is not None:
                break
    if message is None:
        message = matching.by_internet_message_id(state, reading.message_ids)
    if message is None or (tenant is not None and message.tenant_id != tenant):
        return None
    return message


def _when(reading: mailparse.Reading, message: Message) -> dt.datetime:
    """The mail's ``Date``, within [the send, now]: a clock that is wrong or a forged date
    must not reorder the contact's history (soft-bounce runs are ordered by time)."""
    now = utcnow()
    when = reading.date or now
    floor = message.sent_at or message.created_at
    if floor is not None and when < floor:
        when = floor
    return min(when, now)


def _store_reply(reading: mailparse.Reading, message: Message, inbound_id: str) -> Any:
    fields = dict(reading.reply or {})

    def store(session: Session, event: ContactEvent) -> dict[str, Any]:
        row = InboundMessage(id=inbound_id, tenant_id=message.tenant_id, message_id=message.id,
                             contact_id=message.contact_id, event_id=event.id, received_at=event.occurred_at,
                             status="NEW", **fields)
        session.add(row)
        return {"inbound": row}

    return store


__all__ = ["IngestResult", "ingest", "RECORDED", "DUPLICATE", "TOO_LARGE", "MALFORMED", "TOO_DEEP", "IGNORED",
           "UNMATCHED"]
