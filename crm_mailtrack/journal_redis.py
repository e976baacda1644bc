"""The journal in a Redis stream, for hosts whose disks do not last (containers).

With ``MAILTRACK_JOURNAL_URL = "redis://host:6379/0"`` (extra ``redis``), a tracking event
the database cannot take is appended to a Redis stream (``XADD``) that every app server
shares, instead of a file on the one that served the click; any of them replays it with
``flask mailtrack replay-journal``. Query parameters of the URL that are ours (the rest go
to redis-py): ``stream`` (default ``mailtrack:journal``) and ``claim_idle`` (seconds,
default 30, see below).

Exactly once: a replay reads entries through a consumer group (``XREADGROUP``), writes a
batch in one database transaction, and only then acknowledges and deletes the entries
(``XACK``, ``XDEL``). A replay that dies before its commit leaves its entries pending in
the group: the next replay takes them over once they have been idle ``claim_idle`` seconds
(``XAUTOCLAIM``; a replay that fails cleanly hands them back at once). A replay that dies
after its commit but before the acknowledgement leaves entries that are already stored:
their insert is skipped by the event's unique ``(uid, occurred_at)``. So each event is
stored once whatever fails when.

When Redis itself cannot be reached, the entry goes to the local file journal
(``MAILTRACK_JOURNAL_PATH``) rather than being lost; a replay writes that file first.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import ConfigurationError
from .journal import FileBatch, Journal, event_entry

log = logging.getLogger("crm_mailtrack")

DEFAULT_STREAM = "mailtrack:journal"
DEFAULT_CLAIM_IDLE = 30.0
GROUP = "mailtrack-replay"
#: Entries read per batch (one database transaction each).
BATCH = 500
_FIELD = b"e"
_OURS = ("stream", "claim_idle")


def parse_journal_url(url: str) -> tuple[str, str, float]:
    """``(redis URL without our parameters, stream, claim_idle seconds)``; a
    :class:`ConfigurationError` naming ``MAILTRACK_JOURNAL_URL`` when it is not one."""
    key = "MAILTRACK_JOURNAL_URL"
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(f"{key} must be a Redis URL such as 'redis://localhost:6379/0' "
                                 f"(redis://, rediss:// or unix://), not {url!r}.")
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OURS}
    stream = ours.get("stream", DEFAULT_STREAM)
    if not stream:
        raise ConfigurationError(f"{key}: stream must be a non-empty stream key.")
    try:
        claim_idle = float(ours.get("claim_idle", DEFAULT_CLAIM_IDLE))
    except ValueError:
        claim_idle = -1.0
    if not 0 <= claim_idle < float("inf"):
        raise ConfigurationError(f"{key}: claim_idle must be a number of seconds >= 0.")
    rest = urlencode([(k, v) for k, v in query if k not in _OURS])
    return urlunsplit(parts._replace(query=rest)), stream, claim_idle


def _redis() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ConfigurationError(
            "MAILTRACK_JOURNAL_URL needs redis-py: pip install 'crm_mailtrack[redis]'") from None
    return redis


class _StreamBatch:
    """Entries read from the stream by this replay: acknowledged and deleted once stored."""

    def __init__(self, journal: RedisJournal, items: list[tuple[Any, Any]]) -> None:
        self.journal = journal
        self.items = items
        self.ids = [entry_id for entry_id, _fields in items]

    def entries(self) -> Iterator[dict[str, Any]]:
        for entry_id, fields in self.items:
            raw = (fields or {}).get(_FIELD)
            entry = event_entry(raw) if isinstance(raw, bytes) else None
            if entry is None:  # not ours: set aside, never replayed, never blocking
                self.journal.client.xadd(self.journal.rejected_stream, {_FIELD: raw or b"", b"id": entry_id})
                self.journal.rejected += 1
                continue
            yield entry

    def done(self) -> None:
        if self.ids:
            client, stream = self.journal.client, self.journal.stream
            with client.pipeline(transaction=True) as pipe:
                pipe.xack(stream, GROUP, *self.ids)
                pipe.xdel(stream, *self.ids)
                pipe.execute()

    def release(self) -> None:
        """The replay failed: make the entries claimable by the next replay at once."""
        if self.ids:
            try:
                self.journal.client.xclaim(self.journal.stream, GROUP, self.journal.consumer, 0, self.ids,
                                           idle=10**12, justid=True)
            except Exception:  # noqa: BLE001 - they become claimable after claim_idle anyway
                log.warning("mailtrack: could not hand journal entries back; they wait claim_idle seconds")


class RedisJournal:
    """The journal on a Redis stream, with the local file as its fallback."""

    def __init__(self, url: str, *, fallback: Journal) -> None:
        redis = _redis()
        address, self.stream, self.claim_idle = parse_journal_url(url)
        self.client = redis.Redis.from_url(address, socket_timeout=5, socket_connect_timeout=2)
        self.errors = (redis.RedisError, OSError)
        self.fallback = fallback
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.rejected = 0

    @property
    def path(self) -> str:
        return self.fallback.path

    @property
    def rejected_stream(self) -> str:
        return self.stream + ":rejected"

    @property
    def rejected_path(self) -> str:
        """Where bad lines of the fallback file are set aside (bad stream entries go to
        the stream ``<stream>:rejected``)."""
        return self.fallback.rejected_path

    def append(self, entry: dict[str, Any]) -> None:
        data = json.dumps(entry, separators=(",", ":"), default=str).encode("utf-8")
        try:
            self.client.xadd(self.stream, {_FIELD: data})
        except self.errors:
            log.warning("mailtrack: Redis journal unavailable, event kept in the local journal", exc_info=True)
            self.fallback.append(entry)

    def claim_with_rejects(self) -> tuple[list[str], int]:
        return self.fallback.claim_with_rejects()

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except _redis().ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def batches(self) -> Iterator[FileBatch | _StreamBatch]:
        """The fallback file's batches, then entries that a replay took and never
        acknowledged (idle ``claim_idle`` seconds), then new entries; ``BATCH`` at a time."""
        yield from self.fallback.batches()
        self._ensure_group()
        start: Any = "0-0"
        while True:
            reply = self.client.xautoclaim(self.stream, GROUP, self.consumer, int(self.claim_idle * 1000),
                                           start_id=start, count=BATCH)
            start, items = reply[0], [item for item in reply[1] if item and item[1] is not None]
            if items:
                yield _StreamBatch(self, items)
            if start in (b"0-0", "0-0"):
                break
        while True:
            reply = self.client.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=BATCH)
            items = reply[0][1] if reply else []
            if not items:
                return
            yield _StreamBatch(self, items)

    def count(self) -> int:
        """Entries waiting for a replay (the stream's, pending ones included, and the file's)."""
        return int(self.client.xlen(self.stream)) + self.fallback.count()


__all__ = ["RedisJournal", "parse_journal_url", "DEFAULT_STREAM", "DEFAULT_CLAIM_IDLE", "GROUP"]
