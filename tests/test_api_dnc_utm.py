"""Do-Not-Contact and UTM tags (004), including UTM tags recorded from clicks."""
from __future__ import annotations

import pytest
from apihelpers import API, BROWSER, assert_problem, hdrs, setup_hooks, track
from conftest import path_of

from crm_mailtrack.models import UtmTag


@pytest.fixture
def app(make_app):
    app = make_app(setup=setup_hooks)
    with app.app_context():
        yield app


def _dnc(client, contact="c1"):
    resp = client.get(API + f"/contacts/{contact}/dnc", headers=hdrs())
    assert resp.status_code == 200
    return resp.get_json()["doNotContact"]


def _utm(client, contact="c1"):
    resp = client.get(API + f"/contacts/{contact}/utm", headers=hdrs())
    assert resp.status_code == 200
    return resp.get_json()["utmtags"]


# -- DNC -----------------------------------------------------------------------------------------------

def test_dnc_add_defaults_to_manual(client, mailtrack, recorded_signals):
    assert _dnc(client) == []
    resp = client.post(API + "/contacts/c1/dnc/email/add", headers=hdrs())
    assert resp.status_code == 200
    (entry,) = resp.get_json()["doNotContact"]
    assert set(entry) == {"id", "channel", "reason", "channelId", "comments", "dateAdded"}
    assert entry["channel"] == "email" and entry["reason"] == 3 and entry["dateAdded"].endswith("Z")
    assert not mailtrack.can_contact("c1")
    assert len(recorded_signals.of("dnc_added")) == 1


def test_dnc_add_twice_keeps_one_row_and_updates_it(client, recorded_signals):
    client.post(API + "/contacts/c1/dnc/email/add", json={"reason": 1, "channelId": "m1", "comments": "a"},
                headers=hdrs())
    resp = client.post(API + "/contacts/c1/dnc/email/add", json={"reason": 2, "channelId": "m2", "comments": "b"},
                       headers=hdrs())
    (entry,) = resp.get_json()["doNotContact"]
    assert (entry["reason"], entry["channelId"], entry["comments"]) == (2, "m2", "b")
    assert len(recorded_signals.of("dnc_added")) == 1


def test_dnc_channels_are_separate(client, mailtrack):
    client.post(API + "/contacts/c1/dnc/sms/add", json={"reason": "3", "channel": "sms"}, headers=hdrs())
    assert [e["channel"] for e in _dnc(client)] == ["sms"]
    assert mailtrack.can_contact("c1", "email") and not mailtrack.can_contact("c1", "sms")
    client.post(API + "/contacts/c1/dnc/push_web/add", headers=hdrs())
    assert {e["channel"] for e in _dnc(client)} == {"sms", "push_web"}


def test_dnc_validation(client):
    for channel, body in (("EMAIL", {}), ("e mail", {}), ("email", {"reason": 4}), ("email", {"reason": 0}),
                          ("email", {"reason": "often"}), ("email", {"channel": "sms"}),
                          ("email", {"comments": "x\x00"}), ("email", {"colour": "red"})):
        assert_problem(client.post(API + f"/contacts/c1/dnc/{channel}/add", json=body, headers=hdrs()), 422)
    assert _dnc(client) == []


def test_dnc_remove(client, mailtrack, recorded_signals):
    client.post(API + "/contacts/c1/dnc/email/add", headers=hdrs())
    client.post(API + "/contacts/c1/dnc/sms/add", headers=hdrs())
    resp = client.post(API + "/contacts/c1/dnc/email/remove", headers=hdrs())
    assert resp.status_code == 200
    assert [e["channel"] for e in resp.get_json()["doNotContact"]] == ["sms"]
    assert mailtrack.can_contact("c1", "email")
    assert len(recorded_signals.of("dnc_removed")) == 1
    assert_problem(client.post(API + "/contacts/c1/dnc/email/remove", headers=hdrs()), 404)
    assert_problem(client.post(API + "/contacts/c1/dnc/sms/remove", json={"channel": "email"}, headers=hdrs()), 422)
    assert_problem(client.post(API + "/contacts/c1/dnc/SMS/remove", headers=hdrs()), 422)
    assert [e["channel"] for e in _dnc(client)] == ["sms"]


# -- UTM -----------------------------------------------------------------------------------------------

FULL = {
    "utm_campaign": "spring", "utm_source": "newsletter", "utm_medium": "email", "utm_content": "hero",
    "utm_term": "shoes", "useragent": "Mozilla/5.0", "url": "https://shop.example/p", "referer": "https://mail.example/",
    "query": {"ref": "x", "n": [1, 2]}, "remotehost": "host.example", "lastActive": "2017-01-17T00:30:08+00:00",
}


def test_utm_add_all_fields(client, recorded_signals):
    resp = client.post(API + "/contacts/c1/utm/add", json=FULL, headers=hdrs())
    assert resp.status_code == 201
    data = resp.get_json()
    (tag,) = data["utmtags"]
    assert data["utmtag"] == tag
    for key, value in FULL.items():
        if key != "lastActive":
            assert tag[key] == value, key
    assert tag["lastActive"] == "2017-01-17T00:30:08Z" and tag["dateAdded"].endswith("Z")
    assert set(tag) >= {"id", "utm_campaign", "utm_source", "utm_medium", "utm_content", "utm_term", "useragent",
                        "url", "referer", "query", "remotehost", "dateAdded"}
    assert len(recorded_signals.of("utm_tag_added")) == 1


