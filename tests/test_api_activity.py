"""Activity (004), a contact's events by kind (003) and recording external events."""
from __future__ import annotations

import pytest
from apihelpers import API, BROWSER, add_event, assert_problem, click, hdrs, track
from apihelpers import app  # noqa: F401 - fixture

from crm_mailtrack.models import DNCReason

from conftest import path_of


def _get(client, path, **params):
    resp = client.get(API + path, query_string=params, headers=hdrs())
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


@pytest.fixture
def seeded(db):
    """c1: send(0) open(1) click(2) bot-click(3) bounce(4); c2: click(5) open(6)."""
    ids = {
        "send": add_event(db, "send", minutes=0, campaign_id="camp1"),
        "open": add_event(db, "open", minutes=1, campaign_id="camp1"),
        "click": add_event(db, "click", minutes=2, url="https://shop.example/Spring_Sale", campaign_id="camp1"),
        "bot": add_event(db, "click", minutes=3, bot=True, url="https://shop.example/x"),
        "bounce": add_event(db, "bounce", minutes=4),
        "c2click": add_event(db, "click", "c2", minutes=5),
        "c2open": add_event(db, "open", "c2", minutes=6),
    }
    return ids


def test_activity_shape_newest_first_humans_only(client, seeded):
    data = _get(client, "/contacts/c1/activity")
    assert set(data) >= {"events", "total", "page", "limit", "maxPages", "types"}
    assert [e["id"] for e in data["events"]] == [seeded["bounce"], seeded["click"], seeded["open"], seeded["send"]]
    assert data["total"] == 4 and data["page"] == 1 and data["limit"] == 30 and data["maxPages"] == 1
    item = data["events"][1]
    assert set(item) == {"id", "event", "eventType", "timestamp", "contactId", "email", "messageId",
                         "campaignId", "url", "isBot", "machineReason", "details"}
    assert item["event"] == "click" and item["eventType"] == "Email link clicked"
    assert item["timestamp"] == "2024-05-01T12:02:00Z"
    assert item["contactId"] == "c1" and item["email"] == "ann@example.com" and item["isBot"] is False
    assert data["types"]["click"] == "Email link clicked" and "dnc_added" in data["types"]


def test_activity_include_bots(client, seeded):
    data = _get(client, "/contacts/c1/activity", include_bots="true")
    assert data["total"] == 5
    assert data["events"][1]["id"] == seeded["bot"] and data["events"][1]["isBot"] is True


def test_activity_items_say_why_an_event_is_a_machine(client, seeded):
    """``machineReason`` is the stored verdict: null for people, the bot rule otherwise."""
    items = {e["id"]: e for e in _get(client, "/contacts/c1/activity", include_bots="true")["events"]}
    assert items[seeded["bot"]]["machineReason"] == "prefetch"
    for human in ("send", "open", "click", "bounce"):
        assert "machineReason" in items[seeded[human]] and items[seeded[human]]["machineReason"] is None
    everyone = _get(client, "/activity", include_bots="true")["events"]
    assert {e["id"]: e["machineReason"] for e in everyone if e["isBot"]} == {seeded["bot"]: "prefetch"}


def test_machine_reason_of_real_tracking_requests(client, mailtrack):
    """The verdict the tracking route stored (a human GET, a HEAD pre-click) reaches the
    activity item and the 003 item."""
    msg = track(mailtrack)
    click(client, mailtrack, msg, "https://shop.example/a")
    head = client.head(path_of(mailtrack.click_url(msg, "https://shop.example/a")), headers=BROWSER)
    assert head.status_code == 302
    clicks = _get(client, "/contacts/c1/activity", include_bots="true", **{"filters[includeEvents]": "click"})
    assert sorted((e["isBot"], e["machineReason"] or "") for e in clicks["events"]) == [
        (False, ""), (True, "head-request")]
    by_kind = _get(client, "/contacts/c1/events/clicks", include_bots="true")["events"]
    assert sorted((e["is_bot"], e["machine_reason"] or "") for e in by_kind) == [(False, ""), (True, "head-request")]
    assert [e["machineReason"] for e in _get(client, "/contacts/c1/activity")["events"]] == [None]


