"""API plumbing: the blueprint, authorisation, content negotiation, problem+json errors,
input parsing and JSON output. Routes are declared and registered in :mod:`.routing`."""
from __future__ import annotations

import datetime as dt
import hmac
import json
from typing import Any

import marshmallow as ma
from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from ..errors import DatabaseUnavailable, NotAcceptable, Unauthorized
from ..errors import ValidationError as MTValidationError
from ..services.common import tenant_key
from ..state import get_state

blueprint = Blueprint("mailtrack_api", __name__)

PROBLEM_JSON = "application/problem+json"


# -- input -----------------------------------------------------------------------------------

def _multi_dict_to_data(schema: ma.Schema) -> dict[str, Any]:
    """Query args as a dict: list fields get every value (``a=1&a=2`` or ``a[]=1``)."""
    data: dict[str, Any] = {}
    args = request.args
    for key in args:
        values = args.getlist(key)
        name = key[:-2] if key.endswith("[]") else key
        fld = schema.fields.get(name) or next(
            (f for f in schema.fields.values() if f.data_key == name), None
        )
        if isinstance(fld, ma.fields.List) or key.endswith("[]"):
            data.setdefault(name, []).extend(values)
        else:
            data[name] = values[-1]
    return data


def load_query(schema: ma.Schema) -> Any:
    try:
        return schema.load(_multi_dict_to_data(schema))
    except ma.ValidationError as exc:
        raise MTValidationError(_messages(exc), "The query string failed validation.") from None


#: Deepest nesting of arrays and objects a JSON body may have: enough for every body of
#: this API (``details`` included), and far from where a recursive parser or encoder runs
#: out of stack.
MAX_JSON_DEPTH = 32


def body_limit(kind: str) -> int:
    """The byte limit of a request body of ``kind``: ``"message"`` (bodies that carry a
    message's HTML: ``MAILTRACK_MAX_MESSAGE_BODY_BYTES``) or ``"small"`` (everything else:
    ``MAILTRACK_MAX_BODY_BYTES``)."""
    settings = get_state().settings
    return settings.max_message_body_bytes if kind == "message" else settings.max_body_bytes


def read_body(limit: int) -> bytes:
    """The raw request body, or :class:`~crm_mailtrack.errors.PayloadTooLarge` when it is
    longer than ``limit`` bytes. A declared ``Content-Length`` over the limit is refused
    unread; a streamed body (chunked, no length) is read to at most ``limit + 1`` bytes."""
    from ..errors import PayloadTooLarge

    def too_large() -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body is larger than this route's limit of {limit} bytes.")

    length = request.content_length
    if length is not None and length > limit:
        raise too_large()
    stream = request.stream
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise too_large()
    return b"".join(chunks)


