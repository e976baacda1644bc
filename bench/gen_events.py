"""Fast generator of benchmark data: messages and contact events, written in bulk.

Rows are computed inside the database (``INSERT ... SELECT`` over a recursive CTE on SQLite,
over ``generate_series`` on PostgreSQL; indexes dropped during the load and rebuilt after,
as a bulk load does), so a million events take seconds, not minutes. Rows go into the
product's own tables (``create_all``: every index the product declares exists afterwards).
Deterministic.

Shape: ``--messages`` SENT messages over ``campaigns`` campaigns, half of them in
``camp-0`` (the campaign whose report is paged deep); ``--events`` events on pseudo-random
messages: send 15 %, open 35 %, click 40 %, bounce 3 %, unsubscribe 2 %, forward 5 %;
10 % flagged as machine; clicks on one of ten links per campaign. Events are stored as a
running installation holds them: already folded into the analytics cells (``folded_as`` =
``is_machine``; services/stats.py), so the cells are built from them set-based without
rewriting the table (a never-folded table costs one UPDATE of every event, once: measured
separately, see the README).

    .venv/bin/python bench/gen_events.py --db sqlite --events 100000 --messages 20000
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import database, emit, make_app, raw_connect  # noqa: E402

HOT_CAMPAIGN = "camp-0"
START = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
MSG_COLS = ("id", "tenant_id", "contact_id", "email", "subject", "status", "campaign_id", "template_id",
            "template_name", "type", "track_opens", "track_clicks", "created_at", "updated_at", "sent_at", "headers")
EVENT_COLS = ("tenant_id", "type", "contact_id", "email", "message_id", "campaign_id", "link_id", "url",
              "occurred_at", "ip", "user_agent", "is_machine", "machine_reason", "folded_as")
BATCH = 50_000


def link_url(campaign: str, k: int) -> str:
    return f"https://shop.example.com/{campaign}/offer-{k}"


def link_id(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def _insert(conn: Any, sqlite: bool, table: str, cols: tuple[str, ...], rows: Any) -> int:
    """Small tables: executemany / COPY of Python rows."""
    rows = list(rows)
    if sqlite:
        conn.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows)
    else:
        with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return len(rows)


def _series(sqlite: bool, n: int) -> str:
    """A row source of ``j`` = 0 .. n-1 computed inside the database (no Python per row)."""
    if sqlite:
        return f"(WITH RECURSIVE s(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM s WHERE j < {n - 1}) SELECT j FROM s)"
    return f"(SELECT generate_series(0, {n - 1})::bigint AS j)"


def _time(sqlite: bool, seconds: str, micro: str) -> str:
    epoch = int(START.timestamp())
    if sqlite:  # the product's SQLite format: 'YYYY-MM-DD HH:MM:SS.ffffff' (naive UTC)
        return (f"strftime('%Y-%m-%d %H:%M:%S', {epoch} + ({seconds}), 'unixepoch') || '.' || "
                f"printf('%06d', {micro})")
    return f"to_timestamp({epoch} + ({seconds}) + ({micro}) / 1000000.0)"


def _messages_sql(sqlite: bool, n: int, contacts: int, campaigns: int) -> str:
    c = f"(j % {contacts})"
    camp = f"CASE WHEN j % 2 = 0 THEN '{HOT_CAMPAIGN}' ELSE 'camp-' || (1 + (j / 2) % {campaigns - 1}) END"
    at = _time(sqlite, "30 * j", "0")
    true = "1" if sqlite else "true"
    mid = "'m' || printf('%011d', j)" if sqlite else "'m' || lpad(j::text, 11, '0')"
    return (
        f"INSERT INTO mailtrack_messages ({', '.join(MSG_COLS)}) SELECT {mid}, '', 'contact-' || {c}, "
        f"'person' || {c} || '@example.com', 'Subject ' || {camp}, 'SENT', {camp}, 'tpl-' || (j % 5), "
        f"'Template ' || (j % 5), 'campaign', {true}, {true}, {at}, {at}, {at}, '{{}}' FROM {_series(sqlite, n)} AS g"
    )


def _events_sql(sqlite: bool, n: int, messages: int, contacts: int, campaigns: int) -> str:
    i = f"((j * 2654435761) % {messages})"
    bucket = "((j * 40503 + 17) % 100)"
    typ = (f"CASE WHEN {bucket} < 15 THEN 'send' WHEN {bucket} < 50 THEN 'open' WHEN {bucket} < 90 THEN 'click' "
           f"WHEN {bucket} < 93 THEN 'bounce' WHEN {bucket} < 95 THEN 'unsubscribe' ELSE 'forward' END")
    camp = f"CASE WHEN i % 2 = 0 THEN '{HOT_CAMPAIGN}' ELSE 'camp-' || (1 + (i / 2) % {campaigns - 1}) END"
    url = f"'https://shop.example.com/' || camp || '/offer-' || ((j * 69621) % 10)"
    lid = "sha16(url)" if sqlite else "substr(encode(sha256(convert_to(url, 'UTF8')), 'hex'), 1, 16)"
    at = _time(sqlite, f"30 * i + 60 + (j * 16807) % 604800", "j % 1000000")
    machine = "((j * 48271) % 10 = 0)"
    mid = "'m' || printf('%011d', i)" if sqlite else "'m' || lpad(i::text, 11, '0')"
    inner = (f"SELECT j, {i} AS i, {typ} AS typ FROM {_series(sqlite, n)} AS g")
    inner2 = f"SELECT j, i, typ, {camp} AS camp FROM ({inner}) AS a"
    inner3 = f"SELECT j, i, typ, camp, CASE WHEN typ = 'click' THEN {url} END AS url FROM ({inner2}) AS b"
    return (
        f"INSERT INTO mailtrack_events ({', '.join(EVENT_COLS)}) SELECT '', typ, 'contact-' || (i % {contacts}), "
        f"'person' || (i % {contacts}) || '@example.com', {mid}, camp, CASE WHEN url IS NULL THEN NULL ELSE {lid} END, "
        f"url, {at}, '203.0.113.0', CASE WHEN j % 2 = 0 THEN 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0' "
        f"ELSE 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4)' END, {machine}, "
        f"CASE WHEN {machine} THEN 'known-bot-ua' END, {machine} FROM ({inner3}) AS c"
    )


def generate(url: str, *, events: int, messages: int, contacts: int = 50_000, campaigns: int = 20) -> dict[str, Any]:
    """Fill the (already created) tables at ``url``; timings and counts."""
    import sqlalchemy as sa

    from crm_mailtrack.models import events as events_table
    from crm_mailtrack.models import messages as messages_table

    sqlite = url.startswith("sqlite")
    engine = sa.create_engine(url)
    indexes = [*events_table.indexes, *messages_table.indexes]
    with engine.begin() as c:  # bulk load first, build the indexes after: much faster
        for index in indexes:
            index.drop(c)
    conn = raw_connect(url)
    if sqlite:
        conn.execute("PRAGMA cache_size=-262144")  # 256 MB for the index builds
    contacts = max(1, min(contacts, messages))
    if sqlite:
        conn.create_function("sha16", 1, lambda u: link_id(u), deterministic=True)
    t0 = time.perf_counter()
    conn.execute(_messages_sql(sqlite, messages, contacts, campaigns))
    n_msg = messages
    links = [(link_id(link_url(f"camp-{k}", j)), link_url(f"camp-{k}", j)) for k in range(campaigns) for j in range(10)]
    _insert(conn, sqlite, "mailtrack_links", ("id", "url"), iter(links))
    _insert(conn, sqlite, "mailtrack_campaign_links", ("tenant_id", "campaign_id", "link_id"),
            iter([("", f"camp-{k}", link_id(link_url(f"camp-{k}", j))) for k in range(campaigns) for j in range(10)]))
    t1 = time.perf_counter()
    if events:
        conn.execute(_events_sql(sqlite, events, messages, contacts, campaigns))
    n_ev = events
    conn.commit()
    t2 = time.perf_counter()
    conn.close()
    with engine.begin() as c:
        for index in indexes:
            index.create(c)
        c.exec_driver_sql("ANALYZE")
    engine.dispose()
    t3 = time.perf_counter()
    return {
        "messages": n_msg, "events": n_ev, "campaigns": campaigns, "contacts": contacts,
        "messages_seconds": round(t1 - t0, 2), "events_seconds": round(t2 - t1, 2),
        "index_build_seconds": round(t3 - t2, 2),
        "events_per_second": round(n_ev / (t3 - t1)) if n_ev else None,
        "method": "INSERT..SELECT recursive CTE" if sqlite else "INSERT..SELECT generate_series",
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql"])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--messages", type=int, default=20_000)
    args = ap.parse_args(argv)
    with database(args.db, "gen") as url:
        make_app(url)
        emit({"generator": generate(url, events=args.events, messages=args.messages), "db": args.db})


if __name__ == "__main__":
    main()
