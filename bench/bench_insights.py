"""Benchmark: engagement of a page of 500 contacts among a large event log.

Data from ``gen_events.py`` (``--events`` events over ``--contacts`` contacts). Timed through
the JSON API (``GET /api/contacts/engagement`` with 500 ``contact_id``s, Flask test client,
so parsing and dumping are included) against a baseline in the same run on the same
database, interleaved: ``SELECT count(*)`` of the same 500 contacts' events along the same
index (``ix_mailtrack_events_contact``). The ratio of the medians is the figure (reported, no
target), for the whole API call and for its SQL alone (the service function, without the
request parsing and the dumping of 500 items).

    .venv/bin/python bench/bench_insights.py [--db both] [--events 1000000]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import database, emit, interleaved, kinds, make_app, ratio  # noqa: E402
from bench.gen_events import generate  # noqa: E402

TOKEN = "bench-token"
API = "/mailtrack/api"
PAGE = 500


def run_kind(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    import sqlalchemy as sa

    from crm_mailtrack.models import events
    from crm_mailtrack.state import get_state

    with database(kind, "insights") as url:
        app = make_app(url, MAILTRACK_API_TOKENS=[TOKEN])
        gen = generate(url, events=args.events, messages=args.messages, contacts=args.contacts)
        step = max(1, gen["contacts"] // PAGE)
        ids = [f"contact-{i * step}" for i in range(PAGE)]
        client = app.test_client()
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
        with app.app_context():
            engine = get_state().engine
        conn = engine.connect()
        count = sa.select(sa.func.count()).where(events.c.tenant_id == "", events.c.contact_id.in_(ids))
        own_events = conn.execute(count).scalar_one()

        def engagement() -> None:
            resp = client.get(f"{API}/contacts/engagement", query_string={"contact_id": ids}, headers=headers)
            assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
            assert len(resp.get_json()["contacts"]) == PAGE

        from crm_mailtrack.services import insights

        def service_only() -> None:
            with app.app_context():
                insights.engagement(get_state(), "", ids)
                get_state().session.rollback()

        calls = {"count_star": lambda: conn.execute(count).scalar_one(), "engagement": engagement,
                 "engagement_sql_only": service_only}
        for fn in calls.values():  # warm-up
            fn()
        timing = interleaved(calls, rounds=args.repeat)
        conn.close()
        ms = {k: round(v["median_s"] * 1000, 2) for k, v in timing.items()}
        r = ratio(ms["engagement"], ms["count_star"])
        return {
            "generated": gen, "contacts_in_page": PAGE, "their_events": own_events, "ms": ms,
            "engagement_over_count_star": r,
            "sql_only_over_count_star": ratio(ms["engagement_sql_only"], ms["count_star"]), "status": "reported",
        }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default="both", choices=["sqlite", "postgresql", "both"])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--contacts", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "insights", "inputs": vars(args)}
    for kind in kinds(args.db):
        result[kind] = run_kind(kind, args)
    result["status"] = "reported"
    emit(result)
    return result


if __name__ == "__main__":
    main()
