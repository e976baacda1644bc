"""The ContactClicks OData entity set: per-contact click totals with contact properties.

``ID`` is the host's contact id. The OData contract types it Int32; ours are strings, so the key is
accepted as ``ContactClicks(42)`` or OData's string literal ``ContactClicks('c-42')``, and
``ID`` is answered as an integer when the contact id is a plain Int32 number, else as a
string. Properties come from the host's ``contact_loader`` (``FirstName`` <- ``first_name``
...); ``ClickCount`` from the event log (see :mod:`crm_mailtrack.services.contactclicks`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import Conflict, ValidationError
from ..services import contactclicks as service
from ..state import get_state
from .contacts import contact_email, require_contact
from .core import current_tenant
from .responses import ContactClickListSchema, ContactClickSchema
from .routing import Routes
from .schemas import BotsQuerySchema, ContactClickPostSchema, ContactClickPutSchema, ODataQuerySchema

routes = Routes()
_TAGS = ["odata"]
_KEY = {"key": "The contact id: 42, or a quoted string literal such as 'c-42'."}


def parse_key(key: str) -> str:
    """An OData key segment: ``42`` or ``'it''s'`` -> the contact id."""
    key = key.strip()
    if len(key) >= 2 and key[0] == key[-1] == "'":
        return key[1:-1].replace("''", "'")
    return key


#: What is dropped around a body's ID (the document's pattern says the same; ``str.strip()``
#: would also drop the C0 separators \x1c-\x1f, which a JSON Schema ``\s`` does not match).
_ASCII_SPACE = " \t\n\x0b\x0c\r"


def _body_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValidationError({"ID": ["Must be the contact id (an integer or a string)."]})
    text = str(value).strip(_ASCII_SPACE)
    if not text or len(text) > 64 or "\x00" in text:
        raise ValidationError({"ID": ["Must be a contact id of 1 to 64 characters."]})
    return text


def _entity(contact_id: str, clicks: int, contact: Mapping[str, Any] | None) -> dict[str, Any]:
    """What :class:`~.responses.ContactClickSchema` dumps."""
    return {"contact_id": contact_id, "clicks": clicks, "contact": contact}


def _load(contact_id: str) -> Mapping[str, Any] | None:
    return get_state().hooks.load_contact(contact_id)


@routes.route("/odata/ContactClicks", summary="Click totals of every contact with clicks", tags=_TAGS,
              query=ODataQuerySchema, response=ContactClickListSchema, errors=(400, 401, 406, 422))
def contact_clicks_list(query: dict[str, Any]) -> dict[str, Any]:
    """``$top`` / ``$skip`` / ``$orderby`` (``ID`` or ``ClickCount``, ``asc``/``desc``);
    ``ClickCount`` counts people's clicks (and imports) unless ``include_bots=true``."""
    rows = service.list_totals(get_state(), current_tenant(), top=query["top"], skip=query["skip"],
                               orderby=query["orderby"], include_bots=query["include_bots"])
    return {"value": [_entity(r.contact_id, int(r.click_count), _load(r.contact_id)) for r in rows]}


@routes.route("/odata/ContactClicks", methods=["POST"], summary="Import a contact's click total", tags=_TAGS,
              body=ContactClickPostSchema, response=ContactClickSchema, status=201, errors=(400, 401, 404, 406, 409, 422))
def contact_clicks_create(body: dict[str, Any]) -> dict[str, Any]:
    """Creates the contact's ContactClick from another system's ``ClickCount`` (stored as an
    import event). 409 when the contact already has click data: correct it with PUT.
    Contact properties in the body are accepted and ignored: they are the host's."""
    contact_id = _body_id(body.get("ID"))
    contact = require_contact(contact_id)
    state, tenant = get_state(), current_tenant()
    _, exists = service.click_total(state, tenant, contact_id)
    if exists:
        raise Conflict("This contact already has click data; use PUT ContactClicks(<id>) to correct it.")
    total = service.import_clicks(state, tenant, contact_id, body["ClickCount"],
                                  email=contact_email(contact))
    return _entity(contact_id, total, contact)


@routes.route("/odata/ContactClicks(<key>)", summary="One contact's click total", tags=_TAGS,
              query=BotsQuerySchema, response=ContactClickSchema, path_params=_KEY, errors=(401, 404, 406, 422))
def contact_clicks_get(key: str, query: dict[str, Any]) -> dict[str, Any]:
    """A contact without clicks has ``ClickCount`` 0; an unknown contact (per the host's
    contact_loader) is a 404. Machine clicks count only with ``include_bots=true``."""
    contact_id = parse_key(key)
    contact = require_contact(contact_id)
    clicks, _ = service.click_total(get_state(), current_tenant(), contact_id, include_bots=query["include_bots"])
    return _entity(contact_id, clicks, contact)


@routes.route("/odata/ContactClicks(<key>)", methods=["PUT"], summary="Correct a contact's click total",
              tags=_TAGS, body=ContactClickPutSchema, status=204, path_params=_KEY)
def contact_clicks_put(key: str, body: dict[str, Any]) -> None:
    """Sets ``ClickCount`` (stored as an import event holding the difference); later
    tracked clicks add to it. The body's ``ID`` is ignored: the URL names the contact."""
    contact_id = parse_key(key)
    contact = require_contact(contact_id)
    service.import_clicks(get_state(), current_tenant(), contact_id, body["ClickCount"], set_total=True,
                          email=contact_email(contact))
    return None


@routes.route("/odata/ContactClicks(<key>)", methods=["DELETE"], summary="Erase a contact's click data",
              tags=_TAGS, status=204, path_params=_KEY, errors=(401, 404, 406))
def contact_clicks_delete(key: str) -> None:
    """Deletes every click event of the contact, tracked and imported."""
    contact_id = parse_key(key)
    require_contact(contact_id)
    service.erase_clicks(get_state(), current_tenant(), contact_id)
    return None
