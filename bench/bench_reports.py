"""Benchmark 3: reports at scale (1,000,000 events by default; ``--events`` for quick runs).

Data from ``gen_events.py``. Everything is timed through the JSON API (Flask test client,
so routing, parsing and dumping are included) against a baseline run in the same process
on the same database, interleaved:

* analytics (``/api/communications/analytics``) <= 2x ``SELECT count(*) FROM mailtrack_events``.
  Analytics reads pre-aggregated cells kept exact by folding changes in (services/stats.py),
  so three figures are reported: building the cells from the generated data once (the
  migration's or a bulk import's cost), a call with nothing new to fold (the target), and
  a call after ``--fresh`` new opens and clicks arrived (it folds them first);
* a campaign report's page 1,000 (``/api/campaigns/camp-0/tracking/clicks``, 100 a page,
  reached with a real signed cursor) <= 1.5x its page 1;
* one contact's activity (``/api/contacts/<id>/activity``): served by the contact index,
  so its cost follows the contact's own events, not the table (plan shown).

The SQL the API ran is captured and its EXPLAIN (PostgreSQL: ANALYZE) / EXPLAIN QUERY PLAN
is included in the output.

    .venv/bin/python bench/bench_reports.py [--db both] [--events 1000000] [--messages 100000]
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import database, emit, explain, kinds, make_app, ratio, raw_connect, verdict  # noqa: E402
from bench.gen_events import HOT_CAMPAIGN, generate  # noqa: E402

TOKEN = "bench-token"
API = "/mailtrack/api"
LIMIT = 100
TARGET_ANALYTICS = 2.0
TARGET_DEEP = 1.5


class _Capture:
    """Statements the engine runs while active (to EXPLAIN what the API really ran)."""

    def __init__(self, engine: Any) -> None:
        import sqlalchemy as sa

        self.engine, self.sa = engine, sa
        self.statements: list[tuple[str, Any]] = []
        self.active = False
        sa.event.listen(engine, "before_cursor_execute", self._hook)

    def _hook(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if self.active:
            self.statements.append((statement, parameters))

    def run(self, fn: Any) -> list[tuple[str, Any]]:
        self.statements, self.active = [], True
        try:
            fn()
        finally:
            self.active = False
        return self.statements


def _plans(url: str, statements: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    out = []
    conn = raw_connect(url)
    try:
        for sql, params in statements:
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            out.append({"sql": " ".join(sql.split())[:600], "plan": explain(conn, sql, params)})
    finally:
        conn.close()
    return out


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def _deep_cursor(app: Any, url: str, page: int) -> str | None:
    """The signed cursor the API hands out for ``page`` of camp-0's clicks (100 a page):
    the position of the last row of the page before it, found once with OFFSET."""
    from crm_mailtrack.api import pagination

    sqlite = url.startswith("sqlite")
    conn = raw_connect(url)
    false = "0" if sqlite else "false"
    row = conn.execute(
        f"SELECT occurred_at, id FROM mailtrack_events WHERE tenant_id = '' AND campaign_id = '{HOT_CAMPAIGN}' "
        f"AND type = 'click' AND is_machine = {false} ORDER BY occurred_at DESC, id DESC "
        f"LIMIT 1 OFFSET {(page - 1) * LIMIT - 1}"
    ).fetchone()
    conn.close()
    if row is None:
        return None
    at = row[0] if isinstance(row[0], dt.datetime) else dt.datetime.fromisoformat(row[0])
    at = at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)
    scope = {"r": "campaign", "t": "", "c": HOT_CAMPAIGN, "k": "clicks", "ln": None,
             "l": LIMIT, "b": False, "cs": None}
    with app.app_context():
        return pagination.encode_cursor(scope, [at, row[1]])


def _add_events(conn: Any, kind: str, n: int, messages: int, round_no: int) -> None:
    """``n`` open/click events now on pseudo-random messages (one transaction)."""
    import random

    rng = random.Random(round_no)
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for i in range(n):
        j = rng.randrange(messages)
        typ = "click" if i % 2 else "open"
        rows.append(("", typ, f"contact-{j % 50_000}", f"m{j:011d}", HOT_CAMPAIGN if j % 2 == 0 else "camp-1",
                     (now if kind == "postgresql" else now.replace(tzinfo=None).isoformat(sep=" ")),
                     rng.random() < 0.1))
    sql = ("INSERT INTO mailtrack_events (tenant_id, type, contact_id, message_id, campaign_id, occurred_at, "
           "is_machine) VALUES ({})").format(", ".join(["?" if kind == "sqlite" else "%s"] * 7))
    if kind == "sqlite":
        conn.executemany(sql, rows)
    else:
        with conn.cursor() as cur:
            cur.executemany(sql, rows)
    conn.commit()


def run_kind(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    from crm_mailtrack.state import get_state

    with database(kind, "reports") as url:
        app = make_app(url, MAILTRACK_API_TOKENS=[TOKEN])
        gen = generate(url, events=args.events, messages=args.messages)
        client = app.test_client()
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
        with app.app_context():
            engine = get_state().engine
        capture = _Capture(engine)

        clicks_url = f"{API}/campaigns/{HOT_CAMPAIGN}/tracking/clicks?limit={LIMIT}"
        conn = raw_connect(url)
        false = "0" if kind == "sqlite" else "false"
        human_clicks = conn.execute(
            f"SELECT count(*) FROM mailtrack_events WHERE campaign_id = '{HOT_CAMPAIGN}' AND type = 'click' "
            f"AND is_machine = {false}").fetchone()[0]
        contact = "contact-7"
        contact_events = conn.execute(
            f"SELECT count(*) FROM mailtrack_events WHERE contact_id = '{contact}'").fetchone()[0]
        conn.close()
        pages = max(1, (human_clicks - 1) // LIMIT + 1)
        deep_page = min(args.page, pages)
        deep = _deep_cursor(app, url, deep_page) if deep_page > 1 else None
        deep_url = f"{API}/campaigns/{HOT_CAMPAIGN}/tracking/clicks?next={deep}" if deep else clicks_url

        def get(path: str) -> Any:
            resp = client.get(path, headers=headers)
            assert resp.status_code == 200, (path, resp.status_code, resp.get_data(as_text=True)[:300])
            return resp

        count_conn = engine.connect()

        def count_star() -> None:
            count_conn.exec_driver_sql("SELECT count(*) FROM mailtrack_events").scalar()

        from crm_mailtrack.services import stats

        t0 = time.perf_counter()
        with app.app_context():
            built = stats.fold(get_state())
        build_seconds = round(time.perf_counter() - t0, 2)
        fresh_conn = raw_connect(url)
        fresh_round = [0]

        def add_fresh() -> None:
            """``--fresh`` opens and clicks on random messages, as the tracking routes write them."""
            fresh_round[0] += 1
            _add_events(fresh_conn, kind, args.fresh, args.messages, fresh_round[0])

        def fresh_analytics() -> None:
            add_fresh()
            t = time.perf_counter()
            get(f"{API}/communications/analytics")
            fresh_samples.append(time.perf_counter() - t)

        fresh_samples: list[float] = []

        calls = {
            "count_star": count_star,
            "analytics": lambda: get(f"{API}/communications/analytics"),
            "report_page_1": lambda: get(clicks_url),
            "report_page_deep": lambda: get(deep_url),
            "contact_activity": lambda: get(f"{API}/contacts/{contact}/activity?limit=30"),
        }
        for fn in calls.values():  # warm-up (caches, prepared statements)
            fn()
        samples: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(args.repeat):
            for name, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
        for _ in range(args.repeat):
            fresh_analytics()
        fresh_conn.close()
        count_conn.close()
        # the cells agree with a scan of the raw rows (the definition) after all of it
        with app.app_context():
            from crm_mailtrack.services.analytics import analytics as analytics_fn

            t0 = time.perf_counter()
            scanned = analytics_fn(get_state(), "", use_cells=False)
            scan_ms = round((time.perf_counter() - t0) * 1000, 1)
            agrees = scanned == analytics_fn(get_state(), "")

        # the deep page really is page N: its first row is row (N-1)*100 of the OFFSET query
        first_deep = get(deep_url).get_json()["results"][0]
        plans = {name: _plans(url, capture.run(calls[name]))
                 for name in ("analytics", "report_page_deep", "contact_activity")}
        with app.app_context():
            get_state().own_engine.dispose()

    ms = {k: _median_ms(v) for k, v in samples.items()}
    ms["analytics_after_fresh_events"] = _median_ms(fresh_samples)
    ms["analytics_full_scan_once"] = scan_ms
    r_analytics = ratio(ms["analytics"], ms["count_star"])
    r_deep = ratio(ms["report_page_deep"], ms["report_page_1"])
    activity_plan = " ".join(line for p in plans["contact_activity"] for line in p["plan"])
    contact_index = "ix_mailtrack_events_contact" in activity_plan
    return {
        "generator": gen,
        "ms_median": ms,
        "analytics": {
            "analytics_over_count_star": r_analytics,
            "target": f"<= {TARGET_ANALYTICS}x count(*)",
            "status": verdict(r_analytics is not None and r_analytics <= TARGET_ANALYTICS and agrees),
            "cells_build_seconds": build_seconds,
            "cells_build": built,
            "fresh_events_per_call": args.fresh,
            "after_fresh_events_over_count_star": ratio(ms["analytics_after_fresh_events"], ms["count_star"]),
            "full_scan_over_count_star": ratio(scan_ms, ms["count_star"]),
            "cells_equal_full_scan": agrees,
        },
        "campaign_report": {
            "human_clicks_in_campaign": human_clicks,
            "page_size": LIMIT,
            "deep_page": deep_page,
            "deep_page_first_row": first_deep.get("click_date"),
            "deep_over_page_1": r_deep,
            "target": f"page {args.page} <= {TARGET_DEEP}x page 1",
            "status": verdict(r_deep is not None and r_deep <= TARGET_DEEP and deep_page == args.page),
        },
        "contact_activity": {
            "contact_events": contact_events,
            "ms": ms["contact_activity"],
            "over_count_star": ratio(ms["contact_activity"], ms["count_star"]),
            "uses_contact_index": contact_index,
            "target": "served by the contact index (cost follows the contact's own events)",
            "status": verdict(contact_index),
        },
        "plans": plans,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default="both", choices=["sqlite", "postgresql", "both"])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--page", type=int, default=1000, help="the deep page compared with page 1")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--fresh", type=int, default=1000, help="new events before each 'fresh' analytics call")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "reports", "inputs": vars(args)}
    for kind in kinds(args.db):
        result[kind] = run_kind(kind, args)
    statuses = [result[k][part]["status"] for k in kinds(args.db)
                for part in ("analytics", "campaign_report", "contact_activity")]
    result["status"] = "pass" if all(s == "pass" for s in statuses) else "miss"
    emit(result)
    return result


if __name__ == "__main__":
    main()
