"""Benchmark: what ``send_campaign`` costs the caller with a task queue, fanned out in chunks
(``init_celery(fanout_chunk=500)``, the default) against one published task per message.

N messages of one campaign are stored once; then, in interleaved rounds, ``send_campaign``
is timed with each setting (no worker runs: the messages stay ``PENDING``, so each round
publishes them all again; the queue is purged after each). The figure is the time the
request or cron job that starts a campaign spends publishing.

    .venv/bin/python bench/bench_enqueue.py [--n 20000] [--rounds 3] [--broker redis|amqp] [--db postgresql|sqlite]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import database, emit, make_app, postgres_url, ratio, verdict  # noqa: E402
from bench.bench_queue import BROKERS, HTML, recipients  # noqa: E402


def build(url: str, broker: str, chunk: int) -> tuple[Any, Any]:
    from celery import Celery

    app = make_app(url, MAILTRACK_SMTP_URL="smtp://127.0.0.1:9", MAILTRACK_DEFAULT_SENDER="bench@example.com")
    capp = Celery("bench", broker=broker, set_as_current=False)
    capp.conf.update(task_default_queue=f"mt-bench-enq-{uuid.uuid4().hex[:8]}", broker_heartbeat=0)
    app.config["BENCH_MAILTRACK"].init_celery(capp, app, fanout_chunk=chunk)
    return app, capp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broker", choices=sorted(BROKERS), default="redis")
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    args = parser.parse_args()
    if args.db == "postgresql" and postgres_url() is None:
        parser.error("PostgreSQL is not reachable")
    times: dict[str, list[float]] = {"fan_out_500": [], "per_message": []}
    with database(args.db, "enqueue") as url:
        apps = {"fan_out_500": build(url, BROKERS[args.broker], 500),
                "per_message": build(url, BROKERS[args.broker], args.n + 1)}
        app0 = apps["fan_out_500"][0]
        with app0.app_context():
            mt = app0.config["BENCH_MAILTRACK"]
            for start in range(0, args.n, 5000):
                mt.track_messages(recipients(min(5000, args.n - start), "example.com", f"e{start}-"),
                                  subject="Bench", html=HTML, campaign_id="enq")
        for _ in range(args.rounds):
            for name, (app, capp) in apps.items():
                with app.app_context():
                    t0 = time.perf_counter()
                    progress = app.config["BENCH_MAILTRACK"].send_campaign("enq")
                    times[name].append(time.perf_counter() - t0)
                assert progress["queued"] == args.n, progress
                capp.control.purge()
        for app, capp in apps.values():
            capp.close()
    med = {name: statistics.median(ts) for name, ts in times.items()}
    result = {
        "benchmark": "enqueue", "n": args.n, "broker": args.broker, "db": args.db, "rounds": args.rounds,
        "seconds": {name: [round(t, 3) for t in ts] for name, ts in times.items()},
        "median_seconds": {name: round(t, 3) for name, t in med.items()},
        "publishes_per_s_per_message": round(args.n / med["per_message"], 1),
        "ratio_fan_out_vs_per_message": ratio(med["fan_out_500"], med["per_message"]),
        "target": "fan-out under 0.2x the per-message publishing",
    }
    result["verdict"] = verdict(result["ratio_fan_out_vs_per_message"] is not None
                                and result["ratio_fan_out_vs_per_message"] < 0.2)
    emit(result)


if __name__ == "__main__":
    main()
