"""The :class:`MailTrack` extension object."""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from flask import Flask

from . import config as cfg
from .journal import Journal
from .models import ContactEvent, DNCReason, Message, UtmTag, metadata
from .services import bulk
from .services import dnc as dnc_service
from .services import events as event_service
from .services import external_events
from .services import messages as message_service
from .services import utm as utm_service
from .services.common import UNSET
from .settings import Settings
from .state import Hooks, MailTrackState, get_state
from .tokens import TokenSigner

F = TypeVar("F", bound=Callable[..., Any])


class MailTrack:
    """Email engagement tracking for a Flask app.

    ``MailTrack(app, db=db)`` or ``mailtrack = MailTrack()`` then
    ``mailtrack.init_app(app, db=db)``. One object may serve several apps; their state
    lives in ``app.extensions["mailtrack"]``. The public methods act on ``current_app``.
    """

    def __init__(self, app: Flask | None = None, *, db: Any = None) -> None:
        self._db = db
        #: The host's callbacks, shared by every app this object serves (so a hook
        #: registered after ``init_app`` counts too); written by the decorators below.
        self.hooks = Hooks()
        if app is not None:
            self.init_app(app, db=db)

    # -- set-up ------------------------------------------------------------------------

    def init_app(self, app: Flask, *, db: Any = None) -> None:
        """Register the extension on ``app``: resolve config, mount the routes and CLI."""
        if "mailtrack" in app.extensions:
            raise RuntimeError("crm_mailtrack is already registered on this app.")
        for key, default in cfg.DEFAULTS.items():
            app.config.setdefault(key, default)
        settings = Settings.from_config(app.config, instance_path=app.instance_path)

        db = db if db is not None else self._db
        if db is None:
            db = app.extensions.get("sqlalchemy")
        state = MailTrackState(
            app=app,
            settings=settings,
            hooks=self.hooks,
            signer=TokenSigner([*settings.secret_key_fallbacks, settings.secret_key],
                               max_age=settings.link_max_age),
            journal=_journal(settings),
            extension=self,
            db=db,
        )
        if db is None:
            _own_database(app, state)
        if settings.reports_database_uri:
            _reports_database(state)
        app.extensions["mailtrack"] = state

        from .cli import cli
        from .tracking import blueprint
        from .webhooks import blueprint as webhooks_blueprint

        app.register_blueprint(blueprint, url_prefix=settings.url_prefix or None)
        app.register_blueprint(webhooks_blueprint, url_prefix=settings.url_prefix or None)
        _register_api(app, settings.url_prefix)
        app.cli.add_command(cli)
        _integrate_with_host(app)

    # -- host hooks (stored and returned unchanged, like Flask-Login's user_loader) -----

    def contact_loader(self, fn: F) -> F:
        """``fn(contact_id) -> Mapping | None``: the host's contact, ``None`` if unknown."""
        self.hooks.contact_loader = fn
        return fn

    def tenant_loader(self, fn: F) -> F:
        """``fn() -> str | None``: the tenant of the current request."""
        self.hooks.tenant_loader = fn
        return fn

    def api_authorizer(self, fn: F) -> F:
        """``fn() -> bool``: may the current API request proceed?"""
        self.hooks.api_authorizer = fn
        return fn

    def template_loader(self, fn: F) -> F:
        """``fn(template_id, variables) -> (subject, html, text) | None``."""
        self.hooks.template_loader = fn
        return fn

    def contact_resolver(self, fn: F) -> F:
        """``fn(email) -> contact_id | None``: the host's contact for an address, used by the
        communications API when a body names recipients but no ``contactId``. Without it (or
        when it answers ``None``) the contact id is the lower-cased address."""
        self.hooks.contact_resolver = fn
        return fn

    # -- database ------------------------------------------------------------------------

    def create_all(self) -> None:
        """Create the extension's tables on the current app's engine (idempotent)."""
        metadata.create_all(get_state().engine)

    def drop_all(self) -> None:
        """Drop the extension's tables from the current app's engine."""
        metadata.drop_all(get_state().engine)

    # -- messages ------------------------------------------------------------------------

    def track_message(self, **kwargs: Any) -> Message:
        """Store an outbound message with signed click links, open pixel and
        List-Unsubscribe headers.

        Keywords: ``contact_id``, ``email``, ``subject`` (required); ``html``, ``text``,
        ``campaign_id``, ``template_id``, ``template_name``, ``type``,
        ``related_entity_type``, ``related_entity_id``, ``scheduled_at`` (stored as
        ``SCHEDULED`` for :meth:`send_due`), ``track_opens`` / ``track_clicks`` (override
        the config for this message) and ``tenant_id``."""
        return message_service.track_message(get_state(), **kwargs)

    def track_messages(
        self,
        recipients: Iterable[Mapping[str, Any]],
        *,
        subject: str,
        html: str | None = None,
        text: str | None = None,
        scheduled_at: dt.datetime | None = None,
        track_opens: bool | None = None,
        track_clicks: bool | None = None,
        tenant_id: Any = UNSET,
        **common: Any,
    ) -> list[str]:
        """Store one tracked message per recipient of a campaign, in one transaction, and
        return their ids in recipient order.

        Each recipient is a mapping with ``contact_id`` and ``email`` and optionally its own
        ``subject``, ``html``, ``text``, ``related_entity_type``, ``related_entity_id``,
        ``variables``, ``conversation_id``, ``cc``, ``bcc``. ``common`` takes the shared
        keywords of :meth:`track_message` (``campaign_id``, ``template_id``,
        ``template_name``, ``type``, ...). The messages equal what :meth:`track_message`
        would store, but the template is instrumented once and only the tokens are signed
        per recipient, so a large campaign is prepared many times faster. All or nothing:
        an invalid recipient raises :class:`~crm_mailtrack.ValidationError` and nothing is
        stored. Send them with :meth:`send` (or :meth:`send_due` with ``scheduled_at``)."""
        return bulk.track_messages(
            get_state(), recipients, subject=subject, html=html, text=text, scheduled_at=scheduled_at,
            track_opens=track_opens, track_clicks=track_clicks, tenant_id=tenant_id, **common,
        )

    def send(self, message: Message) -> Message:
        """Deliver ``message`` through ``MAILTRACK_SMTP_URL`` now, in the caller's process,
        and return it ``SENT``, ``FAILED`` or ``SUPPRESSED`` (one attempt: the caller waits
        for the outcome). :meth:`send_later` is the counterpart that does not wait."""
        from .services import sending

        return sending.send(get_state(), message)

    def send_later(self, message: Message | str) -> Message:
        """Hand a ``PENDING`` message (or its id) to the senders and return without waiting
        for the delivery: it is never sent in the caller's process. With :meth:`init_celery` it becomes a task for the
        workers and stays ``PENDING`` until one claims it; without a queue, or when the
        broker does not take the task, it becomes ``SCHEDULED`` at this moment, for
        ``flask mailtrack send-due``. Either way it is sent once, with the retries of
        transient failures and the domain rate limits of a campaign send. Read the outcome
        later (``message.status`` after a refresh, ``GET /api/communications/find/<id>``,
        the ``message_sent`` / ``message_failed`` signals). A ``SCHEDULED`` message is
        returned as it is (``send-due`` sends it at its time); ``NotFound`` for an unknown
        message, ``Conflict`` for one in any other status."""
        from .services import dispatch

        return dispatch.send_later(get_state(), message)

    def init_celery(self, celery_app: Any, app: Flask | None = None, *, fanout_chunk: int = 500) -> Any:
        """Send campaigns, :meth:`send_later` and the API's send routes through ``celery_app``
        (the host's Celery app; needs the ``celery`` extra): registers the task
        ``crm_mailtrack.send_message`` on it, run by the workers in ``app``'s context
        (default: ``current_app``). Call it in the app factory, so the
        workers, which import the factory, register it too. More than ``fanout_chunk``
        messages at once are published as one fan-out task per chunk, which the workers
        turn into the send tasks (the caller's publishing stays short at any campaign size)."""
        from flask import current_app

        from .taskqueue import init_celery

        return init_celery(app if app is not None else current_app._get_current_object(), celery_app,
                           fanout_chunk=fanout_chunk)

    def send_campaign(
        self,
        campaign_id: str,
        recipients: Iterable[Mapping[str, Any]] | None = None,
        *,
        subject: str | None = None,
        html: str | None = None,
        text: str | None = None,
        tenant_id: Any = UNSET,
        **common: Any,
    ) -> dict[str, Any]:
        """Send a campaign: store one tracked message per recipient (as :meth:`track_messages`,
        when ``recipients`` are given), then deliver every ``PENDING`` message of the
        campaign, each exactly once; return its progress (``queued``, ``sending``, ``sent``,
        ``failed``, ``suppressed``, ``cancelled``, ``retrying``, ``total``).

        With :meth:`init_celery`, each message becomes a task for the workers and this
        returns at once (if the broker does not take them, they are due at once for
        ``send-due`` instead: nothing is lost). Without it, the messages are sent here, in the caller's process.
        Either way a transient SMTP failure (4xx, server unreachable) is retried with
        backoff (``MAILTRACK_SEND_MAX_ATTEMPTS``, ``MAILTRACK_SEND_RETRY_BACKOFF_SECONDS``),
        a 5xx fails at once, and ``MAILTRACK_DOMAIN_RATE_LIMITS`` are held; a message put
        back for later (``SCHEDULED``) is sent by a worker's retry, or by ``send-due``."""
        from .services import dispatch
        from .services.common import tenant_key

        state = get_state()
        tenant = tenant_key(state, tenant_id)
        if recipients is not None:
            if subject is None:
                raise TypeError("send_campaign() needs subject= with recipients")
            bulk.track_messages(state, recipients, subject=subject, html=html, text=text, tenant_id=tenant,
                                campaign_id=campaign_id, **common)
        ids = dispatch.pending_ids(state, tenant, str(campaign_id))
        if state.queue is not None:
            dispatch.hand_over(state, ids)
        else:
            dispatch.send_in_process(state, ids)
        return dispatch.progress(state, tenant, str(campaign_id))

    def campaign_progress(self, campaign_id: str, *, tenant_id: Any = UNSET) -> dict[str, Any]:
        """Where a campaign's messages are (the counts :meth:`send_campaign` returns)."""
        from .services import dispatch
        from .services.common import tenant_key

        state = get_state()
        return dispatch.progress(state, tenant_key(state, tenant_id), str(campaign_id))

    def send_due(self, now: dt.datetime | None = None) -> int:
        """Send the scheduled messages whose time has come; return how many were handled."""
        from .services import sending

        return sending.send_due(get_state(), now=now)

    def click_url(self, message: Message | str, url: str) -> str:
        """The signed click URL that redirects to ``url`` for ``message``."""
        return message_service.click_url(get_state(), message_service.message_id_of(message), url)

    def open_url(self, message: Message | str) -> str:
        """The signed open-pixel URL of ``message``."""
        return message_service.open_url(get_state(), message_service.message_id_of(message))

    def unsubscribe_url(self, message: Message | str) -> str:
        """The signed one-click unsubscribe URL of ``message``."""
        return message_service.unsubscribe_url(get_state(), message_service.message_id_of(message))

    # -- events ----------------------------------------------------------------------------

    def record_event(
        self,
        contact_id: str,
        type: str,
        *,
        email: str | None = None,
        message_id: str | None = None,
        campaign_id: str | None = None,
        url: str | None = None,
        occurred_at: dt.datetime | None = None,
        details: Mapping[str, Any] | None = None,
        tenant_id: Any = UNSET,
    ) -> ContactEvent:
        """Record an event from outside the tracking routes (ESP webhook, import).

        As ``POST /api/contacts/<id>/events`` does (the same service function): a hard
        bounce (``details["bounceType"]`` ``"hard"`` or ``"permanent"``), or the
        ``MAILTRACK_SOFT_BOUNCE_LIMIT``-th other bounce in a row, also adds Do-Not-Contact
        for email with reason ``BOUNCED``; an ``unsubscribe`` with reason ``UNSUBSCRIBED``, a
        ``complaint`` too (comments ``complaint``); an existing entry is kept. Event and
        entry commit together.
        """
        return external_events.record_with_implied_dnc(
            get_state(), contact_id, type, email=email, message_id=message_id,
            campaign_id=campaign_id, url=url, occurred_at=occurred_at, details=details,
            tenant_id=tenant_id,
        )

    def ingest_mail(self, raw: bytes, *, tenant_id: Any = UNSET, recipient: str | None = None) -> list[ContactEvent]:
        """Record one received mail: a DSN (RFC 3464), an ARF complaint (RFC 5965), an
        auto-reply (RFC 3834) or a reply, matched to the sent message it concerns (its VERP
        envelope tag, else the Message-IDs it names), with the Do-Not-Contact entry it
        implies; a reply is also stored for the message's thread. Returns the events stored:
        ``[]`` for mail that is ignored, matches nothing, is malformed or too large, or was
        stored before (never an exception for bad mail). ``tenant_id``: only that tenant's
        messages match (default: any tenant's). ``recipient``: the envelope recipient, where
        the mail server gives it. See ``services.inbound.ingest`` for the reason mail was skipped."""
        from .services import inbound

        return inbound.ingest(get_state(), raw, tenant_id=tenant_id, recipient=recipient).events

    def erase_contact(self, contact_id: str, *, tenant_id: Any = UNSET) -> int:
        """Delete every tracked row of a contact (right to erasure); return rows deleted."""
        return event_service.erase_contact(get_state(), contact_id, tenant_id=tenant_id)

    # -- Do-Not-Contact and UTM ------------------------------------------------------------

    def add_dnc(
        self,
        contact_id: str,
        channel: str = "email",
        reason: DNCReason | int = DNCReason.MANUAL,
        channel_id: str | None = None,
        comments: str | None = None,
        *,
        tenant_id: Any = UNSET,
    ) -> Any:
        """Put a contact on Do-Not-Contact for a channel (one row; a second add updates it)."""
        row, _ = dnc_service.add_dnc(get_state(), contact_id, channel, reason, channel_id, comments,
                                     tenant_id=tenant_id)
        return row

    def remove_dnc(self, contact_id: str, channel: str = "email", *, tenant_id: Any = UNSET) -> bool:
        """Take a contact off Do-Not-Contact for a channel; ``True`` if an entry was removed."""
        return dnc_service.remove_dnc(get_state(), contact_id, channel, tenant_id=tenant_id)

    def can_contact(self, contact_id: str, channel: str = "email", *, tenant_id: Any = UNSET) -> bool:
        """``False`` when the contact is on Do-Not-Contact for the channel."""
        return dnc_service.can_contact(get_state(), contact_id, channel, tenant_id=tenant_id)

    def add_utm(self, contact_id: str, *, tenant_id: Any = UNSET, **fields: Any) -> UtmTag:
        """Store a UTM tag for a contact."""
        return utm_service.add_utm(get_state(), contact_id, tenant_id=tenant_id, **fields)

    def remove_utm(self, contact_id: str, utm_id: int, *, tenant_id: Any = UNSET) -> None:
        """Remove a contact's UTM tag (``NotFound`` if the contact has no such tag)."""
        utm_service.remove_utm(get_state(), contact_id, utm_id, tenant_id=tenant_id)


