"""Benchmark: a campaign report's deep page costs what its first page costs (keyset).

Fills one campaign with ``--events`` click events, walks the JSON API's
``/api/campaigns/<id>/tracking/clicks`` report through every ``next_link`` to reach the
last page's cursor, then times page 1 and the last page (median of ``--repeat`` requests
through the Flask test client, so routing, parsing and dumping are included). For
contrast it times the same deep page fetched with ``OFFSET`` in plain SQL. Prints one JSON
object; ``ratio`` (last page / first page) near 1 is the goal, the OFFSET ratio grows with
the number of events.

    .venv/bin/python bench/bench_reports_pagination.py [--events 10000] [--limit 100]
        [--db sqlite|postgresql] [--database-url URL] [--repeat 15]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402
from flask import Flask  # noqa: E402

from crm_mailtrack import MailTrack  # noqa: E402
from crm_mailtrack.models import events  # noqa: E402

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TOKEN = "bench-token"
CAMPAIGN = "bench-campaign"


def _median_ms(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def _database(kind: str, url: str | None, tmp: str) -> tuple[str, Any]:
    """A database URL and a cleanup function (PostgreSQL: a private schema)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp}/bench.db", lambda: None
    base = url or os.environ.get("MAILTRACK_TEST_POSTGRES_URL") or DEFAULT_PG
    schema = f"bench_pg_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"

    def cleanup() -> None:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return f"{base}{sep}options=-csearch_path%3D{schema}", cleanup


def run(n_events: int, limit: int, kind: str, url: str | None, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        db_url, cleanup = _database(kind, url, tmp)
        try:
            app = Flask("bench_reports", instance_path=tmp)
            app.config.update(SECRET_KEY="bench-secret-key-0123456789abcdef", MAILTRACK_DATABASE_URI=db_url,
                              MAILTRACK_API_TOKENS=[TOKEN], MAILTRACK_BASE_URL="http://bench.test")
            mt = MailTrack(app)
            with app.app_context():
                mt.create_all()
                mt.track_message(contact_id="c0", email="c0@example.com", subject="s",
                                 html='<a href="https://shop.example/x">x</a>', campaign_id=CAMPAIGN)
                engine = app.extensions["mailtrack"].engine
                start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
                rows = [{"tenant_id": "", "type": "click", "contact_id": f"c{i % 5000}",
                         "email": f"c{i % 5000}@example.com", "campaign_id": CAMPAIGN, "link_id": "0" * 16,
                         "occurred_at": start + dt.timedelta(seconds=i), "is_machine": i % 10 == 0}
                        for i in range(n_events)]
                with engine.begin() as conn:
                    for chunk in range(0, len(rows), 5000):
                        conn.execute(events.insert(), rows[chunk:chunk + 5000])
                    if engine.dialect.name == "postgresql":
                        conn.execute(sa.text("ANALYZE mailtrack_events"))
            client = app.test_client()
            headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
            first = f"/mailtrack/api/campaigns/{CAMPAIGN}/tracking/clicks?limit={limit}"

            def get(path: str) -> dict[str, Any]:
                resp = client.get(path, headers=headers)
                assert resp.status_code == 200, resp.get_data(as_text=True)
                return resp.get_json()

            pages, path, last_path, served = 0, first, first, 0
            walk_start = time.perf_counter()
            while path:
                data = get(path)
                pages += 1
                served += len(data["results"])
                last_path = path
                path = data["meta"]["pagination"].get("next_link")
            walk_s = time.perf_counter() - walk_start
            page1 = _median_ms(lambda: get(first), repeat)
            page_n = _median_ms(lambda: get(last_path), repeat)

            offset_sql = (
                sa.select(events.c.id, events.c.contact_id, events.c.email, events.c.occurred_at)
                .where(events.c.tenant_id == "", events.c.campaign_id == CAMPAIGN, events.c.type == "click",
                       events.c.is_machine.is_(False))
                .order_by(events.c.occurred_at.desc(), events.c.id.desc())
            )
            with engine.connect() as conn:
                off1 = _median_ms(lambda: conn.execute(offset_sql.limit(limit)).all(), repeat)
                off_n = _median_ms(lambda: conn.execute(offset_sql.limit(limit).offset((pages - 1) * limit)).all(),
                                   repeat)
            engine.dispose()
        finally:
            cleanup()
    return {
        "benchmark": "reports_pagination",
        "db": kind,
        "events": n_events,
        "human_events": served,
        "limit": limit,
        "pages": pages,
        "walk_all_pages_s": round(walk_s, 3),
        "page1_ms": page1,
        "pageN_ms": page_n,
        "ratio": round(page_n / page1, 3) if page1 else None,
        "offset_page1_ms": off1,
        "offset_pageN_ms": off_n,
        "offset_ratio": round(off_n / off1, 3) if off1 else None,
        "target": "ratio <= 2 (keyset: page N costs about what page 1 costs)",
        "ok": bool(page1 and page_n / page1 <= 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--database-url", default=None, help="PostgreSQL server URL (a private schema is used)")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    print(json.dumps(run(args.events, args.limit, args.db, args.database_url, args.repeat), indent=2))


if __name__ == "__main__":
    main()
