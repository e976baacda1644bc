"""Benchmark 2: instrumenting mail.

A. ``track_message`` on an 80 KB HTML message with 100 links (stored and committed, SQLite
   file in WAL mode; the text part derived from the HTML) against just parsing that HTML
   with ``html.parser`` (``HTMLParser().feed()``). Target: <= 2x. Also reported:
   ``instrument()`` alone, deriving the text part (``instrument``) or given it
   (``instrument_text_given``).
B. A 10,000-recipient campaign prepared with ``services.bulk.track_messages`` (messages +
   links stored): messages/second, against a raw-driver ``executemany`` of the very same rows
   into identical tables; a ``track_message`` loop on a sample is shown for comparison.

    .venv/bin/python bench/bench_instrument.py [--db both] [--recipients 10000]
"""
from __future__ import annotations

import argparse
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import database, emit, interleaved, kinds, make_app, ratio, raw_connect, verdict  # noqa: E402

TARGET_PARSE = 2.0


def make_html(kb: int, n_links: int, variant: int = 0) -> str:
    """A newsletter-like HTML document of about ``kb`` KB with ``n_links`` distinct links
    (``variant`` changes every URL, so no cache keyed by URL helps a later call)."""
    head = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>News</title>"
            "<style>td{font-family:Arial;color:#333}.btn{background:#06c}</style></head><body>"
            "<table width='600' cellpadding='0' cellspacing='0'>")
    blocks = []
    for i in range(n_links):
        blocks.append(
            f"<tr><td class='item'><h2>Article {i}</h2><p>Lorem ipsum dolor sit amet, "
            f"<b>consectetur</b> adipiscing elit &amp; sed do eiusmod tempor.</p>"
            f'<a href="https://news.example.com/articles/{i}?ref=mail&amp;pos={i}&amp;v={variant}" class="btn" '
            f'style="color:#fff;padding:8px">Read more</a></td></tr>'
        )
    body = "".join(blocks)
    filler_row = "<tr><td><p>" + "Sed ut perspiciatis unde omnis iste natus error sit. " * 8 + "</p></td></tr>"
    doc = head + body
    while len(doc) < kb * 1024 - 30:
        doc += filler_row
    return doc + "</table></body></html>"


def parse_only(html: str) -> None:
    p = HTMLParser()
    p.feed(html)
    p.close()


def bench_single(kind: str, rounds: int) -> dict[str, Any]:
    from crm_mailtrack.services import messages as message_service
    from crm_mailtrack.state import get_state

    variants = [make_html(80, 100, v) for v in range(rounds + 2)]
    html = variants[0]
    with database(kind, "instr") as url:
        app = make_app(url)
        mailtrack = app.config["BENCH_MAILTRACK"]
        with app.app_context():
            state = get_state()
            counter = iter(range(10**9))

            def track() -> None:
                i = next(counter)
                mailtrack.track_message(contact_id=f"c{i}", email=f"c{i}@example.com", subject="News",
                                        html=variants[i % len(variants)], campaign_id="news")

            def instrument_only() -> None:
                message_service.instrument(state, "0" * 24, variants[next(counter) % len(variants)],
                                           track_opens=True, track_clicks=True)

            def instrument_text_given() -> None:
                message_service.instrument(state, "0" * 24, variants[next(counter) % len(variants)],
                                           track_opens=True, track_clicks=True, text="given")

            track()  # warm-up
            t = interleaved({"parse": lambda: parse_only(variants[next(counter) % len(variants)]),
                             "instrument": instrument_only, "instrument_text_given": instrument_text_given,
                             "track_message": track}, rounds=rounds)
            state.own_engine.dispose()
    parse_s = t["parse"]["median_s"]
    r = ratio(t["track_message"]["median_s"], parse_s)
    return {
        "html_bytes": len(html.encode()),
        "links": 100,
        "ms": {k: round(v["median_s"] * 1000, 3) for k, v in t.items()},
        "track_message_over_parse": r,
        "instrument_over_parse": ratio(t["instrument"]["median_s"], parse_s),
        "instrument_text_given_over_parse": ratio(t["instrument_text_given"]["median_s"], parse_s),
        "target": f"track_message <= {TARGET_PARSE}x parse",
        "status": verdict(r is not None and r <= TARGET_PARSE),
    }


