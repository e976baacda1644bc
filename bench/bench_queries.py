"""Benchmark: SQL statements per API call, as the data grows.

Counts the statements (``before_cursor_execute``) that one call sends:

- ``GET /api/communications/page?size=N`` for several page sizes: a constant count means
  the records' opens, clicks and events are fetched per page, not per row (no N+1);
- ``analytics`` once its cells are up to date, for several table sizes: a constant count
  (one probe of what is left to fold, then grouped reads of the cells, none of which
  touches the events table).

These were assertions in the test suite; counts are a cost, not a contract, so they are
measured and reported here.

    .venv/bin/python bench/bench_queries.py [--db both] [--messages 12]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import database, emit, kinds, make_app, verdict  # noqa: E402

TOKEN = "bench-token"


def _counting(engine: Any):
    import sqlalchemy as sa

    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith("SET "):
            seen.append(statement)

    class Counter:
        def __enter__(self) -> list[str]:
            seen.clear()
            sa.event.listen(engine, "before_cursor_execute", count)
            return seen

        def __exit__(self, *exc: Any) -> None:
            sa.event.remove(engine, "before_cursor_execute", count)

    return Counter()


def _seed(app: Any, n: int) -> None:
    import datetime as dt

    from crm_mailtrack.models import ContactEvent

    mt = app.config["BENCH_MAILTRACK"]
    state = app.extensions["mailtrack"]
    with app.app_context():
        for i in range(n):
            msg = mt.track_message(contact_id=f"c{i}", email=f"u{i}@example.com", subject=f"s{i}",
                                   campaign_id="C1", html='<a href="https://shop.test/a">A</a>')
            for type_ in ("open", "click"):
                state.session.add(ContactEvent(tenant_id="", type=type_, contact_id=msg.contact_id,
                                               message_id=msg.id, campaign_id="C1", is_machine=False,
                                               occurred_at=dt.datetime.now(dt.timezone.utc),
                                               url="https://shop.test/a" if type_ == "click" else None))
        state.session.commit()


def run(kind: str, messages: int) -> dict[str, Any]:
    from crm_mailtrack.services.analytics import analytics

    with database(kind, "queries") as url:
        app = make_app(url, MAILTRACK_API_TOKENS=[TOKEN])
        state = app.extensions["mailtrack"]
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
        client = app.test_client()
        page: dict[str, int] = {}
        analytics_counts: dict[str, dict[str, Any]] = {}
        seeded = 0
        for total in (messages, messages * 4):
            _seed(app, total - seeded)
            seeded = total
            with app.app_context():
                analytics(state, "")  # builds the cells
                with _counting(state.engine) as seen:
                    analytics(state, "")
                analytics_counts[str(total)] = {
                    "statements": len(seen),
                    # the probe of what is left to fold looks at the events table; the reads do not
                    "cell_reads_touching_events": sum(
                        1 for s in seen if re.search(r"FROM mailtrack_stats_(tenant_)?(messages|days)\b", s)
                        and re.search(r"FROM mailtrack_events\b", s)),
                }
        for size in (2, messages, messages * 4):
            with _counting(state.engine) as seen:
                resp = client.get(f"/mailtrack/api/communications/page?size={size}", headers=headers)
            assert resp.status_code == 200 and len(resp.json["content"]) == size, resp.json
            page[str(size)] = len(seen)
        state.engine.dispose()
    constant = len(set(page.values())) == 1 and len({a["statements"] for a in analytics_counts.values()}) == 1
    return {"page_statements_by_size": page, "analytics_by_messages": analytics_counts,
            "status": verdict(constant and not any(a["cell_reads_touching_events"] for a in analytics_counts.values()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="both", choices=["sqlite", "postgresql", "both"])
    parser.add_argument("--messages", type=int, default=12)
    args = parser.parse_args()
    emit({"benchmark": "queries", **{kind: run(kind, args.messages) for kind in kinds(args.db)}})


if __name__ == "__main__":
    main()
