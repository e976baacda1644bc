"""000's ContactClicks OData entity set."""
from __future__ import annotations

from apihelpers import API, add_event, assert_problem, hdrs
from apihelpers import app  # noqa: F401 - fixture

#: 000's own request body (numbers as strings, the "CatergoryID" spelling of its table).
SAMPLE = {
    "ID": "0", "ClickCount": "7", "DisplayName": "Example Display Name", "FirstName": "Example First Name",
    "LastName": "Example Last Name", "Email": "Example Email", "ActiveState": False,
    "CreationDate": "2014-10-30T12:00:00.000Z", "Shared": False, "OwnerID": "0", "CategoryID": "0",
    "CatergoryID": "0", "StageID": "0", "Company": "Example Company", "WebAddress": "Example Web Address",
    "Title": "Example Title", "FileAs": "", "Source": "0", "Notes": "",
    **{f"Custom{i}": "" for i in range(1, 21)}, "BusinessID": "0", "RegionID": "0",
}


def _get(client, path):
    resp = client.get(API + path, headers=hdrs())
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def test_entity_from_loader_and_human_clicks(client, db):
    add_event(db, "click", "c1", minutes=1)
    add_event(db, "click", "c1", minutes=2)
    add_event(db, "click", "c1", minutes=3, bot=True)
    add_event(db, "open", "c1", minutes=4)
    entity = _get(client, "/odata/ContactClicks('c1')")
    assert entity["ID"] == "c1" and entity["ClickCount"] == 2
    assert (entity["FirstName"], entity["LastName"], entity["DisplayName"]) == ("Ann", "Lee", "Ann Lee")
    assert (entity["Email"], entity["Company"], entity["Title"], entity["Custom1"]) == (
        "ann@example.com", "ACME", "CTO", "vip")
    assert {"ActiveState", "CreationDate", "OwnerID", "CategoryID", "Custom20", "BusinessID", "RegionID"} <= set(entity)
    assert _get(client, "/odata/ContactClicks(c1)")["ClickCount"] == 2


def test_numeric_ids_are_int32(client):
    entity = _get(client, "/odata/ContactClicks(42)")
    assert entity["ID"] == 42 and entity["ClickCount"] == 0 and entity["FirstName"] == "Forty"
    assert _get(client, "/odata/ContactClicks('42')")["ID"] == 42


def test_post_imports_a_total(client, mailtrack, recorded_signals):
    resp = client.post(API + "/odata/ContactClicks", json={"ID": 42, "ClickCount": 5}, headers=hdrs())
    assert resp.status_code == 201
    assert resp.get_json()["ID"] == 42 and resp.get_json()["ClickCount"] == 5
    assert _get(client, "/odata/ContactClicks(42)")["ClickCount"] == 5
    # an import is not a click: only event_recorded fires, and human reports leave it out
    assert recorded_signals.names() == ["event_recorded"]
    assert _get(client, "/contacts/42/activity")["total"] == 0
    (event,) = _get(client, "/contacts/42/activity?include_bots=true")["events"]
    assert event["event"] == "click" and event["details"] == {"imported": 5}


def test_post_accepts_000s_sample_body(client):
    resp = client.post(API + "/odata/ContactClicks", json={**SAMPLE, "ID": "c2"}, headers=hdrs())
    assert resp.status_code == 201
    entity = resp.get_json()
    assert entity["ClickCount"] == 7 and entity["FirstName"] == "Bob"  # properties are the host's


def test_post_for_a_contact_with_click_data_is_409(client, db):
    add_event(db, "click", "c1")
    body = assert_problem(client.post(API + "/odata/ContactClicks", json={"ID": "c1", "ClickCount": 3},
                                      headers=hdrs()), 409)
    assert "PUT" in body["detail"]
    assert _get(client, "/odata/ContactClicks('c1')")["ClickCount"] == 1


def test_post_validation(client):
    for body in ({"ClickCount": 1}, {"ID": "c1"}, {"ID": "c1", "ClickCount": -1}, {"ID": "c1", "ClickCount": 2**31},
                 {"ID": True, "ClickCount": 1}, {"ID": ["c1"], "ClickCount": 1}, {"ID": "c1", "ClickCount": "x"},
                 {"ID": "", "ClickCount": 1}, {"ID": "c1", "ClickCount": 1, "Colour": "red"}):
        assert_problem(client.post(API + "/odata/ContactClicks", json=body, headers=hdrs()), 422)
    assert _get(client, "/odata/ContactClicks")["value"] == []


