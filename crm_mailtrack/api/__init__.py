"""The JSON API blueprint (mounted at ``<MAILTRACK_URL_PREFIX>/api``).

Every request is authorised (``api_authorizer`` or a bearer token), must accept JSON, and
every error is ``application/problem+json``. Routes are declared with
:func:`~crm_mailtrack.api.core.route`, which parses input with marshmallow schemas and
records them for the OpenAPI document.
"""
from __future__ import annotations

from .core import blueprint

# Route modules register themselves on the blueprint when imported.
from . import openapi  # noqa: E402,F401  (isort: skip)
from . import contacts, campaigns, odata  # noqa: E402,F401  (isort: skip)
from . import communications  # noqa: E402,F401  (isort: skip)
from . import insights  # noqa: E402,F401  (isort: skip)

__all__ = ["blueprint"]
