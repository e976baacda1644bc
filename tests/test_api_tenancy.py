"""Two tenants on every route of issue 3: nothing of tenant A is visible, countable,
pageable, changeable or deletable from tenant B (404 as for a missing row)."""
from __future__ import annotations

import pytest
from apihelpers import API, add_event, assert_problem, hdrs, track
from apihelpers import app  # noqa: F401 - fixture

from crm_mailtrack.instrument import link_id

A, B = "tenant-a", "tenant-b"
URL = "https://shop.example/a"


@pytest.fixture
def tenant_a(client, mailtrack, db):
    """Tenant A: a campaign with clicks, opens, a DNC entry, a UTM tag, an import."""
    msg = track(mailtrack, "c1", "camp1", tenant=A, links=(URL,))
    for i in range(3):
        add_event(db, "click", "c1", minutes=i, tenant=A, campaign_id="camp1", message_id=msg.id,
                  link_id=link_id(URL), url=URL)
        add_event(db, "open", "c1", minutes=i, tenant=A, campaign_id="camp1", message_id=msg.id)
    assert client.post(API + "/contacts/c1/dnc/email/add", headers=hdrs(A)).status_code == 200
    utm = client.post(API + "/contacts/c1/utm/add", json={"utm_source": "a"}, headers=hdrs(A)).get_json()["utmtag"]
    assert client.post(API + "/odata/ContactClicks", json={"ID": "c2", "ClickCount": 4},
                       headers=hdrs(A)).status_code == 201
    return {"message": msg, "utm_id": utm["id"]}


def _get(client, path, tenant):
    resp = client.get(API + path, headers=hdrs(tenant))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def test_reads_see_only_the_own_tenant(client, tenant_a):
    assert _get(client, "/contacts/c1/activity?include_bots=1", A)["total"] > 0
    for tenant in (B, None):
        assert _get(client, "/contacts/c1/activity?include_bots=1", tenant)["total"] == 0
        assert _get(client, "/activity?include_bots=1", tenant)["total"] == 0
        assert _get(client, "/contacts/c1/events/clicks?include_bots=1", tenant)["events"] == []
        assert _get(client, "/contacts/c1/dnc", tenant) == {"doNotContact": []}
        assert _get(client, "/contacts/c1/utm", tenant) == {"utmtags": []}
        assert _get(client, "/odata/ContactClicks", tenant) == {"value": []}
        assert _get(client, "/odata/ContactClicks('c2')", tenant)["ClickCount"] == 0
        assert _get(client, "/odata/ContactClicks('c1')", tenant)["ClickCount"] == 0
    assert _get(client, "/odata/ContactClicks('c1')", A)["ClickCount"] == 3


def test_campaign_routes_of_another_tenant_are_404(client, tenant_a):
    paths = ["/campaigns/camp1/tracking/clicks", "/campaigns/camp1/tracking/opens",
             f"/campaigns/camp1/tracking/clicks/{link_id(URL)}", "/campaigns/camp1/links"]
    for path in paths:
        assert client.get(API + path, headers=hdrs(A)).status_code == 200
        assert_problem(client.get(API + path, headers=hdrs(B)), 404)
        assert_problem(client.get(API + path, headers=hdrs()), 404)


def test_same_campaign_id_in_two_tenants_stays_apart(client, mailtrack, db, tenant_a):
    msg = track(mailtrack, "c3", "camp1", tenant=B, links=(URL,))
    add_event(db, "click", "c3", minutes=50, tenant=B, campaign_id="camp1", message_id=msg.id, link_id=link_id(URL))
    results = _get(client, "/campaigns/camp1/tracking/clicks", B)["results"]
    assert [r["contact_id"] for r in results] == ["c3"]
    assert _get(client, "/campaigns/camp1/links", B)["links"][0]["total_clicks"] == 1
    assert _get(client, "/campaigns/camp1/links", A)["links"][0]["total_clicks"] == 3


