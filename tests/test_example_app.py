"""The example CRM (``example_app``), driven through Flask's test client.

The demo database is generated once per test session (fixed anchor date) and copied for
each test, so each test starts from the same story without paying for it again.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

pytest.importorskip("aiosmtpd", reason="the example app's local SMTP server needs aiosmtpd (extra 'example')")

from crm_mailtrack.models import DNCReason, dnc, events, messages, utm_tags  # noqa: E402
from example_app import API_TOKEN, create_app  # noqa: E402
from example_app.mailbox import LocalSMTPServer  # noqa: E402
from example_app.models import Contact, InboxMail, db  # noqa: E402

ANCHOR = "2026-06-01T00:00:00+00:00"
BASE_URL = "http://crm.test"
ROOT = Path(__file__).resolve().parent.parent


def _config(db_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{db_path}",
        "MAILTRACK_BASE_URL": BASE_URL,
        "MAILTRACK_JOURNAL_PATH": str(db_path.parent / "journal.jsonl"),
        "EXAMPLE_DEMO_ANCHOR": ANCHOR,
        **extra,
    }


def _close(app: Flask) -> None:
    with app.app_context():
        db.session.remove()
        with db.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        db.engine.dispose()


def build_demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database holding the demo story, generated once per test session (the browser
    tests reuse it too)."""
    path = tmp_path_factory.getbasetemp() / "example-demo" / "crm.db"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        partial = path.with_name("building.db")
        _close(create_app(_config(partial)))
        partial.rename(path)
    return path


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_db(tmp_path_factory)


@pytest.fixture
def example(demo_db: Path, tmp_path: Path) -> Iterator[Flask]:
    """The example CRM on a private copy of the demo database, with its SMTP server."""
    path = tmp_path / "crm.db"
    shutil.copy(demo_db, path)
    smtp = LocalSMTPServer().start()
    app = create_app(_config(path, MAILTRACK_SMTP_URL=smtp.url))
    smtp.app = app
    try:
        yield app
    finally:
        smtp.stop()
        _close(app)


def _csrf(client: Any, path: str) -> str:
    html = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, f"no CSRF field on {path}"
    return match.group(1)


def _funnel(client: Any, slug: str) -> dict[str, tuple[int, int]]:
    data = client.get(f"/campaigns/{slug}/funnel.json").get_json()
    return {s["key"]: (s["human"], s["all"]) for s in data["steps"]}


def _read_later(app: Flask, slug: str, seconds: int = 120) -> None:
    """Move the campaign's send time back: the recipient reads it a while later (a click
    seconds after sending is a scanner's, ``too-fast-after-send``)."""
    with app.app_context():
        earlier = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)
        db.session.execute(messages.update().where(messages.c.campaign_id == slug).values(sent_at=earlier))
        db.session.commit()


def _send_campaign(client: Any, name: str = "Test launch", audience: str = "all") -> str:
    token = _csrf(client, "/compose")
    html = (f'<p>Hi {{first_name}}, <a href="{BASE_URL}/go/pricing?utm_campaign={{campaign}}">see pricing</a>'
            f' or <a href="{BASE_URL}/go/book-a-demo">book a demo</a>.</p>')
    resp = client.post("/compose", data={"csrf": token, "name": name, "subject": "Hello {first_name}",
                                         "html": html, "audience": audience})
    assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
    return resp.headers["Location"].rsplit("/", 1)[1]


# -- pages -----------------------------------------------------------------------------------


def test_every_page_answers(example: Flask) -> None:
    client = example.test_client()
    with example.app_context():
        message_id = db.session.execute(sa.select(messages.c.id).where(messages.c.status == "SENT").limit(1)).scalar()
    pages = ["/", "/contacts", "/contacts?q=contoso", "/contacts/1", "/campaigns", "/campaigns/spring-webinar",
             "/campaigns/welcome-2024/funnel.json", f"/messages/{message_id}", "/compose", "/inbox", "/inbox/1",
             "/go/pricing?utm_campaign=x"]
    for path in pages:
        resp = client.get(path)
        assert resp.status_code == 200, path
    for path in ["/contacts/9999", "/campaigns/nope", "/messages/nope", "/inbox/99999", "/go/nowhere"]:
        assert client.get(path).status_code == 404, path


