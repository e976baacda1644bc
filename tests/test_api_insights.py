"""Marketer insights (engagement and score, audiences with CSV, breakdowns, top links),
driven through the real tracking routes: people open and click with a browser, scanners
HEAD the links, Apple's privacy proxy loads the pixel."""
from __future__ import annotations

import csv
import datetime as dt
import io
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from crm_mailtrack import Message

from apihelpers import API, hdrs, setup_hooks
from conftest import path_of
from mailserver import MailServer, RecordingHandler

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
HTML = '<p>Hi</p><a href="https://shop.example/sale">Sale</a> <a href="https://shop.example/help">Help</a>'
FORMULA = "=2+3"  # a contact id a spreadsheet would run


@pytest.fixture
def server():
    with MailServer(RecordingHandler()) as srv:
        yield srv


class Story:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.client = app.test_client()
        self.mt = app.extensions["mailtrack"].extension
        self.msgs: dict[str, Any] = {}

    def hit(self, method: str, url: str, ua: str, ip: str = "198.51.100.7", **headers: str) -> None:
        data = {"List-Unsubscribe": "One-Click"} if method == "POST" else None
        resp = self.client.open(path_of(url), method=method, data=data, headers={"User-Agent": ua, **headers},
                                environ_base={"REMOTE_ADDR": ip})
        assert resp.status_code in (200, 302), (method, url, resp.status_code)

    def links(self, who: str) -> list[str]:
        return [u.replace("&amp;", "&") for u in re.findall(r'href="([^"]*/t/c/[^"]+)"', self.msgs[who]["html"])]

    def pixel(self, who: str) -> str:
        return re.search(r'src="([^"]*/t/o/[^"]+)"', self.msgs[who]["html"]).group(1).replace("&amp;", "&")


@pytest.fixture
def story(make_app, server) -> Story:
    """c1 opens and clicks; c2 opens, a scanner HEADs its links, then unsubscribes; c3 only
    has an Apple-proxy open; 42 bounces; FORMULA opens. Campaign "spring", tenant none."""
    app = make_app(setup=setup_hooks, MAILTRACK_SMTP_URL=server.url(),
                   MAILTRACK_DEFAULT_SENDER="CRM <crm@example.com>", MAILTRACK_BOT_AFTER_SEND_SECONDS=0)
    s = Story(app)
    people = [{"contact_id": c, "email": f"{c.strip('=+')}x@example.com"} for c in ("c1", "c2", "c3", "42", FORMULA)]
    with app.app_context():
        db = app.extensions["sqlalchemy"]
        ids = s.mt.track_messages(people, subject="Sale", html=HTML, campaign_id="spring")
        for p, mid in zip(people, ids):
            msg = s.mt.send(db.session.get(Message, mid))
            assert msg.status == "SENT"
            s.msgs[p["contact_id"]] = {"id": mid, "html": msg.html, "unsub": msg.headers["List-Unsubscribe"].strip("<>")}
    s.hit("GET", s.pixel("c1"), BROWSER)
    s.hit("GET", s.links("c1")[0], BROWSER)
    s.hit("GET", s.pixel("c2"), IPHONE)
    for url in s.links("c2"):
        s.hit("HEAD", url, "Mozilla/5.0 (compatible; SafeLinks/2.1)")  # a scanner: machine clicks
    s.hit("POST", s.msgs["c2"]["unsub"], BROWSER)
    s.hit("GET", s.pixel("c3"), "Mozilla/5.0", ip="17.58.63.12")  # Apple Mail Privacy Protection
    s.hit("GET", s.pixel(FORMULA), BROWSER)
    resp = s.client.post(f"{API}/contacts/42/events", headers=hdrs(), json={
        "type": "bounce", "message_id": s.msgs["42"]["id"], "details": {"bounceType": "hard"}})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return s


def _get(s: Story, path: str, tenant: str | None = None, **params: Any) -> Any:
    resp = s.client.get(API + path, query_string=params, headers=hdrs(tenant))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def _audience(s: Story, action: str, **params: Any) -> list[str]:
    return [r["contactId"] for r in _get(s, "/campaigns/spring/audience", action=action, **params)["results"]]


# -- engagement ------------------------------------------------------------------------------


