"""Benchmark: a campaign sent through Celery workers against the in-process ``send-due``,
and the per-domain rate limit holding at the receiving end.

Same run, same database server, same SMTP sink (its own process, counting only):

1. ``send_due``: N scheduled messages sent by one process (today's cron path);
2. ``send_campaign`` through Celery: N messages of a campaign, one send task each (published
   by fan-out tasks of 500), sent by ``--workers`` worker processes (prefork) on the
   ``--broker``; timed from the call (enqueueing included) until the campaign's progress
   shows nothing queued or sending;
3. pacing: ``--paced`` messages to a domain limited to ``--limit`` (``pace.example``) and as
   many to an unlimited one, through the same workers; the sink's arrival times give the
   most sends in any sliding window of the limit's length (must not exceed the limit) and
   the rate achieved.

Messages are prepared with ``track_messages`` before each phase's clock starts. Phases 1 and 2
also report CPU milliseconds per message: of the sending processes (the ``send-due`` process;
the worker processes) and of the whole machine (database server, broker, sink and this
script's polling included; run it on an otherwise idle machine), hence messages a second per
core.

    .venv/bin/python bench/bench_queue.py [--n 2000] [--workers 2] [--broker redis|amqp]
        [--db postgresql|sqlite] [--paced 200] [--limit 40/s]
    .venv/bin/python bench/bench_queue.py --n 100000        # the issue's campaign size
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    PYTHON, ROOT, database, emit, group_cpu, machine_cpu, make_app, postgres_url, ratio, verdict,
)

BROKERS = {"redis": "redis://127.0.0.1:6379/0", "amqp": "amqp://guest:guest@127.0.0.1:5672//"}
HTML = '<p>Hello</p><p><a href="https://shop.example/offer?id=7">offer</a></p>'
PACED_DOMAIN = "pace.example"


class Sink:
    """The SMTP sink process: ``url`` while it runs, its counts after :meth:`stop`."""

    def __init__(self) -> None:
        self.out = tempfile.mktemp(suffix=".json", prefix="mt-sink-")
        self.proc = subprocess.Popen([PYTHON, str(ROOT / "bench" / "smtp_sink.py"), self.out],
                                     stdout=subprocess.PIPE, text=True)
        port = int(self.proc.stdout.readline())  # type: ignore[union-attr]
        self.url = f"smtp://127.0.0.1:{port}?timeout=30"

    def stop(self) -> dict[str, Any]:
        self.proc.terminate()
        self.proc.wait(30)
        with open(self.out) as fh:
            data = json.load(fh)
        os.remove(self.out)
        return data


def recipients(n: int, domain: str, tag: str) -> list[dict[str, str]]:
    return [{"contact_id": f"{tag}{i}", "email": f"{tag}{i}@{domain}"} for i in range(n)]


def prepare(app: Any, n: int, domain: str, tag: str, **kw: Any) -> float:
    """Store ``n`` messages in batches; return the seconds it took."""
    mt = app.config["BENCH_MAILTRACK"]
    t0 = time.perf_counter()
    with app.app_context():
        for start in range(0, n, 5000):
            mt.track_messages(recipients(min(5000, n - start), domain, f"{tag}{start}-"), subject="Bench",
                              html=HTML, **kw)
    return time.perf_counter() - t0


def phase_send_due(db_url: str, smtp_url: str, n: int) -> dict[str, Any]:
    from crm_mailtrack.services import sending
    from crm_mailtrack.state import get_state

    app = make_app(db_url, MAILTRACK_SMTP_URL=smtp_url, MAILTRACK_DEFAULT_SENDER="bench@example.com")
    prep = prepare(app, n, "example.com", "d", scheduled_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1))
    with app.app_context():
        t0, cpu0, machine0 = time.perf_counter(), time.process_time(), machine_cpu()
        handled = sending.send_due(get_state())
        seconds = time.perf_counter() - t0
        cpu, machine = time.process_time() - cpu0, machine_cpu() - machine0
        get_state().own_engine.dispose()
    return {"handled": handled, "seconds": round(seconds, 3), "msgs_per_s": round(handled / seconds, 1),
            "prepare_seconds": round(prep, 3), **cpu_per_message(cpu, machine, handled)}


def cpu_per_message(sender: float, machine: float, messages: int) -> dict[str, float | None]:
    """Milliseconds of CPU per message: of the sending processes alone, and of the whole
    machine (database server, broker and the sink included), from which the messages a
    second per core follow."""
    if not messages:
        return {"sender_cpu_ms_per_msg": None, "machine_cpu_ms_per_msg": None, "msgs_per_s_per_core": None}
    return {"sender_cpu_ms_per_msg": round(sender / messages * 1e3, 2),
            "machine_cpu_ms_per_msg": round(machine / messages * 1e3, 2),
            "msgs_per_s_per_core": round(messages / machine, 1) if machine else None}


def start_workers(env: dict[str, str], workers: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PYTHON, "-m", "celery", "-A", "bench.queue_app", "worker", "--pool", "prefork", "-c", str(workers),
         "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "WARNING",
         "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"],
        cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL, stderr=open(os.environ.get("BENCH_WORKER_LOG", os.devnull), "w"),
        start_new_session=True,  # one process group: its CPU is read with group_cpu
    )


def wait_workers(capp: Any, workers: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if capp.control.ping(timeout=1.0):
            return
    raise RuntimeError("the Celery workers did not answer a ping")


def wait_campaign(app: Any, campaign: str, total: int, timeout: float) -> dict[str, Any]:
    """Poll the campaign's progress until nothing is queued or sending.

    The progress query groups the campaign's rows, so it is polled every 0.2 s for small
    campaigns and about once a second for 100,000 (a query of tens of milliseconds five times
    a second would take a share of the CPU the workers are being measured on).
    """
    mt = app.config["BENCH_MAILTRACK"]
    interval = min(1.0, max(0.2, total / 100_000))
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + 60
    while True:
        with app.app_context():
            progress = mt.campaign_progress(campaign)
        if progress["total"] == total and progress["queued"] == 0 and progress["sending"] == 0:
            return progress
        if time.monotonic() > deadline:
            raise RuntimeError(f"campaign {campaign} not done after {timeout}s: {progress}")
        if time.monotonic() >= next_report:  # a long run shows it is moving (stderr)
            print(f"[bench_queue] {campaign}: {progress}", file=sys.stderr, flush=True)
            next_report = time.monotonic() + 60
        time.sleep(interval)


def max_in_window(times: list[float], window: float) -> int:
    """The most arrivals in any half-open sliding window of ``window`` seconds."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="messages per sending phase (100000: the issue's size)")
    parser.add_argument("--baseline-n", type=int, default=None,
                        help="messages of the send-due phase (default: --n); its rate is steady, so a "
                             "smaller baseline saves time on a 100,000-message run")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes (prefork)")
    parser.add_argument("--broker", choices=sorted(BROKERS), default="redis")
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--paced", type=int, default=200, help="messages to the rate-limited domain")
    parser.add_argument("--limit", default="40/s", help=f"the limit of {PACED_DOMAIN}")
    args = parser.parse_args()
    if args.db == "postgresql" and postgres_url() is None:
        parser.error("PostgreSQL is not reachable (set MAILTRACK_BENCH_POSTGRES_URL or use --db sqlite)")
    count, _, unit = args.limit.partition("/")
    window = {"s": 1, "m": 60, "h": 3600}[unit]
    limits = {PACED_DOMAIN: args.limit}
    sink = Sink()
    baseline_n = args.baseline_n or args.n
    result: dict[str, Any] = {"benchmark": "queue", "n": args.n, "baseline_n": baseline_n, "workers": args.workers,
                              "broker": args.broker, "db": args.db}
    try:
        with database(args.db, "sendd") as url:
            result["send_due"] = phase_send_due(url, sink.url, baseline_n)
        with database(args.db, "queue") as url:
            from bench.queue_app import build

            queue = f"mt-bench-{uuid.uuid4().hex[:8]}"
            app, capp = build(url, sink.url, BROKERS[args.broker], queue, limits)
            env = {**os.environ, "BENCH_DB_URL": url, "BENCH_SMTP_URL": sink.url, "BENCH_BROKER": BROKERS[args.broker],
                   "BENCH_QUEUE": queue, "BENCH_RATE_LIMITS": json.dumps(limits)}
            proc = start_workers(env, args.workers)
            try:
                wait_workers(capp, args.workers)
                mt = app.config["BENCH_MAILTRACK"]
                prep = prepare(app, args.n, "example.com", "q", campaign_id="bench")
                t0, cpu0, machine0 = time.perf_counter(), group_cpu(proc.pid), machine_cpu()
                with app.app_context():
                    mt.send_campaign("bench")
                enqueued = time.perf_counter() - t0
                done = wait_campaign(app, "bench", args.n, timeout=max(600, args.n / 10))
                seconds = time.perf_counter() - t0
                cpu, machine = group_cpu(proc.pid) - cpu0, machine_cpu() - machine0
                result["queue"] = {"sent": done["sent"], "failed": done["failed"], "seconds": round(seconds, 3),
                                   "enqueue_seconds": round(enqueued, 3),
                                   "msgs_per_s": round(done["sent"] / seconds, 1), "prepare_seconds": round(prep, 3),
                                   **cpu_per_message(cpu, machine, done["sent"])}

                prepare(app, args.paced, PACED_DOMAIN, "p", campaign_id="paced")
                prepare(app, args.paced, "free.example", "f", campaign_id="paced")
                t0 = time.perf_counter()
                with app.app_context():
                    mt.send_campaign("paced")
                done = wait_campaign(app, "paced", 2 * args.paced,
                                     timeout=60 + 3 * args.paced * window / int(count))
                result["pacing_seconds"] = round(time.perf_counter() - t0, 3)
            finally:
                proc.terminate()
                proc.wait(60)
                with app.app_context():
                    app.config["BENCH_MAILTRACK"]  # noqa: B018 - keep the app alive until here
    finally:
        stats = sink.stop()
    paced = stats["arrivals"].get(PACED_DOMAIN, [])
    free = stats["arrivals"].get("free.example", [])
    worst = max_in_window(paced, window) if paced else None
    aligned = max(Counter(int(t // window) for t in paced).values()) if paced else None
    span = (max(paced) - min(paced)) if len(paced) > 1 else None
    result["pacing"] = {
        "limit": args.limit, "messages": len(paced),
        "max_in_any_sliding_window": worst,
        "max_in_any_aligned_window": aligned,
        "achieved_per_s": round((len(paced) - 1) / span, 2) if span else None,
        "limit_per_s": round(int(count) / window, 2),
        "unlimited_domain_messages": len(free),
        "unlimited_domain_span_s": round(max(free) - min(free), 3) if len(free) > 1 else None,
    }
    result["ratio_queue_vs_send_due"] = ratio(result.get("queue", {}).get("msgs_per_s"),
                                              result["send_due"]["msgs_per_s"])
    result["sink_total"] = stats["count"]
    # Slots are reserved exactly (never more than the limit *started* per window); at the
    # receiver, SMTP latency jitter can move one arrival into a neighbour's window: +1.
    achieved = result["pacing"]["achieved_per_s"]
    result["verdict"] = verdict(
        worst is not None and worst <= int(count) + 1 and achieved is not None
        and achieved <= 1.02 * int(count) / window and result.get("queue", {}).get("sent") == args.n
        and result["send_due"]["handled"] == baseline_n
    )
    emit(result)


if __name__ == "__main__":
    main()