def test_all_activity_spans_contacts(client, seeded):
    data = _get(client, "/activity")
    assert data["total"] == 6
    assert {e["contactId"] for e in data["events"]} == {"c1", "c2"}


def test_include_and_exclude_events_in_both_spellings(client, seeded):
    resp = client.get(API + "/activity?filters[includeEvents][]=click&filters[includeEvents][]=open", headers=hdrs())
    assert {e["event"] for e in resp.get_json()["events"]} == {"click", "open"}
    assert resp.get_json()["total"] == 4
    resp = client.get(API + "/activity?filters[includeEvents]=send", headers=hdrs())
    assert [e["id"] for e in resp.get_json()["events"]] == [seeded["send"]]
    resp = client.get(API + "/contacts/c1/activity?filters[excludeEvents][]=click&filters[excludeEvents][]=send",
                      headers=hdrs())
    assert {e["event"] for e in resp.get_json()["events"]} == {"open", "bounce"}
    assert_problem(client.get(API + "/activity?filters[includeEvents][]=hug", headers=hdrs()), 422)


def test_unknown_query_parameters_are_ignored_and_a_list_for_a_single_value_is_422(client, seeded):
    """Query schemas leave out parameters they do not know (``unknown = EXCLUDE``): the
    answer is the one without them, never a 500. ``name[]`` (a list) for a single value is
    a 422 naming it, not a silently kept last value."""
    plain = client.get(API + "/activity", headers=hdrs()).get_json()
    assert client.get(API + "/activity?colour=red&x[]=1", headers=hdrs()).get_json() == plain
    listed = assert_problem(client.get(API + "/activity?filters[search][]=spring", headers=hdrs()), 422)
    assert list(listed["errors"]) == ["filters[search]"]
    assert listed["detail"].startswith("The query string failed validation. filters[search]: ")


def test_search_is_case_insensitive_and_literal(client, seeded):
    assert [e["id"] for e in _get(client, "/activity", **{"filters[search]": "spring_SALE"})["events"]] == [
        seeded["click"]]
    assert _get(client, "/activity", **{"filters[search]": "bob@"})["total"] == 2
    # LIKE wildcards are matched literally
    assert _get(client, "/activity", **{"filters[search]": "%"})["total"] == 0
    assert _get(client, "/activity", **{"filters[search]": "g_sale"})["total"] == 1


def test_date_range_inclusive_and_bare_dates(client, seeded):
    data = _get(client, "/activity", **{"filters[dateFrom]": "2024-05-01 12:01:00",
                                        "filters[dateTo]": "2024-05-01T12:04:00Z"})
    assert data["total"] == 3
    assert _get(client, "/activity", **{"filters[dateTo]": "2024-05-01"})["total"] == 6
    assert _get(client, "/activity", **{"filters[dateTo]": "2024-04-30"})["total"] == 0
    assert _get(client, "/activity", **{"filters[dateFrom]": "2024-05-01T14:03:00+02:00"})["total"] == 3
    body = assert_problem(client.get(API + "/activity?filters[dateFrom]=yesterday", headers=hdrs()), 422)
    assert "filters[dateFrom]" in body["errors"]


def test_order_allow_listed(client, seeded):
    for qs in ("order[0]=id&order[1]=ASC", "orderBy=timestamp&orderByDir=asc", "order[0]=id"):
        events = client.get(API + "/contacts/c1/activity?" + qs, headers=hdrs()).get_json()["events"]
        ids = [e["id"] for e in events]
        expected = sorted(ids) if "asc" in qs.lower() else sorted(ids, reverse=True)
        assert len(ids) == 4 and ids == expected, qs


def test_order_by_event_type(client, seeded):
    events = _get(client, "/contacts/c1/activity", **{"order[0]": "event", "order[1]": "asc"})["events"]
    assert [e["event"] for e in events] == sorted(e["event"] for e in events)