def _journal(settings: Settings) -> Any:
    """The file journal, or the Redis stream journal (with the file as its fallback)."""
    journal = Journal(settings.journal_path)
    if settings.journal_url is None:
        return journal
    from .journal_redis import RedisJournal

    return RedisJournal(settings.journal_url, fallback=journal)


def _reports_database(state: MailTrackState) -> None:
    """The engine reports read through (``MAILTRACK_REPORTS_DATABASE_URI``, e.g. a replica)."""
    import sqlalchemy as sa

    state.reports_engine = sa.create_engine(state.settings.reports_database_uri, pool_pre_ping=True)


def _own_database(app: Flask, state: MailTrackState) -> None:
    """Without Flask-SQLAlchemy: an own engine on MAILTRACK_DATABASE_URI and a session
    scoped to the app context, removed at teardown."""
    import os

    import sqlalchemy as sa
    from flask import g
    from sqlalchemy.orm import scoped_session, sessionmaker

    uri = state.settings.database_uri
    if not uri:
        os.makedirs(app.instance_path, exist_ok=True)
        uri = "sqlite:///" + os.path.join(app.instance_path, "mailtrack.db")
    engine = sa.create_engine(uri)
    if engine.dialect.name == "sqlite":
        _sqlite_pragmas(engine)
    session = scoped_session(sessionmaker(bind=engine), scopefunc=lambda: id(g._get_current_object()))
    state.own_engine = engine
    state.own_session = session

    @app.teardown_appcontext
    def _remove_session(exc: BaseException | None) -> None:
        session.remove()


