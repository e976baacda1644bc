"""``fetch-inbox``: read a mailbox, hand each message to ``ingest``, then settle it on the
server according to what ``ingest`` made of it.

``ingest(raw: bytes)`` is :func:`.inbound.ingest` in the command (any callable in tests and
host code) and returns an :class:`~.inbound.IngestResult`; its ``status`` alone decides the
outcome, through :data:`OUTCOMES` (the one mapping): ``recorded`` is *stored*, ``duplicate``
(stored before, e.g. by another host) *duplicate*, ``ignored`` and ``unmatched`` *ignored*,
``malformed``, ``too-large`` and ``too-deep`` *malformed*. The service never raises for bad
mail; :class:`~crm_mailtrack.errors.DatabaseUnavailable` stops the run (the message in hand
and the rest are left untouched); any other exception is *failed*.

What happens on the server (:mod:`.mailbox`): stored and duplicate mail is marked (IMAP
``\\Seen`` and ``$MailtrackStored``) or, with ``delete``, deleted; ignored and malformed mail
gets a keyword of its own so that no later run reads it again, and stays unread; failed mail
is left exactly as it was, to be read again by the next run. Only messages without those
keywords are read, their flags are checked again just before ingesting, and each one is
settled as soon as it is handled, so several hosts can run the command from cron at once:
a message is handed to ``ingest`` twice only when two runs read it in the same instant, and
the service stores the same received mail once (the second gets ``duplicate``, so both delete
it). A dropped connection is reopened (at most ``reconnects`` times in a row) and the mark of
the message in hand is made then.
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import DatabaseUnavailable
from . import inbound
from .inbox_url import InboxSettings
from .mailbox import DROPPED, PROTOCOL_ERRORS, InboxError, Mailbox, Unreadable, open_mailbox

#: Largest message read (bytes, as the server reports its size); larger is skipped as malformed.
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BATCH_SIZE = 100


class Outcome(str, enum.Enum):
    """What became of one message."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    MALFORMED = "malformed"
    FAILED = "failed"


#: ``ingest(raw)`` returns the service's :class:`~.inbound.IngestResult` (its ``status`` and ``reason`` are read).
Ingest = Callable[[bytes], inbound.IngestResult]
#: The outcome of each :func:`.inbound.ingest` status: the one place the two meet.
OUTCOMES = {inbound.RECORDED: Outcome.STORED, inbound.DUPLICATE: Outcome.DUPLICATE,
            inbound.IGNORED: Outcome.IGNORED, inbound.UNMATCHED: Outcome.IGNORED,
            inbound.MALFORMED: Outcome.MALFORMED, inbound.TOO_LARGE: Outcome.MALFORMED,
            inbound.TOO_DEEP: Outcome.MALFORMED}
#: How each outcome is settled on the server (``None``: left untouched).
_SETTLE = {Outcome.STORED: "stored", Outcome.DUPLICATE: "stored", Outcome.IGNORED: "ignored",
           Outcome.MALFORMED: "skipped", Outcome.FAILED: None}


@dataclass
class FetchReport:
    """Counts of one run. ``fetched`` = stored + duplicate + ignored + malformed + failed."""

    fetched: int = 0
    stored: int = 0
    duplicate: int = 0
    ignored: int = 0
    malformed: int = 0
    failed: int = 0
    #: Messages not handled because ``limit`` was reached (a later run reads them).
    left: int = 0
    #: Why the run stopped before the end (the database or the server went away), else None.
    stopped: str | None = None
    #: ``(key, reason)`` of each failed or malformed message (key: IMAP UID or POP3 UIDL).
    problems: list[tuple[str, str]] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.fetched += 1
        setattr(self, outcome.value, getattr(self, outcome.value) + 1)

    def summary(self) -> str:
        text = (f"{self.fetched} fetched: {self.stored} stored, {self.duplicate} duplicate, "
                f"{self.ignored} ignored (unmatched), {self.malformed} malformed, {self.failed} failed")
        return text + (f"; {self.left} left for the next run" if self.left else "")


