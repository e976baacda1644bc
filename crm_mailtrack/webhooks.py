"""``POST <prefix>/hooks/<provider>``: ESP event webhooks (docs/esp.md).

Thin: the raw body (within ``MAILTRACK_WEBHOOK_MAX_BODY_BYTES``), the headers and the
Basic credentials go to :func:`.services.esp.ingest.receive`, once; the answer is 200 with
what was stored, or a problem+json (401 bad signature, 403 topic not accepted, 404
provider not configured, 400 malformed, 413 too large, 503 database unavailable), never a
500. Flask-WTF's CSRF check does not apply (the signature is the authority): the
extension exempts this blueprint as it does the one-click unsubscribe.
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from .api.core import problem, read_body
from .errors import DatabaseUnavailable
from .services.esp.ingest import receive
from .services.esp.base import WebhookRequest
from .state import get_state

blueprint = Blueprint("mailtrack_hooks", __name__)


@blueprint.route("/hooks/<provider>", methods=["POST"])
def hook(provider: str) -> Response:
    """Verify, store, answer 200 ``{"received", "stored", "duplicates", "unmatched",
    "ignored", "reclassified"}`` (an SNS subscription message: what was done with it)."""
    state = get_state()
    config = state.settings.webhooks
    if provider not in config.providers:
        return problem(404, "Not Found", "No webhook is configured for this provider (MAILTRACK_WEBHOOKS).")
    body = read_body(config.max_body_bytes)
    auth = request.authorization
    username = auth.username if auth is not None and auth.type == "basic" else None
    password = auth.password if auth is not None and auth.type == "basic" else None
    receipt, subscription = receive(state, provider, WebhookRequest(body, request.headers, username, password))
    return current_app.json.response(subscription if subscription is not None else receipt.as_json())


@blueprint.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="mailtrack"'
    if status == 503:
        headers["Retry-After"] = "30"
    return problem(status, exc.name, exc.description or exc.name, headers=headers)


@blueprint.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    import sqlalchemy as sa

    if isinstance(exc, HTTPException):
        return _http_error(exc)
    get_state().session.rollback()
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return _http_error(DatabaseUnavailable())
    current_app.logger.exception("mailtrack webhook: unexpected error")
    return problem(500, "Internal Server Error", "An unexpected error occurred; nothing was stored.")
