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

from conftest import path_of

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