def test_pages_are_self_contained_and_accessible(example: Flask) -> None:
    client = example.test_client()
    for path in ["/", "/contacts", "/campaigns/q2-product-update", "/compose", "/inbox"]:
        html = client.get(path).get_data(as_text=True)
        assert '<html lang="en">' in html and 'name="viewport"' in html
        assert '<main id="main"' in html and 'href="#main"' in html  # skip link
        assert 'aria-current="page"' in html
        # No CDN: every script, stylesheet and image the page loads is served by the app.
        for ref in re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="([^"]+)"', html):
            assert ref.startswith("/"), (path, ref)
    dashboard = client.get("/").get_data(as_text=True)
    assert dashboard.count('<svg class="chart"') == 2 and 'role="img"' in dashboard


def test_dashboard_shows_campaign_funnels(example: Flask) -> None:
    client = example.test_client()
    html = client.get("/campaigns/welcome-2024").get_data(as_text=True)
    funnel = _funnel(client, "welcome-2024")
    for key, (human, total) in funnel.items():
        row = re.search(rf'<tr data-step="{key}">.*?data-kind="human">(\d+)<.*?data-kind="all">(\d+)<', html, re.S)
        assert row and (int(row.group(1)), int(row.group(2))) == (human, total), key
    sent, delivered = funnel["sent"][0], funnel["delivered"][0]
    assert sent == 36 and delivered == 35  # one hard bounce
    assert funnel["opened"][1] > funnel["opened"][0]  # image-proxy opens count only in "all"
    assert funnel["clicked"][1] > funnel["clicked"][0]  # scanner pre-clicks likewise


def test_campaign_numbers_come_from_the_analytics_api(example: Flask) -> None:
    """The campaign page's funnel and daily table are the analytics API's numbers for that
    campaign (people, then ``include_bots=true``), and those agree with the event rows."""
    client = example.test_client()
    hdrs = {"Authorization": f"Bearer {API_TOKEN}", "Accept": "application/json"}
    api = "/mailtrack/api/communications/analytics"
    for slug in ("welcome-2024", "spring-webinar"):
        people = client.get(f"{api}?campaignId={slug}", headers=hdrs).get_json()
        everyone = client.get(f"{api}?campaignId={slug}&include_bots=true", headers=hdrs).get_json()
        keys = {"sent": "totalSent", "bounced": "totalBounced", "delivered": "totalDelivered",
                "opened": "totalOpened", "clicked": "totalClicked", "unsubscribed": "totalUnsubscribed"}
        if "totalComplained" in people:  # the inbound lane's complaint count, when the API has it
            keys["complained"] = "totalComplained"
        assert _funnel(client, slug) == {k: (people[f], everyone[f]) for k, f in keys.items()}
        with example.app_context():
            def distinct(kind: str, human: bool = False) -> int:
                cond = [events.c.campaign_id == slug, events.c.type == kind]
                if human:
                    cond.append(events.c.is_machine.is_(False))
                return db.session.execute(sa.select(sa.func.count(sa.distinct(events.c.message_id))).where(*cond)).scalar()

            assert people["totalDelivered"] == distinct("send") - distinct("bounce")
            assert people["totalUnsubscribed"] == distinct("unsubscribe")
            human_opens = db.session.execute(sa.select(sa.func.count()).where(
                events.c.campaign_id == slug, events.c.type == "open", events.c.is_machine.is_(False))).scalar()
        html = client.get(f"/campaigns/{slug}").get_data(as_text=True)
        rows = re.findall(r'<tr><th scope="row">\d{4}-\d\d-\d\d</th>((?:<td class="num">\d+</td>){5})</tr>', html)
        sums = [sum(col) for col in zip(*([int(n) for n in re.findall(r">(\d+)<", r)] for r in rows))]
        opens_h, clicks_h = (sum(d[k] for d in people["engagementByDay"]) for k in ("opens", "clicks"))
        opens_all, clicks_all = (sum(d[k] for d in everyone["engagementByDay"]) for k in ("opens", "clicks"))
        assert sums == [people["totalSent"], opens_h, clicks_h, opens_all - opens_h, clicks_all - clicks_h]
        assert opens_h == human_opens and opens_all > opens_h
        sources = re.findall(r"<li><code>([^<]+)</code></li>", html[html.index("Where this page"):])
        assert sources and all(src.startswith("API GET ") for src in sources), sources
    assert _funnel(client, "welcome-2024")["delivered"] == (35, 35)
    assert _funnel(client, "spring-webinar")["unsubscribed"] == (1, 1)
    for path in ("/", "/contacts", "/contacts/1"):
        page = client.get(path).get_data(as_text=True)
        sources = re.findall(r"<li><code>([^<]+)</code></li>", page[page.index("Where this page"):])
        assert sources and all(src.startswith("API GET ") for src in sources), (path, sources)