def _copy_raw(src_url: str, dst_url: str) -> tuple[float, int]:
    """Raw-driver executemany of every row of the product's tables from src into dst."""
    src, dst = raw_connect(src_url), raw_connect(dst_url)
    sqlite = src_url.startswith("sqlite")
    tables = ("mailtrack_messages", "mailtrack_links", "mailtrack_campaign_links")
    data = {}
    for table in tables:
        cur = src.execute(f"SELECT * FROM {table}")
        data[table] = ([d[0] for d in cur.description], cur.fetchall())
    src.close()
    t0 = time.perf_counter()
    for table in tables:
        cols, rows = data[table]
        marks = ", ".join(["?" if sqlite else "%s"] * len(cols))
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})"
        if sqlite:
            dst.executemany(sql, rows)
        else:
            from psycopg.types.json import Jsonb

            rows = [tuple(Jsonb(v) if isinstance(v, (dict, list)) else v for v in row) for row in rows]
            with dst.cursor() as cur:
                cur.executemany(sql, rows)
    dst.commit()
    seconds = time.perf_counter() - t0
    dst.close()
    return seconds, len(data["mailtrack_messages"][1])


def bench_bulk(kind: str, recipients: int, sample: int) -> dict[str, Any]:
    from crm_mailtrack.services import bulk
    from crm_mailtrack.state import get_state

    html = make_html(5, 10)
    people = [{"contact_id": f"c{i}", "email": f"c{i}@example.com"} for i in range(recipients)]
    with database(kind, "bulk") as url, database(kind, "bulkraw") as raw_url:
        app = make_app(url)
        make_app(raw_url)  # the same tables and indexes, empty
        mailtrack = app.config["BENCH_MAILTRACK"]
        with app.app_context():
            state = get_state()
            bulk.track_messages(state, people[:50], subject="warm-up", html=html, campaign_id="warm")
            t0 = time.perf_counter()
            ids = bulk.track_messages(state, people, subject="Spring news", html=html, campaign_id="spring")
            bulk_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for p in people[:sample]:
                mailtrack.track_message(subject="Spring news", html=html, campaign_id="loop", **p)
            loop_s = time.perf_counter() - t0
            state.session.remove() if hasattr(state.session, "remove") else None
            state.own_engine.dispose()
        raw_s, raw_rows = _copy_raw(url, raw_url)
    bulk_mps = len(ids) / bulk_s
    raw_mps = raw_rows / raw_s
    return {
        "recipients": recipients,
        "template_bytes": len(html.encode()),
        "links": 10,
        "bulk_seconds": round(bulk_s, 3),
        "bulk_messages_per_s": round(bulk_mps, 1),
        "raw_executemany_rows": raw_rows,
        "raw_executemany_messages_per_s": round(raw_mps, 1),
        "bulk_over_raw": ratio(bulk_mps, raw_mps),
        "track_message_loop_sample": sample,
        "track_message_loop_messages_per_s": round(sample / loop_s, 1),
        "bulk_over_loop": ratio(bulk_mps, sample / loop_s),
        "target": "reported (no fixed target): bulk messages/s against raw executemany of the same rows",
        "status": "reported",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default="both", choices=["sqlite", "postgresql", "both"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--recipients", type=int, default=10_000)
    ap.add_argument("--sample", type=int, default=300, help="track_message loop size for comparison")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "instrumenting", "inputs": vars(args)}
    result["single_message_sqlite"] = bench_single("sqlite", args.rounds)
    for kind in kinds(args.db):
        result[f"bulk_{kind}"] = bench_bulk(kind, args.recipients, min(args.sample, args.recipients))
    result["status"] = result["single_message_sqlite"]["status"]
    emit(result)
    return result


if __name__ == "__main__":
    main()
