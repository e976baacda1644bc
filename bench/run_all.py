"""Run every benchmark and write ``bench/results.json`` (the figures of the README).

Each benchmark runs in its own process (so one's memory or server never skews another)
and prints one JSON object; this collects them with the wall time each took.

    .venv/bin/python bench/run_all.py            # full sizes (1M events, 1M CSV rows)
    .venv/bin/python bench/run_all.py --quick    # small sizes, ~3 minutes (bench/.data/results-quick.json)
    .venv/bin/python bench/run_all.py --only tracking reports   # re-run some, keep the others' figures
    make bench                                   # the same as the first line
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

FULL: list[tuple[str, list[str]]] = [
    ("tracking", ["bench_tracking.py", "--duration", "3", "--rounds", "3", "--messages", "2000"]),
    ("instrumenting", ["bench_instrument.py", "--recipients", "10000"]),
    ("concurrency", ["bench_concurrency.py", "--clicks", "1000"]),
    ("reports", ["bench_reports.py", "--events", "1000000", "--messages", "50000", "--repeat", "5"]),
    ("csv_export", ["bench_csv.py", "--rows", "1000000"]),
    ("insights", ["bench_insights.py", "--events", "1000000", "--messages", "50000"]),
    ("reports_pagination_sqlite", ["bench_reports_pagination.py", "--db", "sqlite"]),
    ("reports_pagination_postgresql", ["bench_reports_pagination.py", "--db", "postgresql"]),
    ("queries", ["bench_queries.py", "--messages", "50"]),
    ("inbound", ["bench_inbound.py", "--messages", "10000"]),
    ("esp_webhooks", ["bench_esp.py", "--batch", "1000", "--rounds", "5", "--notifications", "300"]),
    ("queue", ["bench_queue.py", "--n", "2000"]),
]
QUICK: list[tuple[str, list[str]]] = [
    ("tracking", ["bench_tracking.py", "--duration", "1", "--rounds", "2", "--messages", "200"]),
    ("instrumenting", ["bench_instrument.py", "--recipients", "1000", "--rounds", "7", "--sample", "100"]),
    ("concurrency", ["bench_concurrency.py", "--clicks", "300"]),
    ("reports", ["bench_reports.py", "--events", "50000", "--messages", "10000", "--page", "100", "--repeat", "3"]),
    ("csv_export", ["bench_csv.py", "--rows", "20000"]),
    ("insights", ["bench_insights.py", "--events", "50000", "--messages", "10000", "--repeat", "3"]),
    ("reports_pagination_sqlite", ["bench_reports_pagination.py", "--db", "sqlite", "--events", "5000"]),
    ("reports_pagination_postgresql", ["bench_reports_pagination.py", "--db", "postgresql", "--events", "5000"]),
    ("queries", ["bench_queries.py", "--messages", "12"]),
    ("inbound", ["bench_inbound.py", "--messages", "1000"]),
    ("esp_webhooks", ["bench_esp.py", "--batch", "200", "--rounds", "2", "--notifications", "50"]),
    ("queue", ["bench_queue.py", "--n", "300", "--paced", "60", "--limit", "20/s"]),
]


def run(name: str, argv: list[str]) -> dict[str, Any]:
    script = BENCH / argv[0]
    if not script.exists():
        return {"status": "not-yet-available", "reason": f"{argv[0]} is not in the tree yet"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), *argv[1:]], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = round(time.perf_counter() - t0, 1)
    print(f"  {name}: {seconds} s, exit {proc.returncode}", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        return {"status": "error", "seconds": seconds, "stderr": proc.stderr[-3000:]}
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"status": "error", "seconds": seconds, "stdout": proc.stdout[-3000:]}
    out.setdefault("status", "reported")
    out["seconds"] = seconds
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the figures)")
    ap.add_argument("--only", nargs="*", help="names of benchmarks to run")
    ap.add_argument("--output", help="default bench/results.json (--quick: bench/.data/results-quick.json)")
    args = ap.parse_args(argv)
    if args.output is None:  # a smoke run never overwrites the figures the README quotes
        args.output = str(BENCH / ".data" / "results-quick.json") if args.quick else str(BENCH / "results.json")
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    plan = QUICK if args.quick else FULL
    if args.only:
        plan = [(n, a) for n, a in plan if n in args.only]
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "command": "make bench" if not args.quick else ".venv/bin/python bench/run_all.py --quick",
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_start": os.getloadavg(), "wrk": bool(shutil.which("wrk"))},
        "benchmarks": {},
    }
    previous = Path(args.output)
    if args.only and previous.exists():  # re-running some: keep the others' latest figures
        old = json.loads(previous.read_text())
        results["benchmarks"] = old.get("benchmarks", {})
        results["rerun"] = {"only": args.only, "at": results["started_at"], "first_run": old.get("started_at")}
        results["started_at"] = old.get("started_at", results["started_at"])
        results["full_run_total_seconds"] = old.get("total_seconds", old.get("full_run_total_seconds"))
    for name, bench_argv in plan:
        results["benchmarks"][name] = run(name, bench_argv)
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    if args.only and previous.exists():
        results["total_seconds"] = None  # see each benchmark's own "seconds"
    results["summary"] = {name: r.get("status") for name, r in results["benchmarks"].items()}
    Path(args.output).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(results["summary"], indent=2))
    return results


if __name__ == "__main__":
    main()
