"""Inside a host app (source tree; tests/test_host_app.py does it against the built wheel):
Flask-Migrate's autogenerate leaves our tables alone whichever extension is set up first,
a create_all() quick start moves onto the migrations with ``flask mailtrack init-db``,
Flask-WTF's CSRFProtect and the JSON API work together (bearer calls pass, cookie calls
need the token), missing tables say "run init-db", a custom authorizer's 401 says nothing
about bearer tokens, and the README's ``contact_loader`` answers 404 for a foreign id."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, jsonify, session
from flask_sqlalchemy import SQLAlchemy

from crm_mailtrack import MailTrack, ValidationError, metadata
from crm_mailtrack.migrate import current

from conftest import API_TOKEN, BASE_URL, SECRET, path_of

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
API = "/mailtrack/api"
JSON = {"Accept": "application/json"}


def host_app(url: str, tmp_path: Path, *, name: str = "host", **config: Any) -> tuple[Flask, SQLAlchemy]:
    app = Flask(name, instance_path=str(tmp_path / f"{name}-instance"))
    app.config.update(SECRET_KEY=SECRET, SQLALCHEMY_DATABASE_URI=url, MAILTRACK_BASE_URL=BASE_URL,
                      MAILTRACK_JOURNAL_PATH=str(tmp_path / f"{name}-journal.jsonl"), **config)
    db = SQLAlchemy()
    db.init_app(app)
    return app, db


def dispose(app: Flask) -> None:
    with app.app_context():
        app.extensions["sqlalchemy"].session.remove()
        for engine in app.extensions["sqlalchemy"].engines.values():
            engine.dispose()


# -- Flask-Migrate ---------------------------------------------------------------------------

def flask_cmd(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``flask --app hostapp <args>`` in a subprocess, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "flask", "--app", "hostapp:create_app", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("order", ["mailtrack-first", "host-first"])
def test_flask_db_migrate_leaves_our_tables_alone(empty_url: str, tmp_path: Path, order: str) -> None:
    """The host's ``flask db migrate`` writes its own tables and nothing about ours (nor
    about the tables its own ``include_object`` filter skips), with no host set-up, whether
    MailTrack is initialised before or after Flask-Migrate."""
    env = {**os.environ, "PYTHONPATH": str(TESTS), "HOSTAPP_DATABASE_URL": empty_url, "HOSTAPP_ORDER": order,
           "HOSTAPP_INSTANCE": str(tmp_path / "instance")}
    engine = sa.create_engine(empty_url)
    try:
        from crm_mailtrack.migrate import upgrade

        upgrade(engine)  # the extension's tables, as `flask mailtrack init-db` makes them
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE legacy_import (id INTEGER PRIMARY KEY)"))
        init = flask_cmd(tmp_path, env, "db", "init")
        assert init.returncode == 0, init.stderr
        migrate = flask_cmd(tmp_path, env, "db", "migrate", "-m", "crm")
        assert migrate.returncode == 0, migrate.stderr
        [revision] = (tmp_path / "migrations" / "versions").glob("*_crm.py")
        text = revision.read_text()
        assert "op.create_table('crm_contacts'" in text  # the host's own model autogenerates
        assert "mailtrack_" not in text  # no drop_table / drop_index of ours, nor of our version table
        assert "legacy_import" not in text  # the host's own filter still runs
    finally:
        engine.dispose()


# -- create_all() quick start -> init-db -------------------------------------------------------

def test_create_all_quick_start_moves_onto_the_migrations_with_init_db(empty_url: str, tmp_path: Path) -> None:
    """README's quick start (``mailtrack.create_all()``) then ``flask mailtrack init-db``:
    the tables are recorded at the head revision and stay as they were (rows kept); later
    upgrades migrate them."""
    app, db = host_app(empty_url, tmp_path)
    mt = MailTrack(app, db=db)
    try:
        with app.app_context():
            mt.create_all()
            message = mt.track_message(contact_id="c1", email="ann@example.com", subject="Hi", html="<p>x</p>")
            message_id = message.id
        result = app.test_cli_runner().invoke(args=["mailtrack", "init-db"])
        assert result.exit_code == 0, result.output
        assert "recorded revision" in result.output and "database ready" in result.output
        with app.app_context():
            assert current(db.engine) is not None
            with db.engine.connect() as conn:
                assert conn.execute(sa.text("SELECT id FROM mailtrack_messages")).scalar_one() == message_id
        again = app.test_cli_runner().invoke(args=["mailtrack", "init-db"])
        assert again.exit_code == 0 and "recorded revision" not in again.output
    finally:
        dispose(app)


def test_init_db_refuses_tables_that_differ_from_this_version(empty_url: str, tmp_path: Path) -> None:
    """Never stamp a schema that is not the head's: a create_all() of another shape (here
    one index missing) is refused with the difference named, and nothing is recorded."""
    engine = sa.create_engine(empty_url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_mailtrack_events_message"))
    engine.dispose()
    app, db = host_app(empty_url, tmp_path)
    MailTrack(app, db=db)
    try:
        result = app.test_cli_runner().invoke(args=["mailtrack", "init-db"])
        assert result.exit_code == 1
        assert "ix_mailtrack_events_message" in result.output
        with app.app_context():
            assert current(db.engine) is None
    finally:
        dispose(app)


# -- CSRFProtect ---------------------------------------------------------------------------

def csrf_host(url: str, tmp_path: Path, *, csrf_first: bool, session_authorizer: bool) -> Flask:
    from flask_wtf.csrf import CSRFProtect, generate_csrf

    app, db = host_app(url, tmp_path, MAILTRACK_API_TOKENS=[API_TOKEN])
    mt = MailTrack()
    if session_authorizer:
        @mt.api_authorizer
        def _by_session() -> bool:
            return bool(session.get("user"))
    if csrf_first:
        CSRFProtect(app)
    mt.init_app(app, db=db)
    if not csrf_first:
        CSRFProtect(app)

    @app.get("/login")
    def login() -> Any:
        session["user"] = "ada"
        return jsonify(csrf_token=generate_csrf())

    @app.post("/host-form")
    def host_form() -> str:
        return "saved"

    with app.app_context():
        mt.create_all()
    return app


def dnc_count(app: Flask) -> int:
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM mailtrack_dnc")).scalar_one()


@pytest.mark.parametrize("csrf_first", [True, False], ids=["csrf-before", "csrf-after"])
def test_bearer_token_calls_pass_a_hosts_csrf_protection(empty_url: str, tmp_path: Path, csrf_first: bool) -> None:
    app = csrf_host(empty_url, tmp_path, csrf_first=csrf_first, session_authorizer=False)
    client = app.test_client()
    try:
        assert client.post("/host-form").status_code == 400  # the host's forms stay protected
        resp = client.post(f"{API}/contacts/c1/dnc/email/add", json={},
                           headers={**JSON, "Authorization": f"Bearer {API_TOKEN}"})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert dnc_count(app) == 1
    finally:
        dispose(app)


@pytest.mark.parametrize("csrf_first", [True, False], ids=["csrf-before", "csrf-after"])
def test_cookie_authorised_api_calls_need_the_csrf_token(empty_url: str, tmp_path: Path, csrf_first: bool) -> None:
    """With an authorizer reading the session, a cross-site form POST (the browser sends the
    session cookie, no token) is refused and writes nothing; the same call with the host's
    CSRF token, or with a bearer header (no cross-site page can add one), passes."""
    app = csrf_host(empty_url, tmp_path, csrf_first=csrf_first, session_authorizer=True)
    client = app.test_client()
    path = f"{API}/contacts/c1/dnc/email/add"
    try:
        token = client.get("/login").get_json()["csrf_token"]
        forged = client.post(path, data={"comments": "x"}, headers={"Origin": "https://evil.example"})
        assert forged.status_code == 400
        assert forged.mimetype == "application/problem+json"
        assert "CSRF" in forged.get_json()["detail"]
        assert dnc_count(app) == 0
        assert client.post(path, json={}, headers=JSON).status_code == 400  # a JSON body alone is no proof
        assert dnc_count(app) == 0
        assert client.get(f"{API}/contacts/c1/dnc", headers=JSON).status_code == 200  # reads need no token
        ok = client.post(path, json={}, headers={**JSON, "X-CSRFToken": token})
        assert ok.status_code == 200, ok.get_data(as_text=True)
        assert dnc_count(app) == 1
        removed = client.post(f"{API}/contacts/c1/dnc/email/remove", json={},
                              headers={**JSON, "Authorization": "Bearer anything-the-authorizer-ignores"})
        assert removed.status_code == 200
        assert dnc_count(app) == 0
    finally:
        dispose(app)


def test_a_host_that_turns_csrf_off_is_not_second_guessed(empty_url: str, tmp_path: Path) -> None:
    """``WTF_CSRF_ENABLED = False`` (a host's test configuration, or one that checks CSRF its
    own way): cookie-authorised API writes need no token, like the host's own forms."""
    app = csrf_host(empty_url, tmp_path, csrf_first=True, session_authorizer=True)
    app.config["WTF_CSRF_ENABLED"] = False
    client = app.test_client()
    try:
        client.get("/login")
        assert client.post("/host-form").status_code == 200
        resp = client.post(f"{API}/contacts/c1/dnc/email/add", json={}, headers=JSON)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert dnc_count(app) == 1
    finally:
        dispose(app)