def test_contacts_search_and_dnc_state(example: Flask) -> None:
    client = example.test_client()
    html = client.get("/contacts?q=contoso").get_data(as_text=True)
    emails = re.findall(r"<small>([^<]+@[^<]+)</small>", html)
    assert emails and all(e.endswith("@contoso.example") for e in emails)
    with example.app_context():
        reasons = db.session.execute(sa.select(dnc.c.reason, dnc.c.comments)).all()
    # a webhook's bounce and a received DSN's; an RFC 8058 unsubscribe and a received spam complaint
    assert sorted((int(r), c == "complaint") for r, c in reasons) == [
        (int(DNCReason.UNSUBSCRIBED), False), (int(DNCReason.UNSUBSCRIBED), True),
        (int(DNCReason.BOUNCED), False), (int(DNCReason.BOUNCED), False)]
    all_rows = client.get("/contacts?sort=status&dir=desc").get_data(as_text=True)  # DNC first
    assert "DNC: Bounced" in all_rows and "DNC: Unsubscribed" in all_rows
    assert 'class="tag"' in all_rows  # UTM campaigns


def test_timeline_marks_machine_events(example: Flask) -> None:
    with example.app_context():
        cid = db.session.execute(sa.select(events.c.contact_id).where(events.c.is_machine.is_(True)).limit(1)).scalar()
        reasons = set(db.session.execute(sa.select(events.c.machine_reason)
                                         .where(events.c.contact_id == cid, events.c.is_machine.is_(True))).scalars())
    html = example.test_client().get(f"/contacts/{cid}").get_data(as_text=True)
    assert "is-machine" in html and 'class="badge machine">machine' in html
    shown = set(re.findall(r'class="badge machine">machine · ([^<]+)</span>', html))
    assert shown and shown <= reasons  # the stored reasons, read through the activity API
    sources = html[html.index("Where this page"):]
    assert "activity" in sources and "SQL" not in sources


def test_manual_dnc_needs_csrf_and_round_trips(example: Flask) -> None:
    client = example.test_client()
    assert client.post("/contacts/1/dnc", data={"action": "add"}).status_code == 400
    token = _csrf(client, "/contacts/1")
    client.post("/contacts/1/dnc", data={"csrf": token, "action": "add"})
    assert "DNC: Manual" in client.get("/contacts/1").get_data(as_text=True)
    client.post("/contacts/1/dnc", data={"csrf": token, "action": "remove"})
    assert "DNC: Manual" not in client.get("/contacts/1").get_data(as_text=True)


# -- demo data -------------------------------------------------------------------------------


def _story(app: Flask) -> dict[str, Any]:
    with app.app_context():
        ev = db.session.execute(sa.select(
            events.c.type, events.c.contact_id, events.c.campaign_id, events.c.occurred_at, events.c.is_machine,
            events.c.machine_reason, events.c.url).order_by(events.c.occurred_at, events.c.type, events.c.contact_id,
                                                             events.c.url)).all()
        return {
            "events": [tuple(r) for r in ev],
            "contacts": [c.as_mapping() for c in db.session.execute(sa.select(Contact).order_by(Contact.id)).scalars()],
            "dnc": db.session.execute(sa.select(dnc.c.contact_id, dnc.c.reason, dnc.c.date_added)
                                      .order_by(dnc.c.contact_id)).all(),
            "utm": db.session.execute(sa.select(utm_tags.c.contact_id, utm_tags.c.utm_campaign, utm_tags.c.date_added)
                                      .order_by(utm_tags.c.contact_id, utm_tags.c.utm_campaign)).all(),
        }


