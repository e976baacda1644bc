"""Shared helpers of the tests/test_api_*.py modules (issue 3): a host app with a
header-driven tenant_loader and a dict-backed contact_loader (the ``app`` fixture, which a
module imports to use), the OpenAPI ``document`` fixture, headers, and seeders."""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, has_request_context, request

from conftest import API_TOKEN, path_of

API = "/mailtrack/api"
TENANT_HEADER = "X-Tenant"

CONTACTS: dict[str, dict[str, Any]] = {
    "c1": {"email": "ann@example.com", "first_name": "Ann", "last_name": "Lee", "display_name": "Ann Lee",
           "company": "ACME", "title": "CTO", "custom1": "vip"},
    "c2": {"email": "bob@example.com", "first_name": "Bob", "last_name": "Ray"},
    "c3": {"email": "cy@example.com", "first_name": "Cy"},
    "42": {"email": "n42@example.com", "first_name": "Forty", "last_name": "Two"},
}


def setup_hooks(mt: Any, *, contacts: bool = True) -> None:
    """Tenant from the ``X-Tenant`` header; contacts from :data:`CONTACTS`."""

    @mt.tenant_loader
    def _tenant() -> str | None:
        return request.headers.get(TENANT_HEADER) if has_request_context() else None

    if contacts:
        @mt.contact_loader
        def _contact(contact_id: str) -> dict[str, Any] | None:
            return CONTACTS.get(contact_id)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    """conftest's app with :func:`setup_hooks`' loaders, in an app context."""
    app = make_app(setup=setup_hooks)
    with app.app_context():
        yield app


@pytest.fixture
def document(client: Any) -> dict[str, Any]:
    """The API's OpenAPI document, as a client fetches it."""
    resp = client.get(API + "/openapi.json", headers=hdrs())
    assert resp.status_code == 200
    return resp.get_json()


def hdrs(tenant: str | None = None, **extra: str) -> dict[str, str]:
    out = {"Authorization": f"Bearer {API_TOKEN}", "Accept": "application/json", **extra}
    if tenant is not None:
        out[TENANT_HEADER] = tenant
    return out


def track(mt: Any, contact_id: str = "c1", campaign_id: str | None = "camp1", *, tenant: str | None = None,
          links: tuple[str, ...] = ("https://shop.example/a", "https://shop.example/b")) -> Any:
    html = "<html><body>" + "".join(f'<a href="{u}">x</a>' for u in links) + "</body></html>"
    return mt.track_message(contact_id=contact_id, email=CONTACTS.get(contact_id, {}).get("email", "x@example.com"),
                            subject="Hi", html=html, campaign_id=campaign_id, tenant_id=tenant)


BROWSER = {"User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                         "Chrome/126.0 Safari/537.36"}


def click(client: Any, mt: Any, message: Any, url: str, **kw: Any) -> Any:
    """A human click (browser user agent) on a tracked link."""
    kw.setdefault("headers", BROWSER)
    resp = client.get(path_of(mt.click_url(message, url)), **kw)
    assert resp.status_code == 302
    return resp


def at(minutes: int) -> dt.datetime:
    """A fixed timestamp ``minutes`` after 2024-05-01 12:00 UTC."""
    return dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=minutes)


def assert_problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json(force=True)
    assert {"type", "title", "status", "detail", "time"} <= set(body)
    assert body["status"] == status and body["type"] == "about:blank"  # RFC 9457: the status says it all
    assert body["time"].endswith("Z") and dt.datetime.fromisoformat(body["time"].replace("Z", "+00:00"))
    return body


def add_event(db: Any, type: str = "click", contact_id: str = "c1", *, minutes: int = 0, tenant: str = "",
              bot: bool = False, **fields: Any) -> int:
    """Insert one event row directly (fixed time, optional machine flag); its id."""
    from crm_mailtrack.models import ContactEvent

    fields.setdefault("email", CONTACTS.get(contact_id, {}).get("email"))
    event = ContactEvent(tenant_id=tenant, type=type, contact_id=contact_id, occurred_at=at(minutes),
                         is_machine=bot, machine_reason="prefetch" if bot else None, **fields)
    db.session.add(event)
    db.session.commit()
    return event.id
