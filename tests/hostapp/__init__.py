"""A small CRM of its own that embeds crm_mailtrack the way a real host does: its own models
and Flask-Migrate history, Flask-WTF's CSRFProtect on its forms, a session login, an
``api_authorizer`` that accepts the logged-in session (or the CRM's integration token), a
``contact_loader`` written as the README shows it, and ProxyFix for its reverse proxy.

Configured by environment variables, so the tests can run it with ``flask --app hostapp``
or as a real server (``python -m hostapp.serve``), against the source tree or an installed
wheel:

- ``HOSTAPP_DATABASE_URL`` (required), ``HOSTAPP_SMTP_URL``, ``HOSTAPP_MIGRATIONS``;
- ``HOSTAPP_ORDER``: ``mailtrack-first`` (default) or ``host-first``: whether MailTrack's
  ``init_app`` runs before or after Flask-Migrate's and CSRFProtect's;
- ``HOSTAPP_NOTES=1`` adds the ``notes`` model (a host schema change to autogenerate);
- ``HOSTAPP_PROXY_HOPS``: proxies in front of the app (werkzeug ``ProxyFix``; 0: none).
"""
from __future__ import annotations

import hmac
import os
import re
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from flask import Flask, jsonify, request, session
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect, generate_csrf

from crm_mailtrack import MailTrack

db = SQLAlchemy()
migrate = Migrate()
csrf = CSRFProtect()
mailtrack = MailTrack()

SECRET_KEY = "hostapp-secret-key-0123456789abcdef"
#: The CRM's own integration token, accepted by its authorizer beside the session.
INTEGRATION_TOKEN = "hostapp-integration-token"
#: Tables of the CRM that are not its models (an old import): its own Alembic filter keeps
#: autogenerate away from them.
LEGACY_PREFIX = "legacy_"


class Contact(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "crm_contacts"
    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(200), nullable=False)
    first_name = db.Column(db.String(100))


if os.environ.get("HOSTAPP_NOTES") == "1":
    class Note(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "crm_notes"
        id = db.Column(db.Integer, primary_key=True)
        contact_id = db.Column(db.Integer, db.ForeignKey("crm_contacts.id"), nullable=False)
        body = db.Column(db.Text, nullable=False)


def skip_legacy(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """The CRM's own ``include_object``: never touch ``legacy_*`` tables."""
    return not (type_ == "table" and name and name.startswith(LEGACY_PREFIX))


@mailtrack.contact_loader
def load_contact(contact_id: str) -> Mapping[str, Any] | None:
    """The README's loader: an id that is not ours (not an integer) is no contact."""
    if not re.fullmatch(r"[0-9]{1,18}", contact_id):
        return None
    contact = db.session.get(Contact, int(contact_id))
    return {"email": contact.email, "first_name": contact.first_name} if contact else None


@mailtrack.api_authorizer
def authorize() -> bool:
    """A logged-in CRM user (session cookie), or the CRM's integration token."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return hmac.compare_digest(token.strip().encode(), INTEGRATION_TOKEN.encode())
    return bool(session.get("user"))


def create_app() -> Flask:
    app = Flask(__name__, instance_path=os.environ.get("HOSTAPP_INSTANCE", os.path.join(os.getcwd(), "instance")))
    app.config.update(
        SECRET_KEY=SECRET_KEY,
        SQLALCHEMY_DATABASE_URI=os.environ["HOSTAPP_DATABASE_URL"],
        MAILTRACK_BASE_URL="https://crm.example.com",
        MAILTRACK_SMTP_URL=os.environ.get("HOSTAPP_SMTP_URL", "smtp://127.0.0.1:25"),
        MAILTRACK_DEFAULT_SENDER="Host CRM <crm@example.com>",
        MAILTRACK_BOT_AFTER_SEND_SECONDS=0,  # the test clicks right after sending
        MAILTRACK_BOT_BURST_SECONDS=0,
        MAILTRACK_ANONYMIZE_IP=False,
    )
    directory = os.environ.get("HOSTAPP_MIGRATIONS", "migrations")
    db.init_app(app)
    if os.environ.get("HOSTAPP_ORDER", "mailtrack-first") == "mailtrack-first":
        mailtrack.init_app(app, db=db)
        migrate.init_app(app, db, directory=directory, include_object=skip_legacy)
        csrf.init_app(app)
    else:
        migrate.init_app(app, db, directory=directory, include_object=skip_legacy)
        csrf.init_app(app)
        mailtrack.init_app(app, db=db)
    hops = int(os.environ.get("HOSTAPP_PROXY_HOPS", "0"))
    if hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    _routes(app)
    return app


def _routes(app: Flask) -> None:
    @app.get("/login")
    def login() -> Any:
        """Log in (a demo: no password) and hand out the CSRF token for forms and API calls."""
        session["user"] = request.args.get("user", "ada")
        return jsonify(csrf_token=generate_csrf())

    @app.post("/contacts")
    def add_contact() -> Any:
        """A CRM form (CSRF-protected like every host form)."""
        contact = Contact(email=request.form["email"], first_name=request.form.get("first_name"))
        db.session.add(contact)
        db.session.commit()
        return jsonify(id=contact.id), 201

    @app.post("/contacts/<int:contact_id>/mail")
    def mail_contact(contact_id: int) -> Any:
        """Send the contact a tracked newsletter (a CSRF-protected CRM form)."""
        contact = db.get_or_404(Contact, contact_id)
        message = mailtrack.track_message(
            contact_id=str(contact.id), email=contact.email, subject="Spring news",
            html=('<p>Hello {}, see <a href="https://shop.example.com/spring?x=1">the offer</a> '
                  'and <a href="https://example.org/blog">our blog</a>.</p>').format(contact.first_name),
            campaign_id="spring")
        mailtrack.send(message)
        return jsonify(id=message.id, status=message.status)

    @app.get("/health")
    def health() -> Any:
        with db.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return "ok"
