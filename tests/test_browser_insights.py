"""The example CRM's marketer pages in a real browser (Debian's Chromium through Playwright),
checked against the JSON API (issue 16): every figure a page shows is compared with what the
API answers for the same thing, never with numbers written here.

One server for the module, on demo data anchored at yesterday (so the newest campaign is a
few days old and a chart running past today would show). Each test loads few pages; the
``page`` fixture (from ``test_browser``) fails a test on any console error, page error,
failed request or Content-Security-Policy violation.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa

from test_browser import Live, _serve, _shot, browser, page  # noqa: F401  (fixtures)

from crm_mailtrack.models import messages  # noqa: E402
from example_app.models import Campaign, Contact, db  # noqa: E402

pytestmark = pytest.mark.browser

SLUG = "pricing-offer"  # the newest campaign (four days old), three before it, scanner and proxy hits


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    today = dt.datetime.now(dt.timezone.utc).date()
    anchor = dt.datetime(today.year, today.month, today.day, tzinfo=dt.timezone.utc) - dt.timedelta(days=1)
    path = tmp_path_factory.mktemp("insights") / "crm.db"
    with _serve(path, EXAMPLE_DEMO_ANCHOR=anchor.isoformat()) as served:
        yield served


class API:
    """The extension's JSON API, asked through the browser context's request client."""

    def __init__(self, live: Live, pg: Any) -> None:
        self.live, self.pg = live, pg

    def _url(self, path: str, params: dict[str, Any]) -> str:
        return f"{self.live.url}/mailtrack/api{path}?{urlencode(params, doseq=True)}"  # lists: repeated

    def get(self, path: str, **params: Any) -> Any:
        resp = self.pg.request.get(self._url(path, params), headers=self.live.api_headers)
        assert resp.status == 200, (path, resp.status, resp.text()[:300])
        return resp.json()

    def csv(self, path: str, **params: Any) -> bytes:
        headers = {**self.live.api_headers, "Accept": "text/csv"}
        resp = self.pg.request.get(self._url(path, params), headers=headers)
        assert resp.status == 200 and resp.headers["content-type"].startswith("text/csv"), (path, resp.status)
        return resp.body()  # type: ignore[no-any-return]

    def analytics(self, campaign: str | None = None, bots: bool = False) -> dict[str, Any]:
        params = {"include_bots": "true" if bots else "false"}
        if campaign:
            params["campaignId"] = campaign
        return self.get("/communications/analytics", **params)  # type: ignore[no-any-return]


def pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _download(pg: Any, locator: Any) -> bytes:
    with pg.expect_download() as info:
        locator.click()
    return Path(info.value.path()).read_bytes()


def _cells(pg: Any, selector: str) -> list[str]:
    return [t.strip() for t in pg.locator(selector).all_text_contents()]


def _today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


def _last_activity(data: dict[str, Any]) -> dt.date:
    return max(dt.date.fromisoformat(x["date"][:10]) for k in ("sendVolumeByDay", "engagementByDay") for x in data[k])


def _check_chart_window(pg: Any, last_activity: dt.date) -> tuple[dt.date, dt.date]:
    """The charts' days: none after today, the latest activity included, one bar slot and
    one line point per day, and the newest day labelled on the axis."""
    window = pg.locator("[data-chart-end]").first
    start = dt.date.fromisoformat(window.get_attribute("data-chart-start"))
    end = dt.date.fromisoformat(window.get_attribute("data-chart-end"))
    assert start <= last_activity <= end <= _today(), (start, last_activity, end)
    days = (end - start).days + 1
    points = pg.locator("svg.chart polyline.s-open").first.get_attribute("points").split()
    assert len(points) == days
    volume = window.locator("xpath=..").locator("svg.chart")
    newest = volume.locator("text.tick").last
    assert newest.text_content() == f"{end:%b %d}"
    label, frame = newest.bounding_box(), volume.bounding_box()  # drawn whole, not cut off at the edge
    assert frame["x"] <= label["x"] and label["x"] + label["width"] <= frame["x"] + frame["width"]
    shown = [dt.date.fromisoformat(d) for d in _cells(pg, "table.days tbody th")]
    assert shown and max(shown) <= end
    return start, end


def test_campaign_page_shows_the_apis_figures(live: Live, page: Any) -> None:
    """Funnel (with bounced; complained only when the API has it) and its shares, daily
    charts within [sent - 1 day, today], devices, clients and hours, the comparison with
    earlier campaigns, top links with their full URL, all as the API answers."""
    api = API(live, page)
    page.goto(f"{live.url}/campaigns/{SLUG}")
    people, everyone = api.analytics(SLUG), api.analytics(SLUG, bots=True)
    keys = {"sent": "totalSent", "bounced": "totalBounced", "delivered": "totalDelivered", "opened": "totalOpened",
            "clicked": "totalClicked", "unsubscribed": "totalUnsubscribed"}
    # the demo's seeding ingests a hard bounce and a spam complaint about this campaign's mail
    assert people["totalBounced"] >= 1 and people["totalComplained"] >= 1
    keys["complained"] = "totalComplained"
    rows = page.locator("#funnel tbody tr")
    assert [r.get_attribute("data-step") for r in rows.all()] == list(keys)
    for key, field in keys.items():
        row = page.locator(f'#funnel tr[data-step="{key}"]')
        assert (int(row.locator('[data-kind="human"]').inner_text()), int(row.locator('[data-kind="all"]').inner_text())) \
            == (people[field], everyone[field]), key
    frame = page.locator("svg.funnel-chart").bounding_box()
    for label in page.locator("svg.funnel-chart text.label").all():  # each step's name drawn whole
        box = label.bounding_box()
        assert frame["x"] <= box["x"] and box["x"] + box["width"] <= frame["x"] + frame["width"], label.text_content()
    share = {k: page.locator(f'#funnel tr[data-step="{k}"] [data-kind="share"]').inner_text() for k in keys}
    assert share["sent"] == "—"
    sent, delivered = people["totalSent"], people["totalDelivered"]
    assert share["bounced"] == f'{pct(people["totalBounced"] / sent)} of sent'
    assert share["delivered"] == f"{pct(delivered / sent)} of sent"
    assert share["opened"] == f'{pct(people["openRate"])} of delivered'
    assert share["clicked"] == f'{pct(people["clickRate"])} of delivered'
    assert share["unsubscribed"] == f'{pct(people["totalUnsubscribed"] / delivered)} of delivered'
    assert page.locator('[data-metric="clickToOpenRate"]').inner_text() == pct(people["clickToOpenRate"])

    with live.app.app_context():
        sent_day = db.session.execute(sa.select(Campaign.sent_at).filter_by(slug=SLUG)).scalar_one().date()
    start, _ = _check_chart_window(page, _last_activity(everyone))
    assert start == sent_day - dt.timedelta(days=1)

    for by in ("device", "client", "hour"):
        buckets = api.get(f"/campaigns/{SLUG}/breakdown", by=by)["buckets"]
        expected = {(b["opens"], b["clicks"]) for b in buckets if b["opens"] or b["clicks"]}
        shown = page.locator(f'table.breakdown tr[data-by="{by}"]')
        got = {(int(r.locator('[data-kind="opens"]').text_content()), int(r.locator('[data-kind="clicks"]').text_content()))
               for r in shown.all()}
        assert shown.count() == len([b for b in buckets if b["opens"] or b["clicks"]]) and got == expected, by
    assert page.locator("#devices svg rect.bar").count() > 0 and page.locator("#hours svg rect.bar").count() > 0

    compared = page.locator("table.comparison tbody tr[data-campaign]")
    slugs = [r.get_attribute("data-campaign") for r in compared.all()]
    with live.app.app_context():
        expected_slugs = list(db.session.execute(sa.select(Campaign.slug).order_by(Campaign.sent_at.desc())).scalars())
    assert slugs == expected_slugs[expected_slugs.index(SLUG):] + ["earlier"]
    for slug in slugs[:-1]:
        data = api.analytics(slug)
        row = page.locator(f'table.comparison tr[data-campaign="{slug}"]')
        assert [row.locator(f'[data-kind="{k}"]').inner_text() for k in ("openRate", "clickRate", "clickToOpenRate")] \
            == [pct(data[k]) for k in ("openRate", "clickRate", "clickToOpenRate")], slug
    earlier = [api.analytics(s) for s in slugs[1:-1]]
    together = _cells(page, 'table.comparison tr[data-campaign="earlier"] td')
    assert together[:2] == [str(sum(d["totalSent"] for d in earlier)), str(sum(d["totalDelivered"] for d in earlier))]
    earlier_open = sum(d["totalOpened"] for d in earlier) / sum(d["totalDelivered"] for d in earlier)
    assert together[2] == pct(earlier_open)
    delta = page.locator('[data-delta="openRate"]').inner_text()
    assert delta == f'{(people["openRate"] - round(earlier_open, 4)) * 100:+.1f} pts vs earlier'
    assert "All events" not in page.locator("#funnel thead").text_content()  # they are messages, and say so
    assert "Messages (including machines)" in page.locator("#funnel thead").text_content()

    links = api.get(f"/campaigns/{SLUG}/links")["links"]
    assert [t.strip() for t in page.locator("table.links .full-url").all_inner_texts()] == [x["url"] for x in links]
    assert page.locator("table.links td.url a").evaluate_all("a => a.map(x => x.href)") == [x["url"] for x in links]
    _shot(page, "insights-campaign")


def test_messages_sort_page_and_download(live: Live, page: Any) -> None:
    """A campaign's messages: 25 a page, sorted by a column header (again: the other way),
    the next page, and the CSV button giving the API's CSV export of the campaign."""
    api = API(live, page)
    records = []
    for bots in ("false", "true"):
        data = api.get("/communications/dynamic-search", campaignId=SLUG, size=500, include_bots=bots)
        assert data["last"]
        records.append({r["id"]: r for r in data["content"]})
    opens = sorted((int(r["openCount"] or 0) for r in records[0].values()), reverse=True)
    page.goto(f"{live.url}/campaigns/{SLUG}#messages")
    assert page.locator("table.messages tbody tr").count() == 25
    assert f"1–25 of {len(records[0])} messages" in page.locator(".pager").inner_text()
    header = page.locator("table.messages thead th", has_text="Opens")
    header.get_by_role("link").click()
    page.wait_for_url(re.compile(r"sort=opens&dir=asc"))
    assert header.get_attribute("aria-sort") == "ascending"
    header.get_by_role("link").click()
    page.wait_for_url(re.compile(r"sort=opens&dir=desc"))
    assert header.get_attribute("aria-sort") == "descending"
    first = [int(x) for x in _cells(page, 'table.messages td[data-kind="opens"]')]
    ids = [r.get_attribute("data-message") for r in page.locator("table.messages tbody tr").all()]
    assert first == opens[:25] and first == [int(records[0][i]["openCount"] or 0) for i in ids]
    page.get_by_role("link", name="Next ›").click()
    page.wait_for_url(re.compile(r"page=2"))
    second = [int(x) for x in _cells(page, 'table.messages td[data-kind="opens"]')]
    assert second == opens[25:] and "sort=opens" in page.url
    rest = [r.get_attribute("data-message") for r in page.locator("table.messages tbody tr").all()]
    assert sorted(ids + rest) == sorted(records[0])  # every message once over the two pages
    body = _download(page, page.get_by_role("link", name="Download CSV"))
    assert body == api.csv("/communications/csv-export", campaignId=SLUG)
    assert len(list(csv.reader(io.StringIO(body.decode())))) == len(records[0]) + 1


