"""Reports read from a replica (``MAILTRACK_REPORTS_DATABASE_URI``, issue 17).

The "replica" is the same database reached as a read-only role (PostgreSQL: a login role
with only SELECT and ``default_transaction_read_only``; SQLite: the file opened with
``mode=ro``), so a write through it fails: a report that answers proves it ran there and
wrote nothing. The statements the replica engine ran are recorded; the answers equal those
of an app without a replica.
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from crm_mailtrack.models import messages

from apihelpers import hdrs
from conftest import path_of

API = "/mailtrack/api"


@pytest.fixture
def replica_url(database_url: str, tmp_path: Any) -> Iterator[str]:
    if database_url.startswith("sqlite"):
        yield f"sqlite:///file:{database_url[len('sqlite:///'):]}?mode=ro&uri=true"
        return
    schema = parse_qs(urlsplit(database_url).query)["options"][0].split("=", 1)[1]
    role = f"mt_ro_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(database_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(sa.text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        conn.execute(sa.text(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"'))
        conn.execute(sa.text(f'ALTER ROLE "{role}" SET default_transaction_read_only = on'))
    base = urlsplit(database_url)
    yield base._replace(netloc=f"{role}@{base.hostname}:{base.port or 5432}").geturl()
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
        conn.execute(sa.text(f'DROP ROLE "{role}"'))
    admin.dispose()


def _seed(app: Any) -> None:
    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        for contact in ("c1", "c2"):
            msg = mt.track_message(contact_id=contact, email=f"{contact}@example.com", subject="Hi",
                                   html='<a href="https://shop.test/a">a</a>', campaign_id="cmp")
            mt.record_event(contact, "send", message_id=msg.id, campaign_id="cmp")
            db = app.extensions["sqlalchemy"]
            db.session.execute(sa.update(messages).where(messages.c.id == msg.id).values(
                status="SENT", sent_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)))
            db.session.commit()
            resp = app.test_client().get(path_of(mt.click_url(msg, "https://shop.test/a")),
                                         headers={"User-Agent": "Mozilla/5.0 (Windows NT 10.0) Firefox/120.0"})
            assert resp.status_code == 302


READS = [
    f"{API}/campaigns/cmp/tracking/clicks",
    f"{API}/campaigns/cmp/links",
    f"{API}/activity",
    f"{API}/contacts/c1/activity",
    f"{API}/communications/analytics",
    f"{API}/campaigns/cmp/audience?action=clicked",
    f"{API}/campaigns/cmp/breakdown?by=hour&include_bots=true",
]


def test_reports_read_the_replica_and_answer_as_the_primary_does(make_app: Any, replica_url: str) -> None:
    primary_only = make_app()
    _seed(primary_only)
    replicated = make_app(MAILTRACK_REPORTS_DATABASE_URI=replica_url)
    state = replicated.extensions["mailtrack"]
    replica = state.reports_engine
    with replicated.app_context():
        assert replica is not None and replica is not state.engine
    seen: list[str] = []
    sa.event.listen(replica, "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: seen.append(statement))
    for path in READS:
        want = primary_only.test_client().get(path, headers=hdrs())
        got = replicated.test_client().get(path, headers=hdrs())
        assert (got.status_code, want.status_code) == (200, 200), (path, got.get_json())
        assert got.get_json() == want.get_json(), path
    assert any("mailtrack_events" in s for s in seen) and any("mailtrack_stats" in s for s in seen)
    # the replica really is read-only: the answers above were read there, nothing written
    with pytest.raises(sa.exc.DBAPIError), replica.begin() as conn:
        conn.execute(sa.text("DELETE FROM mailtrack_links"))


def test_csv_export_streams_from_the_replica(make_app: Any, replica_url: str) -> None:
    app = make_app(MAILTRACK_REPORTS_DATABASE_URI=replica_url)
    _seed(app)
    seen: list[str] = []
    sa.event.listen(app.extensions["mailtrack"].reports_engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: seen.append(statement))
    resp = app.test_client().get(f"{API}/campaigns/cmp/audience?action=clicked&include_bots=true",
                                 headers=hdrs(Accept="text/csv"))
    assert resp.status_code == 200
    lines = resp.get_data(as_text=True).strip().splitlines()
    assert len(lines) == 3 and any("c1@example.com" in line for line in lines)
    assert seen


def test_a_bad_reports_uri_fails_at_init_app(tmp_path: Any) -> None:
    from flask import Flask

    from crm_mailtrack import MailTrack
    from crm_mailtrack.errors import ConfigurationError

    app = Flask("bad", instance_path=str(tmp_path))
    app.config.update(SECRET_KEY="x" * 40, MAILTRACK_REPORTS_DATABASE_URI="not a url",
                      MAILTRACK_DATABASE_URI=f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(ConfigurationError, match="MAILTRACK_REPORTS_DATABASE_URI"):
        MailTrack(app)
