"""Shared by the journal tests (test_journal, test_journal_lines and the modules that
need a host whose database is down): tracked links, counts, the replay command, and the
``outage_app`` fixture (a module imports it to use it)."""
from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from crm_mailtrack import MailTrack
from crm_mailtrack.models import events

from conftest import BASE_URL, SECRET, tracked_paths

DEST = "https://dest.test/after-outage?x=1"


def tracked(app: Any) -> dict[str, Any]:
    return tracked_paths(app, DEST, campaign_id="k")


def count(app: Any, table: sa.Table = events, **where: Any) -> int:
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        q = sa.select(sa.func.count()).select_from(table).where(*(table.c[k] == v for k, v in where.items()))
        return conn.execute(q).scalar()


def replay(app: Any) -> str:
    result = app.test_cli_runner().invoke(args=["mailtrack", "replay-journal"])
    assert result.exit_code == 0, result.output
    return result.output


def _unreachable_uri(database_url: str, tmp_path: Any) -> str:
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path}/no-such-dir/crm.db"
    return "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2"


@pytest.fixture
def outage_app(database_url, tmp_path):
    """A second app of the same host whose database cannot be reached, sharing the
    journal of the healthy app (as two deployments of one host would share a volume)."""
    made: list[Flask] = []

    def factory(journal_path: str) -> Flask:
        app = Flask("outage", instance_path=str(tmp_path / "outage-instance"))
        app.config.update(TESTING=True, SECRET_KEY=SECRET, MAILTRACK_BASE_URL=BASE_URL,
                          SQLALCHEMY_DATABASE_URI=_unreachable_uri(database_url, tmp_path),
                          MAILTRACK_JOURNAL_PATH=journal_path)
        MailTrack(app, db=SQLAlchemy(app))
        made.append(app)
        return app

    yield factory
    for app in made:
        with app.app_context():
            for engine in app.extensions["sqlalchemy"].engines.values():
                engine.dispose()


def _journaled_open(make_app, outage_app) -> tuple[Any, str, bytes]:
    """``(healthy app, journal path, one real journaled line)``: a browser's open of a
    message, made while the database was unreachable (its details hold nested objects)."""
    healthy = make_app()
    p = tracked(healthy)
    path = healthy.config["MAILTRACK_JOURNAL_PATH"]
    browser = {"User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                             "Chrome/126.0 Safari/537.36"}
    assert outage_app(path).test_client().get(p["open"], headers=browser).status_code == 200
    with open(path, "rb") as fh:
        [line] = fh.read().splitlines()
    return healthy, path, line