def test_demo_data_is_deterministic_and_tells_the_story(demo_db: Path, tmp_path: Path) -> None:
    again = create_app(_config(tmp_path / "again.db"))
    first = create_app(_config(demo_db))
    try:
        story = _story(first)
        assert story == _story(again)
    finally:
        _close(again)
        _close(first)
    types = {(t, m) for t, _, _, _, m, _, _ in story["events"]}
    assert {("send", False), ("open", False), ("open", True), ("click", False), ("click", True),
            ("bounce", False), ("forward", False), ("unsubscribe", False)} <= types
    times = [e[3] for e in story["events"]]
    anchor = dt.datetime.fromisoformat(ANCHOR)
    assert max(times) <= anchor and (max(times) - min(times)).days >= 35  # several weeks
    assert len({e[2] for e in story["events"] if e[2]}) == 4
    assert story["utm"] and story["dnc"]


# -- compose, send, receive, click, unsubscribe ---------------------------------------------------


def test_compose_and_send_delivers_to_the_local_smtp_server(example: Flask) -> None:
    client = example.test_client()
    with example.app_context():
        demo_mail = db.session.execute(sa.select(sa.func.max(InboxMail.id))).scalar()
    assert demo_mail == 139  # the demo's campaigns were really sent too (4 x 36, 5 suppressed)
    slug = _send_campaign(client)
    flash = client.get(f"/campaigns/{slug}").get_data(as_text=True)  # where the form redirected
    assert "Sent 32 messages; 4 suppressed (Do-Not-Contact)." in flash  # send() reports each outcome
    with example.app_context():
        mails = db.session.execute(sa.select(InboxMail).where(InboxMail.id > demo_mail)).scalars().all()
        statuses = dict(db.session.execute(sa.select(messages.c.status, sa.func.count())
                                           .where(messages.c.campaign_id == slug).group_by(messages.c.status)).all())
    # suppressed: the two bounced contacts (a webhook, a received DSN), the one who unsubscribed
    # and the one who complained (a received ARF report)
    assert statuses == {"SENT": 32, "SUPPRESSED": 4}
    assert len(mails) == 32
    mail = mails[0]
    assert mail.subject.startswith("Hello ") and "{first_name}" not in mail.subject
    assert f"{BASE_URL}/mailtrack/t/c/" in mail.html and f"{BASE_URL}/mailtrack/t/o/" in mail.html
    assert mail.list_unsubscribe and "/mailtrack/t/u/" in mail.list_unsubscribe
    assert _funnel(client, slug)["sent"] == (32, 32)
    inbox = client.get("/inbox").get_data(as_text=True)
    assert all(f'href="/inbox/{m.id}"' in inbox for m in mails)
    page = client.get(f"/inbox/{mail.id}").get_data(as_text=True)
    assert f'src="/inbox/{mail.id}/body"' in page and 'sandbox="' in page
    body = client.get(f"/inbox/{mail.id}/body")
    assert body.status_code == 200 and "/mailtrack/t/o/" in body.get_data(as_text=True)
    assert "script-src" not in body.headers["Content-Security-Policy"]  # default-src 'none': no script
    assert "sandbox allow-popups" in body.headers["Content-Security-Policy"]


def test_clicking_a_link_in_a_received_mail_counts(example: Flask) -> None:
    client = example.test_client()
    slug = _send_campaign(client, audience="Globex")
    _read_later(example, slug)
    assert _funnel(client, slug)["clicked"] == (0, 0)
    with example.app_context():
        mail = db.session.execute(sa.select(InboxMail).order_by(InboxMail.id.desc()).limit(1)).scalar_one()
    link = re.search(r'href="(http://crm\.test/mailtrack/t/c/[^"]+)"', mail.html).group(1).replace("&amp;", "&")
    resp = client.get(link[len(BASE_URL):], headers={"User-Agent": "Mozilla/5.0 (X11; Linux) Firefox/125.0"})
    assert resp.status_code == 302
    landing = resp.headers["Location"]
    assert landing.startswith(f"{BASE_URL}/go/pricing?utm_campaign={slug}")
    assert client.get(landing[len(BASE_URL):]).status_code == 200
    assert _funnel(client, slug)["clicked"] == (1, 1)
    page = client.get(f"/campaigns/{slug}").get_data(as_text=True)
    assert re.search(r'<tr data-step="clicked">.*?data-kind="human">1<', page, re.S)
    assert "/go/pricing" in page  # top links


