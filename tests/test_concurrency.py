"""Counts stay exact under concurrency: 200 simultaneous clicks on one link, served by a real
threaded WSGI server, give exactly 200 click events and 200 redirects."""
from __future__ import annotations

import http.client
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from werkzeug.serving import make_server

from crm_mailtrack.models import events

from conftest import API_TOKEN, path_of

CLICKS = 200
WORKERS = 16
DEST = "https://dest.test/offer?id=7"


@pytest.fixture
def served(make_app, database_url):
    """A host app on a threaded werkzeug server at 127.0.0.1:<free port>."""
    options: dict[str, Any] = {"pool_size": WORKERS, "max_overflow": 4, "pool_timeout": 60}
    if database_url.startswith("sqlite"):
        options["connect_args"] = {"timeout": 60}  # writers queue up instead of failing
    app = make_app(SQLALCHEMY_ENGINE_OPTIONS=options)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, server.server_port
    server.shutdown()
    thread.join(10)
    server.server_close()


def _get(port: int, path: str, method: str = "GET") -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"User-Agent": "concurrency-test"}
        body = None
        if method == "POST":
            body = "List-Unsubscribe=One-Click"
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Location")
    finally:
        conn.close()


def test_200_concurrent_clicks_give_exactly_200_events(served):
    app, port = served
    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        msg = mt.track_message(contact_id="c1", email="c1@example.com", subject="s", campaign_id="k",
                               html=f'<a href="{DEST}">go</a>')
        path = path_of(re.search(r'href="([^"]+/t/c/[^"]+)">go</a>', msg.html).group(1))
        app.extensions["sqlalchemy"].session.remove()

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = list(pool.map(lambda _: _get(port, path), range(CLICKS)))

    assert Counter(results) == Counter({(302, DEST): CLICKS})
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(events)
            .where(events.c.message_id == msg.id, events.c.type == "click", events.c.is_machine.is_(False))
        ).scalar()
        uids = conn.execute(sa.select(sa.func.count(sa.distinct(events.c.uid))).select_from(events)).scalar()
    assert count == CLICKS
    assert uids == CLICKS
    # Nothing fell back to the journal: the database took every click.
    assert app.extensions["mailtrack"].journal.count() == 0


def test_concurrent_one_click_unsubscribes_leave_one_row(served):
    """Mail providers retry: 30 simultaneous one-click POSTs give one DNC row, one
    unsubscribe event, and a 200 for every one of them."""
    from crm_mailtrack.models import dnc

    app, port = served
    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        msg = mt.track_message(contact_id="c1", email="c1@example.com", subject="s")
        path = path_of(msg.headers["List-Unsubscribe"][1:-1])
        app.extensions["sqlalchemy"].session.remove()

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = list(pool.map(lambda _: _get(port, path, "POST"), range(30)))

    assert Counter(status for status, _ in results) == Counter({200: 30})
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(dnc)).scalar() == 1
        kinds = Counter(conn.execute(sa.select(events.c.type)).scalars())
    assert kinds == Counter({"unsubscribe": 1, "dnc_added": 1})


def test_analytics_folding_while_clicks_arrive_stays_exact(served):
    """Analytics folds new events into its cells (services/stats.py) while the tracking
    routes keep writing them, and while bursts re-mark earlier clicks as a machine's: at
    the end the cells equal a full scan of the rows, with and without bots."""
    from crm_mailtrack.models import messages
    from crm_mailtrack.services.analytics import analytics

    app, port = served
    mt = app.extensions["mailtrack"].extension
    paths = []
    with app.app_context():
        for i in range(12):
            msg = mt.track_message(contact_id=f"c{i % 5}", email=f"c{i}@example.com", subject="s",
                                   campaign_id="k" if i % 2 else None, html=f'<a href="{DEST}">go</a>')
            paths.append(path_of(re.search(r'href="([^"]+/t/c/[^"]+)">go</a>', msg.html).group(1)))
            paths.append(path_of(re.search(r'src="([^"]+/t/o/[^"]+)"', msg.html).group(1)))
        session = app.extensions["mailtrack"].session
        session.execute(sa.update(messages).values(status="SENT", sent_at=messages.c.created_at))
        session.commit()
        app.extensions["sqlalchemy"].session.remove()
    stop = threading.Event()
    folds: list[int] = []

    def analyst() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while not stop.is_set():
                conn.request("GET", "/mailtrack/api/communications/analytics",
                             headers={"Authorization": f"Bearer {API_TOKEN}", "Accept": "application/json"})
                resp = conn.getresponse()
                resp.read()
                folds.append(resp.status)
        finally:
            conn.close()

    analysts = [threading.Thread(target=analyst) for _ in range(2)]
    for t in analysts:
        t.start()
    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            results = list(pool.map(lambda k: _get(port, paths[k % len(paths)]), range(240)))
    finally:
        stop.set()
        for t in analysts:
            t.join(60)
    assert {status for status, _ in results} <= {200, 302}
    assert folds and set(folds) == {200}
    with app.app_context():
        state = app.extensions["mailtrack"]
        for bots in (False, True):
            assert analytics(state, "", include_bots=bots) == analytics(state, "", include_bots=bots,
                                                                         use_cells=False)
        assert analytics(state, "", include_bots=True)["totalClicked"] == 12