def test_cursors_do_not_cross_tenants(client, mailtrack, db, tenant_a):
    track(mailtrack, "c1", "camp1", tenant=B)
    link = _get(client, "/campaigns/camp1/tracking/clicks?limit=1", A)["meta"]["pagination"]["next_link"]
    assert client.get(link, headers=hdrs(A)).status_code == 200
    assert_problem(client.get(link, headers=hdrs(B)), 400)
    link = _get(client, "/contacts/c1/events/opens?limit=1", A)["meta"]["pagination"]["next_link"]
    assert client.get(link, headers=hdrs(A)).status_code == 200
    assert_problem(client.get(link, headers=hdrs(B)), 400)


def test_writes_of_another_tenant_change_nothing(client, tenant_a):
    msg = tenant_a["message"]
    # a message of tenant A cannot be referenced from B
    assert_problem(client.post(API + "/contacts/c1/events", json={"type": "open", "message_id": msg.id},
                               headers=hdrs(B)), 422)
    # DNC of A cannot be removed from B; B's own add is B's
    assert_problem(client.post(API + "/contacts/c1/dnc/email/remove", headers=hdrs(B)), 404)
    assert len(_get(client, "/contacts/c1/dnc", A)["doNotContact"]) == 1
    # A's UTM tag id is a 404 in B
    assert_problem(client.post(API + f"/contacts/c1/utm/{tenant_a['utm_id']}/remove", headers=hdrs(B)), 404)
    assert len(_get(client, "/contacts/c1/utm", A)["utmtags"]) == 1
    # ContactClicks: B may create its own c2 (no conflict with A's), PUT/DELETE touch B only
    assert client.post(API + "/odata/ContactClicks", json={"ID": "c2", "ClickCount": 1},
                       headers=hdrs(B)).status_code == 201
    assert client.put(API + "/odata/ContactClicks('c1')", json={"ClickCount": 100}, headers=hdrs(B)).status_code == 204
    assert client.delete(API + "/odata/ContactClicks('c2')", headers=hdrs(B)).status_code == 204
    assert _get(client, "/odata/ContactClicks('c2')", A)["ClickCount"] == 4
    assert _get(client, "/odata/ContactClicks('c1')", A)["ClickCount"] == 3
    assert _get(client, "/odata/ContactClicks('c1')", B)["ClickCount"] == 100
    # events posted in B are B's
    client.post(API + "/contacts/c1/events", json={"type": "bounce", "details": {"bounceType": "hard"}},
                headers=hdrs(B))
    assert len(_get(client, "/contacts/c1/events/bounces", B)["events"]) == 1
    assert _get(client, "/contacts/c1/events/bounces", A)["events"] == []
    assert _get(client, "/contacts/c1/dnc", A)["doNotContact"][0]["reason"] == 3
    client.post(API + "/contacts/c1/dnc/sms/add", headers=hdrs(B))
    assert {e["channel"] for e in _get(client, "/contacts/c1/dnc", B)["doNotContact"]} == {"email", "sms"}
    assert {e["channel"] for e in _get(client, "/contacts/c1/dnc", A)["doNotContact"]} == {"email"}
    client.post(API + "/contacts/c1/utm/add", json={"utm_source": "b"}, headers=hdrs(B))
    assert [t["utm_source"] for t in _get(client, "/contacts/c1/utm", A)["utmtags"]] == ["a"]


def test_click_utm_tag_lands_in_the_message_tenant(client, mailtrack):
    from apihelpers import click

    url = "https://shop.example/p?utm_source=news"
    msg = track(mailtrack, "c1", "camp9", tenant=A, links=(url,))
    click(client, mailtrack, msg, url)
    assert [t["utm_source"] for t in _get(client, "/contacts/c1/utm", A)["utmtags"]] == ["news"]
    assert _get(client, "/contacts/c1/utm", B)["utmtags"] == []