class InboxFetcher:
    """One run over one mailbox. ``count()`` connects and lists what is left to handle;
    ``run()`` handles it. Use as a context manager (the session is closed at the end)."""

    def __init__(self, inbox: InboxSettings, ingest: Ingest, *, delete: bool = False,
                 batch_size: int = DEFAULT_BATCH_SIZE, limit: int | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, reconnects: int = 3) -> None:
        if batch_size < 1 or (limit is not None and limit < 1) or max_bytes < 1:
            raise ValueError("batch_size, limit and max_bytes must be positive")
        self.inbox = inbox
        self.ingest = ingest
        self.delete = delete
        self.batch_size = batch_size
        self.limit = limit
        self.max_bytes = max_bytes
        self.reconnects = reconnects
        self.mailbox: Mailbox = open_mailbox(inbox)
        self.keys: list[str] | None = None
        self.report = FetchReport()

    def __enter__(self) -> InboxFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.mailbox.close()
        except DROPPED:
            pass

    def count(self) -> int:
        """Connect (InboxError when the server, TLS or login refuses) and return how many
        messages this run will handle (at most ``limit``)."""
        if self.keys is None:
            self.mailbox.connect()
            try:
                self.keys = self._retry(self.mailbox.unhandled)
            except _Stop as stop:
                raise InboxError(str(stop)) from None
            if self.limit is not None and len(self.keys) > self.limit:
                self.report.left = len(self.keys) - self.limit
                self.keys = self.keys[: self.limit]
        return len(self.keys)

    def run(self, progress: Callable[[Outcome], None] | None = None) -> FetchReport:
        """Handle every message listed by :meth:`count`; ``progress(outcome)`` after each."""
        self.count()
        assert self.keys is not None
        try:
            for start in range(0, len(self.keys), self.batch_size):
                batch = self.keys[start:start + self.batch_size]
                meta = self._retry(self.mailbox.meta, batch)
                for key in batch:
                    if key not in meta:  # expunged by another run since the search
                        continue
                    outcome = self._handle(key, meta[key].size)
                    self.report.add(outcome)
                    if progress is not None:
                        progress(outcome)
                self._retry(self.mailbox.commit)
        except _Stop as stop:
            self.report.stopped = str(stop)
        return self.report

    def _handle(self, key: str, size: int) -> Outcome:
        if size > self.max_bytes:
            self.report.problems.append((key, f"{size} bytes, over the limit of {self.max_bytes}"))
            return self._settle(key, Outcome.MALFORMED)
        try:
            raw = self._retry(self.mailbox.read, key)
        except Unreadable as exc:
            self.report.problems.append((key, str(exc)))
            return self._settle(key, Outcome.MALFORMED)
        if raw is None:
            return Outcome.DUPLICATE  # gone, or handled by another run since the search
        try:
            result = self.ingest(raw)
            outcome = OUTCOMES[result.status]  # KeyError: not a status of the service, failed
        except DatabaseUnavailable as exc:
            raise _Stop(f"the database is unavailable ({exc}); nothing more was read, run it again") from exc
        except Exception as exc:  # noqa: BLE001 - counted, the message is left for the next run
            self.report.problems.append((key, f"{type(exc).__name__}: {exc}"))
            return self._settle(key, Outcome.FAILED)
        if outcome is Outcome.MALFORMED:
            self.report.problems.append((key, f"{result.status}: {result.reason}" if result.reason else result.status))
        return self._settle(key, outcome)

    def _settle(self, key: str, outcome: Outcome) -> Outcome:
        how = _SETTLE[outcome]
        if how is not None:
            self._retry(self.mailbox.settle, key, how, delete=self.delete)
        return outcome

    def _retry(self, op: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``op``, reconnecting when the session drops (InboxError is final)."""
        attempts = 0
        while True:
            try:
                return op(*args, **kwargs)
            except DROPPED as exc:
                attempts += 1
                if attempts > self.reconnects:
                    raise _Stop(f"the connection to {self.inbox.host}:{self.inbox.port} keeps dropping "
                                f"({exc}); run it again") from exc
                self.close()
                try:
                    self.mailbox.connect()  # InboxError for anything that goes wrong
                except InboxError as again:
                    raise _Stop(f"lost the connection and could not reconnect: {again}") from again
            except PROTOCOL_ERRORS as exc:  # the server answered BAD or -ERR to a command
                raise _Stop(f"the server refused a command: {exc}") from exc
            except InboxError as exc:
                raise _Stop(str(exc)) from exc


class _Stop(Exception):
    """Ends the run early; the reason goes to ``FetchReport.stopped``."""


def fetch_inbox(inbox: InboxSettings, ingest: Ingest, **options: Any) -> FetchReport:
    """One run (see :class:`InboxFetcher` for the options)."""
    with InboxFetcher(inbox, ingest, **options) as fetcher:
        return fetcher.run()


__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_MAX_BYTES", "FetchReport", "InboxError", "InboxFetcher", "Ingest",
           "OUTCOMES", "Outcome", "fetch_inbox"]