# -- a real gunicorn: 4 worker processes x 8 threads -----------------------------------------

GUNICORN_CLICKS = 500


def gunicorn_app():
    """The host app gunicorn's workers serve (``test_concurrency:gunicorn_app()``), configured
    from the environment the test sets: the extension's own engine on a SQLite file."""
    import os

    from flask import Flask

    from crm_mailtrack import MailTrack

    from conftest import SECRET

    app = Flask("gunicorn_host")
    app.config.update(SECRET_KEY=SECRET, MAILTRACK_DATABASE_URI=os.environ["MT_TEST_DATABASE_URI"],
                      MAILTRACK_BASE_URL="http://crm.test", MAILTRACK_JOURNAL_PATH=os.environ["MT_TEST_JOURNAL"])
    MailTrack(app)
    app.add_url_rule("/healthz", "healthz", lambda: "ok")
    return app


async def _fire(port: int, path: str, n: int) -> list[Any]:
    """``n`` GETs of ``path`` opened at once, each on its own connection; the status lines."""
    import asyncio

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: crm.test\r\nUser-Agent: concurrency-test\r\n"
                         "Connection: close\r\n\r\n".encode())
            await writer.drain()
            return await asyncio.wait_for(reader.readline(), 120)
        finally:
            writer.close()

    return await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)


def test_500_concurrent_clicks_on_gunicorn_threads_are_all_stored(tmp_path):
    """gunicorn with 4 workers x 8 gthread threads on SQLite (psycopg installed, as with the
    ``postgresql`` extra): 500 simultaneous first clicks give 500 redirects, 500 stored
    clicks and an empty journal. The listening socket is bound here (port 0) and handed to
    gunicorn as an inherited descriptor, so no port is guessed."""
    import asyncio
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    from crm_mailtrack import MailTrack
    from flask import Flask

    from conftest import SECRET

    db_uri = f"sqlite:///{tmp_path}/gunicorn.db"
    journal = tmp_path / "journal.jsonl"
    app = Flask("setup")
    app.config.update(SECRET_KEY=SECRET, MAILTRACK_DATABASE_URI=db_uri, MAILTRACK_BASE_URL="http://crm.test",
                      MAILTRACK_JOURNAL_PATH=str(journal))
    mt = MailTrack(app)
    with app.app_context():
        mt.create_all()
        msg = mt.track_message(contact_id="c1", email="c1@example.com", subject="s", html=f'<a href="{DEST}">go</a>')
        path = path_of(re.search(r'href="([^"]+/t/c/[^"]+)">go</a>', msg.html).group(1))
        app.extensions["mailtrack"].engine.dispose()

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(2048)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    env = {**os.environ, "MT_TEST_DATABASE_URI": db_uri, "MT_TEST_JOURNAL": str(journal),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"fd://{fd}", "--workers", "4", "--worker-class",
             "gthread", "--threads", "8", "--backlog", "2048", "--timeout", "120", "--log-level", "warning",
             "test_concurrency:gunicorn_app()"],
            env=env, pass_fds=(fd,), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    listener.close()  # gunicorn holds its own copy
    try:
        for _ in range(300):  # up: the master accepts once a worker is ready
            assert proc.poll() is None, log.read_text()
            try:
                if _get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        lines = asyncio.run(_fire(port, path, GUNICORN_CLICKS))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)

    assert Counter(lines) == Counter({b"HTTP/1.1 302 FOUND\r\n": GUNICORN_CLICKS}), log.read_text()[-3000:]
    engine = sa.create_engine(db_uri)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(events)
                              .where(events.c.message_id == msg.id, events.c.type == "click")).scalar()
    engine.dispose()
    journaled = journal.read_text().splitlines() if journal.exists() else []
    assert (stored, len(journaled)) == (GUNICORN_CLICKS, 0), log.read_text()[-3000:]


CLICKS_IN_A_FRESH_PROCESS = r"""
import re, sys, tempfile
from flask import Flask
from crm_mailtrack import MailTrack
tmp = tempfile.mkdtemp()
app = Flask("fresh")
app.config.update(SECRET_KEY="fresh-process-secret-key-0123456789", MAILTRACK_DATABASE_URI=f"sqlite:///{tmp}/a.db",
                  MAILTRACK_BASE_URL="http://crm.test", MAILTRACK_JOURNAL_PATH=f"{tmp}/journal.jsonl")
mt = MailTrack(app)
with app.app_context():
    mt.create_all()
    html = mt.track_message(contact_id="c1", email="c1@example.com", subject="s",
                            html='<a href="https://dest.test/?utm_source=x">go</a>').html
client = app.test_client()
for ua in ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0", "curl/8.0", None):
    for kind in ("c", "o"):
        path = re.search(r'"http://crm.test(/mailtrack/t/' + kind + r'/[^"]+)"', html).group(1)
        client.get(path, headers={"User-Agent": ua} if ua else {})
print(sorted(m for m in sys.modules if m.split(".")[0] == "psycopg")[:3])
"""


def test_clicks_on_sqlite_never_load_the_postgresql_driver():
    """The SQLite click and open path does not import psycopg at all (installed or not):
    importing it lazily on the first hits raced between a worker's threads (a partially
    initialized module) and sent clicks to the journal."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", CLICKS_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