def test_audiences_with_csv(live: Live, page: Any) -> None:
    """Who opened but did not click, and who clicked one link: the audience API's contacts,
    and the CSV button gives the API's CSV of the same list."""
    api = API(live, page)
    page.goto(f"{live.url}/campaigns/{SLUG}")
    page.locator("ul.audiences").get_by_role("link", name="Opened, did not click", exact=True).click()
    listed = api.get(f"/campaigns/{SLUG}/audience", action="opened_not_clicked")["results"]
    assert listed and [r.get_attribute("data-contact") for r in page.locator("table.audience tbody tr").all()] \
        == [x["contactId"] for x in listed]
    engagement = api.get("/contacts/engagement", contact_id=[x["contactId"] for x in listed])["contacts"]
    assert _cells(page, "table.audience tbody td.num") == [f'{e["score"]:.1f}' for e in engagement]
    body = _download(page, page.get_by_role("link", name="Download CSV"))
    assert body == api.csv(f"/campaigns/{SLUG}/audience", action="opened_not_clicked")
    _shot(page, "insights-audience")

    link = api.get(f"/campaigns/{SLUG}/links")["links"][0]
    page.goto(f"{live.url}/campaigns/{SLUG}")
    page.locator(f'table.links tr[data-link="{link["link_id"]}"]').get_by_role("link", name=re.compile("^People")).click()
    clicked = api.get(f"/campaigns/{SLUG}/audience", action="clicked", link_id=link["link_id"])["results"]
    assert [r.get_attribute("data-contact") for r in page.locator("table.audience tbody tr").all()] \
        == [x["contactId"] for x in clicked]
    assert len(clicked) == link["unique_clicks"]  # one person a message here: unique clicks are people
    assert link["url"] in page.locator(".lead").inner_text()
    body = _download(page, page.get_by_role("link", name="Download CSV"))
    assert body == api.csv(f"/campaigns/{SLUG}/audience", action="clicked", link_id=link["link_id"])


