"""Do-Not-Contact and UTM tags (004), including UTM tags recorded from clicks."""
from __future__ import annotations

import pytest
from apihelpers import API, BROWSER, assert_problem, hdrs, setup_hooks, track
from apihelpers import app  # noqa: F401 - fixture
from conftest import path_of
from journalhelpers import outage_app  # noqa: F401 - the fixture (an app whose database is down)

from crm_mailtrack.models import UtmTag


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


def test_a_contacts_dnc_list_holds_its_own_entries_only(client, mailtrack):
    """Another contact's entries (same tenant) and the same contact's entries in another
    tenant stay out of the list; the contact's entries come in the order they were added."""
    mailtrack.add_dnc("c2", "email")
    mailtrack.add_dnc("c1", "sms", tenant_id="other")
    mailtrack.add_dnc("c1", "sms")
    mailtrack.add_dnc("c1", "email")
    assert [e["channel"] for e in _dnc(client)] == ["sms", "email"]
    assert [e["channel"] for e in _dnc(client, "c2")] == ["email"]


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
    "query": {"ref": "x", "n": [1, 2]}, "remotehost": "203.0.113.77", "lastActive": "2017-01-17T00:30:08+00:00",
}


def test_utm_add_all_fields(client, recorded_signals):
    resp = client.post(API + "/contacts/c1/utm/add", json=FULL, headers=hdrs())
    assert resp.status_code == 201
    data = resp.get_json()
    (tag,) = data["utmtags"]
    assert data["utmtag"] == tag
    for key, value in FULL.items():
        if key not in ("lastActive", "remotehost"):
            assert tag[key] == value, key
    assert tag["remotehost"] == "203.0.113.0"  # anonymized, as the tracking routes store IPs
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
    """The tag is written in the click's own transaction: when it fails, the click is not
    stored half (no click without its tag): the redirect still happens and the click goes
    to the journal, to be replayed with its tag."""
    from crm_mailtrack.services import utm as utm_service

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(utm_service, "upsert_tag", broken)
    url = "https://shop.example/p?utm_source=news"
    msg = track(mailtrack, links=(url,))
    resp = client.get(path_of(mailtrack.click_url(msg, url)), headers=BROWSER)
    assert resp.status_code == 302 and resp.headers["Location"] == url
    assert mailtrack_tags(mailtrack) == 0
    state = client.application.extensions["mailtrack"]
    assert state.journal.count() == 1
    monkeypatch.undo()
    from crm_mailtrack.services.tracking import replay_journal

    assert replay_journal(state) == (1, 0)
    (tag,) = _utm(client)
    assert tag["utm_source"] == "news" and tag["hits"] == 1


def mailtrack_tags(mt) -> int:
    from crm_mailtrack.state import get_state

    return get_state().session.query(UtmTag).count()


# -- one tag per contact and combination ------------------------------------------------------------


def test_repeated_clicks_count_one_tag(client, mailtrack, recorded_signals):
    url = "https://shop.example/p?utm_source=news&utm_campaign=spring"
    msg = track(mailtrack, links=(url,))
    for _ in range(3):
        assert client.get(path_of(mailtrack.click_url(msg, url)), headers=BROWSER).status_code == 302
    (tag,) = _utm(client)
    assert (tag["utm_source"], tag["utm_campaign"], tag["hits"]) == ("news", "spring", 3)
    first_seen = tag["lastActive"]
    assert len(recorded_signals.of("utm_tag_added")) == 1
    events = client.get(API + "/contacts/c1/activity?filters[includeEvents][]=utm_added", headers=hdrs()).get_json()
    assert events["total"] == 1
    # another combination is another tag; the first one's last-seen time moves on
    other = "https://shop.example/q?utm_source=news&utm_campaign=summer"
    later = track(mailtrack, links=(other,))  # another message: no burst with the clicks above
    assert client.get(path_of(mailtrack.click_url(later, other)), headers=BROWSER).status_code == 302
    assert client.get(path_of(mailtrack.click_url(msg, url)), headers=BROWSER).status_code == 302
    tags = {t["utm_campaign"]: t for t in _utm(client)}
    assert (tags["spring"]["hits"], tags["summer"]["hits"]) == (4, 1)
    assert tags["spring"]["lastActive"] >= first_seen and tags["spring"]["id"] == tag["id"]
    assert len(recorded_signals.of("utm_tag_added")) == 2


def test_utm_defaults_tag_once_per_contact(make_app):
    app = make_app(setup=setup_hooks, MAILTRACK_UTM_DEFAULTS={"utm_source": "crm", "utm_medium": "email"})
    client = app.test_client()
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        msg = track(mt, links=("https://shop.example/a",))
        path = path_of(mt.click_url(msg, "https://shop.example/a?utm_source=crm&utm_medium=email"))
    for _ in range(4):
        assert client.get(path, headers=BROWSER).status_code == 302
    (tag,) = _utm(client)
    assert (tag["utm_source"], tag["utm_medium"], tag["hits"]) == ("crm", "email", 4)