def test_post_id_rules_are_the_documented_pattern(client):
    """An ID of only white space (as the document's pattern defines it) is 422; a C0
    separator such as U+001E is not white space there, so it is an ID like any other."""
    import re

    document = client.get(API + "/openapi.json", headers=hdrs()).get_json()
    (post,) = [s for name, s in document["components"]["schemas"].items() if name.startswith("ContactClickPost")]
    pattern = post["properties"]["ID"]["pattern"]
    for contact_id, valid in ((" \t ", False), ("\x1e", True), (" c9 ", True)):
        assert bool(re.search(pattern, contact_id)) == valid, contact_id
        resp = client.post(API + "/odata/ContactClicks", json={"ID": contact_id, "ClickCount": 1}, headers=hdrs())
        # a valid ID is the contact loader's to know (201, or 404 for a contact it lacks)
        assert (resp.status_code != 422) == valid, (contact_id, resp.get_data(as_text=True))


def test_put_corrects_the_total_and_later_clicks_add(client, db):
    add_event(db, "click", "c1", minutes=1)
    add_event(db, "click", "c1", minutes=2)
    resp = client.put(API + "/odata/ContactClicks('c1')", json={**SAMPLE, "ClickCount": 10}, headers=hdrs())
    assert resp.status_code == 204 and resp.get_data() == b""
    assert _get(client, "/odata/ContactClicks('c1')")["ClickCount"] == 10
    add_event(db, "click", "c1", minutes=3)
    assert _get(client, "/odata/ContactClicks('c1')")["ClickCount"] == 11
    client.put(API + "/odata/ContactClicks('c1')", json={"ClickCount": 0}, headers=hdrs())
    assert _get(client, "/odata/ContactClicks('c1')")["ClickCount"] == 0
    assert_problem(client.put(API + "/odata/ContactClicks('c1')", json={"ClickCount": -2}, headers=hdrs()), 422)
    assert_problem(client.put(API + "/odata/ContactClicks('c1')", json={}, headers=hdrs()), 422)


def test_delete_erases_the_click_data_only(client, db):
    add_event(db, "click", "c1", minutes=1)
    add_event(db, "open", "c1", minutes=2)
    client.post(API + "/odata/ContactClicks", json={"ID": "c2", "ClickCount": 4}, headers=hdrs())
    client.put(API + "/odata/ContactClicks('c1')", json={"ClickCount": 9}, headers=hdrs())
    resp = client.delete(API + "/odata/ContactClicks('c1')", headers=hdrs())
    assert resp.status_code == 204
    assert _get(client, "/odata/ContactClicks('c1')")["ClickCount"] == 0
    assert [e["event"] for e in _get(client, "/contacts/c1/activity?include_bots=1")["events"]] == ["open"]
    assert _get(client, "/odata/ContactClicks('c2')")["ClickCount"] == 4
    assert [v["ID"] for v in _get(client, "/odata/ContactClicks")["value"]] == ["c2"]


def test_list_top_skip_orderby(client, db):
    for contact, clicks in (("c1", 3), ("c2", 1), ("c3", 2)):
        for i in range(clicks):
            add_event(db, "click", contact, minutes=i)
    client.post(API + "/odata/ContactClicks", json={"ID": 42, "ClickCount": 5}, headers=hdrs())
    value = _get(client, "/odata/ContactClicks")["value"]
    assert [(v["ID"], v["ClickCount"]) for v in value] == [(42, 5), ("c1", 3), ("c2", 1), ("c3", 2)]
    assert value[1]["FirstName"] == "Ann"
    top = _get(client, "/odata/ContactClicks?$orderby=ClickCount desc&$top=2")["value"]
    assert [v["ID"] for v in top] == [42, "c1"]
    page = _get(client, "/odata/ContactClicks?$orderby=ClickCount asc&$top=2&$skip=1")["value"]
    assert [v["ID"] for v in page] == ["c3", "c1"]
    assert [v["ID"] for v in _get(client, "/odata/ContactClicks?$orderby=ID desc")["value"]] == ["c3", "c2", "c1", 42]
    for qs in ("$top=0", "$top=1001", "$skip=-1", "$orderby=Email", "$orderby=ID;drop"):
        assert_problem(client.get(API + "/odata/ContactClicks?" + qs, headers=hdrs()), 422)