def test_contacts_sort_by_score_page_and_download(live: Live, page: Any) -> None:
    """The contact list sorted by score (highest first), its second page, and the CSV: the
    engagement API's figures."""
    api = API(live, page)
    with live.app.app_context():
        ids = [str(i) for i in db.session.execute(sa.select(Contact.id)).scalars()]
    engagement = {e["contactId"]: e for e in api.get("/contacts/engagement", contact_id=ids)["contacts"]}
    scores = sorted((e["score"] for e in engagement.values()), reverse=True)
    page.goto(f"{live.url}/contacts")
    header = page.locator("table.contacts thead th", has_text="Score")
    header.get_by_role("link").click()
    page.wait_for_url(re.compile(r"sort=score&dir=asc"))
    header.get_by_role("link").click()
    page.wait_for_url(re.compile(r"sort=score&dir=desc"))
    assert header.get_attribute("aria-sort") == "descending"
    shown = _cells(page, "table.contacts td[data-score]")
    assert shown == [f"{s:.1f}" for s in scores[:25]]
    for row in page.locator("table.contacts tbody tr").all():
        e = engagement[row.get_attribute("data-contact")]
        assert (row.locator('[data-kind="opens"]').inner_text(), row.locator('[data-kind="clicks"]').inner_text()) \
            == (str(e["opens"]), str(e["clicks"]))
    _shot(page, "insights-contacts")
    page.get_by_role("link", name="Next ›").click()
    page.wait_for_url(re.compile(r"page=2"))
    assert _cells(page, "table.contacts td[data-score]") == [f"{s:.1f}" for s in scores[25:]]
    body = _download(page, page.get_by_role("link", name="Download CSV")).decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [float(r["score"]) for r in rows] == scores
    for r in rows:
        e = engagement[r["contactId"]]
        assert (int(r["opens"]), int(r["clicks"]), r["dncReason"], r["lastHumanActivity"]) == (
            e["opens"], e["clicks"], str(e["dncReason"] or ""), e["lastHumanActivity"] or "")


