"""The fallback journal: tracking events that the database could not take.

A click must redirect and a pixel must answer even while the database is down or locked.
Their events are appended here as JSON lines (one ``flock``-ed write each, so several
worker processes can share the file) and written to the database later by
``flask mailtrack replay-journal``. Each entry carries a unique ``uid`` stored on the
event row, so replaying the same entry twice inserts it once.
"""
from __future__ import annotations

import fcntl
import glob
import json
import os
import time
from collections.abc import Iterator
from typing import Any


class Journal:
    def __init__(self, path: str) -> None:
        self.path = path

    def append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode("utf-8")
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # A replay may have claimed (renamed) the file while we waited for the
                # lock: writing to it then could lose the line. Reopen the live path.
                if not self._is_live(fd):
                    continue
                os.write(fd, line)
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
        fresh file while the claimed ones are replayed; return every file to replay."""
        if os.path.exists(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.rename(self.path, f"{self.path}.replay-{time.time_ns()}")
            finally:
                os.close(fd)
        return sorted(glob.glob(glob.escape(self.path) + ".replay-*"))

    @staticmethod
    def read(path: str) -> Iterator[dict[str, Any]]:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    continue  # a torn last line from a crash: nothing to replay in it

    def count(self) -> int:
        total = 0
        for path in self.pending_files():
            total += sum(1 for _ in self.read(path))
        return total
