"""``include_bots=true`` on every read route that counts opens or clicks: one message gets
a person's click (a browser's GET) and a machine's (a HEAD, as link scanners send) through
the real tracking route; every route counts one without the parameter and two with it."""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from typing import Any

import pytest

from conftest import API_TOKEN, path_of

API = "/mailtrack/api"
C = f"{API}/communications"
BROWSER = {"User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                         "Chrome/126.0 Safari/537.36"}
HDRS = {"Authorization": f"Bearer {API_TOKEN}", "Accept": "application/json"}


@pytest.fixture
def clicked(make_app, _server):
    """An app, its client, and the ids of a sent message (clicked once by a person and once
    by a machine) and of a scheduled one (clicked the same way through its stored body)."""
    _server.handler.received.clear()
    app = make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER="crm@example.com",
                   MAILTRACK_BOT_AFTER_SEND_SECONDS=0, MAILTRACK_BOT_BURST_SECONDS=0)
    client = app.test_client()
    sent = client.post(f"{C}/send", headers=HDRS, json={
        "contactId": "c1", "recipients": ["ann@example.com"], "subject": "Offer", "campaignId": "camp",
        "relatedEntityType": "deal", "relatedEntityId": "d1",
        "body": '<p><a href="https://shop.test/a">A</a></p>'}).json
    html = _server.handler.received[0].message.get_body(("html",)).get_content()
    link = path_of(re.search(r'href="([^"]+/t/c/[^"]+)"', html).group(1))
    scheduled = client.post(f"{C}/schedule", headers=HDRS, json={
        "contactId": "c2", "recipients": ["bob@example.com"], "subject": "Later", "scheduledAt": "2999-01-01T00:00:00Z",
        "body": '<p><a href="https://shop.test/b">B</a></p>'}).json
    later = path_of(re.search(r'href="([^"]+/t/c/[^"]+)"', scheduled["body"]).group(1))
    for path in (link, later):
        assert client.get(path, headers=BROWSER).status_code == 302  # a person
        assert client.head(path, headers=BROWSER).status_code == 302  # a machine
    return client, sent["id"], scheduled["id"]


def _clicks(record: dict[str, Any]) -> int:
    return sum(link["clickCount"] for link in record["clickedLinks"])


def _one(records: list[dict[str, Any]], mid: str) -> dict[str, Any]:
    return next(r for r in records if r["id"] == mid)


def _csv_clicks(text: str, mid: str) -> int:
    return int(next(row for row in csv.DictReader(io.StringIO(text)) if row["id"] == mid)["clickCount"])


#: (route, how its answer counts the sent message's clicks); the scheduled one's below.
COUNTING: list[tuple[str, Callable[[Any, str], int]]] = [
    ("communications/find/{id}", lambda r, mid: _clicks(r.json)),
    ("communications/find?ids={id}", lambda r, mid: _clicks(_one(r.json, mid))),
    ("communications/find-list?ids={id}", lambda r, mid: _clicks(_one(r.json, mid))),
    ("communications/find-all", lambda r, mid: _clicks(_one(r.json, mid))),
    ("communications/{id}/thread", lambda r, mid: _clicks(_one(r.json["outbound"], mid))),
    ("communications/page", lambda r, mid: _clicks(_one(r.json["content"], mid))),
    ("communications/dynamic-search", lambda r, mid: _clicks(_one(r.json["content"], mid))),
    ("communications/csv-export", lambda r, mid: _csv_clicks(r.get_data(as_text=True), mid)),
    ("campaigns/camp/links", lambda r, mid: r.json["links"][0]["total_clicks"]),
    ("campaigns/camp/tracking/clicks", lambda r, mid: len(r.json["results"])),
    ("contacts/c1/events/clicks", lambda r, mid: len(r.json["events"])),
    ("contacts/c1/activity?filters[includeEvents][]=click", lambda r, mid: r.json["total"]),
    ("activity?filters[includeEvents][]=click&filters[search]=ann@example.com", lambda r, mid: r.json["total"]),
    ("odata/ContactClicks('c1')", lambda r, mid: r.json["ClickCount"]),
    ("odata/ContactClicks", lambda r, mid: next(c["ClickCount"] for c in r.json["value"] if c["ID"] == "c1")),
]


@pytest.mark.parametrize("route, count", COUNTING, ids=[r for r, _ in COUNTING])
def test_each_counting_route_takes_include_bots(clicked, route, count):
    client, mid, _ = clicked
    url = f"{API}/{route.format(id=mid)}"
    sep = "&" if "?" in url else "?"
    counts = []
    for target in (url, f"{url}{sep}include_bots=true"):
        resp = client.get(target, headers=HDRS)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        counts.append(count(resp, mid))  # read now: csv-export streams
    assert counts == [1, 2]


def test_post_dynamic_search_takes_include_bots(clicked):
    client, mid, _ = clicked
    for flag, expected in ((False, 1), (True, 2)):
        resp = client.post(f"{C}/dynamic-search", headers=HDRS, json={"include_bots": flag})
        assert _clicks(_one(resp.json["content"], mid)) == expected


def test_scheduled_takes_include_bots(clicked):
    client, _, later = clicked
    assert _clicks(_one(client.get(f"{C}/scheduled", headers=HDRS).json, later)) == 1
    assert _clicks(_one(client.get(f"{C}/scheduled?include_bots=true", headers=HDRS).json, later)) == 2


def test_by_entity_opened_counts_machines_only_with_include_bots(make_app, _server):
    """by-entity's ``opened`` is its only count: a message only a machine clicked is not
    opened by a person."""
    app = make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER="crm@example.com")
    client = app.test_client()
    record = client.post(f"{C}/schedule", headers=HDRS, json={
        "contactId": "c1", "recipients": ["ann@example.com"], "subject": "s", "scheduledAt": "2999-01-01T00:00:00Z",
        "relatedEntityType": "deal", "relatedEntityId": "d1", "body": '<a href="https://shop.test/a">A</a>'}).json
    link = path_of(re.search(r'href="([^"]+/t/c/[^"]+)"', record["body"]).group(1))
    assert client.head(link, headers=BROWSER).status_code == 302
    url = f"{C}/by-entity?entityType=deal&entityId=d1"
    assert client.get(url, headers=HDRS).json[0]["opened"] is False
    assert client.get(f"{url}&include_bots=true", headers=HDRS).json[0]["opened"] is True


def test_the_document_lists_include_bots_on_every_counting_route(clicked):
    client, _, _ = clicked
    doc = client.get(f"{API}/openapi.json", headers=HDRS).json
    for path in ("/communications/find/{message_id}", "/communications/find", "/communications/find-list",
                 "/communications/find-all", "/communications/scheduled", "/communications/{message_id}/thread",
                 "/communications/by-entity", "/communications/page", "/communications/dynamic-search",
                 "/communications/csv-export", "/communications/analytics", "/campaigns/{campaign_id}/links",
                 "/campaigns/{campaign_id}/tracking/{kind}", "/contacts/{contact_id}/events/{kind}",
                 "/contacts/{contact_id}/activity", "/activity", "/contacts", "/odata/ContactClicks",
                 "/odata/ContactClicks({key})"):
        names = {p["name"] for p in doc["paths"][path]["get"].get("parameters", [])}
        assert "include_bots" in names, path