def test_contact_page_score_and_timeline_labels(live: Live, page: Any) -> None:
    """A contact's score and counts are the engagement API's; the timeline reads the
    activity API's event names ("Added to Do-Not-Contact", not "Dnc Added") and names
    campaigns, not their ids."""
    api = API(live, page)
    with live.app.app_context():
        ids = [str(i) for i in db.session.execute(sa.select(Contact.id)).scalars()]
        names = dict(db.session.execute(sa.select(Campaign.slug, Campaign.name)).all())
    # a contact on DNC with reason 1 (the one who unsubscribed, or the one who complained), found
    # through the API
    targets = [e["contactId"] for e in api.get("/contacts/engagement", contact_id=ids)["contacts"]
               if e["dncReason"] == 1]
    assert len(targets) == 2
    target = min(targets)
    engagement = api.get(f"/contacts/{target}/engagement")
    activity = api.get(f"/contacts/{target}/activity", limit=200, include_bots="true")["events"]
    page.goto(f"{live.url}/contacts/{target}")
    assert page.locator('[data-metric="score"]').inner_text() == f'{engagement["score"]:.1f}'
    assert page.locator('[data-metric="opens"]').inner_text() == str(engagement["opens"])
    assert _cells(page, ".timeline .type") == [e["eventType"] for e in activity]
    assert "Added to Do-Not-Contact" in _cells(page, ".timeline .type")
    campaigns = page.locator(".timeline [data-campaign]")
    assert campaigns.count() == sum(1 for e in activity if e["campaignId"])
    assert _cells(page, ".timeline [data-campaign]") == [names[e["campaignId"]] for e in activity if e["campaignId"]]
    assert not re.search(r"\b(Utm|Dnc) (Added|Removed)\b", page.locator(".timeline").inner_text())
    _shot(page, "insights-contact")


