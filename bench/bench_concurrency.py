"""Benchmark 5: 1,000 concurrent clicks on one link against the real server.

gunicorn (2 workers x 8 threads, so requests really overlap in the database) serves the
product; 1,000 requests are opened at once (asyncio). Pass: every answer is the 302, and
the database holds exactly 1,000 click events for the message (none journaled, none lost,
none doubled), on SQLite and on PostgreSQL.

    .venv/bin/python bench/bench_concurrency.py [--db both] [--clicks 1000]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Server, burst, database, emit, kinds, make_app, raw_connect, verdict  # noqa: E402
from bench.server_app import DEST  # noqa: E402


def run_kind(kind: str, clicks: int, threads: int) -> dict[str, Any]:
    from crm_mailtrack.state import get_state

    with database(kind, "conc") as url:
        app = make_app(url)
        mailtrack = app.config["BENCH_MAILTRACK"]
        with app.app_context():
            msg = mailtrack.track_message(contact_id="c1", email="c1@example.com", subject="Hi",
                                          campaign_id="conc", html=f'<a href="{DEST}">go</a>')
            path = "/mailtrack/t/c/" + mailtrack.click_url(msg, DEST).split("/t/c/", 1)[1]
            message_id = msg.id
            get_state().own_engine.dispose()
        with Server(url, workers=2, threads=threads) as server:
            answer = burst(server.base, path, clicks)
            journaled = server.journal_lines()
            server.cleanup_journal()
        conn = raw_connect(url)
        mark = "?" if kind == "sqlite" else "%s"
        stored = conn.execute(
            f"SELECT count(*), count(DISTINCT uid) FROM mailtrack_events WHERE message_id = {mark} AND type = 'click'",
            (message_id,),
        ).fetchone()
        conn.close()
    ok = answer["statuses"].get("302", 0) == clicks and stored[0] == clicks and stored[1] == clicks and journaled == 0
    return {
        **answer,
        "stored_clicks": stored[0],
        "distinct_uids": stored[1],
        "journaled": journaled,
        "target": f"{clicks} x 302, exactly {clicks} stored, none journaled",
        "status": verdict(ok),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default="both", choices=["sqlite", "postgresql", "both"])
    ap.add_argument("--clicks", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=8, help="gthread threads per worker")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "concurrency", "inputs": {**vars(args), "workers": 2}}
    for kind in kinds(args.db):
        result[kind] = run_kind(kind, args.clicks, args.threads)
    result["status"] = "pass" if all(result[k]["status"] == "pass" for k in kinds(args.db)) else "miss"
    emit(result)
    return result


if __name__ == "__main__":
    main()