# -- errors an operator or integrator reads ----------------------------------------------------

def test_missing_tables_say_run_init_db_on_the_api_once_in_the_log_and_on_the_cli(
        empty_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app, db = host_app(empty_url, tmp_path, MAILTRACK_API_TOKENS=[API_TOKEN])
    MailTrack(app, db=db)  # no create_all, no init-db
    client = app.test_client()
    headers = {**JSON, "Authorization": f"Bearer {API_TOKEN}"}
    try:
        with caplog.at_level(logging.ERROR):
            for _ in range(2):
                resp = client.get(f"{API}/activity", headers=headers)
                assert resp.status_code == 500
                assert resp.mimetype == "application/problem+json"
                assert "flask mailtrack init-db" in resp.get_json()["detail"]
                assert "try again" not in resp.get_json()["detail"].lower()
        [logged] = [r for r in caplog.records if "flask mailtrack init-db" in r.getMessage()]
        assert logged.levelno == logging.ERROR and logged.getMessage().startswith("crm_mailtrack: ")
        result = app.test_cli_runner().invoke(args=["mailtrack", "send-due"])
        assert result.exit_code == 1
        assert "run `flask mailtrack init-db`" in result.output
    finally:
        dispose(app)


def test_a_custom_authorizers_401_says_nothing_about_bearer_tokens(empty_url: str, tmp_path: Path) -> None:
    app, db = host_app(empty_url, tmp_path)
    mt = MailTrack()
    mt.api_authorizer(lambda: False)
    mt.init_app(app, db=db)
    try:
        resp = app.test_client().get(f"{API}/activity", headers=JSON)
        assert resp.status_code == 401
        assert "bearer" not in resp.get_data(as_text=True).lower()
        assert "bearer" not in resp.headers.get("WWW-Authenticate", "").lower()
    finally:
        dispose(app)


def test_a_validation_errors_text_names_the_fields(app: Flask, mailtrack: MailTrack) -> None:
    with pytest.raises(ValidationError) as caught:
        mailtrack.track_message(contact_id="c1", email="not-an-address", subject="Hi", html="<p>x</p>")
    assert "email" in str(caught.value)
    assert "Not a valid email address" in str(caught.value)


def _readme_block(name: str) -> str:
    """The README's Python code block that defines ``name``."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S):
        if f"def {name}(" in block:
            return block
    raise AssertionError(f"README has no code block defining {name}")


def test_the_readme_contact_loader_answers_404_for_an_id_it_cannot_parse(empty_url: str, tmp_path: Path) -> None:
    """The README's ``contact_loader``, run as written against a host ``Contact`` model: a
    known id answers, an unknown one and a non-integer one are 404 (not a 500)."""
    app, db = host_app(empty_url, tmp_path, MAILTRACK_API_TOKENS=[API_TOKEN])

    class Contact(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "readme_contacts"
        id = db.Column(db.Integer, primary_key=True)
        email = db.Column(db.String(200))
        first_name = db.Column(db.String(100))

    mailtrack = MailTrack(app, db=db)
    block = _readme_block("load_contact")
    code = block[block.index("@mailtrack.contact_loader"):]
    exec(compile(code, "README.md", "exec"), {"re": re, "mailtrack": mailtrack, "db": db, "Contact": Contact})
    headers = {**JSON, "Authorization": f"Bearer {API_TOKEN}"}
    try:
        with app.app_context():
            db.create_all()
            mailtrack.create_all()
            db.session.add(Contact(id=42, email="ada@example.com", first_name="Ada"))
            db.session.commit()
        client = app.test_client()
        assert client.get(f"{API}/contacts/42/activity", headers=headers).status_code == 200
        for foreign in ("43", "abc", "4.2", "-1", "%C2%B2", "9" * 30):
            resp = client.get(f"{API}/contacts/{foreign}/activity", headers=headers)
            assert resp.status_code == 404, (foreign, resp.get_data(as_text=True))
    finally:
        dispose(app)


def test_one_click_unsubscribe_and_the_pixel_need_no_csrf_token(empty_url: str, tmp_path: Path) -> None:
    """The public tracking routes under CSRFProtect set up after MailTrack (the order
    whose exemption happens at the first request)."""
    app = csrf_host(empty_url, tmp_path, csrf_first=False, session_authorizer=False)
    mt = app.extensions["mailtrack"].extension
    try:
        with app.app_context():
            message = mt.track_message(contact_id="c1", email="ann@example.com", subject="Hi",
                                       html='<p><a href="https://shop.example/a">a</a></p>')
            unsub, pixel = path_of(mt.unsubscribe_url(message)), path_of(mt.open_url(message))
        client = app.test_client(use_cookies=False)
        assert client.get(pixel).status_code == 200
        assert client.post(unsub, data={"List-Unsubscribe": "One-Click"}).status_code == 200
        assert dnc_count(app) == 1
    finally:
        dispose(app)