def test_utm_query_string_becomes_an_object(client):
    resp = client.post(API + "/contacts/c1/utm/add", json={"query": "?a=1&b=two&a=3"}, headers=hdrs())
    assert resp.get_json()["utmtag"]["query"] == {"a": ["1", "3"], "b": "two"}


def test_utm_last_active_is_strict_and_naive_means_utc(client):
    ok = client.post(API + "/contacts/c1/utm/add", json={"utm_source": "s", "lastActive": "2017-01-17T00:30:08"},
                     headers=hdrs())
    assert ok.get_json()["utmtag"]["lastActive"] == "2017-01-17T00:30:08Z"
    for bad in ("2017-01-17", "yesterday", "17/01/2017 00:30", "2017-13-40T00:00:00Z", 1484613008):
        body = assert_problem(client.post(API + "/contacts/c1/utm/add", json={"utm_source": "s", "lastActive": bad},
                                          headers=hdrs()), 422)
        assert "lastActive" in body["errors"], bad
    assert len(_utm(client)) == 1


def test_utm_validation(client):
    for body in ({}, {"utm_source": None}, {"query": 5}, {"utm_source": "x" * 256}, {"utm_source": "a\x00"},
                 {"query": {"k": "\x00"}}, {"utm_source": "s", "extra": 1}):
        assert_problem(client.post(API + "/contacts/c1/utm/add", json=body, headers=hdrs()), 422)
    assert _utm(client) == []


def test_utm_remove(client, recorded_signals):
    first = client.post(API + "/contacts/c1/utm/add", json={"utm_source": "a"}, headers=hdrs()).get_json()["utmtag"]
    second = client.post(API + "/contacts/c1/utm/add", json={"utm_source": "b"}, headers=hdrs()).get_json()["utmtag"]
    other = client.post(API + "/contacts/c2/utm/add", json={"utm_source": "c"}, headers=hdrs()).get_json()["utmtag"]
    resp = client.post(API + f"/contacts/c1/utm/{first['id']}/remove", headers=hdrs())
    assert resp.status_code == 200
    assert [t["id"] for t in resp.get_json()["utmtags"]] == [second["id"]]
    assert len(recorded_signals.of("utm_tag_removed")) == 1
    for utm_id in (first["id"], other["id"], "abc", "-1", "99999999999999999999999"):
        assert_problem(client.post(API + f"/contacts/c1/utm/{utm_id}/remove", headers=hdrs()), 404)
    assert [t["id"] for t in _utm(client, "c2")] == [other["id"]]


def test_click_on_a_utm_destination_adds_a_tag(client, mailtrack):
    url = "https://shop.example/p?utm_source=news&utm_medium=email&utm_campaign=spring&color=red"
    msg = track(mailtrack, links=(url, "https://shop.example/plain"))
    resp = client.get(path_of(mailtrack.click_url(msg, url)), headers=BROWSER)
    assert resp.status_code == 302 and resp.headers["Location"] == url
    (tag,) = _utm(client)
    assert (tag["utm_source"], tag["utm_medium"], tag["utm_campaign"]) == ("news", "email", "spring")
    assert tag["url"] == url and tag["useragent"] == BROWSER["User-Agent"] and tag["lastActive"]
    client.get(path_of(mailtrack.click_url(msg, "https://shop.example/plain")), headers=BROWSER)
    assert len(_utm(client)) == 1


def test_machine_click_adds_no_utm_tag(client, mailtrack):
    url = "https://shop.example/p?utm_source=news"
    msg = track(mailtrack, links=(url,))
    assert client.head(path_of(mailtrack.click_url(msg, url)), headers=BROWSER).status_code == 302
    assert _utm(client) == []


def test_click_judged_machine_by_its_history_adds_no_utm_tag(client, mailtrack, db):
    """The tag follows the click's final verdict, including the ones decided in SQL
    (here ``too-fast-after-send``), not only what the request itself shows."""
    import datetime as dt

    from crm_mailtrack.models import Message

    url = "https://shop.example/p?utm_source=news"
    msg = track(mailtrack, links=(url,))
    db.session.get(Message, msg.id).sent_at = dt.datetime.now(dt.timezone.utc)  # just delivered
    db.session.commit()
    assert client.get(path_of(mailtrack.click_url(msg, url)), headers=BROWSER).status_code == 302
    assert _utm(client) == []


def test_utm_tag_failure_never_breaks_the_redirect(client, mailtrack, monkeypatch):
    from crm_mailtrack.services import utm as utm_service

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(utm_service, "add_utm", broken)
    url = "https://shop.example/p?utm_source=news"
    msg = track(mailtrack, links=(url,))
    resp = client.get(path_of(mailtrack.click_url(msg, url)), headers=BROWSER)
    assert resp.status_code == 302 and resp.headers["Location"] == url
    assert mailtrack_tags(mailtrack) == 0


def mailtrack_tags(mt) -> int:
    from crm_mailtrack.state import get_state

    return get_state().session.query(UtmTag).count()
