"""Benchmark 1: click redirect and open pixel throughput under gunicorn (2 workers).

For each database (SQLite in WAL mode, PostgreSQL in a private schema) one gunicorn serves
the product's routes and two baselines (see ``server_app.py``); wrk (or a Python load
generator) drives each route in turn, in several interleaved rounds, so that the load
other processes put on the machine hits all of them alike. Targets: ours >= 0.85x the
minimal raw-driver route and >= 0.5x the bare redirect; p99 latency reported.

Clicks are measured twice: on a plain destination, and on a destination with ``utm_*``
parameters (what ``MAILTRACK_UTM_DEFAULTS`` makes of every link), where our human click also
writes the contact's UTM tag in its transaction; the minimal route stores the click alone.

    .venv/bin/python bench/bench_tracking.py [--db both] [--duration 3] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    Server, database, emit, group_cpu, have_wrk, kinds, load, make_app, proc_stat, ratio, raw_connect, verdict,
)
from bench.server_app import DEST, MIN_TABLE, min_table_ddl  # noqa: E402

#: A destination as ``MAILTRACK_UTM_DEFAULTS`` makes it: a human click also tags the contact.
DEST_UTM = DEST + "?utm_source=newsletter&utm_medium=email&utm_campaign=bench"
WHATS = ("click", "click_utm", "open")

TARGET_MIN = 0.85
TARGET_BARE = 0.5


def _prepare(url: str, messages: int) -> dict[str, list[str]]:
    """Create tables and ``messages`` tracked messages; the token paths of each route."""
    from crm_mailtrack.services.bulk import track_messages
    from crm_mailtrack.state import get_state

    app = make_app(url)
    mailtrack = app.config["BENCH_MAILTRACK"]
    clicks, utm_clicks, opens = [], [], []
    with app.app_context():
        ids = track_messages(get_state(), [{"contact_id": f"c{i}", "email": f"c{i}@example.com"}
                                           for i in range(messages)],
                             subject="Hi", campaign_id="bench", html=f'<html><body><a href="{DEST}">go</a></body></html>')
        for message_id in ids:
            clicks.append(mailtrack.click_url(message_id, DEST).split("/t/c/", 1)[1])
            utm_clicks.append(mailtrack.click_url(message_id, DEST_UTM).split("/t/c/", 1)[1])
            opens.append(mailtrack.open_url(message_id).split("/t/o/", 1)[1])
        get_state().own_engine.dispose()
    conn = raw_connect(url)
    conn.execute(min_table_ddl("sqlite" if url.startswith("sqlite") else "postgresql"))
    conn.commit()
    conn.close()
    return {
        "bare_click": [f"/bare/c/{t}" for t in clicks],
        "min_click": [f"/min/c/{t}" for t in clicks],
        "ours_click": [f"/mailtrack/t/c/{t}" for t in clicks],
        "bare_click_utm": [f"/bare/c/{t}" for t in utm_clicks],
        "min_click_utm": [f"/min/c/{t}" for t in utm_clicks],
        "ours_click_utm": [f"/mailtrack/t/c/{t}" for t in utm_clicks],
        "bare_open": [f"/bare/o/{t}" for t in opens],
        "min_open": [f"/min/o/{t}" for t in opens],
        "ours_open": [f"/mailtrack/t/o/{t}" for t in opens],
    }


def _db_backends(url: str, app_name: str | None) -> dict[int, int]:
    """CPU ticks of each PostgreSQL backend serving the gunicorn workers (their connections
    carry ``application_name``); empty for SQLite, which runs inside the workers (its cost
    is already in :func:`_server_cpu`). The database server must be on this machine."""
    if app_name is None:
        return {}
    conn = raw_connect(url)
    try:
        pids = [int(r[0]) for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app_name,)).fetchall()]
    finally:
        conn.close()
    stats = {pid: proc_stat(pid) for pid in pids}
    return {pid: stat[1] for pid, stat in stats.items() if stat is not None}


def _server_cpu(server: Server) -> float:
    """CPU seconds (user + system) used so far by the gunicorn master and workers (one
    process group). Per request it is a second view of the cost, steadier than throughput
    when other work on the machine comes and goes; with PostgreSQL the database server's
    own CPU is not in it."""
    assert server.proc is not None
    return group_cpu(server.proc.pid)


def _measured(server: Server, paths: list[str], args: argparse.Namespace, url: str,
              app_name: str | None) -> dict[str, Any]:
    cpu0, db0 = _server_cpu(server), _db_backends(url, app_name)
    run = load(server.base, paths, duration=args.duration, connections=args.connections)
    cpu1, db1 = _server_cpu(server), _db_backends(url, app_name)
    requests = max(run["requests"], 1)
    run["server_cpu_us"] = round((cpu1 - cpu0) / requests * 1e6, 1)
    # backends present before and after (pooled connections live for the whole run)
    db_ticks = sum(db1[pid] - db0[pid] for pid in db0.keys() & db1.keys())
    run["db_cpu_us"] = round(db_ticks / os.sysconf("SC_CLK_TCK") / requests * 1e6, 1)
    return run


def _count(url: str, sql: str) -> int:
    conn = raw_connect(url)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def run_kind(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with database(kind, "tracking") as url:
        paths = _prepare(url, args.messages)
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
        # the server's PostgreSQL connections are told apart by their application_name
        app_name = f"mtbench{os.getpid()}" if kind == "postgresql" else None
        server_url = url if app_name is None else f"{url}&application_name={app_name}"
        with Server(server_url, workers=args.workers) as server:
            for name, p in paths.items():  # warm-up: imports, pools, prepared statements
                load(server.base, p, duration=1, connections=args.connections)
            for _ in range(args.rounds):
                for name, p in paths.items():
                    rounds[name].append(_measured(server, p, args, url, app_name))
            journaled = server.journal_lines()
            server.cleanup_journal()
        # ours always sets the idempotency uid; the minimal route does not
        stored_ours = _count(url, "SELECT count(*) FROM mailtrack_events WHERE uid IS NOT NULL")
        stored_min = _count(url, "SELECT count(*) FROM mailtrack_events WHERE uid IS NULL") + _count(
            url, f"SELECT count(*) FROM {MIN_TABLE}")
        utm_tags = _count(url, "SELECT count(*) FROM mailtrack_utm_tags")

    def summary(name: str) -> dict[str, Any]:
        runs = rounds[name]
        return {
            "rps_median": statistics.median(r["rps"] for r in runs),
            "p50_ms_median": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms_median": statistics.median(r["p99_ms"] for r in runs),
            "requests": sum(r["requests"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "rounds_rps": [r["rps"] for r in runs],
            "server_cpu_us_per_request_median": statistics.median(r["server_cpu_us"] for r in runs),
            "db_cpu_us_per_request_median": statistics.median(r["db_cpu_us"] for r in runs),
        }

    out: dict[str, Any] = {"routes": {name: summary(name) for name in paths}}
    for what in WHATS:
        ours, mini, bare = (rounds[f"{k}_{what}"] for k in ("ours", "min", "bare"))
        # ratio per round (same moment, same load), then the median over rounds
        vs_min = statistics.median(ratio(o["rps"], m["rps"]) for o, m in zip(ours, mini))
        vs_bare = statistics.median(ratio(o["rps"], b["rps"]) for o, b in zip(ours, bare))
        errors = sum(r["errors"] for r in ours + mini + bare)
        out[what] = {
            "ours_vs_minimal": vs_min,
            "ours_vs_bare": vs_bare,
            "minimal_vs_bare": statistics.median(ratio(m["rps"], b["rps"]) for m, b in zip(mini, bare)),
            # the same comparisons by gunicorn CPU per request (minimal's / ours: 1 = as cheap)
            "cpu_minimal_over_ours": statistics.median(
                ratio(m["server_cpu_us"], o["server_cpu_us"]) for o, m in zip(ours, mini)),
            "cpu_bare_over_ours": statistics.median(
                ratio(b["server_cpu_us"], o["server_cpu_us"]) for o, b in zip(ours, bare)),
            "ours_p99_ms": out["routes"][f"ours_{what}"]["p99_ms_median"],
            "minimal_p99_ms": out["routes"][f"min_{what}"]["p99_ms_median"],
            "bare_p99_ms": out["routes"][f"bare_{what}"]["p99_ms_median"],
            "target": f">= {TARGET_MIN}x minimal and >= {TARGET_BARE}x bare, no errors",
            "status": verdict(vs_min >= TARGET_MIN and vs_bare >= TARGET_BARE and errors == 0),
        }
    # Capacity: requests one core serves, from CPU per request (the app's, plus on
    # PostgreSQL the database backends'); steadier than throughput on a shared machine.
    out["per_core"] = {}
    for what in WHATS:
        r = out["routes"][f"ours_{what}"]
        app_us, db_us = r["server_cpu_us_per_request_median"], r["db_cpu_us_per_request_median"]
        out["per_core"][what] = {
            "app_cpu_us": app_us, "db_cpu_us": db_us,
            "per_second_per_app_core": round(1e6 / app_us) if app_us else None,
            "per_second_per_core_app_and_db": round(1e6 / (app_us + db_us)) if app_us + db_us else None,
        }
    out["rows_stored"] = {"ours_events": stored_ours, "minimal": stored_min, "journaled": journaled,
                          "utm_tags": utm_tags}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default="both", choices=["sqlite", "postgresql", "both"])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per route per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--messages", type=int, default=50, help="distinct tokens rotated over")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {
        "benchmark": "tracking_throughput",
        "inputs": {**vars(args), "load_generator": "wrk" if have_wrk() else "python-threads",
                   "server": f"gunicorn sync, {args.workers} workers, loopback",
                   "minimal_route": "itsdangerous verify + one raw-driver INSERT .. VALUES into "
                                    + ("a table without secondary indexes" if os.environ.get("MIN_TABLE") == "plain"
                                       else "mailtrack_events (same table and indexes as ours)")
                                    + " + commit + redirect",
                   "sqlite": "WAL, synchronous=NORMAL (the product's own engine settings), same for both"},
    }
    for kind in kinds(args.db):
        result[kind] = run_kind(kind, args)
    statuses = [result[k][w]["status"] for k in kinds(args.db) for w in WHATS]
    result["status"] = "pass" if all(s == "pass" for s in statuses) else "miss"
    emit(result)
    return result


if __name__ == "__main__":
    main()
