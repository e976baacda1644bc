"""The JSON API blueprint (mounted at ``<MAILTRACK_URL_PREFIX>/api``).

Every request is authorised (``api_authorizer`` or a bearer token), must accept JSON, and
every error is ``application/problem+json``. Each route module declares its routes in a
:class:`~crm_mailtrack.api.routing.Routes` group; :data:`ROUTE_GROUPS` below is the one
list that puts them on the blueprint, in the order the OpenAPI document shows them. A route
parses its input with marshmallow schemas and dumps its answer through the response schema
the document shows.
"""
from __future__ import annotations

from . import campaigns, communications, contacts, insights, odata, openapi, webhooks
from .core import blueprint
from .routing import register

#: Every route group of the API, in document order. A new route module is added here.
ROUTE_GROUPS = (openapi.routes, contacts.routes, campaigns.routes, odata.routes, communications.routes,
                insights.routes, webhooks.routes)

register(blueprint, ROUTE_GROUPS)

__all__ = ["blueprint", "ROUTE_GROUPS"]