def test_dashboard_rates_and_newest_bar(live: Live, page: Any) -> None:
    """The rate cards are the analytics API's (over delivered), the newest send day's bar is
    drawn whole inside the chart, no day after today, and top links show their full URL."""
    api = API(live, page)
    totals, everyone = api.analytics(), api.analytics(bots=True)
    page.goto(live.url + "/")
    for key in ("totalSent", "totalDelivered", "totalOpened", "totalClicked"):
        assert page.locator(f'[data-metric="{key}"]').inner_text() == str(totals[key]), key
    for key in ("openRate", "clickRate", "clickToOpenRate"):
        assert page.locator(f'[data-metric="{key}"]').inner_text() == pct(totals[key]), key
    assert totals["openRate"] == round(totals["totalOpened"] / totals["totalDelivered"], 4)  # over delivered
    _, end = _check_chart_window(page, _last_activity(everyone))
    newest = max(totals["sendVolumeByDay"], key=lambda x: x["date"])
    bar = page.locator("svg.chart").first.locator("rect.bar").last
    day = dt.date.fromisoformat(newest["date"][:10])
    assert bar.locator("title").text_content() == f'{day:%a %b %d}: {newest["count"]} sent'
    box, frame = bar.bounding_box(), page.locator("svg.chart").first.bounding_box()
    assert box["height"] > 0 and box["x"] >= frame["x"] and box["x"] + box["width"] <= frame["x"] + frame["width"]
    assert box["y"] >= frame["y"] and box["y"] + box["height"] <= frame["y"] + frame["height"]
    links = api.get("/links", order="clicks", limit=8)["links"]
    assert [t.strip() for t in page.locator("table.links .full-url").all_inner_texts()] == [x["url"] for x in links]
    _shot(page, "insights-dashboard")


def test_message_page_shows_the_thread(live: Live, page: Any) -> None:
    """The conversation is the thread API's: the outbound messages and the replies
    (``inbound``, each with its sender) in time order."""
    api = API(live, page)
    with live.app.app_context():
        message_id = db.session.execute(sa.select(messages.c.id).where(
            messages.c.campaign_id == SLUG, messages.c.status == "SENT").limit(1)).scalar_one()
    thread = api.get(f"/communications/{message_id}/thread")
    page.goto(f"{live.url}/messages/{message_id}")
    assert page.locator('.thread li[data-direction="out"]').count() == len(thread["outbound"]) >= 1
    assert page.locator('.thread li[data-direction="in"]').count() == len(thread["inbound"])
    for reply in thread["inbound"]:
        assert page.locator(".thread", has_text=reply["fromEmail"]).count() == 1
    with live.app.app_context():
        name = db.session.execute(sa.select(Campaign.name).filter_by(slug=SLUG)).scalar_one()
    assert page.locator(".crumbs").get_by_role("link", name=name).count() == 1


