"""Northwind CRM: a small host application that embeds crm_mailtrack.

``create_app()`` builds the CRM on SQLite (WAL), registers crm_mailtrack with a
``contact_loader`` over the CRM's own ``contacts`` table and an API token, and on the
first run fills the database with deterministic demo data. ``python -m example_app``
also starts a local SMTP server so that compose-and-send delivers into the Inbox page.
"""
from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from flask import Flask

from crm_mailtrack import MailTrack

from .models import Contact, db

mailtrack = MailTrack()

#: The demo's API token (the dashboard itself reads its numbers from the JSON API with it).
API_TOKEN = "northwind-demo-token"
DEFAULT_PORT = 5000


@mailtrack.contact_loader
def load_contact(contact_id: str) -> Mapping[str, Any] | None:
    """crm_mailtrack's view of a CRM contact (``None``: no such contact, API answers 404)."""
    try:
        key = int(contact_id)
    except (TypeError, ValueError):
        return None
    contact = db.session.get(Contact, key)
    return contact.as_mapping() if contact else None


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The example CRM. ``config`` overrides the defaults (tests pass a temporary database,
    ``MAILTRACK_BASE_URL`` and ``EXAMPLE_DEMO_ANCHOR``)."""
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    port = int(os.environ.get("EXAMPLE_PORT", DEFAULT_PORT))
    app.config.update(
        SECRET_KEY=os.environ.get("EXAMPLE_SECRET_KEY", "northwind-demo-secret-key-not-for-production"),
        SQLALCHEMY_DATABASE_URI=os.environ.get(
            "EXAMPLE_DATABASE_URL", "sqlite:///" + os.path.join(app.instance_path, "crm.db")),
        MAILTRACK_API_TOKENS=[API_TOKEN],
        MAILTRACK_BASE_URL=os.environ.get("EXAMPLE_BASE_URL", f"http://127.0.0.1:{port}"),
        MAILTRACK_UTM_DEFAULTS={"utm_source": "northwind-crm", "utm_medium": "email"},
        MAILTRACK_SMTP_URL=os.environ.get("EXAMPLE_SMTP_URL", "smtp://127.0.0.1:8025"),
        MAILTRACK_DEFAULT_SENDER="Northwind CRM <news@northwind.example>",
        EXAMPLE_SEED_DEMO=True,
        EXAMPLE_DEMO_ANCHOR=None,
    )
    if config:
        app.config.update(config)
    if str(app.config["SQLALCHEMY_DATABASE_URI"]).startswith("sqlite"):  # sqlite3's busy wait; psycopg has no such option
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"connect_args": {"timeout": 30}})
    _behind_proxies(app, int(os.environ.get("EXAMPLE_PROXY_HOPS", "0")))
    db.init_app(app)
    mailtrack.init_app(app, db=db)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            _sqlite_wal(db.engine)
        db.create_all()
        mailtrack.create_all()

    from . import campaign_views, views  # noqa: F401  (campaign_views adds its routes to the blueprint)

    app.register_blueprint(views.blueprint)
    views.register_filters(app)
    if app.config["EXAMPLE_SEED_DEMO"]:
        from .demo import seed_if_empty

        anchor = app.config["EXAMPLE_DEMO_ANCHOR"]
        if isinstance(anchor, str):
            anchor = dt.datetime.fromisoformat(anchor)
        seed_if_empty(app, anchor)
    return app


def _behind_proxies(app: Flask, hops: int) -> None:
    """Behind ``hops`` reverse proxies, take the client's address, scheme and host from the
    ``X-Forwarded-*`` headers they set (werkzeug's ``ProxyFix``); otherwise every open and
    click would carry the proxy's IP. Off (0) by default: the demo runs without a proxy, and
    without one those headers are whatever a client claims."""
    if hops > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]


def _sqlite_wal(engine: sa.Engine) -> None:
    """WAL and a busy timeout: the dashboard's reads never block the click path's writes."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=5000")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, no fsync per commit
        cur.close()

    engine.dispose()  # connections opened before the listener get the pragmas too


__all__ = ["create_app", "mailtrack", "db", "API_TOKEN"]
