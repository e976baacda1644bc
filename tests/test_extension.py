"""Embedding the extension: init_app checks, one object for several apps, the database
fallbacks (host's Flask-SQLAlchemy, own engine) and building external tracking URLs."""
from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from crm_mailtrack import ConfigurationError, MailTrack
from crm_mailtrack.models import events, messages

from conftest import SECRET


def bare_app(tmp_path: Any, **config: Any) -> Flask:
    app = Flask("bare", instance_path=str(tmp_path / "bare-instance"))
    app.config.update(TESTING=True, **config)
    return app


@pytest.mark.parametrize("secret", [None, "", "short", "x" * 15])
def test_init_app_refuses_a_missing_or_short_key(tmp_path, secret):
    app = bare_app(tmp_path, SECRET_KEY=secret, MAILTRACK_DATABASE_URI=f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(ConfigurationError, match="MAILTRACK_SECRET_KEY"):
        MailTrack().init_app(app)
    assert "mailtrack" not in app.extensions


def test_a_short_mailtrack_key_is_refused_even_with_a_good_secret_key(tmp_path):
    app = bare_app(tmp_path, SECRET_KEY=SECRET, MAILTRACK_SECRET_KEY="tiny",
                   MAILTRACK_DATABASE_URI=f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(ConfigurationError, match="MAILTRACK_SECRET_KEY"):
        MailTrack(app)


def test_registering_twice_raises(make_app):
    app = make_app()
    mt = app.extensions["mailtrack"].extension
    with pytest.raises(RuntimeError, match="already"):
        mt.init_app(app)
    with pytest.raises(RuntimeError):
        MailTrack().init_app(app)


def test_one_object_serves_two_apps(make_app):
    mt = MailTrack()
    one = make_app(mailtrack=mt, MAILTRACK_BASE_URL="https://one.test")
    two = make_app(mailtrack=mt, MAILTRACK_BASE_URL="https://two.test/crm", MAILTRACK_URL_PREFIX="/mt/",
                   MAILTRACK_TRACK_OPENS=False, SECRET_KEY="another-secret-" + "z" * 20)
    with one.app_context():
        m1 = mt.track_message(contact_id="c1", email="a@example.com", subject="s",
                              html='<body><a href="https://d.test/">go</a></body>')
        assert mt.open_url(m1).startswith("https://one.test/mailtrack/t/o/")
    with two.app_context():
        m2 = mt.track_message(contact_id="c1", email="a@example.com", subject="s",
                              html='<body><a href="https://d.test/">go</a></body>')
        assert mt.open_url(m2).startswith("https://two.test/crm/mt/t/o/")
    assert "/t/o/" in m1.html and "/t/o/" not in m2.html
    c1 = re.search(r'href="https://one\.test(/mailtrack/t/c/[^"]+)">go', m1.html).group(1)
    c2 = re.search(r'href="https://two\.test/crm(/mt/t/c/[^"]+)">go', m2.html).group(1)
    assert one.test_client().get(c1).status_code == 302
    assert two.test_client().get(c2).status_code == 302
    # Each app has its own key: a link of one is nothing to the other.
    assert two.test_client().get(c1.replace("/mailtrack/", "/mt/")).status_code == 404
    assert one.extensions["mailtrack"] is not two.extensions["mailtrack"]


def test_without_init_app_the_error_says_so(tmp_path):
    mt = MailTrack()
    app = bare_app(tmp_path, SECRET_KEY=SECRET)
    with app.app_context():
        with pytest.raises(RuntimeError, match="did you forget to call init_app"):
            mt.open_url("m1")


def test_falls_back_to_the_hosts_flask_sqlalchemy(tmp_path, database_url):
    app = bare_app(tmp_path, SECRET_KEY=SECRET, SQLALCHEMY_DATABASE_URI=database_url,
                   MAILTRACK_BASE_URL="http://crm.test")
    db = SQLAlchemy(app)
    mt = MailTrack(app)
    try:
        with app.app_context():
            assert app.extensions["mailtrack"].db is db
            mt.create_all()
            msg = mt.track_message(contact_id="c1", email="a@example.com", subject="s")
            # Written through the host's session and engine.
            assert db.session.get(type(msg), msg.id) is msg
            with db.engine.connect() as conn:
                assert conn.execute(sa.select(messages.c.id)).scalars().all() == [msg.id]
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def test_own_engine_without_flask_sqlalchemy(tmp_path, database_url):
    _own_engine_round_trip(tmp_path, database_url)


def test_own_engine_defaults_to_sqlite_in_the_instance_folder(tmp_path):
    _own_engine_round_trip(tmp_path, None)


def _own_engine_round_trip(tmp_path: Any, database_url: str | None) -> None:
    explicit_uri = database_url is not None
    config: dict[str, Any] = {"SECRET_KEY": SECRET, "MAILTRACK_BASE_URL": "http://crm.test"}
    if explicit_uri:
        config["MAILTRACK_DATABASE_URI"] = database_url
    app = bare_app(tmp_path, **config)
    mt = MailTrack(app)
    state = app.extensions["mailtrack"]
    try:
        assert state.db is None and state.own_engine is not None
        if not explicit_uri:
            assert str(state.own_engine.url).endswith("bare-instance/mailtrack.db")
        with app.app_context():
            mt.create_all()
            msg = mt.track_message(contact_id="c1", email="a@example.com", subject="s",
                                   html='<a href="https://d.test/x">go</a>')
            path = re.search(r'href="http://crm\.test(/mailtrack/t/c/[^"]+)">go', msg.html).group(1)
            mt.add_dnc("c2")
            assert mt.can_contact("c2") is False
        resp = app.test_client().get(path)
        assert resp.status_code == 302 and resp.headers["Location"] == "https://d.test/x"
        with state.own_engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(events)
                                .where(events.c.type == "click")).scalar() == 1
    finally:
        state.own_engine.dispose()


def test_url_building(make_app):
    with_base = make_app(MAILTRACK_BASE_URL="https://links.example.com/")
    with with_base.app_context():
        assert with_base.extensions["mailtrack"].extension.open_url("m1").startswith(
            "https://links.example.com/mailtrack/t/o/")

    from_request = make_app(MAILTRACK_BASE_URL=None)
    mt = from_request.extensions["mailtrack"].extension
    with from_request.test_request_context("/", base_url="https://crm.example.org/app"):
        assert mt.unsubscribe_url("m1").startswith("https://crm.example.org/app/mailtrack/t/u/")
    with from_request.app_context():
        with pytest.raises(ConfigurationError, match="MAILTRACK_BASE_URL"):
            mt.click_url("m1", "https://d.test/")
        with pytest.raises(ConfigurationError, match="MAILTRACK_BASE_URL"):
            mt.track_message(contact_id="c1", email="a@example.com", subject="s", html="<p>x</p>")

    server = make_app(MAILTRACK_BASE_URL=None, SERVER_NAME="crm.example.net", PREFERRED_URL_SCHEME="https")
    with server.app_context():
        url = server.extensions["mailtrack"].extension.click_url("m1", "https://d.test/")
        assert url.startswith("https://crm.example.net/mailtrack/t/c/")
    client = server.test_client()
    resp = client.get(url[len("https://crm.example.net"):], base_url="https://crm.example.net")
    assert resp.status_code == 302 and resp.headers["Location"] == "https://d.test/"


def test_url_prefix_root(make_app):
    app = make_app(MAILTRACK_URL_PREFIX="/")
    with app.app_context():
        url = app.extensions["mailtrack"].extension.click_url("m1", "https://d.test/")
    assert url.startswith("http://crm.test/t/c/")
    assert app.test_client().get(url[len("http://crm.test"):]).status_code == 302


@pytest.mark.parametrize("key, value", [
    ("MAILTRACK_LINK_MAX_AGE", -5), ("MAILTRACK_LINK_MAX_AGE", "soon"), ("MAILTRACK_LINK_MAX_AGE", True),
    ("MAILTRACK_UTM_DEFAULTS", {"source": "x"}), ("MAILTRACK_UTM_DEFAULTS", {"utm_source": 3}),
    ("MAILTRACK_UTM_DEFAULTS", ["utm_source"]),
    # every link would be broken: no scheme, a relative path, another scheme, a query
    ("MAILTRACK_BASE_URL", "crm.example.com"), ("MAILTRACK_BASE_URL", "/crm"),
    ("MAILTRACK_BASE_URL", "ftp://crm.example.com"), ("MAILTRACK_BASE_URL", "https://crm.example.com/?a=1"),
    ("MAILTRACK_BASE_URL", "https://"), ("MAILTRACK_BASE_URL", 42),
    ("MAILTRACK_URL_PREFIX", "https://crm.example.com/t"), ("MAILTRACK_URL_PREFIX", 5),
    ("MAILTRACK_SECRET_KEY_FALLBACKS", 12345), ("MAILTRACK_SECRET_KEY_FALLBACKS", ["old-key", None]),
    ("MAILTRACK_API_TOKENS", [""]), ("MAILTRACK_API_TOKENS", [" padded "]), ("MAILTRACK_API_TOKENS", 7),
    ("MAILTRACK_TRACK_OPENS", "false"), ("MAILTRACK_TRACK_CLICKS", 0), ("MAILTRACK_ANONYMIZE_IP", "no"),
    ("MAILTRACK_HONEYPOT", "off"),
    ("MAILTRACK_DEFAULT_SENDER", "no address"), ("MAILTRACK_DEFAULT_SENDER", "a@b.test\r\nBcc: x@y.test"),
    ("MAILTRACK_SMTP_URL", None), ("MAILTRACK_SMTP_URL", "smtp://mail.test?timeout=-1"),
    ("MAILTRACK_JOURNAL_PATH", 3),
    ("MAILTRACK_BOT_AFTER_SEND_SECONDS", -1), ("MAILTRACK_BOT_AFTER_SEND_SECONDS", "5"),
    ("MAILTRACK_BOT_BURST_SECONDS", float("nan")), ("MAILTRACK_HONEYPOT_WINDOW_SECONDS", float("inf")),
    ("MAILTRACK_SCANNER_NETWORKS", ["10.0.0.0/33"]), ("MAILTRACK_SCANNER_NETWORKS", 10),
    ("MAILTRACK_APPLE_PROXY_NETWORKS", ["apple"]),
])
def test_bad_config_is_refused_at_init_app_naming_the_key(tmp_path, key, value):
    """Every key is checked by ``init_app`` (not on first use), the error names it, and
    nothing is left registered on the app."""
    app = bare_app(tmp_path, SECRET_KEY=SECRET, MAILTRACK_DATABASE_URI=f"sqlite:///{tmp_path}/x.db", **{key: value})
    with pytest.raises(ConfigurationError, match=key):
        MailTrack(app)
    assert "mailtrack" not in app.extensions
    assert "mailtrack" not in app.blueprints


def test_bad_own_database_uri_is_refused_naming_the_key(tmp_path):
    app = bare_app(tmp_path, SECRET_KEY=SECRET, MAILTRACK_DATABASE_URI="not a database url")
    with pytest.raises(ConfigurationError, match="MAILTRACK_DATABASE_URI"):
        MailTrack(app)


@pytest.mark.parametrize("key, value", [
    ("MAILTRACK_BASE_URL", "https://crm.example.com"), ("MAILTRACK_BASE_URL", "http://127.0.0.1:5000/crm/"),
    ("MAILTRACK_API_TOKENS", "one-token"), ("MAILTRACK_SECRET_KEY_FALLBACKS", "an-older-key-of-16+"),
    ("MAILTRACK_SCANNER_NETWORKS", "192.0.2.0/24"), ("MAILTRACK_BOT_BURST_SECONDS", None),
    ("MAILTRACK_DEFAULT_SENDER", "Vertrieb Düsseldorf <sales@acme.example>"),
])
def test_good_config_is_accepted(tmp_path, key, value):
    app = bare_app(tmp_path, SECRET_KEY=SECRET, MAILTRACK_DATABASE_URI=f"sqlite:///{tmp_path}/x.db", **{key: value})
    MailTrack(app)
    assert "mailtrack" in app.extensions


def test_hooks_are_stored_and_returned_unchanged():
    mt = MailTrack()

    def loader(contact_id: str) -> None:
        return None

    for deco in (mt.contact_loader, mt.tenant_loader, mt.api_authorizer, mt.template_loader):
        assert deco(loader) is loader


@pytest.mark.parametrize("url", ["ftp://mail.test", "smtp://", "not a url", "smtp://host:notaport"])
def test_bad_smtp_url_fails_at_init_app_naming_the_key(make_app, url):
    with pytest.raises(ConfigurationError, match="MAILTRACK_SMTP_URL"):
        make_app(MAILTRACK_SMTP_URL=url)
