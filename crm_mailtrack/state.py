"""Per-app state: resolved config, token signer, database handles, journal.

One :class:`~crm_mailtrack.MailTrack` object may serve several apps; everything that
belongs to one app lives in a :class:`MailTrackState` at ``app.extensions["mailtrack"]``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, has_request_context, request

from .journal import Journal
from .tokens import TokenSigner

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session, scoped_session

    from .extension import MailTrack


@dataclass(eq=False)
class MailTrackState:
    """What ``init_app`` resolved for one app. Read it with :func:`get_state`."""

    extension: MailTrack
    app: Flask
    signer: TokenSigner
    journal: Journal
    url_prefix: str
    base_url: str | None
    api_tokens: frozenset[str]
    track_opens: bool
    track_clicks: bool
    utm_defaults: dict[str, str]
    anonymize_ip: bool
    smtp_url: str
    default_sender: str | None
    db: Any = None  # the host's flask_sqlalchemy.SQLAlchemy, if any
    own_engine: Engine | None = None
    own_session: scoped_session[Session] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    #: Operator warnings already logged for this app (each is logged once, not per request).
    logged: set[str] = field(default_factory=set)

    @property
    def engine(self) -> Engine:
        """The engine the extension's tables live on."""
        if self.db is not None:
            return self.db.engine
        assert self.own_engine is not None
        return self.own_engine

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


def default_journal_path(app: Flask) -> str:
    return os.path.join(app.instance_path, "mailtrack-journal.jsonl")