def test_engagement_counts_people_and_scores_them(story: Story) -> None:
    c1 = _get(story, "/contacts/c1/engagement")
    assert {k: c1[k] for k in ("contactId", "opens", "clicks", "score", "dnc", "dncReason")} == {
        "contactId": "c1", "opens": 1, "clicks": 1, "score": 3.5, "dnc": False, "dncReason": None}
    assert c1["lastHumanActivity"].endswith("Z") and c1["utmCampaigns"] == []
    c2 = _get(story, "/contacts/c2/engagement")
    assert (c2["opens"], c2["clicks"], c2["score"], c2["dnc"], c2["dncReason"]) == (1, 0, 0.5, True, 1)
    c3 = _get(story, "/contacts/c3/engagement")  # the proxy's open is a machine's
    assert (c3["opens"], c3["score"], c3["lastHumanActivity"]) == (0, 0.0, None)


def test_score_decays_with_age(story: Story) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    with story.app.app_context():
        for days in (3, 20, 60, 200, 400):
            story.mt.record_event("c3", "click", url="https://shop.example/sale", occurred_at=now - dt.timedelta(days=days))
    got = _get(story, "/contacts/c3/engagement")
    assert got["clicks"] == 5
    assert got["score"] == pytest.approx(3 * (1 + 0.5 + 0.25 + 0.1))  # 400 days: nothing


def test_bulk_engagement_keeps_the_order_and_limits(story: Story) -> None:
    data = story.client.get(f"{API}/contacts/engagement?contact_id=c3&contact_id=c1&contact_id=nobody",
                            headers=hdrs()).get_json()
    assert [(c["contactId"], c["clicks"]) for c in data["contacts"]] == [("c3", 0), ("c1", 1), ("nobody", 0)]
    single = _get(story, "/contacts/c1/engagement")
    assert data["contacts"][1] == single
    for query in ("", "contact_id=", "&".join(["contact_id=x"] * 501)):
        resp = story.client.get(f"{API}/contacts/engagement?{query}", headers=hdrs())
        assert resp.status_code == 422 and resp.mimetype == "application/problem+json", query
    assert story.client.get(f"{API}/contacts/nobody/engagement", headers=hdrs()).status_code == 404


# -- audiences -------------------------------------------------------------------------------


def test_audiences_tell_people_from_machines(story: Story) -> None:
    assert _audience(story, "clicked") == ["c1"]
    assert _audience(story, "opened") == [FORMULA, "c1", "c2"]
    assert _audience(story, "opened_not_clicked") == [FORMULA, "c2"]
    assert _audience(story, "not_opened") == ["c3"]  # 42 bounced: never delivered
    assert _audience(story, "bounced") == ["42"]
    assert _audience(story, "unsubscribed") == ["c2"]
    assert _audience(story, "clicked", include_bots="true") == ["c1", "c2"]
    assert _audience(story, "opened", include_bots="true") == [FORMULA, "c1", "c2", "c3"]
    assert _audience(story, "not_opened", include_bots="true") == []
    links = _get(story, "/campaigns/spring/links")["links"]
    sale = next(x["link_id"] for x in links if x["url"] == "https://shop.example/sale")
    helper = next(x["link_id"] for x in links if x["url"] == "https://shop.example/help")
    assert _audience(story, "clicked", link_id=sale) == ["c1"]
    assert _audience(story, "clicked", link_id=helper) == []
    assert _audience(story, "clicked", link_id=helper, include_bots="true") == ["c2"]
    item = _get(story, "/campaigns/spring/audience", action="clicked")["results"][0]
    assert item == {"contactId": "c1", "email": "c1x@example.com", "messageId": story.msgs["c1"]["id"]}


def test_audience_pages_with_a_signed_cursor(story: Story) -> None:
    seen, path, pages = [], f"{API}/campaigns/spring/audience?action=opened&limit=2", 0
    while path:
        data = story.client.get(path, headers=hdrs()).get_json()
        seen += [r["contactId"] for r in data["results"]]
        path, pages = data["meta"]["pagination"].get("next_link"), pages + 1
    assert seen == [FORMULA, "c1", "c2"] and pages == 2
    first = story.client.get(f"{API}/campaigns/spring/audience?action=opened&limit=1", headers=hdrs()).get_json()
    token = parse_qs(urlsplit(first["meta"]["pagination"]["next_link"]).query)["next"][0]
    assert story.client.get(f"{API}/campaigns/spring/audience?next={token[:-2]}xx", headers=hdrs()).status_code == 400
    resp = story.client.get(f"{API}/campaigns/spring/audience?next={token}", headers=hdrs("other"))
    assert resp.status_code == 404  # the other tenant has no such campaign


