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
