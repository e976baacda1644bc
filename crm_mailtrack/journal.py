"""The fallback journal: tracking events that the database could not take.

A click must redirect and a pixel must answer even while the database is down or locked.
Their events are appended here as JSON lines (one ``flock``-ed write each, so several
worker processes can share the file) and written to the database later by
``flask mailtrack replay-journal``. Each entry carries a unique ``uid`` stored on the
event row, so replaying the same entry twice inserts it once.

The file is read as bytes, line by line. A line that is not a journaled event (torn by a
crash, not UTF-8, not JSON, JSON of another shape, a bad date) never stops a replay: when
a batch is claimed, such lines are moved, byte for byte, to ``<journal>.rejected`` and the
rest is replayed. A torn line that the next entry was appended to (no newline between
them) gives that entry back. ``append`` starts a new line when the file does not end with
one, so a torn line cannot swallow later entries.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import glob
import json
import os
import time
from collections.abc import Iterator
from typing import Any

#: Event types the tracking routes journal.
JOURNALED_TYPES = frozenset({"open", "click"})
_OPTIONAL_TEXT = ("url", "link_id", "ip", "user_agent", "machine_reason")


def event_entry(line: bytes) -> dict[str, Any] | None:
    """The journaled event on ``line`` (bytes, without its newline), or ``None`` when the
    line is not one: not UTF-8, not a JSON object, a wrong type or field, a bad date."""
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or entry.get("type") not in JOURNALED_TYPES:
        return None
    for key in ("uid", "message_id"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            return None
    if any(entry.get(key) is not None and not isinstance(entry[key], str) for key in _OPTIONAL_TEXT):
        return None
    details = entry.get("details")
    if details is not None and not isinstance(details, dict):
        return None
    moment = entry.get("occurred_at")
    if not isinstance(moment, str):
        return None
    try:
        dt.datetime.fromisoformat(moment.replace("Z", "+00:00"))
    except ValueError:
        return None
    return entry


def _split_torn(line: bytes) -> tuple[bytes, dict[str, Any] | None]:
    """A bad ``line`` may be a torn entry with the next one appended to it: ``(rejected
    prefix, recovered entry)`` for the leftmost ``{"`` from which the rest is an event, else
    ``(line, None)``."""
    start = line.find(b'{"', 1)
    while start != -1:
        entry = event_entry(line[start:])
        if entry is not None:
            return line[:start], entry
        start = line.find(b'{"', start + 1)
    return line, None


class FileBatch:
    """A claimed journal file: its entries, removed once they are all committed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def entries(self) -> Iterator[dict[str, Any]]:
        return Journal.read(self.path)

    def done(self) -> None:
        os.remove(self.path)

    def release(self) -> None:
        """The replay failed: the claimed file stays for the next replay."""


class Journal:
    """The journal in a local file (the default; see the module docstring). A journal is
    anything with :meth:`append`, :meth:`batches`, :meth:`count`, :meth:`claim_with_rejects`
    and :attr:`rejected_path`: :class:`crm_mailtrack.journal_redis.RedisJournal` is the
    other one."""

    def __init__(self, path: str) -> None:
        self.path = path

    def batches(self) -> Iterator[FileBatch]:
        """What a replay writes, a batch at a time: each claimed file (see :meth:`claim`)."""
        for path in self.claim():
            yield FileBatch(path)

    @property
    def rejected_path(self) -> str:
        """Where lines that are not journaled events are set aside."""
        return self.path + ".rejected"

    def append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode("utf-8")
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # A replay may have claimed (renamed) the file while we waited for the
                # lock: writing to it then could lose the line. Reopen the live path.
                if not self._is_live(fd):
                    continue
                size = os.fstat(fd).st_size
                # a writer that died mid-line left it torn: start on a line of our own
                torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
                os.write(fd, b"\n" + line if torn else line)
                return
            finally:
                os.close(fd)

    def _is_live(self, fd: int) -> bool:
        try:
            live = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (mine.st_dev, mine.st_ino) == (live.st_dev, live.st_ino)

    def pending_files(self) -> list[str]:
        """Files still to replay: batches claimed by an earlier, interrupted replay first."""
        claimed = sorted(glob.glob(glob.escape(self.path) + ".replay-*"))
        return claimed + ([self.path] if os.path.exists(self.path) else [])

    def claim(self) -> list[str]:
        """Move the live journal aside (atomically, under its lock) so new events go to a
        fresh file while the claimed ones are replayed; set bad lines aside (see
        :meth:`claim_with_rejects`); return every file to replay."""
        return self.claim_with_rejects()[0]

    def claim_with_rejects(self) -> tuple[list[str], int]:
        """:meth:`claim`, and the number of lines it moved to :attr:`rejected_path`."""
        if os.path.exists(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.rename(self.path, f"{self.path}.replay-{time.time_ns()}")
            finally:
                os.close(fd)
        files = sorted(glob.glob(glob.escape(self.path) + ".replay-*"))
        return files, sum(self._set_aside(path) for path in files)

    def _set_aside(self, path: str) -> int:
        """Rewrite the claimed file ``path`` with only its journaled events, one per line,
        after appending every other line to :attr:`rejected_path`; return how many lines
        were set aside. (Should a crash come between the two writes, the next claim sets the
        same lines aside again: they may appear twice there, never get lost.)"""
        good: list[bytes] = []
        bad: list[bytes] = []
        with open(path, "rb") as fh:
            for raw in fh:
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                if event_entry(line) is not None:
                    good.append(line + b"\n")
                    continue
                prefix, entry = _split_torn(line)
                bad.append(prefix + b"\n")
                if entry is not None:
                    good.append(json.dumps(entry, separators=(",", ":")).encode("utf-8") + b"\n")
        if not bad:
            return 0
        clean = f"{self.path}.cleaning-{time.time_ns()}"
        fd = os.open(clean, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"".join(good))
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = os.open(self.rejected_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, b"".join(bad))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(clean, path)
        return len(bad)

    @staticmethod
    def read(path: str) -> Iterator[dict[str, Any]]:
        """The JSON objects of ``path``, line by line (read as bytes); a line that is not
        one is passed over (claimed files hold none: :meth:`claim` set them aside)."""
        with open(path, "rb") as fh:
            for raw in fh:
                line = raw.strip()
                if not line:
                    continue
                try:
                    entry = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    continue
                if isinstance(entry, dict):
                    yield entry

    def count(self) -> int:
        """Journaled events waiting for a replay (lines that are not events do not count)."""
        total = 0
        for path in self.pending_files():
            with open(path, "rb") as fh:
                for raw in fh:
                    line = raw.strip()
                    if line and (event_entry(line) is not None or _split_torn(line)[1] is not None):
                        total += 1
        return total
