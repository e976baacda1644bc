"""Per-app state: settings, host hooks, token signer, journal, database handles.

One :class:`~crm_mailtrack.MailTrack` object may serve several apps; everything that
belongs to one app lives in a :class:`MailTrackState` at ``app.extensions["mailtrack"]``.
Nothing here knows the extension class: the layers below it read the resolved
:class:`~.settings.Settings` and the host's :class:`Hooks` from the state.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, has_request_context, request

from .journal import Journal
from .settings import Settings
from .tokens import TokenSigner

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session, scoped_session


@dataclass(eq=False)
class Hooks:
    """The host's callbacks, as registered with the ``MailTrack`` decorators (``None``: not
    registered). One object per ``MailTrack``, shared by every app it serves, so that a
    hook registered after ``init_app`` is seen by all of them."""

    #: ``fn(contact_id) -> Mapping | None``: the host's contact, ``None`` if unknown.
    contact_loader: Callable[[str], Mapping[str, Any] | None] | None = None
    #: ``fn(email) -> contact_id | None``: the host's contact for an address.
    contact_resolver: Callable[[str], Any] | None = None
    #: ``fn() -> str | None``: the tenant of the current request.
    tenant_loader: Callable[[], Any] | None = None
    #: ``fn() -> bool``: may the current API request proceed?
    api_authorizer: Callable[[], bool] | None = None
    #: ``fn(template_id, variables) -> (subject, html, text) | None``.
    template_loader: Callable[[str, dict[str, Any]], tuple[str, str, str] | None] | None = None

    def load_contact(self, contact_id: str) -> Mapping[str, Any] | None:
        """The host's contact through ``contact_loader`` (``None`` without one)."""
        return None if self.contact_loader is None else self.contact_loader(str(contact_id))


@dataclass(eq=False)
class MailTrackState:
    """What ``init_app`` resolved for one app. Read it with :func:`get_state`."""

    app: Flask
    settings: Settings
    hooks: Hooks
    signer: TokenSigner
    journal: Journal
    #: The ``MailTrack`` object registered on the app, for hosts and tests that hold only
    #: the app; the package itself reads ``settings`` and ``hooks``.
    extension: Any = None
    db: Any = None  # the host's flask_sqlalchemy.SQLAlchemy, if any
    own_engine: Engine | None = None
    own_session: scoped_session[Session] | None = None
    #: The engine of ``MAILTRACK_REPORTS_DATABASE_URI`` (a replica), ``None`` without one.
    reports_engine: Engine | None = None
    #: The task queue campaign sends go through (``MailTrack.init_celery``), or ``None``:
    #: they run in the caller's process.
    queue: Any = None
    #: Operator warnings already logged for this app (each is logged once, not per request).
    logged: set[str] = field(default_factory=set)

    # -- the settings most call sites read, by their old names ---------------------------

    @property
    def url_prefix(self) -> str:
        return self.settings.url_prefix

    @property
    def base_url(self) -> str | None:
        return self.settings.base_url

    @property
    def api_tokens(self) -> frozenset[str]:
        return self.settings.api_tokens

    @property
    def track_opens(self) -> bool:
        return self.settings.track_opens

    @property
    def track_clicks(self) -> bool:
        return self.settings.track_clicks

    @property
    def utm_defaults(self) -> Mapping[str, str]:
        return self.settings.utm_defaults

    @property
    def anonymize_ip(self) -> bool:
        return self.settings.anonymize_ip

    @property
    def smtp_url(self) -> str:
        return self.settings.smtp_url

    @property
    def default_sender(self) -> str | None:
        return self.settings.default_sender

    @property
    def engine(self) -> Engine:
        """The engine the extension's tables live on."""
        if self.db is not None:
            return self.db.engine
        assert self.own_engine is not None
        return self.own_engine

    @property
    def reads(self) -> Any:
        """What reports execute their SELECTs on: the replica's engine when
        ``MAILTRACK_REPORTS_DATABASE_URI`` is set, else the session (which also sees the
        caller's own uncommitted writes). ``state.reads.execute(stmt)`` either way; on the
        replica each statement runs on a pooled connection, its rows read at once."""
        if self.reports_engine is None:
            return self.session
        return _EngineReads(self.reports_engine)

    @property
    def session(self) -> Session:
        """The ORM session: the host's ``db.session``, or the extension's own."""
        if self.db is not None:
            return self.db.session
        assert self.own_session is not None
        return self.own_session()  # type: ignore[return-value]

    def external_root(self) -> str:
        """``scheme://host[/root]`` + URL prefix: what tracking URLs start with.

        ``MAILTRACK_BASE_URL`` wins; else the current request; else ``SERVER_NAME`` with
        ``PREFERRED_URL_SCHEME`` and ``APPLICATION_ROOT``, as Flask's ``url_for`` does.
        """
        if self.base_url:
            return self.base_url.rstrip("/") + self.url_prefix
        if has_request_context():
            return request.host_url.rstrip("/") + request.script_root + self.url_prefix
        server = self.app.config.get("SERVER_NAME")
        if server:
            scheme = self.app.config.get("PREFERRED_URL_SCHEME", "http")
            root = (self.app.config.get("APPLICATION_ROOT") or "/").rstrip("/")
            return f"{scheme}://{server}{root}{self.url_prefix}"
        from .errors import ConfigurationError

        raise ConfigurationError(
            "Cannot build tracking URLs outside a request: set MAILTRACK_BASE_URL "
            "(or SERVER_NAME) to the external origin of the app."
        )


class _EngineReads:
    """``execute(stmt)`` on a connection of ``engine``, its rows buffered before the
    connection goes back to the pool (``Result.freeze()``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def execute(self, statement: Any, parameters: Any = None) -> Any:
        with self.engine.connect() as conn:
            frozen = conn.execute(statement, parameters).freeze()
        return frozen()


def get_state(app: Flask | None = None) -> MailTrackState:
    """The state of ``app`` (default: ``current_app``)."""
    app = app or current_app
    try:
        return app.extensions["mailtrack"]
    except KeyError:
        raise RuntimeError(
            "crm_mailtrack is not registered on this app: did you forget to call "
            "init_app? (mailtrack.init_app(app))"
        ) from None

