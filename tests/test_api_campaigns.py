"""Campaign tracking reports (001) and campaign links."""
from __future__ import annotations

import pytest
from apihelpers import API, BROWSER, add_event, assert_problem, at, click, hdrs, track
from apihelpers import app  # noqa: F401 - fixture
from conftest import path_of

from crm_mailtrack.instrument import link_id

A = "https://shop.example/a"
B = "https://shop.example/b"


def _get(client, path, **params):
    resp = client.get(API + path, query_string=params or None, headers=hdrs())
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def _walk(client, first):
    """Every result of a report, following next_link; the pages' sizes."""
    data, results, sizes = first, list(first["results"]), [len(first["results"])]
    while "next_link" in data["meta"]["pagination"]:
        link = data["meta"]["pagination"]["next_link"]
        assert link.startswith("/mailtrack/api/campaigns/") and "?next=" in link and "&" not in link
        data = _get(client, link[len(API):])
        results += data["results"]
        sizes.append(len(data["results"]))
    return results, sizes


def test_unknown_campaign_is_404(client, mailtrack):
    track(mailtrack, campaign_id="camp1")
    for path in ("/campaigns/nope/tracking/clicks", "/campaigns/nope/tracking/opens",
                 f"/campaigns/nope/tracking/clicks/{link_id(A)}", "/campaigns/nope/links",
                 "/campaigns/" + "x" * 65 + "/tracking/clicks"):
        body = assert_problem(client.get(API + path, headers=hdrs()), 404)
        assert "campaign" in body["detail"].lower()


def test_click_report_items(client, mailtrack, db):
    msg = track(mailtrack, "c1")
    add_event(db, "click", "c1", minutes=1, campaign_id="camp1", message_id=msg.id, link_id=link_id(A), url=A)
    add_event(db, "click", "c2", minutes=2, campaign_id="camp1", link_id=link_id(B), url=B)
    data = _get(client, "/campaigns/camp1/tracking/clicks")
    assert data["meta"] == {"pagination": {}}
    first, second = data["results"]
    assert first == {"activity_type": "EMAIL_CLICK", "campaign_id": "camp1", "contact_id": "c2",
                     "email_address": "bob@example.com", "link_id": link_id(B),
                     "click_date": "2024-05-01T12:02:00Z", "is_bot": False}
    assert second["contact_id"] == "c1" and second["link_id"] == link_id(A)


@pytest.mark.parametrize(("kind", "type_", "date_key"), [
    ("opens", "open", "open_date"), ("sends", "send", "send_date"), ("bounces", "bounce", "bounce_date"),
    ("unsubscribes", "unsubscribe", "unsubscribe_date"), ("forwards", "forward", "forward_date")])
def test_other_report_kinds(client, mailtrack, db, kind, type_, date_key):
    track(mailtrack)
    add_event(db, type_, minutes=5, campaign_id="camp1")
    add_event(db, "click", minutes=6, campaign_id="camp1")
    (item,) = _get(client, f"/campaigns/camp1/tracking/{kind}")["results"]
    assert item["activity_type"] == f"EMAIL_{type_.upper()}" and item[date_key] == "2024-05-01T12:05:00Z"
    assert "link_id" not in item and "click_date" not in item


def test_limit_bounds(client, mailtrack):
    track(mailtrack)
    for bad in ("0", "501", "-1", "ten"):
        body = assert_problem(client.get(API + f"/campaigns/camp1/tracking/clicks?limit={bad}", headers=hdrs()), 422)
        assert "limit" in body["errors"]
    assert _get(client, "/campaigns/camp1/tracking/clicks", limit=500)["results"] == []


def test_default_limit_is_500(client, mailtrack, db):
    from crm_mailtrack.models import events

    track(mailtrack)
    db.session.execute(events.insert(), [
        {"tenant_id": "", "type": "open", "contact_id": "c1", "campaign_id": "camp1",
         "occurred_at": at(i), "is_machine": False} for i in range(501)])
    db.session.commit()
    data = _get(client, "/campaigns/camp1/tracking/opens")
    assert len(data["results"]) == 500 and "next_link" in data["meta"]["pagination"]
    results, sizes = _walk(client, data)
    assert sizes == [500, 1] and len(results) == 501