def test_unsubscribing_from_a_received_mail_sets_dnc(example: Flask) -> None:
    client = example.test_client()
    _send_campaign(client, audience="Acme Analytics")
    with example.app_context():
        mail = db.session.execute(sa.select(InboxMail).order_by(InboxMail.id.desc()).limit(1)).scalar_one()
        contact = db.session.execute(sa.select(Contact).filter_by(email=mail.rcpt_to)).scalar_one()
    page = client.get(f"/inbox/{mail.id}").get_data(as_text=True)
    action = re.search(r'<form method="post" action="([^"]+)" class="unsub">', page).group(1)
    resp = client.post(action[len(BASE_URL):], data={"List-Unsubscribe": "One-Click"})
    assert resp.status_code == 200
    assert "DNC: Unsubscribed" in client.get(f"/contacts/{contact.id}").get_data(as_text=True)


def test_compose_rejects_bad_input(example: Flask) -> None:
    client = example.test_client()
    token = _csrf(client, "/compose")
    resp = client.post("/compose", data={"csrf": token, "name": "", "subject": "", "html": "", "audience": "x"})
    assert resp.status_code == 422
    assert resp.get_data(as_text=True).count('aria-invalid="true"') == 4


def test_api_token_reads_the_extension_api(example: Flask) -> None:
    """The host's token opens the extension's JSON API (the dashboard reads it with it)."""
    resp = example.test_client().get("/mailtrack/api/openapi.json",
                                     headers={"Authorization": f"Bearer {API_TOKEN}", "Accept": "application/json"})
    assert resp.status_code == 200


# -- the demo command --------------------------------------------------------------------------