def _sqlite_pragmas(engine: Any) -> None:
    """WAL and a busy timeout: readers never block the click path's writer.

    ``synchronous=NORMAL`` is SQLite's recommended setting in WAL mode: never corrupt, and
    durable across application crashes; it skips the fsync of every commit (about 2 ms,
    which otherwise bounds each click), syncing at checkpoints instead.
    """
    import sqlalchemy as sa

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=5000")
        cur.close()


def _register_api(app: Flask, prefix: str) -> None:
    from .api import blueprint as api_blueprint

    app.register_blueprint(api_blueprint, url_prefix=f"{prefix}/api")


def _integrate_with_host(app: Flask) -> None:
    """Work with the host's Flask-WTF and Flask-Migrate without any host set-up, whichever
    is initialised first: now, if they already are, and again from Flask's own signals
    (documented hooks that run after every extension's ``init_app``).

    - ``CSRFProtect``: the RFC 8058 one-click unsubscribe carries no CSRF token, the ESP
      webhooks are authorised by their signatures, and the JSON API checks CSRF itself where
      a cookie authorised the call (see ``api.core``), so all three are exempt from
      Flask-WTF's global check. Exempted before the first request
      (``request_started`` runs before ``before_request`` functions; Flask refuses new
      ``before_request`` set-up, so a new ``CSRFProtect``, after the first request).
    - Flask-Migrate: ``flask db migrate`` must not write ``DROP TABLE mailtrack_...``
      (:func:`.migrate.configure_flask_migrate`, on every app context push: ``flask db``
      pushes one; idempotent and cheap).
    """
    from flask import appcontext_pushed, request_started

    from .api import blueprint as api_blueprint
    from .migrate import configure_flask_migrate
    from .tracking import unsubscribe
    from .webhooks import blueprint as webhooks_blueprint

    exempted: list[object] = []

    def exempt() -> None:
        csrf = app.extensions.get("csrf")
        if csrf is not None and csrf not in exempted and hasattr(csrf, "exempt"):
            csrf.exempt(unsubscribe)
            csrf.exempt(api_blueprint)
            csrf.exempt(webhooks_blueprint)
            exempted.append(csrf)

    def on_first_request(sender: Flask, **extra: Any) -> None:
        exempt()
        request_started.disconnect(on_first_request, sender=app)

    def on_app_context(sender: Flask, **extra: Any) -> None:
        configure_flask_migrate(app)

    exempt()
    configure_flask_migrate(app)
    request_started.connect(on_first_request, sender=app, weak=False)
    appcontext_pushed.connect(on_app_context, sender=app, weak=False)
