"""The OpenAPI 3 document, generated with apispec from the route registry's marshmallow
schemas (the same ones that parse and dump)."""
from __future__ import annotations

import re
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Response

from .core import ROUTES, jsonify_data, route

_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")


class ProblemSchemaDoc:
    """Plain dict for the problem+json component (documented, not used to dump)."""

    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "errors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        },
        "required": ["type", "title", "status", "detail", "time"],
    }


def build_spec(prefix: str) -> dict[str, Any]:
    import crm_mailtrack

    spec = APISpec(
        title="crm_mailtrack API",
        version=crm_mailtrack.__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Email engagement tracking: activity, events, Do-Not-Contact, UTM tags, "
                             "campaign reports, ContactClicks and communications."},
        servers=[{"url": prefix or "/"}],
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Problem", ProblemSchemaDoc.schema)
    paths: dict[str, dict[str, Any]] = {}
    for doc in ROUTES:
        path = _PARAM.sub(lambda m: "{" + m.group(2) + "}", doc.rule)
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "integer" if conv == "int" else "string"},
             "description": doc.path_params.get(name, "")}
            for conv, name in _PARAM.findall(doc.rule)
        ]
        for method in doc.methods:
            op: dict[str, Any] = {
                "operationId": f"{doc.endpoint}_{method.lower()}",
                "summary": doc.summary,
                "description": doc.description,
                "tags": doc.tags,
                "security": [{"bearer": []}],
                "parameters": list(params),
                "responses": {},
            }
            if doc.query is not None:
                op["parameters"].append({"in": "query", "schema": doc.query})
            if doc.body is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": doc.body}}}
            ok: dict[str, Any] = {"description": "OK"}
            if doc.response is not None:
                ok["content"] = {doc.content_type: {"schema": doc.response}}
            elif doc.status != 204:
                ok["content"] = {doc.content_type: {"schema": {"type": "string"} if doc.content_type != "application/json" else {"type": "object"}}}
            op["responses"][str(doc.status)] = ok
            for code in sorted(set(doc.errors) | {401, 406}):
                op["responses"][str(code)] = {
                    "description": _REASONS.get(code, "Error"),
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                }
            paths.setdefault(path, {})[method.lower()] = op
    for path, ops in paths.items():
        spec.path(path=path, operations=ops)
    return spec.to_dict()


_REASONS = {400: "Malformed request", 401: "Not authorised", 404: "Not found", 406: "Not acceptable",
            409: "Conflict", 422: "Validation failed", 503: "Database unavailable"}


@route("/openapi.json", summary="This OpenAPI document", tags=["meta"], errors=(401, 406))
def openapi_document() -> Response:
    from ..state import get_state

    return jsonify_data(build_spec(get_state().url_prefix + "/api"))