def _depth_exceeds(data: Any, limit: int) -> bool:
    """Whether arrays/objects in ``data`` nest deeper than ``limit`` (iterative: a deep
    document cannot exhaust the stack here)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def json_body(kind: str = "small") -> Any:
    """The request body parsed as JSON (``None`` when empty), within the byte limit of
    ``kind`` (413) and :data:`MAX_JSON_DEPTH` levels of nesting; anything that is not
    UTF-8 JSON is 400."""
    from ..errors import BadRequest

    raw = read_body(body_limit(kind))
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except RecursionError:  # nested past the parser's stack, before any depth check can run
        raise BadRequest(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON.") from None
    if _depth_exceeds(data, MAX_JSON_DEPTH):
        raise BadRequest(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.")
    return data


def load_body(schema: ma.Schema, kind: str = "small") -> Any:
    """Parse a JSON body: malformed JSON or a non-JSON body is 400, a body over the limit
    of its kind 413 (see :func:`json_body`), invalid data 422."""
    data = json_body(kind)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MTValidationError({"_schema": ["The body must be a JSON object."]})
    try:
        return schema.load(data)
    except ma.ValidationError as exc:
        raise MTValidationError(_messages(exc)) from None


def _messages(exc: ma.ValidationError) -> dict[str, Any]:
    msgs = exc.messages
    return msgs if isinstance(msgs, dict) else {"_schema": msgs}


# -- output ----------------------------------------------------------------------------------

def jsonify_data(data: Any, status: int = 200) -> Response:
    return current_app.response_class(
        json.dumps(data, separators=(",", ":"), default=_json_default) + "\n",
        status=status, mimetype="application/json",
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z``."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def current_tenant() -> str:
    """The stored tenant key of the current API request."""
    return tenant_key(get_state())


# -- guards ----------------------------------------------------------------------------------

#: Methods that may change something: a cookie-authorised call with one of them must
#: carry the host's CSRF token.
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@blueprint.before_request
def _guard() -> None:
    state = get_state()
    authorizer = state.hooks.api_authorizer
    if authorizer is not None:
        if not authorizer():
            raise Unauthorized("This request is not authorised (the application's API authorizer refused it).")
        _check_csrf()
    elif not _bearer_matches(state.api_tokens):
        raise Unauthorized("Missing or invalid credentials: send 'Authorization: Bearer <token>'.")
    accepted = request.accept_mimetypes
    if accepted and not (
        accepted.best_match(["application/json", PROBLEM_JSON, "text/csv"]) or "*/*" in accepted.values()
    ):
        raise NotAcceptable("This API answers application/json only.")


def _bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _bearer_matches(tokens: frozenset[str]) -> bool:
    token = _bearer_token()
    if not token:
        return False
    return any(hmac.compare_digest(token.encode(), t.encode()) for t in tokens)


def _check_csrf() -> None:
    """The host's authorizer may have decided by a cookie (its session), which a browser
    also sends with a cross-site form: then a state-changing call must carry the host's
    Flask-WTF CSRF token (header ``X-CSRFToken``), checked with ``CSRFProtect.protect()``.
    A call carrying ``Authorization: Bearer`` is exempt: no cross-site page can add that
    header. Without ``CSRFProtect`` (or with ``WTF_CSRF_ENABLED = False``) the host answers
    for CSRF itself. The API is exempt from Flask-WTF's global check, which would refuse
    bearer-token calls (see ``extension._integrate_with_host``)."""
    if request.method not in _UNSAFE_METHODS or _bearer_token():
        return
    csrf = current_app.extensions.get("csrf")
    if csrf is None or not hasattr(csrf, "protect") or not current_app.config.get("WTF_CSRF_ENABLED", True):
        return
    csrf.protect()  # raises Flask-WTF's CSRFError (400), answered as problem+json


_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def allowed_methods(path: str) -> list[str]:
    """The methods the API's routes serve at ``path`` (HEAD with GET, and OPTIONS, which
    every API path answers); empty when no route has the path."""
    adapter = current_app.create_url_adapter(request)
    assert adapter is not None  # inside a request
    allowed = []
    for method in _ALL_METHODS[:-1]:
        try:
            endpoint, _ = adapter.match(path, method=method)
        except HTTPException:
            continue
        if endpoint != "mailtrack_api._unmatched":
            allowed.append(method)
    return [*allowed, "OPTIONS"] if allowed else []


@blueprint.route("/<path:_unmatched>", methods=_ALL_METHODS)
def _unmatched(_unmatched: str) -> Response:
    """Unknown API paths, OPTIONS, and known paths with a wrong method: routing errors never
    reach a blueprint's handlers, and the host's own 404 handler must stay the host's.

    OPTIONS answers 204 with ``Allow``; a wrong method is a 405 problem+json with the same
    ``Allow``; an unknown path is a 404."""
    from werkzeug.exceptions import MethodNotAllowed, NotFound

    allowed = allowed_methods(request.path)
    if not allowed:
        raise NotFound("No such API resource.")
    if request.method == "OPTIONS":
        return current_app.response_class(status=204, headers={"Allow": ", ".join(allowed)})
    raise MethodNotAllowed(valid_methods=allowed)


# -- errors ----------------------------------------------------------------------------------

def problem(status: int, title: str, detail: str, errors: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "time": iso(dt.datetime.now(dt.timezone.utc)),
    }
    if errors is not None:
        body["errors"] = errors
    resp = current_app.response_class(json.dumps(body) + "\n", status=status, mimetype=PROBLEM_JSON)
    if headers:
        resp.headers.update(headers)
    return resp


def flat_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested messages as the documented flat ``{field: [messages]}``: a nested
    field's key is its path joined with dots (``recipients.0.email``, ``ids.3``)."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            for name, texts in flat_errors(value, f"{prefix}.{key}" if prefix else str(key)).items():
                out.setdefault(name, []).extend(texts)
    elif isinstance(messages, (list, tuple)):
        for item in messages:
            for name, texts in flat_errors(item, prefix).items():
                out.setdefault(name, []).extend(texts)
    else:
        out[prefix or "_schema"] = [str(messages)]
    return out


@blueprint.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    if isinstance(exc, DatabaseUnavailable):
        advice = _schema_problem(get_state())
        if advice is not None:
            return problem(500, "Internal Server Error", f"The tracking database is not set up: {advice}.")
    errors = flat_errors(getattr(exc, "errors", None) or {}) if status == 422 else None
    headers = {}
    if status == 401 and get_state().hooks.api_authorizer is None:
        # With a host authorizer the scheme is the host's (often a session cookie): no
        # bearer challenge that would send clients the wrong way.
        headers["WWW-Authenticate"] = 'Bearer realm="mailtrack"'
    valid = getattr(exc, "valid_methods", None)
    if status == 405 and valid:
        headers["Allow"] = ", ".join(valid)
    return problem(status, exc.name, exc.description or exc.name, errors, headers)


@blueprint.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    import sqlalchemy as sa

    if isinstance(exc, HTTPException):
        return _http_error(exc)
    state = get_state()
    state.session.rollback()
    if isinstance(exc, sa.exc.DBAPIError):
        advice = _schema_problem(state)
        if advice is not None:
            return problem(500, "Internal Server Error", f"The tracking database is not set up: {advice}.")
    if isinstance(exc, sa.exc.OperationalError):
        current_app.logger.warning("mailtrack API: database unavailable", exc_info=exc)
        return problem(503, "Service Unavailable", "The database is unavailable; nothing was changed.",
                       headers={"Retry-After": "30"})
    current_app.logger.exception("mailtrack API: unexpected error")
    return problem(500, "Internal Server Error", "An unexpected error occurred; nothing was changed.")


def _schema_problem(state: Any) -> str | None:
    """After a failed query: "run flask mailtrack init-db" when our tables are missing or
    not at this version's revision (logged once per app), else ``None``."""
    from ..migrate import schema_problem

    try:
        advice = schema_problem(state.engine)
    except Exception:  # noqa: BLE001 - the database is down: the caller says so
        return None
    if advice is not None and advice not in state.logged:
        state.logged.add(advice)
        current_app.logger.error("crm_mailtrack: %s", advice)
    return advice
