"""The OpenAPI 3.1 document, generated with apispec from the route registry's marshmallow
schemas (the same ones that parse and dump).

The document states every input rule the API enforces, so that a client (or a fuzzer) that
follows it is never refused with a 422: text fields carry their ``pattern`` (no NUL; one line
for mail headers; absolute http(s) URLs), free-form JSON objects their value rules, and body
schemas with a rule across fields (``openapi_extra``) that rule. 422 answers carry the flat
``errors`` map the ``Problem`` schema describes."""
from __future__ import annotations

import re
from typing import Any

import marshmallow as ma
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin, resolver
from marshmallow import fields

from .fields import JSON_INT_RANGE, JsonObject, QueryField, no_nul
from .routing import ROUTES, Routes

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
            "errors": {
                "type": "object",
                "description": "422 only: the messages per input field. A nested field's key is its path "
                               "joined with dots (recipients.0.email, ids.3); _schema holds messages about "
                               "the input as a whole.",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
        },
        "required": ["type", "title", "status", "detail", "time"],
    }


_JSON_VALUE_REF = {"$ref": "#/components/schemas/JsonValue"}
_NO_NUL_KEYS = {"pattern": no_nul.regex.pattern}

#: What a free-form JSON value may hold (the database must be able to store it).
JSON_VALUE: dict[str, Any] = {
    "description": "Any JSON value a database can store: strings and object keys without NUL, "
                   f"numbers within +-{JSON_INT_RANGE}, at most 20 levels deep.",
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "string", "pattern": no_nul.regex.pattern},
        {"type": "number", "minimum": -JSON_INT_RANGE, "maximum": JSON_INT_RANGE},
        {"type": "array", "items": _JSON_VALUE_REF},
        {"type": "object", "propertyNames": _NO_NUL_KEYS, "additionalProperties": _JSON_VALUE_REF},
    ],
}


def _free_form_rules(self: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """apispec attribute function: free-form objects state what their keys and values may be."""
    if isinstance(field, (JsonObject, QueryField)):
        return {"propertyNames": _NO_NUL_KEYS, "additionalProperties": _JSON_VALUE_REF}
    if isinstance(field, fields.Dict) and field.key_field is not None:
        key = self.field2property(field.key_field)
        return {"propertyNames": {k: v for k, v in key.items() if k in ("pattern", "maxLength", "minLength")}}
    return {}


def build_spec(prefix: str) -> dict[str, Any]:
    import crm_mailtrack

    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="crm_mailtrack API",
        version=crm_mailtrack.__version__,
        openapi_version="3.1.0",
        plugins=[plugin],
        info={"description": "Email engagement tracking: activity, events, Do-Not-Contact, UTM tags, "
                             "campaign reports, ContactClicks and communications."},
        servers=[{"url": prefix or "/"}],
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Problem", ProblemSchemaDoc.schema)
    spec.components.schema("JsonValue", JSON_VALUE)
    assert plugin.converter is not None
    plugin.converter.add_attribute_function(_free_form_rules)
    # In registry order (a set would order them by id(): the document would differ from run to run).
    for schema in dict.fromkeys(s for doc in ROUTES for s in (doc.query, doc.body, doc.response) if s is not None):
        extra = getattr(schema, "openapi_extra", None)
        if extra:  # a rule across fields, merged into the schema's component
            spec.components.schema(resolver(schema), dict(extra), schema=schema)
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
            body = doc.body if doc.body is not None else doc.body_doc
            if body is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
            ok: dict[str, Any] = {"description": "OK"}
            if doc.response is not None:
                ok["content"] = {doc.content_type: {"schema": doc.response}}
                for media in doc.alternatives:  # the same list, streamed in another format
                    ok["content"][media] = {"schema": {"type": "string"}}
            elif doc.status != 204:  # CSV: JSON routes always have a response schema
                ok["content"] = {doc.content_type: {"schema": {"type": "string"}}}
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


routes = Routes()


class OpenAPIDocumentSchema(ma.Schema):
    """An OpenAPI 3.1 document (its top-level members)."""

    openapi = fields.String(metadata={"description": "The OpenAPI version, 3.1.0."})
    info = fields.Dict(metadata={"description": "Title, version and description of the API."})
    servers = fields.List(fields.Dict(), metadata={"description": "The API's base path."})
    paths = fields.Dict(metadata={"description": "Every route and its operations."})
    components = fields.Dict(metadata={"description": "Shared schemas and the security scheme."})


@routes.route("/openapi.json", summary="This OpenAPI document", tags=["meta"], response=OpenAPIDocumentSchema,
                     errors=(401, 406))
def openapi_document() -> dict[str, Any]:
    from ..state import get_state

    return build_spec(get_state().url_prefix + "/api")