def test_keyset_pages_with_events_arriving_between_pages(client, mailtrack, db):
    track(mailtrack)
    for i in range(10):
        add_event(db, "click", f"c{1 + i % 3}", minutes=i // 2, campaign_id="camp1", link_id=link_id(A))
    data = _get(client, "/campaigns/camp1/tracking/clicks", limit=3)
    seen = [(r["contact_id"], r["click_date"]) for r in data["results"]]
    # while the client pages: a newer click, an older (late, replayed) click, and a tie
    add_event(db, "click", "c1", minutes=60, campaign_id="camp1", link_id=link_id(A))
    add_event(db, "click", "c2", minutes=-60, campaign_id="camp1", link_id=link_id(A))
    link = data["meta"]["pagination"]["next_link"]
    results, sizes = _walk(client, _get(client, link[len(API):]))
    seen += [(r["contact_id"], r["click_date"]) for r in results]
    assert all(s <= 3 for s in sizes)
    # 10 original + the older late one; the newer one sorts before the cursor (next listing)
    assert len(seen) == 11
    dates = [d for _, d in seen]
    assert dates == sorted(dates, reverse=True)
    full = _walk(client, _get(client, "/campaigns/camp1/tracking/clicks", limit=4))[0]
    assert len(full) == 12


def test_next_link_alone_carries_the_parameters(client, mailtrack, db):
    track(mailtrack)
    for i in range(6):
        add_event(db, "open", minutes=i, campaign_id="camp1", bot=(i == 5))
    first = _get(client, "/campaigns/camp1/tracking/opens", limit=2, created_since="2024-05-01T12:01:00Z",
                 include_bots="true")
    results, sizes = _walk(client, first)
    assert sizes == [2, 2, 1]
    assert [r["open_date"][11:16] for r in results] == ["12:05", "12:04", "12:03", "12:02", "12:01"]
    assert results[0]["is_bot"] is True


def test_tampered_or_foreign_cursor_is_400(client, mailtrack, db):
    track(mailtrack, campaign_id="camp1")
    track(mailtrack, campaign_id="camp2")
    for i in range(3):
        add_event(db, "click", minutes=i, campaign_id="camp1", link_id=link_id(A))
    link = _get(client, "/campaigns/camp1/tracking/clicks", limit=1)["meta"]["pagination"]["next_link"]
    token = link.split("next=")[1]
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for path in (f"/campaigns/camp1/tracking/clicks?next={forged}",
                 "/campaigns/camp1/tracking/clicks?next=not-a-cursor",
                 f"/campaigns/camp2/tracking/clicks?next={token}",
                 f"/campaigns/camp1/tracking/opens?next={token}",
                 f"/campaigns/camp1/tracking/clicks/{link_id(A)}?next={token}"):
        body = assert_problem(client.get(API + path, headers=hdrs()), 400)
        assert "cursor" in body["detail"]


def test_humans_only_unless_include_bots(client, mailtrack, db):
    track(mailtrack)
    add_event(db, "click", minutes=1, campaign_id="camp1", link_id=link_id(A))
    add_event(db, "click", minutes=2, campaign_id="camp1", link_id=link_id(A), bot=True)
    assert len(_get(client, "/campaigns/camp1/tracking/clicks")["results"]) == 1
    assert len(_get(client, "/campaigns/camp1/tracking/clicks", include_bots="true")["results"]) == 2
    assert len(_get(client, f"/campaigns/camp1/tracking/clicks/{link_id(A)}")["results"]) == 1


def test_created_since(client, mailtrack, db):
    track(mailtrack)
    for i in range(4):
        add_event(db, "click", minutes=i * 10, campaign_id="camp1", link_id=link_id(A))
    data = _get(client, "/campaigns/camp1/tracking/clicks", created_since="2024-05-01T12:10:00Z")
    assert [r["click_date"] for r in data["results"]] == [
        "2024-05-01T12:30:00Z", "2024-05-01T12:20:00Z", "2024-05-01T12:10:00Z"]
    assert_problem(client.get(API + "/campaigns/camp1/tracking/clicks?created_since=soon", headers=hdrs()), 422)


def test_link_click_report(client, mailtrack, db):
    msg = track(mailtrack)
    for minutes, url in ((1, A), (2, A), (3, B)):
        add_event(db, "click", minutes=minutes, campaign_id="camp1", message_id=msg.id, link_id=link_id(url), url=url)
    data = _get(client, f"/campaigns/camp1/tracking/clicks/{link_id(A)}")
    assert [r["click_date"] for r in data["results"]] == ["2024-05-01T12:02:00Z", "2024-05-01T12:01:00Z"]
    assert {r["link_id"] for r in data["results"]} == {link_id(A)}
    assert_problem(client.get(API + "/campaigns/camp1/tracking/clicks/0000000000000000", headers=hdrs()), 404)
    assert_problem(client.get(API + "/campaigns/camp1/tracking/clicks/" + "f" * 40, headers=hdrs()), 404)


def test_links_report_totals_unique_and_unclicked(client, mailtrack, db):
    c = "https://shop.example/c"
    m1 = track(mailtrack, "c1", links=(A, B, c))
    m2 = track(mailtrack, "c2", links=(A, B, c))
    for minutes, (msg, url) in enumerate(((m1, A), (m1, A), (m2, A), (m1, B))):
        add_event(db, "click", msg.contact_id, minutes=minutes, campaign_id="camp1", message_id=msg.id,
                  link_id=link_id(url), url=url)
    add_event(db, "click", "c2", minutes=9, campaign_id="camp1", message_id=m2.id, link_id=link_id(B), url=B,
              bot=True)
    data = _get(client, "/campaigns/camp1/links")
    by_url = {row["url"]: row for row in data["links"]}
    assert set(by_url) == {A, B, c}
    assert by_url[A] == {"link_id": link_id(A), "url": A, "total_clicks": 3, "unique_clicks": 2}
    assert (by_url[B]["total_clicks"], by_url[B]["unique_clicks"]) == (1, 1)
    assert (by_url[c]["total_clicks"], by_url[c]["unique_clicks"]) == (0, 0)
    with_bots = {r["url"]: r for r in _get(client, "/campaigns/camp1/links", include_bots="true")["links"]}
    assert (with_bots[B]["total_clicks"], with_bots[B]["unique_clicks"]) == (2, 2)
    assert [r["url"] for r in data["links"]][0] == A  # most clicked first


def test_real_clicks_reach_the_reports(client, mailtrack):
    msg = track(mailtrack)
    click(client, mailtrack, msg, A)
    (row,) = _get(client, f"/campaigns/camp1/tracking/clicks/{link_id(A)}")["results"]
    assert row["contact_id"] == "c1" and row["email_address"] == "ann@example.com"
    assert {r["url"]: r["total_clicks"] for r in _get(client, "/campaigns/camp1/links")["links"]} == {A: 1, B: 0}
    client.head(path_of(mailtrack.click_url(msg, B)), headers=BROWSER)  # a machine (HEAD)
    assert {r["url"]: r["total_clicks"] for r in _get(client, "/campaigns/camp1/links")["links"]} == {A: 1, B: 0}


def test_links_report_keeps_purged_clicks(client, mailtrack, db):
    """Clicks a purge rolled up into daily counts still count in the totals."""
    import datetime as dt

    from crm_mailtrack.models import event_rollups

    m1 = track(mailtrack, "c1")
    m2 = track(mailtrack, "c2")
    add_event(db, "click", "c1", minutes=1, campaign_id="camp1", message_id=m1.id, link_id=link_id(A), url=A)
    db.session.execute(event_rollups.insert(), [
        {"tenant_id": "", "day": dt.date(2024, 1, 1), "type": "click", "is_machine": False, "campaign_id": "camp1",
         "message_id": m1.id, "link_id": link_id(A), "count": 3},
        {"tenant_id": "", "day": dt.date(2024, 1, 1), "type": "click", "is_machine": False, "campaign_id": "camp1",
         "message_id": m2.id, "link_id": link_id(A), "count": 2},
        {"tenant_id": "", "day": dt.date(2024, 1, 1), "type": "click", "is_machine": True, "campaign_id": "camp1",
         "message_id": m2.id, "link_id": link_id(B), "count": 5},
        {"tenant_id": "other", "day": dt.date(2024, 1, 1), "type": "click", "is_machine": False,
         "campaign_id": "camp1", "message_id": m2.id, "link_id": link_id(B), "count": 7},
    ])
    db.session.commit()
    by_url = {r["url"]: r for r in _get(client, "/campaigns/camp1/links")["links"]}
    assert (by_url[A]["total_clicks"], by_url[A]["unique_clicks"]) == (6, 2)
    assert (by_url[B]["total_clicks"], by_url[B]["unique_clicks"]) == (0, 0)
    with_bots = {r["url"]: r for r in _get(client, "/campaigns/camp1/links", include_bots="true")["links"]}
    assert (with_bots[B]["total_clicks"], with_bots[B]["unique_clicks"]) == (5, 1)