def test_python_m_example_app_serves_the_demo(tmp_path: Path, demo_db: Path) -> None:
    """``python -m example_app --port 0`` (what ``tasks.py demo`` runs, on a port the OS
    picks) says where it serves the CRM, and serves it there."""
    shutil.copy(demo_db, tmp_path / "crm.db")
    env = {**os.environ, "EXAMPLE_DATABASE_URL": f"sqlite:///{tmp_path / 'crm.db'}", "EXAMPLE_SMTP_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "example_app", "--port", "0"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # until it names its address (pytest's timeout bounds the wait)
            output.append(line)
            found = re.search(r"Northwind CRM on (http://127\.0\.0\.1:\d+)/", line)
            if found:
                break
        else:
            pytest.fail("the demo exited without serving:\n" + "".join(output))
        with urllib.request.urlopen(f"{found.group(1)}/contacts", timeout=30) as resp:
            assert resp.status == 200 and b"Contacts" in resp.read()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_pages_show_the_apis_figures(example: Flask) -> None:
    """The dashboard's totals, rates and top links, the contact list's and a contact page's
    engagement are exactly what the JSON API answers (and the API's people-only counts
    agree with the event rows)."""
    client = example.test_client()
    hdrs = {"Authorization": f"Bearer {API_TOKEN}", "Accept": "application/json"}
    api = "/mailtrack/api"
    totals = client.get(f"{api}/communications/analytics", headers=hdrs).get_json()
    html = client.get("/").get_data(as_text=True)
    for key in ("totalSent", "totalOpened", "totalClicked"):
        assert f'data-metric="{key}">{totals[key]}<' in html, key
    for key in ("openRate", "clickRate", "clickToOpenRate"):
        assert f'data-metric="{key}">{totals[key] * 100:.1f}%<' in html, key
    links = client.get(f"{api}/links?order=clicks&limit=8", headers=hdrs).get_json()["links"]
    table = html[html.index('<table class="links">'):]
    table = table[:table.index("</table>")]
    shown = re.findall(r'<td class="url"><a href="([^"]+)"[^>]*>[^<]*</a><br><small class="full-url muted">[^<]+'
                       r'</small></td><td class="num" data-kind="clicks">(\d+)</td>'
                       r'<td class="num" data-kind="unique">(\d+)</td><td class="num" data-kind="all">(\d+)</td>', table)
    assert shown and [(u.replace("&amp;", "&"), int(c), int(q), int(al)) for u, c, q, al in shown] == [
        (x["url"], x["clicks"], x["uniqueClicks"], x["allClicks"]) for x in links]
    page = client.get("/contacts").get_data(as_text=True) + client.get("/contacts?page=2").get_data(as_text=True)
    rows = re.findall(r'<td class="num" data-kind="opens">(\d+)</td>\s*<td class="num" data-kind="clicks">(\d+)</td>\s*'
                      r'<td class="num" data-score="(\d+)">([\d.]+)</td>', page)
    assert len(rows) == 36  # 25 on the first page, 11 on the second
    data = client.get(f"{api}/contacts/engagement", query_string={"contact_id": [r[2] for r in rows]},
                      headers=hdrs).get_json()["contacts"]
    assert [(int(o), int(c), cid, float(sc)) for o, c, cid, sc in rows] == [
        (e["opens"], e["clicks"], e["contactId"], round(e["score"], 1)) for e in data]
    assert any(e["score"] > 0 for e in data) and any(e["dnc"] for e in data)
    busiest = max(data, key=lambda e: e["opens"])
    with example.app_context():
        human_opens = db.session.execute(sa.select(sa.func.count()).where(
            events.c.contact_id == busiest["contactId"], events.c.type == "open",
            events.c.is_machine.is_(False))).scalar()
    assert busiest["opens"] == human_opens > 0
    person = client.get(f"/contacts/{busiest['contactId']}").get_data(as_text=True)
    assert f'data-metric="score">{busiest["score"]:.1f}<' in person
    assert f'data-metric="opens">{busiest["opens"]}<' in person


@pytest.mark.parametrize("hops, stored", [(0, "127.0.0.0"), (1, "203.0.113.0")])
def test_example_app_trusts_forwarded_addresses_only_when_told_it_is_behind_a_proxy(
        demo_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hops: int, stored: str) -> None:
    """``EXAMPLE_PROXY_HOPS=1`` (werkzeug's ProxyFix): a click through the proxy is stored
    with the client's network from ``X-Forwarded-For``; without it the header is ignored."""
    import sqlalchemy as sa

    from crm_mailtrack.models import events, messages

    monkeypatch.setenv("EXAMPLE_PROXY_HOPS", str(hops))
    path = tmp_path / "crm.db"
    shutil.copy(demo_db, path)
    app = create_app(_config(path))
    try:
        with app.app_context():
            message_id = db.session.execute(sa.select(messages.c.id).limit(1)).scalar_one()
            url = app.extensions["mailtrack"].extension.click_url(message_id, "https://example.com/p")
        headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
                   "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}
        resp = app.test_client().get(url[len(BASE_URL):], headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        assert resp.status_code == 302
        with app.app_context():
            ip = db.session.execute(sa.select(events.c.ip).where(events.c.type == "click")
                                    .order_by(events.c.id.desc()).limit(1)).scalar_one()
        assert ip == stored
    finally:
        _close(app)


def test_pages_send_a_strict_content_security_policy(example: Flask) -> None:
    client = example.test_client()
    for path in ["/", "/contacts", "/campaigns/spring-webinar", "/compose", "/inbox", "/nope"]:
        policy = client.get(path).headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'", path
        assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'", path
        html = client.get(path).get_data(as_text=True)
        # Nothing inline for the policy to block: no <script>/<style> elements, no handlers, no style="".
        assert not re.search(r"<script|<style|\son[a-z]+=|\sstyle=", html), path
    # The extension's own routes answer as the extension does.
    assert "Content-Security-Policy" not in client.get("/mailtrack/api/openapi.json").headers


def test_only_web_urls_become_links(example: Flask) -> None:
    """A click on a ``javascript:`` URL (recorded through the Python API; the JSON API refuses
    it) is listed among the top links as text, never as an ``href``."""
    hostile = "javascript:alert(document.domain)"
    mailtrack = example.extensions["mailtrack"].extension
    with example.app_context():
        contact = db.session.execute(sa.select(Contact.id).limit(1)).scalar()
        for _ in range(50):  # enough people's clicks to make it the top link
            mailtrack.record_event(str(contact), "click", url=hostile)
    html = example.test_client().get("/").get_data(as_text=True)
    assert hostile in html
    assert not re.search(r'href="\s*javascript:', html, re.IGNORECASE)