def test_audience_errors(story: Story) -> None:
    def status(query: str, tenant: str | None = None) -> int:
        return story.client.get(f"{API}/campaigns/{query}", headers=hdrs(tenant)).status_code

    assert status("spring/audience") == 422  # no action
    assert status("spring/audience?action=kissed") == 422
    assert status("spring/audience?action=opened&link_id=abc") == 422  # link only with clicked
    assert status("spring/audience?action=clicked&link_id=abc") == 404
    assert status("nope/audience?action=opened") == 404
    assert status("spring/audience?action=opened", tenant="other") == 404


def test_audience_as_csv_streams_the_same_list_with_the_formula_guard(story: Story) -> None:
    resp = story.client.get(f"{API}/campaigns/spring/audience?action=opened&limit=1",
                            headers={**hdrs(), "Accept": "text/csv"})
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(resp.get_data(as_text=True))))
    assert rows[0] == ["contactId", "email", "messageId"]
    assert [r[0] for r in rows[1:]] == ["'" + FORMULA, "c1", "c2"]  # all of them, not one page
    assert rows[2] == ["c1", "c1x@example.com", story.msgs["c1"]["id"]]


# -- breakdowns and links ----------------------------------------------------------------------


def test_breakdowns_by_device_client_and_time(story: Story) -> None:
    device = _get(story, "/campaigns/spring/breakdown", by="device")
    assert device["by"] == "device" and device["includeBots"] is False
    got = {b["bucket"]: (b["opens"], b["clicks"]) for b in device["buckets"]}
    assert got == {"desktop": (2, 1), "mobile": (1, 0)}  # c1 + FORMULA on Windows, c2 on an iPhone
    os_ = {b["bucket"]: b["opens"] for b in _get(story, "/campaigns/spring/breakdown", by="os")["buckets"]}
    assert os_ == {"Windows": 2, "iOS": 1}
    everyone = _get(story, "/campaigns/spring/breakdown", by="device", include_bots="true")["buckets"]
    assert sum(b["clicks"] for b in everyone) == 3 and sum(b["opens"] for b in everyone) == 4
    hours = _get(story, "/campaigns/spring/breakdown", by="hour")["buckets"]
    assert [b["bucket"] for b in hours] == [f"{h:02d}" for h in range(24)]
    now = dt.datetime.now(dt.timezone.utc)
    busy = {b["bucket"] for b in hours if b["opens"]}
    assert busy <= {f"{now.hour:02d}", f"{(now.hour - 1) % 24:02d}"} and sum(b["opens"] for b in hours) == 3
    days = _get(story, "/campaigns/spring/breakdown", by="weekday")["buckets"]
    assert len(days) == 7 and days[0]["bucket"] == "monday"
    today = now.strftime("%A").lower()
    assert sum(b["uniqueOpens"] for b in days if b["bucket"] in (today, (now - dt.timedelta(hours=1)).strftime("%A").lower())) == 3
    assert story.client.get(f"{API}/campaigns/spring/breakdown?by=moon", headers=hdrs()).status_code == 422
    assert story.client.get(f"{API}/campaigns/nope/breakdown?by=hour", headers=hdrs()).status_code == 404


def test_top_links_across_campaigns(story: Story) -> None:
    links = _get(story, "/links", order="clicks")["links"]
    assert [(x["url"], x["clicks"], x["uniqueClicks"], x["allClicks"], x["allUniqueClicks"], x["campaigns"])
            for x in links] == [("https://shop.example/sale", 1, 1, 2, 2, 1), ("https://shop.example/help", 0, 0, 1, 1, 1)]
    assert _get(story, "/links", tenant="other")["links"] == []
    assert story.client.get(f"{API}/links?order=url", headers=hdrs()).status_code == 422


def test_insight_routes_are_in_the_openapi_document(story: Story) -> None:
    paths = _get(story, "/openapi.json")["paths"]
    for path in ("/contacts/{contact_id}/engagement", "/contacts/engagement", "/campaigns/{campaign_id}/audience",
                 "/campaigns/{campaign_id}/breakdown", "/links"):
        assert "get" in paths[path], path
