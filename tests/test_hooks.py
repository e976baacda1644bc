"""Host hooks live in one object per MailTrack, shared by every app it serves: a hook
registered after init_app counts, in every app, on the Python API and the JSON API."""
from __future__ import annotations

from flask import current_app

from crm_mailtrack import MailTrack

from conftest import SECRET


def test_a_hook_registered_after_init_app_serves_every_app(make_app):
    mt = MailTrack()
    one = make_app(mailtrack=mt)
    two = make_app(mailtrack=mt, SECRET_KEY="another-" + SECRET)

    @mt.tenant_loader
    def tenant() -> str:
        return f"tenant-of-{current_app.name}"

    for app in (one, two):
        with app.app_context():
            mt.add_dnc("c1")
            assert mt.can_contact("c1", tenant_id=f"tenant-of-{app.name}") is False
            assert mt.can_contact("c1", tenant_id=None) is True


def test_an_api_authorizer_registered_after_init_app_decides(make_app):
    mt = MailTrack()
    app = make_app(mailtrack=mt)
    client = app.test_client()
    assert client.get("/mailtrack/api/contacts/c1/dnc", headers={"Accept": "application/json"}).status_code == 401

    mt.api_authorizer(lambda: True)
    resp = client.get("/mailtrack/api/contacts/c1/dnc", headers={"Accept": "application/json"})
    assert resp.status_code == 200
    assert resp.get_json() == {"doNotContact": []}
