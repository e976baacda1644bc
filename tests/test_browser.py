"""The example CRM in a real browser: Debian's Chromium driven by Playwright.

The app is served on 127.0.0.1 by Werkzeug in a thread, with its local SMTP server, on a
copy of the demo database. The tests load every page (desktop and phone width) with no
console error, compare the funnel shown with the extension's JSON API, send a campaign,
open the received mail (its pixel counts an open), click its tracked link (real redirect)
and see the counts change,
unsubscribe through the mail's button, and keyboard-navigate. Screenshots go to
``test-artifacts/`` (gitignored). Playwright never downloads a browser here: without
``/usr/bin/chromium`` (``apt-get install chromium``) these tests skip.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium: apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("aiosmtpd", reason="the example app's local SMTP server needs aiosmtpd")

from werkzeug.serving import make_server  # noqa: E402

from crm_mailtrack.models import messages  # noqa: E402
from example_app import API_TOKEN, create_app  # noqa: E402
from example_app.mailbox import LocalSMTPServer  # noqa: E402
from example_app.models import Contact, db  # noqa: E402
from test_example_app import _close, _config, build_demo_db  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
#: Headless Chromium says "HeadlessChrome", which the extension rightly counts as a bot; the
#: tests play a person reading mail in an ordinary Chrome. (The flag, not only the context
#: option: images inside the mail's sandboxed iframe are fetched with the flag's user agent.)
PERSON_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-sync", f"--user-agent={PERSON_UA}"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


class Live:
    """The served app: its origin, the Flask app (for in-process checks) and the API headers."""

    def __init__(self, app: Any, url: str) -> None:
        self.app, self.url = app, url
        self.api_headers = {"Authorization": f"Bearer {API_TOKEN}", "Accept": "application/json"}


@contextlib.contextmanager
def _serve(path: Path, **config: Any) -> Iterator[Live]:
    """The example CRM on ``path``, served on 127.0.0.1 with its local SMTP server."""
    listener = socket.socket()  # bound first and handed to the server: no port race
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    smtp = LocalSMTPServer().start()
    app = create_app(_config(path, TESTING=False, MAILTRACK_BASE_URL=url, MAILTRACK_SMTP_URL=smtp.url, **config))
    smtp.app = app
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log lines
    server = make_server("127.0.0.1", port, app, threaded=True, fd=listener.fileno())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Live(app, url)
    finally:
        server.shutdown()
        thread.join(10)
        smtp.stop()
        listener.close()
        _close(app)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    path = tmp_path_factory.mktemp("browser") / "crm.db"
    shutil.copy(build_demo_db(tmp_path_factory), path)
    with _serve(path) as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page that records console errors, page errors and failed requests; the test
    fails if any happened."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport=DESKTOP, user_agent=PERSON_UA)
    pg = context.new_page()
    problems: list[str] = []
    _report_csp_violations(context, lambda text: problems.append(f"CSP violation: {text}"))
    pg.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.on("response", lambda resp: problems.append(f"HTTP {resp.status}: {resp.url}") if resp.status >= 400 else None)
    pg.on("requestfailed", lambda req: problems.append(f"request failed: {req.url} {req.failure}")
          if req.failure != "net::ERR_ABORTED" else None)  # aborted: the test navigated on
    pg.set_default_timeout(10_000)
    yield pg
    context.close()
    assert problems == []


def _report_csp_violations(context: Any, report: Any) -> None:
    """Every Content-Security-Policy violation in any page of ``context`` is passed to
    ``report`` (the browser's ``securitypolicyviolation`` event, from every document)."""
    context.expose_function("__mtCspViolation", report)
    context.add_init_script("document.addEventListener('securitypolicyviolation', e => "
                            "window.__mtCspViolation(`${e.effectiveDirective} blocked ${e.blockedURI}`))")


def _shot(pg: Any, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _funnel_on_page(pg: Any) -> dict[str, tuple[int, int]]:
    out = {}
    for row in pg.locator("#funnel tbody tr[data-step]").all():
        key = row.get_attribute("data-step")
        out[key] = (int(row.locator('[data-kind="human"]').inner_text()),
                    int(row.locator('[data-kind="all"]').inner_text()))
    return out


def _no_horizontal_scroll(pg: Any) -> bool:
    return bool(pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_every_page_loads_cleanly_on_desktop_and_phone(live: Live, page: Any) -> None:
    with live.app.app_context():
        message_id = db.session.execute(sa.select(messages.c.id).where(messages.c.status == "SENT").limit(1)).scalar()
        contoso = db.session.execute(sa.select(Contact.id).where(Contact.company == "Contoso Ltd").limit(1)).scalar()
    pages = {"dashboard": "/", "contacts": "/contacts?q=a", "contact": f"/contacts/{contoso}",
             "campaigns": "/campaigns", "campaign": "/campaigns/spring-webinar",
             "audience": "/campaigns/spring-webinar/audience?action=opened_not_clicked", "message": f"/messages/{message_id}",
             "compose": "/compose", "inbox": "/inbox"}
    phone_shots = {"dashboard", "contact", "campaign"}
    for name, path in pages.items():
        page.set_viewport_size(DESKTOP)
        resp = page.goto(live.url + path)
        assert resp.status == 200, path
        assert page.locator("h1").first.is_visible()
        assert _no_horizontal_scroll(page), f"{path} scrolls sideways at {DESKTOP['width']}px"
        _shot(page, f"{name}-desktop")
        page.set_viewport_size(PHONE)  # the same page re-laid out at phone width
        assert page.locator("h1").first.is_visible()
        assert _no_horizontal_scroll(page), f"{path} scrolls sideways at {PHONE['width']}px"
        if name in phone_shots:
            _shot(page, f"{name}-phone")
    page.goto(live.url + f"/contacts/{contoso}")
    assert page.locator(".timeline li.is-machine").count() > 0  # scanner hits, visibly marked


def test_funnel_matches_the_api(live: Live, page: Any) -> None:
    for slug in ("welcome-2024", "spring-webinar"):
        page.goto(f"{live.url}/campaigns/{slug}")
        shown = _funnel_on_page(page)
        assert shown == {s["key"]: (s["human"], s["all"]) for s in
                         page.request.get(f"{live.url}/campaigns/{slug}/funnel.json").json()["steps"]}
        # The page reads the analytics API with campaignId (people, then all): the same numbers ...
        api = f"{live.url}/mailtrack/api/communications/analytics"
        for include_bots, index in (("false", 0), ("true", 1)):
            mine = page.request.get(f"{api}?campaignId={slug}&include_bots={include_bots}",
                                    headers=live.api_headers).json()
            assert (mine["totalSent"], mine["totalDelivered"], mine["totalOpened"], mine["totalClicked"],
                    mine["totalUnsubscribed"]) == tuple(shown[k][index] for k in (
                        "sent", "delivered", "opened", "clicked", "unsubscribed")), (slug, include_bots)
            # ... which agree with the unfiltered analytics grouped by template (template id =
            # campaign slug), a different query over the same messages.
            data = page.request.get(f"{api}?include_bots={include_bots}", headers=live.api_headers).json()
            row = next(t for t in data["byTemplate"] if t["templateId"] == slug)
            assert (row["totalSent"], row["totalOpened"], row["totalClicked"]) == (
                shown["sent"][index], shown["opened"][index], shown["clicked"][index]), (slug, include_bots)
        report = page.request.get(f"{live.url}/mailtrack/api/campaigns/{slug}/tracking/unsubscribes",
                                  headers=live.api_headers).json()
        assert len({r["contact_id"] for r in report["results"]}) == shown["unsubscribed"][0]
        bounces = page.request.get(f"{live.url}/mailtrack/api/campaigns/{slug}/tracking/bounces",
                                   headers=live.api_headers).json()
        assert shown["sent"][0] - len(bounces["results"]) == shown["delivered"][0]
    _shot(page, "campaign-funnel")


def test_send_open_click_and_unsubscribe(live: Live, page: Any) -> None:
    page.goto(live.url + "/compose")
    page.get_by_label("Campaign name").fill("Browser launch")
    page.get_by_label("Recipients").select_option(label="Everyone at Globex")
    page.get_by_role("button", name="Send campaign").click()
    flash = page.locator(".flash").inner_text()
    assert re.match(r"Sent \d+ messages", flash), flash
    slug = page.url.rsplit("/", 1)[1]
    before = _funnel_on_page(page)
    assert (before["opened"], before["clicked"]) == ((0, 0), (0, 0))
    with live.app.app_context():  # the recipient reads it two minutes later, not at delivery
        earlier = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=2)
        db.session.execute(messages.update().where(messages.c.campaign_id == slug).values(sent_at=earlier))
        db.session.commit()

    page.goto(live.url + "/inbox")
    first = page.get_by_role("link", name=re.compile("our autumn release is here")).first
    first.click()
    page.wait_for_load_state("load")  # the mail's images, the open pixel among them, have loaded
    recipient = page.locator(".meta dd").nth(1).inner_text()
    mail_url = page.url
    _shot(page, "inbox-mail")
    page.frame_locator("iframe.mail").get_by_role("link", name="Read the release notes").click()
    page.wait_for_url(re.compile(r"/go/release-notes\?utm_campaign="))
    assert "recorded the click" in page.locator("[role=status]").inner_text()
    _shot(page, "landing")

    page.goto(f"{live.url}/campaigns/{slug}")
    after = _funnel_on_page(page)
    assert (after["opened"], after["clicked"]) == ((1, 1), (1, 1))  # a person's open and click
    _shot(page, "campaign-after-click")

    page.goto(mail_url)
    page.get_by_role("button", name="Unsubscribe").click()
    page.get_by_role("heading", name="You are unsubscribed").wait_for()
    with live.app.app_context():
        contact_id = db.session.execute(sa.select(Contact.id).filter_by(email=recipient)).scalar_one()
    page.goto(f"{live.url}/contacts/{contact_id}")
    assert page.locator('[data-dnc="1"]').inner_text() == "DNC: Unsubscribed"
    assert page.locator(".timeline li.ev-unsubscribe").count() == 1
    page.goto(f"{live.url}/campaigns/{slug}")
    assert _funnel_on_page(page)["unsubscribed"] == (1, 1)


def test_keyboard_navigation(live: Live, page: Any) -> None:
    page.goto(live.url + "/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.goto(live.url + "/")
    names = []
    for _ in range(7):
        page.keyboard.press("Tab")
        names.append(page.evaluate("document.activeElement.textContent.trim()"))
    assert names[2:7] == ["Dashboard", "Contacts", "Campaigns", "Compose", "Inbox"]
    page.keyboard.press("Enter")  # on "Inbox"
    page.wait_for_url(re.compile(r"/inbox$"))
    page.goto(live.url + "/contacts")
    page.get_by_label("Search contacts").fill("contoso")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"q=contoso"))
    emails = page.locator("table.contacts tbody th small").all_inner_texts()
    assert emails and all(e.endswith("@contoso.example") for e in emails)
    _shot(page, "contacts-search")


# -- hostile data ------------------------------------------------------------------------------

#: Each payload sets ``window.__xss`` (or opens a dialog) if it ever runs.
SCRIPT = "<script>window.__xss='script';alert(1)</script>"
IMG = "<img src=x onerror=\"window.__xss='img';alert(2)\">"
ATTR = "\" onmouseover=\"window.__xss='attr';alert(3)\" x=\""
JS_URL = "javascript:window.__xss='href';alert(4)"
HOSTILE_CAMPAIGN = "\"><svg onload=window.__xss='svg'>"
#: An http URL is a link, so its hostile characters must stay inside the attribute.
HOSTILE_HTTP = "https://shop.example/\"><script>window.__xss='http'</script>?q='onmouseover='alert(5)"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A CRM holding hostile values everywhere a page shows stored text: written through the
    JSON API where it takes them, and where the API refuses them now (``javascript:`` event
    URLs) through the Python API and the CRM's own tables, as older rows or imports may hold."""
    from example_app import mailtrack
    from example_app.models import Campaign, InboxMail

    path = tmp_path_factory.mktemp("hostile") / "crm.db"
    with _serve(path, EXAMPLE_SEED_DEMO=False) as served:
        app = served.app
        with app.app_context():
            person = Contact(first_name=SCRIPT, last_name=IMG, email=f"x{ATTR}@example.com", company=ATTR, title=SCRIPT)
            db.session.add(person)
            db.session.add(Campaign(slug="hostile", name=SCRIPT + IMG, subject=ATTR, html=SCRIPT,
                                    sent_at=dt.datetime.now(dt.timezone.utc)))
            db.session.commit()
            cid = str(person.id)
            address = "reader@example.com"  # the mail itself needs a deliverable address
            msg = mailtrack.track_message(contact_id=cid, email=address, subject=SCRIPT + ATTR,
                                          campaign_id="hostile",
                                          html=f'<p>{SCRIPT}</p><a href="{JS_URL}">js</a><a href="https://shop.example/a">a</a>')
            mail = InboxMail(mail_from=SCRIPT, rcpt_to=ATTR, subject=IMG + SCRIPT, html=f"{SCRIPT}{IMG}<p>hi</p>",
                             list_unsubscribe=f"<{JS_URL}>")
            db.session.add(mail)
            db.session.commit()
            # The API refuses a javascript: URL now ...
            client = app.test_client()
            api = "/mailtrack/api/contacts/" + cid
            refused = client.post(f"{api}/events", json={"type": "click", "url": JS_URL}, headers=served.api_headers)
            assert refused.status_code == 422 and "url" in refused.get_json()["errors"]
            # ... so it is recorded as an older row or an import would hold it.
            mailtrack.record_event(cid, "click", url=JS_URL, campaign_id="hostile", message_id=msg.id, email=address)
            for body in ({"type": "click", "url": HOSTILE_HTTP, "campaign_id": "hostile", "message_id": msg.id},
                         {"type": "open", "campaign_id": HOSTILE_CAMPAIGN, "email": address},
                         {"type": "bounce", "campaign_id": "hostile", "details": {"reason": SCRIPT + ATTR,
                                                                                  "device": {"client": IMG}}}):
                resp = client.post(f"{api}/events", json=body, headers=served.api_headers)
                assert resp.status_code == 201, resp.get_data(as_text=True)
            resp = client.post(f"{api}/utm/add", headers=served.api_headers, json={
                "utm_campaign": SCRIPT, "utm_source": ATTR, "utm_medium": IMG, "url": JS_URL, "referer": JS_URL})
            assert resp.status_code == 201, resp.get_data(as_text=True)
            resp = client.post(f"{api}/dnc/email/add", json={"comments": SCRIPT + ATTR}, headers=served.api_headers)
            assert resp.status_code == 200, resp.get_data(as_text=True)
            yield {"live": served, "contact": person.id, "message": msg.id, "mail": mail.id}


def test_hostile_values_never_run(hostile: dict[str, Any], browser: Any) -> None:
    """Every page that shows the hostile values: no script runs (no ``window.__xss``, no
    dialog), no link has a ``javascript:`` (or other non-web) URL, hovering and clicking
    the links runs nothing, and no CSP violation happens either: the values arrive as text,
    so the policy never has anything to block."""
    live = hostile["live"]
    context = browser.new_context(viewport=DESKTOP, user_agent=PERSON_UA)
    pg = context.new_page()
    events: list[str] = []
    _report_csp_violations(context, lambda text: events.append(f"CSP violation: {text}"))
    pg.on("dialog", lambda dialog: (events.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    sandboxed: list[str] = []  # scripts of the mails themselves, refused by their frames' sandbox

    def on_console(msg: Any) -> None:
        if msg.type != "error":
            return
        if re.fullmatch(r"Blocked script execution in '[^']+/body' because the document's frame is sandboxed "
                        r"and the 'allow-scripts' permission is not set\.", msg.text):
            sandboxed.append(msg.text)
        else:
            events.append(f"console {msg.type}: {msg.text}")

    pg.on("console", on_console)
    pg.on("pageerror", lambda exc: events.append(f"page error: {exc}"))
    pg.set_default_timeout(10_000)
    pages = ["/", "/contacts", f"/contacts?q={SCRIPT}", f"/contacts/{hostile['contact']}", "/campaigns",
             "/campaigns/hostile", f"/messages/{hostile['message']}", "/inbox", f"/inbox/{hostile['mail']}",
             f"/go/pricing?utm_campaign={SCRIPT}&utm_source={ATTR}"]
    try:
        for path in pages:
            resp = pg.goto(live.url + path)
            assert resp.status == 200, path
            assert "javascript:" not in (pg.get_attribute("body", "onload") or "")
            protocols = pg.eval_on_selector_all("a[href]", "links => links.map(a => a.protocol)")
            assert set(protocols) <= {"http:", "https:", "mailto:"}, (path, protocols)
            for link in pg.locator("main a[href], main [title]").all():
                link.hover()
            for link in pg.locator("a[href^='javascript' i]").all():  # none, after the check above
                link.click()
            for frame in pg.frames:  # the mail frames: sandboxed, no script
                assert frame.evaluate("window.__xss") is None, (path, frame.url)
            assert pg.evaluate("window.__xss") is None, path
            assert events == [], (path, events)
        assert sandboxed  # the mails' <script> reached their frames, which did not run it
        # The top links show the javascript: URL as text, the hostile http URL as a link.
        pg.goto(live.url + "/")
        assert pg.get_by_text(JS_URL).count() == 1
        assert pg.locator("table.links a").evaluate_all("links => links.map(a => a.href)") == [
            pg.evaluate("u => new URL(u).href", HOSTILE_HTTP)]
    finally:
        _shot(pg, "hostile-last-page")
        context.close()


def test_the_pages_policy_blocks_injected_inline_script(live: Live, browser: Any) -> None:
    """Defence in depth: were markup ever injected into a CRM page, the Content-Security-Policy
    would block its inline script and handlers (and report the violation)."""
    context = browser.new_context(viewport=DESKTOP, user_agent=PERSON_UA)
    pg = context.new_page()
    violations: list[str] = []
    _report_csp_violations(context, lambda text: violations.append(text))
    try:
        resp = pg.goto(live.url + "/contacts")
        policy = resp.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy
        pg.evaluate("""() => {
            const s = document.createElement('script'); s.textContent = "window.__xss = 'inline'";
            document.body.append(s);
            const d = document.createElement('div'); d.innerHTML = '<img src=x onerror="window.__xss=1">';
            document.body.append(d);
        }""")
        pg.wait_for_timeout(300)  # the image error event, were the handler allowed
        assert pg.evaluate("window.__xss") is None
        assert any(v.startswith("script-src") for v in violations), violations
    finally:
        context.close()