#: A reply whose HTML part tries to run script: received mail is untrusted.
HOSTILE_HTML = ('<div dir="ltr">Sounds good &mdash; see <b>attached</b>.<script>window.__replyRan = "script"</script>'
                '<img src="x" onerror="window.__replyRan = \'onerror\'"><a href="javascript:window.__replyRan=1">x</a>'
                '</div>')


def _in_dom(text: str) -> str:
    """``text`` as the HTML parser keeps it in a page: its line breaks normalised to LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _hostile_reply(internet_message_id: str, address: str) -> bytes:
    return (
        f"From: Mallory Reply <{address}>\r\nTo: Northwind CRM <news@northwind.example>\r\n"
        f"Subject: Re: your offer\r\nDate: {dt.datetime.now(dt.timezone.utc):%a, %d %b %Y %H:%M:%S +0000}\r\n"
        f"Message-ID: <hostile-reply@mail.example.net>\r\nIn-Reply-To: {internet_message_id}\r\n"
        f"References: {internet_message_id}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/alternative; boundary="HB"\r\n\r\n'
        f"--HB\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSounds good, see attached.\r\n\r\n"
        f"--HB\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{HOSTILE_HTML}\r\n--HB--\r\n"
    ).encode()


def test_message_page_shows_a_received_reply_as_the_thread_api_has_it(live: Live, page: Any) -> None:
    """A message of the newest campaign that the demo's seeding got a reply to (through
    ``ingest_mail``), and one more reply whose HTML part holds a script, an ``onerror`` and a
    ``javascript:`` link: each reply shows its sender and its own text (``replyText``) as the
    thread API answers, the whole text and the HTML part only as text; nothing of the HTML
    is rendered or run (no element, no console error: the ``page`` fixture fails on one)."""
    from crm_mailtrack.inbound_models import inbound
    from example_app import mailtrack

    with live.app.app_context():
        replied = db.session.execute(sa.select(messages.c.id, messages.c.internet_message_id, messages.c.email)
                                     .join(inbound, inbound.c.message_id == messages.c.id)
                                     .where(messages.c.campaign_id == SLUG).order_by(inbound.c.received_at)
                                     .limit(1)).one()
        recorded = mailtrack.ingest_mail(_hostile_reply(replied.internet_message_id, replied.email))
        assert [e.type for e in recorded] == ["reply"]
    api = API(live, page)
    thread = api.get(f"/communications/{replied.id}/thread")
    assert len(thread["inbound"]) == 2 and HOSTILE_HTML in thread["inbound"][1]["bodyHtml"]
    page.goto(f"{live.url}/messages/{replied.id}")

    shown = page.locator('.thread li[data-direction="in"]')
    assert shown.count() == len(thread["inbound"])
    for n, reply in enumerate(thread["inbound"]):
        item = shown.nth(n)
        assert f"<{reply['fromEmail']}>" in item.locator(".who").inner_text()
        assert reply["replyText"] and item.locator(".reply-text").text_content() == _in_dom(reply["replyText"])
        item.locator("details.received summary").click()
        assert item.locator("pre.whole").text_content() == _in_dom(reply["bodyText"])
        if reply["bodyHtml"]:
            assert item.locator(".received-html").text_content() == _in_dom(reply["bodyHtml"])
    # the demo's reply quoted the original: the quote is in the whole text, not in the reply's own
    first = thread["inbound"][0]
    assert "wrote:" in first["bodyText"] and "wrote:" not in first["replyText"]
    # nothing of the received HTML became part of the page, and none of it ran
    assert page.locator(".thread script, .thread img, .thread a[href^='javascript']").count() == 0
    assert page.evaluate("window.__replyRan") is None
    assert page.frame_locator("iframe.mail").locator("h1").inner_text().startswith("Hello ")  # the mail as sent
    _shot(page, "insights-message-replies")
