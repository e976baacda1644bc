"""A counting SMTP sink for the sending benchmarks, run as its own process (so it never
competes with the sender for a GIL): accepts every message, keeps no content.

    python bench/smtp_sink.py OUT.json

Prints its port on the first line of stdout; on SIGTERM writes ``{"count", "arrivals":
{domain: [epoch seconds, ...]}}`` to OUT.json and exits.
"""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from collections import defaultdict
from typing import Any

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self) -> None:
        self.count = 0
        self.arrivals: dict[str, list[float]] = defaultdict(list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        self.count += 1
        for rcpt in envelope.rcpt_tos:
            self.arrivals[rcpt.rpartition("@")[2].lower()].append(now)
        return "250 2.0.0 Ok"


def main() -> None:
    out = sys.argv[1]
    sink = Sink()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(lambda: SMTP(sink, hostname="sink.test"), sock=sock))
    print(sock.getsockname()[1], flush=True)

    def stop() -> None:
        with open(out, "w") as fh:
            json.dump({"count": sink.count, "arrivals": sink.arrivals}, fh)
        loop.stop()

    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.run_forever()
    server.close()


if __name__ == "__main__":
    main()
