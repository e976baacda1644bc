"""The app gunicorn serves in the HTTP benchmarks: the product and its two baselines.

* ``/mailtrack/t/c/<token>``, ``/mailtrack/t/o/<token>``: the extension's own routes.
* ``/bare/c/<token>``, ``/bare/o/<token>``: Flask routes that only answer (redirect / GIF).
* ``/min/c/<token>``, ``/min/o/<token>``: the minimal honest implementation: verify the
  same itsdangerous token, INSERT one row with the raw driver (sqlite3 / psycopg, one
  connection per worker process) into the same event table (same indexes: the ones the
  reports need), commit, answer. ``MIN_TABLE=plain`` in the environment inserts into a
  table without secondary indexes instead.

All of them are in one app served by one gunicorn, so every figure of a run shares the
same server, workers and load.
"""
from __future__ import annotations

import datetime as dt
import os
from typing import Any

from flask import Flask, Response, redirect, request
from itsdangerous import BadData, URLSafeTimedSerializer

from crm_mailtrack import MailTrack
from crm_mailtrack.tracking import NO_STORE, PIXEL

SECRET = "bench-secret-key-0123456789abcdef"
DEST = "https://example.com/landing"
MIN_TABLE = "bench_min_events"


def min_table_ddl(dialect: str) -> str:
    """The baseline's table: what a click needs, an integer key, nothing else."""
    if dialect == "sqlite":
        return (f"CREATE TABLE IF NOT EXISTS {MIN_TABLE} (id INTEGER PRIMARY KEY, type TEXT, "
                "message_id TEXT, url TEXT, occurred_at TEXT, ip TEXT, user_agent TEXT)")
    return (f"CREATE TABLE IF NOT EXISTS {MIN_TABLE} (id BIGSERIAL PRIMARY KEY, type VARCHAR(20), "
            "message_id VARCHAR(32), url TEXT, occurred_at TIMESTAMPTZ, ip VARCHAR(45), "
            "user_agent VARCHAR(512))")


class _Raw:
    """One raw DB-API connection per worker process, opened after gunicorn forks."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pid = -1
        self.conn: Any = None
        self.sqlite = url.startswith("sqlite")

    def insert(self, *row: Any) -> None:
        if self.pid != os.getpid():
            from bench._common import raw_connect

            self.conn, self.pid = raw_connect(self.url), os.getpid()
        mark = "?" if self.sqlite else "%s"
        now = dt.datetime.now(dt.timezone.utc)
        when = now.replace(tzinfo=None).isoformat(" ") if self.sqlite else now
        ua = request.headers.get("User-Agent")
        if os.environ.get("MIN_TABLE") == "plain":
            self.conn.execute(
                f"INSERT INTO {MIN_TABLE} (type, message_id, url, occurred_at, ip, user_agent) "
                f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark}, {mark})",
                (*row, when, request.remote_addr, ua),
            )
        else:
            self.conn.execute(
                "INSERT INTO mailtrack_events (tenant_id, type, message_id, url, occurred_at, ip, user_agent, "
                f"is_machine) VALUES ('', {mark}, {mark}, {mark}, {mark}, {mark}, {mark}, {mark})",
                (*row, when, request.remote_addr, ua, False),
            )
        self.conn.commit()


def create_app() -> Flask:
    url = os.environ["BENCH_DATABASE_URL"]
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=SECRET,
        MAILTRACK_DATABASE_URI=url,
        MAILTRACK_BASE_URL="http://127.0.0.1",
        MAILTRACK_JOURNAL_PATH=os.environ.get("BENCH_JOURNAL_PATH"),
    )
    MailTrack(app)
    raw = _Raw(url)
    click_s = URLSafeTimedSerializer(SECRET, salt="mailtrack.click")
    open_s = URLSafeTimedSerializer(SECRET, salt="mailtrack.open")

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    @app.get("/bare/c/<token>")
    def bare_click(token: str) -> Response:
        return redirect(DEST, 302)

    @app.get("/bare/o/<token>")
    def bare_open(token: str) -> Response:
        return Response(PIXEL, mimetype="image/gif", headers={"Cache-Control": NO_STORE})

    @app.get("/min/c/<token>")
    def min_click(token: str) -> Response:
        try:
            message_id, dest = click_s.loads(token)
        except (BadData, ValueError):
            return Response(status=404)
        raw.insert("click", message_id, dest)
        return redirect(dest, 302)

    @app.get("/min/o/<token>")
    def min_open(token: str) -> Response:
        try:
            message_id = open_s.loads(token)
            raw.insert("open", message_id, None)
        except BadData:
            pass
        return Response(PIXEL, mimetype="image/gif", headers={"Cache-Control": NO_STORE})

    return app
