"""Profile the click and open routes in-process (no server, no network): CPU per request of
ours against the minimal raw-driver baseline, and optionally a pyinstrument profile.

    .venv/bin/python bench/profile_click.py [--db sqlite] [--n 2000] [--profile click]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import USER_AGENT, database, emit, kinds, ratio  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql", "both"])
    ap.add_argument("--n", type=int, default=1000, help="requests per timing batch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", choices=["click", "click_utm", "open"], help="print a pyinstrument profile of ours")
    args = ap.parse_args(argv)
    from bench.bench_tracking import _prepare

    result: dict[str, Any] = {"benchmark": "profile_click", "inputs": vars(args)}
    for kind in kinds(args.db):
        with database(kind, "profile") as url:
            paths = _prepare(url, 20)
            os.environ["BENCH_DATABASE_URL"] = url
            from bench.server_app import create_app

            client = create_app().test_client()

            def hitter(name: str) -> Any:
                p = paths[name]

                def run() -> None:
                    for i in range(args.n):
                        client.get(p[i % len(p)], headers={"User-Agent": USER_AGENT})
                return run

            for name in paths:  # warm-up
                hitter(name)()
            if args.profile:
                from pyinstrument import Profiler

                prof = Profiler(interval=0.0005)
                prof.start()
                hitter(f"ours_{args.profile}")()
                prof.stop()
                print(prof.output_text(unicode=False, color=False, show_all=bool(os.environ.get("PROFILE_ALL"))), file=sys.stderr)
            wall: dict[str, list[float]] = {k: [] for k in paths}
            cpu: dict[str, list[float]] = {k: [] for k in paths}
            for _ in range(args.rounds):  # interleaved: load changes hit every route alike
                for name in paths:
                    w0, c0 = time.perf_counter(), time.process_time()
                    hitter(name)()
                    wall[name].append((time.perf_counter() - w0) / args.n * 1e6)
                    cpu[name].append((time.process_time() - c0) / args.n * 1e6)
            us = {k: round(statistics.median(v), 1) for k, v in wall.items()}
            cpu_us = {k: round(statistics.median(v), 1) for k, v in cpu.items()}
            result[kind] = {
                "wall_us_per_request": us,
                "cpu_us_per_request": cpu_us,
                "click_ours_over_min_cpu": ratio(cpu_us["ours_click"], cpu_us["min_click"]),
                "open_ours_over_min_cpu": ratio(cpu_us["ours_open"], cpu_us["min_open"]),
                "click_utm_ours_over_min_cpu": ratio(cpu_us["ours_click_utm"], cpu_us["min_click_utm"]),
            }
    emit(result)
    return result


if __name__ == "__main__":
    main()