def test_bad_order_and_paging_are_422(client):
    for qs in ("order[0]=details", "order[0]=id;drop table x", "order[1]=sideways", "orderBy=password",
               "page=0", "limit=501", "limit=x", "include_bots=maybe"):
        assert_problem(client.get(API + "/activity?" + qs, headers=hdrs()), 422)


def test_page_and_limit(client, seeded):
    pages = [_get(client, "/activity", page=p, limit=4) for p in (1, 2, 3)]
    assert [p["maxPages"] for p in pages] == [2, 2, 2]
    assert [len(p["events"]) for p in pages] == [4, 2, 0]
    ids = [e["id"] for p in pages for e in p["events"]]
    assert len(ids) == len(set(ids)) == 6


# -- events by kind (003) --------------------------------------------------------------------------

def test_events_by_kind_shape(client, seeded):
    data = _get(client, "/contacts/c1/events/clicks")
    assert data["meta"]["pagination"] == {}
    (item,) = data["events"]
    assert item["id"] == seeded["click"] and item["activity_type"] == "EMAIL_CLICK"
    assert item["link_url"] == "https://shop.example/Spring_Sale" and item["event_time"] == "2024-05-01T12:02:00Z"
    assert item["email_address"] == "ann@example.com" and item["contact_id"] == "c1"
    assert len(_get(client, "/contacts/c1/events/clicks", include_bots="1")["events"]) == 2
    for kind, count in (("sends", 1), ("opens", 1), ("bounces", 1), ("forwards", 0), ("unsubscribes", 0)):
        assert len(_get(client, f"/contacts/c1/events/{kind}")["events"]) == count


def test_events_by_kind_pages_without_skip_or_repeat(client, db):
    for i in range(7):
        add_event(db, "open", minutes=i % 3)  # equal timestamps: the id breaks ties
    seen: list[int] = []
    data = _get(client, "/contacts/c1/events/opens", limit=3)
    seen += [e["id"] for e in data["events"]]
    add_event(db, "open", minutes=100)  # newer than the cursor: belongs to a fresh listing
    add_event(db, "open", minutes=-5)   # older than the cursor: must appear on a later page
    while "next_link" in data["meta"]["pagination"]:
        resp = client.get(data["meta"]["pagination"]["next_link"], headers=hdrs())
        assert resp.status_code == 200
        data = resp.get_json()
        assert len(data["events"]) <= 3
        seen += [e["id"] for e in data["events"]]
    assert len(seen) == len(set(seen)) == 8
    times = [e["id"] for e in _get(client, "/contacts/c1/events/opens", limit=500)["events"]]
    assert len(times) == 9


def test_events_cursor_is_tamper_proof_and_scoped(client, db):
    for i in range(3):
        add_event(db, "open", minutes=i)
        add_event(db, "open", "c2", minutes=i)
    link = _get(client, "/contacts/c1/events/opens", limit=1)["meta"]["pagination"]["next_link"]
    token = link.split("next=", 1)[1]
    assert_problem(client.get(link[:-3] + "abc", headers=hdrs()), 400)
    assert_problem(client.get(API + "/contacts/c1/events/opens?next=garbage", headers=hdrs()), 400)
    assert_problem(client.get(API + f"/contacts/c2/events/opens?next={token}", headers=hdrs()), 400)
    assert_problem(client.get(API + f"/contacts/c1/events/clicks?next={token}", headers=hdrs()), 400)
    assert_problem(client.get(API + f"/campaigns/camp1/tracking/opens?next={token}", headers=hdrs()), 404)


# -- POST events ------------------------------------------------------------------------------------