def test_simultaneous_first_clicks_make_one_tag(make_app, database_url):
    """Clicks of one contact on the same UTM link arriving together (a real threaded
    server): every click redirects and is stored, and they share one tag."""
    import http.client
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import sqlalchemy as sa
    from werkzeug.serving import make_server

    from crm_mailtrack.models import events, utm_tags

    options = {"pool_size": 12, "max_overflow": 4}
    if database_url.startswith("sqlite"):
        options["connect_args"] = {"timeout": 60}
    app = make_app(SQLALCHEMY_ENGINE_OPTIONS=options)
    url = "https://shop.example/p?utm_source=news"
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        msg = track(mt, links=(url,))
        path, message_id = path_of(mt.click_url(msg, url)), msg.id
        app.extensions["sqlalchemy"].session.remove()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    barrier = threading.Barrier(12)

    def hit(_: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=60)
        try:
            barrier.wait()
            conn.request("GET", path, headers=BROWSER)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(pool.map(hit, range(12)))
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert statuses == [302] * 12
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        clicks = conn.execute(sa.select(sa.func.count()).select_from(events)
                              .where(events.c.message_id == message_id, events.c.type == "click")).scalar()
        tags = conn.execute(sa.select(utm_tags.c.hits)).scalars().all()
        added = conn.execute(sa.select(sa.func.count()).select_from(events)
                             .where(events.c.type == "utm_added")).scalar()
    assert (clicks, tags, added) == (12, [12], 1)
    assert app.extensions["mailtrack"].journal.count() == 0


def test_replayed_click_tags_like_a_live_one(make_app, outage_app, recorded_signals):
    """A click journaled while the database was down gets its UTM tag when replayed (once,
    however often the replay runs)."""
    from crm_mailtrack.services.tracking import replay_journal

    healthy = make_app(setup=setup_hooks)
    url = "https://shop.example/p?utm_source=news&utm_campaign=spring"
    with healthy.app_context():
        mt = healthy.extensions["mailtrack"].extension
        msg = track(mt, links=(url,))
        path = path_of(mt.click_url(msg, url))
    down = outage_app(healthy.config["MAILTRACK_JOURNAL_PATH"])
    assert down.test_client().get(path, headers=BROWSER).status_code == 302
    client = healthy.test_client()
    assert _utm(client) == []
    with healthy.app_context():
        assert replay_journal(healthy.extensions["mailtrack"]) == (1, 0)
        assert replay_journal(healthy.extensions["mailtrack"]) == (0, 0)
    (tag,) = _utm(client)
    assert (tag["utm_source"], tag["utm_campaign"], tag["hits"]) == ("news", "spring", 1)
    assert tag["useragent"] == BROWSER["User-Agent"]
    assert len(recorded_signals.of("utm_tag_added")) == 1


# -- remotehost ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("anonymize", [True, False])
def test_remotehost_is_stored_like_tracked_ips(make_app, anonymize):
    app = make_app(setup=setup_hooks, MAILTRACK_ANONYMIZE_IP=anonymize)
    client = app.test_client()
    expected = {"203.0.113.77": "203.0.113.0" if anonymize else "203.0.113.77",
                "2001:db8:abcd:12:1::5": "2001:db8:abcd::" if anonymize else "2001:db8:abcd:12:1::5"}
    for n, (given, stored) in enumerate(expected.items()):
        resp = client.post(API + "/contacts/c1/utm/add", json={"utm_source": f"s{n}", "remotehost": given},
                           headers=hdrs())
        assert resp.status_code == 201 and resp.get_json()["utmtag"]["remotehost"] == stored
    with app.app_context():
        tag = app.extensions["mailtrack"].extension.add_utm("c2", utm_source="py", remotehost="198.51.100.9")
        assert tag.remotehost == ("198.51.100.0" if anonymize else "198.51.100.9")


def test_remotehost_must_be_an_ip_address(client, mailtrack):
    from crm_mailtrack import ValidationError

    for bad in ("host.example", "203.0.113", "not an ip", "1.2.3.4.5"):
        body = assert_problem(client.post(API + "/contacts/c1/utm/add", json={"utm_source": "s", "remotehost": bad},
                                          headers=hdrs()), 422)
        assert "remotehost" in body["errors"], bad
    with pytest.raises(ValidationError):
        mailtrack.add_utm("c1", utm_source="s", remotehost="host.example")
    assert _utm(client) == []
