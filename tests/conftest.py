"""Fixtures that drive crm_mailtrack the way a host app does: an app factory on a real
database (SQLite always; PostgreSQL when MAILTRACK_TEST_POSTGRES_URL is set, as .ci/run
does), a test client, a CLI runner, and a signal recorder.

PostgreSQL isolation: each pytest process works in its own schema (``mt_<pid>``), created
at start and dropped at the end, so several runs can share one server; tables are truncated
between tests.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from crm_mailtrack import MailTrack, metadata, signals

POSTGRES_URL = os.environ.get("MAILTRACK_TEST_POSTGRES_URL")
SECRET = "test-secret-key-" + "k" * 24
API_TOKEN = "test-api-token"
BASE_URL = "http://crm.test"


def _pg_url_with_schema(schema: str) -> str:
    sep = "&" if "?" in POSTGRES_URL else "?"  # type: ignore[operator]
    return f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a private PostgreSQL schema for this test process (skips without a server)."""
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL not configured: set MAILTRACK_TEST_POSTGRES_URL (.ci/run does)")
    schema = f"mt_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL at MAILTRACK_TEST_POSTGRES_URL is unreachable: {exc.orig}")
    url = _pg_url_with_schema(schema)
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    yield url
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def _truncate_pg(url: str) -> None:
    """Empty the extension's tables and restart their sequences. DELETE, children first:
    on tables this small it takes ~6 ms where TRUNCATE (new files for each table) takes
    ~120 ms, per test. TRUNCATE .. CASCADE when a table a test made refers to ours."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
            conn.execute(sa.text("SELECT setval(format('%I.%I', schemaname, sequencename)::regclass, 1, false) "
                                 "FROM pg_sequences WHERE schemaname = current_schema()"))
    except sa.exc.IntegrityError:
        with engine.begin() as conn:
            names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
            conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file holding the extension's tables, made once per test process by
    ``metadata.create_all`` (what ``MailTrack.create_all`` runs); :func:`make_app` copies it
    instead of creating some twenty tables and their indexes in each test's new file."""
    path = tmp_path_factory.mktemp("template") / "crm.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    engine.dispose()
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A fresh database with the extension's tables: SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/crm.db"
    url = request.getfixturevalue("pg_url")
    _truncate_pg(url)
    return url


@pytest.fixture
def empty_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """URL of an *empty* database of the parametrised kind (``database_url``'s already holds
    the tables): a new SQLite file, or a new PostgreSQL schema dropped at the end."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/empty.db"
        return
    schema = f"mt_empty_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_url_with_schema(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def make_app(database_url: str, tmp_path: Any, request: pytest.FixtureRequest) -> Callable[..., Flask]:
    """Factory for host apps: ``make_app(**config)`` returns an app with Flask-SQLAlchemy
    and a *fresh* ``MailTrack`` (``app.extensions["mailtrack"].extension``), tables created.
    Each app gets its own engine; all are disposed at teardown."""
    made: list[Flask] = []
    if database_url.startswith("sqlite:///"):
        target = Path(database_url[len("sqlite:///"):])
        if not target.exists():  # a test that wrote its own tables first keeps its file
            shutil.copyfile(request.getfixturevalue("_sqlite_template"), target)

    def factory(*, mailtrack: MailTrack | None = None, setup: Callable[[MailTrack], None] | None = None,
                **config: Any) -> Flask:
        app = Flask(f"host_{len(made)}", instance_path=str(tmp_path / f"instance{len(made)}"))
        app.config.update(
            TESTING=True,
            SECRET_KEY=SECRET,
            SQLALCHEMY_DATABASE_URI=database_url,
            MAILTRACK_BASE_URL=BASE_URL,
            MAILTRACK_API_TOKENS=[API_TOKEN],
            MAILTRACK_JOURNAL_PATH=str(tmp_path / f"journal{len(made)}.jsonl"),
        )
        if database_url.startswith("sqlite"):
            app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"connect_args": {"timeout": 30}}
        app.config.update(config)
        db = SQLAlchemy()
        db.init_app(app)
        mt = mailtrack or MailTrack()
        if setup is not None:
            setup(mt)
        mt.init_app(app, db=db)
        with app.app_context():
            mt.create_all()
        made.append(app)
        return app

    yield factory  # type: ignore[misc]
    for app in made:
        with app.app_context():
            app.extensions["sqlalchemy"].session.remove()
            for engine in app.extensions["sqlalchemy"].engines.values():
                engine.dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    app = make_app()
    with app.app_context():
        yield app


@pytest.fixture
def mailtrack(app: Flask) -> MailTrack:
    return app.extensions["mailtrack"].extension


@pytest.fixture
def db(app: Flask) -> SQLAlchemy:
    return app.extensions["sqlalchemy"]


@pytest.fixture
def client(app: Flask):
    return app.test_client()


@pytest.fixture
def runner(app: Flask):
    return app.test_cli_runner()


@pytest.fixture
def api_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_TOKEN}", "Accept": "application/json"}


class SignalRecorder:
    """Records ``(signal name, sender, kwargs)`` of every crm_mailtrack signal."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]

    def of(self, name: str) -> list[dict[str, Any]]:
        return [kw for n, _, kw in self.calls if n == name]


@pytest.fixture
def recorded_signals() -> Iterator[SignalRecorder]:
    recorder = SignalRecorder()
    with contextlib.ExitStack() as stack:
        for name in signals.__all__:
            sig = getattr(signals, name)

            def receiver(sender: Any, _name: str = name, **kwargs: Any) -> None:
                recorder.calls.append((_name, sender, kwargs))

            stack.enter_context(sig.connected_to(receiver))
        yield recorder


def path_of(url: str) -> str:
    """The path+query of an absolute tracking URL, for the test client."""
    assert url.startswith(BASE_URL), url
    return url[len(BASE_URL):]


def tracked_paths(app: Flask, dest: str, *, campaign_id: str | None = "camp",
                  contact_id: str = "c1") -> dict[str, str]:
    """Track a one-link message to ``contact_id`` and return its id and the test-client
    paths of its click link, open pixel and unsubscribe URL (as found in the mail)."""
    import re

    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        msg = mt.track_message(contact_id=contact_id, email=f"{contact_id}@example.com", subject="s",
                               campaign_id=campaign_id, html=f'<a href="{dest}">go</a>')
        return {
            "id": msg.id,
            "click": path_of(re.search(r'href="([^"]+/t/c/[^"]+)">go</a>', msg.html).group(1)),
            "open": path_of(re.search(r'src="([^"]+/t/o/[^"]+)"', msg.html).group(1)),
            "unsub": path_of(msg.headers["List-Unsubscribe"][1:-1]),
        }


@pytest.fixture(scope="module")
def _server() -> Iterator[Any]:
    """A recording SMTP server on loopback, one per test module (starting one costs ~1 s)."""
    from mailserver import MailServer, RecordingHandler

    with MailServer(RecordingHandler()) as srv:
        yield srv


@pytest.fixture
def handler(_server: Any) -> Any:
    """The module's server's handler with a clean record (nothing received, nothing refused)."""
    _server.handler.received.clear()
    _server.handler.refuse.clear()
    return _server.handler