def test_record_forward_fills_from_message(client, mailtrack, recorded_signals):
    msg = track(mailtrack)
    resp = client.post(API + "/contacts/c1/events", headers=hdrs(), json={
        "type": "forward", "message_id": msg.id, "occurred_at": "2024-05-02T08:00:00", "details": {"to": "x"}})
    assert resp.status_code == 201
    item = resp.get_json()
    assert item["event"] == "forward" and item["campaignId"] == "camp1" and item["email"] == "ann@example.com"
    assert item["timestamp"] == "2024-05-02T08:00:00Z" and item["details"] == {"to": "x"}
    assert item["isBot"] is False and item["machineReason"] is None
    assert _get(client, "/contacts/c1/events/forwards")["events"][0]["id"] == item["id"]
    assert recorded_signals.of("email_forwarded")[0]["contact_id"] == "c1"


def test_record_uses_contact_loader_email_without_message(client):
    item = client.post(API + "/contacts/c2/events", json={"type": "open"}, headers=hdrs()).get_json()
    assert item["email"] == "bob@example.com" and item["messageId"] is None


def test_record_refuses_a_message_of_another_contact(client, mailtrack):
    msg = track(mailtrack, "c2")
    body = assert_problem(client.post(API + "/contacts/c1/events", json={"type": "open", "message_id": msg.id},
                                      headers=hdrs()), 422)
    assert "message_id" in body["errors"]
    assert_problem(client.post(API + "/contacts/c1/events", json={"type": "open", "message_id": "nope"},
                               headers=hdrs()), 422)
    assert_problem(client.post(API + "/contacts/c1/events", json={"type": "dnc_added"}, headers=hdrs()), 422)
    assert_problem(client.post(API + "/contacts/c1/events", json={}, headers=hdrs()), 422)
    assert _get(client, "/contacts/c1/activity", include_bots=1)["total"] == 0


@pytest.mark.parametrize("bounce_type", ["hard", "Permanent"])
def test_hard_bounce_adds_dnc_bounced(client, mailtrack, bounce_type):
    msg = track(mailtrack)
    resp = client.post(API + "/contacts/c1/events", headers=hdrs(), json={
        "type": "bounce", "message_id": msg.id, "details": {"bounceType": bounce_type, "reason": "550 no user"}})
    assert resp.status_code == 201
    (entry,) = _get(client, "/contacts/c1/dnc")["doNotContact"]
    assert entry["channel"] == "email" and entry["reason"] == int(DNCReason.BOUNCED)
    assert entry["channelId"] == msg.id and entry["comments"] == "550 no user"
    assert not mailtrack.can_contact("c1")


def test_soft_bounce_does_not_add_dnc(client, mailtrack):
    client.post(API + "/contacts/c1/events", json={"type": "bounce", "details": {"bounceType": "soft"}},
                headers=hdrs())
    client.post(API + "/contacts/c1/events", json={"type": "bounce"}, headers=hdrs())
    assert _get(client, "/contacts/c1/dnc") == {"doNotContact": []}
    assert mailtrack.can_contact("c1")


def test_external_unsubscribe_adds_dnc_and_keeps_an_existing_entry(client, mailtrack):
    client.post(API + "/contacts/c1/events", json={"type": "unsubscribe"}, headers=hdrs())
    (entry,) = _get(client, "/contacts/c1/dnc")["doNotContact"]
    assert entry["reason"] == int(DNCReason.UNSUBSCRIBED)
    client.post(API + "/contacts/c1/events", json={"type": "bounce", "details": {"bounceType": "hard"}},
                headers=hdrs())
    (entry,) = _get(client, "/contacts/c1/dnc")["doNotContact"]
    assert entry["reason"] == int(DNCReason.UNSUBSCRIBED)
    assert len(_get(client, "/contacts/c1/events/bounces")["events"]) == 1


def test_openapi_documents_machine_reason(client):
    """The OpenAPI document, generated from the same schemas, names the new field."""
    schemas = _get(client, "/openapi.json")["components"]["schemas"]
    for name, field in (("ActivityItem", "machineReason"), ("ContactEvent", "machine_reason")):
        prop = schemas[name]["properties"][field]
        assert prop["type"] == ["string", "null"] and prop["description"]  # OpenAPI 3.1: nullable
