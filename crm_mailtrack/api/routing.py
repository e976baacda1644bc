"""The route registry: API routes are declared per module in a :class:`Routes` group and
put on the blueprint by :func:`register`, from the one list in the api package, in that
order. The same registry (:data:`ROUTES`) is what the OpenAPI document is built from, and
each route's documented ``response`` schema is what dumps its answer."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import marshmallow as ma
from flask import Blueprint, Response, current_app

from .core import jsonify_data, load_body, load_query

JSON = "application/json"

Schema = type[ma.Schema] | ma.Schema


@dataclass
class RouteDoc:
    """One API route: what the OpenAPI document says about it and the view that serves it
    (filled by :meth:`Routes.route`)."""

    rule: str
    methods: list[str]
    endpoint: str
    summary: str
    view: Callable[..., Any]
    description: str = ""
    tags: list[str] = field(default_factory=list)
    query: Schema | None = None
    body: Schema | None = None
    response: Schema | None = None
    body_doc: dict[str, Any] | None = None
    status: int = 200
    content_type: str = JSON
    errors: tuple[int, ...] = (400, 401, 404, 406, 422)
    path_params: dict[str, str] = field(default_factory=dict)
    #: Other media types the view answers itself when the client's ``Accept`` prefers them
    #: (a streamed ``text/csv`` of the same list); documented beside the JSON form.
    alternatives: tuple[str, ...] = ()


#: Every registered route, in registration order: the OpenAPI document lists them in this
#: order. Filled by :func:`register` only.
ROUTES: list[RouteDoc] = []


class Routes:
    """The routes of one API module, in the order they are declared. Declaring registers
    nothing: :func:`register` puts the groups on the blueprint, in the order it is given."""

    def __init__(self) -> None:
        self.docs: list[RouteDoc] = []

    def route(
        self,
        rule: str,
        *,
        methods: list[str] | None = None,
        summary: str,
        description: str = "",
        tags: list[str] | None = None,
        query: Schema | None = None,
        body: Schema | None = None,
        response: Schema | None = None,
        status: int = 200,
        content_type: str = JSON,
        errors: tuple[int, ...] = (400, 401, 404, 406, 422),
        path_params: dict[str, str] | None = None,
        body_size: str | None = None,
        body_doc: dict[str, Any] | None = None,
        alternatives: tuple[str, ...] = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare an API view. With ``query``/``body`` schemas the view receives the loaded
        data as ``query=`` / ``body=`` keyword arguments; bad input becomes 400 or 422.

        ``response`` is the schema of the answer, and the only way a JSON answer is made:
        the view returns data (objects, mappings) and the answer is ``response.dump(data)``
        with ``status``, so the document cannot drift from the output and a key the schema
        lacks never reaches a client. A JSON route with a 2xx body must name one. A 204
        route's view returns ``None``; only a route with another ``content_type`` (CSV) may
        return a ready :class:`~flask.Response`. A view may add headers by returning
        ``(data, status, headers)``; ``status`` must be the documented one.

        ``body_size`` is the kind of body the route reads (``"small"``, the default with a
        ``body`` schema, or ``"message"`` for bodies carrying a message's HTML; see
        :func:`body_limit`); a route that reads a body documents 413. ``body_doc``
        documents a body the view parses itself (an OpenAPI schema whose parts may be
        marshmallow schemas). ``alternatives`` are other media types (``"text/csv"``) the
        view may answer with a ready :class:`~flask.Response` of that type, when the client
        asks for it; the JSON form still goes through ``response``."""
        methods = methods or ["GET"]
        if body is not None and body_size is None:
            body_size = "small"
        if body_size is not None and 413 not in errors:
            errors = (*errors, 413)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            endpoint = fn.__name__
            if content_type == JSON and status != 204 and response is None:
                raise TypeError(f"API route {endpoint}: a JSON answer needs a response schema to dump it.")
            if status == 204 and response is not None:
                raise TypeError(f"API route {endpoint}: a 204 answer has no body to dump.")
            q_schema, b_schema, r_schema = _instance(query), _instance(body), _instance(response)

            def view(**kwargs: Any) -> Any:
                if q_schema is not None:
                    kwargs["query"] = load_query(q_schema)
                if b_schema is not None:
                    kwargs["body"] = load_body(b_schema, body_size or "small")
                return _answer(endpoint, fn(**kwargs), r_schema, status, content_type, alternatives)

            view.__name__ = endpoint
            view.__doc__ = fn.__doc__
            self.docs.append(RouteDoc(
                rule=rule, methods=methods, endpoint=endpoint, summary=summary, view=view,
                description=description or (fn.__doc__ or "").strip(), tags=tags or [],
                query=query, body=body, response=response, status=status,
                content_type=content_type, errors=errors, path_params=path_params or {}, body_doc=body_doc,
                alternatives=alternatives,
            ))
            return fn

        return decorator


def register(bp: Blueprint, groups: Sequence[Routes], registry: list[RouteDoc] | None = None) -> None:
    """Put every route of ``groups`` on ``bp``, in order, and record them in ``registry``
    (default :data:`ROUTES`, the one the OpenAPI document is built from). The api package
    calls it once, with its one list of groups; a registry is filled only once."""
    registry = ROUTES if registry is None else registry
    if registry:
        raise RuntimeError("These API routes are registered already.")
    for group in groups:
        for doc in group.docs:
            # OPTIONS is answered by the catch-all in .core, with the methods this path really
            # serves (Flask's automatic answer would list the catch-all's methods too).
            bp.add_url_rule(doc.rule, doc.endpoint, doc.view, methods=doc.methods, provide_automatic_options=False)
            registry.append(doc)


def _answer(endpoint: str, result: Any, schema: ma.Schema | None, status: int, content_type: str,
            alternatives: tuple[str, ...] = ()) -> Response:
    """The view's result as the answer the route documents."""
    if isinstance(result, Response):
        if result.mimetype in alternatives:
            return result
        if schema is not None or content_type == JSON:
            raise TypeError(f"API view {endpoint} returned a ready Response: return the data, "
                            f"the route dumps it through its documented schema.")
        return result
    headers: dict[str, str] = {}
    if isinstance(result, tuple):
        result, got, *rest = result
        headers = dict(rest[0]) if rest else {}
        if got != status:
            raise TypeError(f"API view {endpoint} answered {got}; its route documents {status}.")
    if status == 204:
        if result is not None:
            raise TypeError(f"API view {endpoint} returned data for a 204 answer.")
        return current_app.response_class(status=204, headers=headers)
    if schema is None:
        raise TypeError(f"API view {endpoint} returned data, but its route has no response schema to dump it.")
    resp = jsonify_data(schema.dump(result), status)
    resp.headers.update(headers)
    return resp


def _instance(schema: Schema | None) -> ma.Schema | None:
    if schema is None:
        return None
    return schema() if isinstance(schema, type) else schema
