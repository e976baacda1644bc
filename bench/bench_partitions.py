"""The event log on PostgreSQL, partitioned by month against unpartitioned (issue 17).

Two schemas of one PostgreSQL database get the same ``--n`` events spread evenly over the
twelve months of 2025 (``generate_series``, deterministic): one at the current head
(``mailtrack_events`` partitioned by month, twelve monthly partitions plus the default
one), one at revision 0006 (the unpartitioned table an existing installation has). Both
are driven through the product's own services, on its own engine:

* purge of the oldest month (``privacy.purge``): on the partitioned table it rolls the
  month up and drops its partition; on the unpartitioned one it rolls up and DELETEs the
  same rows, day by day (what purge always did);
* a campaign report (``reports.campaign_report``, ``created_since`` = the last month, one
  page of 500) and analytics scanned from raw events over one month
  (``analytics(..., use_cells=False)``) and the all-time analytics from the cells.

Times are medians of ``--repeat`` interleaved runs; ratios are partitioned / unpartitioned
(below 1: partitioned is faster). The purge runs once per schema (it changes the data).

    .venv/bin/python bench/bench_partitions.py --n 2000000
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from bench._common import DEFAULT_PG, emit, ratio  # noqa: E402

UTC = dt.timezone.utc
YEAR = dt.datetime(2025, 1, 1, tzinfo=UTC)
SECONDS = int((dt.datetime(2026, 1, 1, tzinfo=UTC) - YEAR).total_seconds())
CAMPAIGNS = 50
INDEXES = ("ix_mailtrack_events_campaign", "ix_mailtrack_events_contact", "ix_mailtrack_events_message",
           "ix_mailtrack_events_tenant_time", "ix_mailtrack_events_honeypot", "ix_mailtrack_events_unfolded")


def schema_url(base: str, schema: str) -> str:
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"


def load(engine: sa.Engine, n: int, messages: int) -> float:
    """``n`` events over 2025 (and ``messages`` SENT messages), indexes rebuilt after the
    load as a bulk load does; returns the seconds it took."""
    started = time.perf_counter()
    with engine.begin() as conn:
        defs = dict(conn.execute(sa.text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'mailtrack_events' "
            "AND schemaname = current_schema()")).all())
        for name in INDEXES:
            conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))
        conn.execute(sa.text(
            "INSERT INTO mailtrack_messages (id, tenant_id, contact_id, email, subject, headers, status, "
            "campaign_id, track_opens, track_clicks, created_at, updated_at, sent_at) "
            "SELECT 'm' || g, '', 'c' || (g % 100000), 'c' || g || '@example.com', 's', '{}', 'SENT', "
            "'camp-' || (g % :camps), true, true, t, t, t FROM generate_series(1, :m) g, "
            "LATERAL (SELECT :start + make_interval(secs => (g::bigint * 7919 % :secs)) AS t) x"),
            {"m": messages, "camps": CAMPAIGNS, "start": YEAR, "secs": SECONDS})
        conn.execute(sa.text(
            "INSERT INTO mailtrack_events (tenant_id, type, contact_id, message_id, campaign_id, link_id, "
            "occurred_at, is_machine, machine_reason, folded_as) "
            "SELECT '', (ARRAY['send','open','open','click','click','bounce','forward'])[1 + g % 7], "
            "'c' || (g % 100000), 'm' || (1 + g % :m), 'camp-' || ((1 + g % :m) % :camps), "
            "CASE WHEN g % 7 IN (3, 4) THEN 'l' || (g % 10) END, "
            ":start + make_interval(secs => (g::bigint * 104729 % :secs)), g % 10 = 0, "
            "CASE WHEN g % 10 = 0 THEN 'scanner-ua' END, g % 10 = 0 FROM generate_series(1, :n) g"),
            {"n": n, "m": messages, "camps": CAMPAIGNS, "start": YEAR, "secs": SECONDS})
        for name in INDEXES:
            if name in defs:  # (a partitioned parent's definition reads "ON ONLY": not what we want)
                conn.execute(sa.text(defs[name].replace(" ON ONLY ", " ON ")))
        conn.execute(sa.text("ANALYZE mailtrack_events"))
        conn.execute(sa.text("ANALYZE mailtrack_messages"))
    return time.perf_counter() - started


def setup(base: str, schema: str, partitioned: bool, n: int, messages: int) -> tuple[Any, dict[str, Any]]:
    from flask import Flask

    from crm_mailtrack import MailTrack
    from crm_mailtrack import migrate
    from crm_mailtrack.services import partitions

    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    url = schema_url(base, schema)
    engine = sa.create_engine(url)
    if partitioned:
        migrate.upgrade(engine)
        with engine.begin() as conn:  # exactly the twelve months of 2025 (and the default)
            for part in partitions.partitions(conn):
                if not part.is_default:
                    conn.execute(sa.text(f'DROP TABLE "{part.name}"'))
            month = YEAR
            for _ in range(12):
                partitions.create_month(conn, month)
                month = partitions.next_month(month)
    else:
        migrate.upgrade(engine, "0006_mailtrack_contact_email")
    seconds = load(engine, n, messages)
    engine.dispose()
    app = Flask(f"bench_{schema}")
    app.config.update(SECRET_KEY="bench-secret-key-0123456789abcdef", MAILTRACK_DATABASE_URI=url,
                      MAILTRACK_BASE_URL="http://127.0.0.1", MAILTRACK_JOURNAL_PATH=f"/tmp/{schema}.jsonl")
    MailTrack(app)
    return app, {"load_s": round(seconds, 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2_000_000, help="events (10,000,000 is the issue's figure)")
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--url", default=DEFAULT_PG)
    ap.add_argument("--keep", action="store_true", help="keep the two schemas afterwards")
    args = ap.parse_args(argv)

    from crm_mailtrack.services import privacy, reports, stats
    from crm_mailtrack.services.analytics import analytics

    tag = uuid.uuid4().hex[:6]
    apps: dict[str, Any] = {}
    result: dict[str, Any] = {"benchmark": "partitions", "events": args.n, "messages": args.messages,
                              "months": 12, "repeat": args.repeat, "variants": {}}
    for name, partitioned in (("partitioned", True), ("unpartitioned", False)):
        apps[name], info = setup(args.url, f"bench_{name}_{tag}", partitioned, args.n, args.messages)
        result["variants"][name] = info

    last_month = dt.datetime(2025, 12, 1, tzinfo=UTC)
    june = (dt.datetime(2025, 6, 1, tzinfo=UTC), dt.datetime(2025, 7, 1, tzinfo=UTC))
    calls: dict[str, dict[str, Any]] = {}
    for name, app in apps.items():
        state = app.extensions["mailtrack"]
        with app.app_context():
            started = time.perf_counter()
            stats.fold(state)  # builds the analytics cells once (not part of any timing below)
            result["variants"][name]["cells_build_s"] = round(time.perf_counter() - started, 1)
        calls[name] = {
            "campaign_report_last_month": lambda s=state: reports.campaign_report(
                s, "", "camp-7", "open", created_since=last_month, include_bots=True, limit=500),
            "analytics_one_month_scan": lambda s=state: analytics(
                s, "", date_from=june[0], date_to=june[1], include_bots=True, use_cells=False),
            "analytics_all_time_cells": lambda s=state: analytics(s, "", include_bots=True),
        }
    timings: dict[str, dict[str, list[float]]] = {n: {k: [] for k in calls[n]} for n in calls}
    for _ in range(args.repeat):  # interleaved: the machine is shared and noisy
        for name, app in apps.items():
            with app.app_context():
                for key, fn in calls[name].items():
                    started = time.perf_counter()
                    fn()
                    timings[name][key].append((time.perf_counter() - started) * 1000)
    for name in apps:
        for key, samples in timings[name].items():
            result["variants"][name][f"{key}_ms"] = round(statistics.median(samples), 2)

    # the purge of January (cutoff 2025-02-01): drop versus delete, once each
    now = dt.datetime(2026, 1, 1, tzinfo=UTC)
    days = (now - dt.datetime(2025, 2, 1, tzinfo=UTC)).days
    for name, app in apps.items():
        state = app.extensions["mailtrack"]
        with app.app_context():
            with state.engine.connect() as conn:
                before = conn.execute(sa.text("SELECT count(*) FROM mailtrack_events")).scalar()
            started = time.perf_counter()
            deleted = privacy.purge(state, days, now=now)
            seconds = time.perf_counter() - started
            with state.engine.connect() as conn:
                after = conn.execute(sa.text("SELECT count(*) FROM mailtrack_events")).scalar()
                rolled = conn.execute(sa.text("SELECT coalesce(sum(count), 0) FROM mailtrack_event_rollups")).scalar()
        result["variants"][name].update(purge_month_s=round(seconds, 3), purge_deleted=deleted,
                                        purge_rows_before=before, purge_rows_after=after, purge_rolled_up=int(rolled))
    p, u = result["variants"]["partitioned"], result["variants"]["unpartitioned"]
    result["ratios_partitioned_over_unpartitioned"] = {
        key: ratio(p[key], u[key]) for key in p if key.endswith(("_ms", "_s")) and key in u}
    result["same_rows_purged"] = p["purge_deleted"] == u["purge_deleted"] and p["purge_rolled_up"] == u["purge_rolled_up"]
    if not args.keep:
        admin = sa.create_engine(args.url)
        with admin.begin() as conn:
            for name in apps:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "bench_{name}_{tag}" CASCADE'))
        admin.dispose()
    emit(result)
    return result


if __name__ == "__main__":
    main()
