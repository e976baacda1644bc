"""``MailTrack.track_messages``: a host prepares a campaign in one call, sends it, and the
links in the mail that arrives are tracked for the right contact and tenant."""
from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from crm_mailtrack import Message, MessageStatus, ValidationError

from apihelpers import API, hdrs, setup_hooks
from mailserver import MailServer, RecordingHandler

HTML = '<p>Hi</p><a href="https://shop.example/sale?x=1">Sale</a> <a href="https://shop.example/">Home</a>'
SENDER = "CRM <crm@example.com>"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


@pytest.fixture
def server():
    with MailServer(RecordingHandler()) as srv:
        yield srv


def test_a_host_prepares_sends_and_tracks_a_campaign(make_app, server):
    # a click right after sending would count as a scanner's (too-fast-after-send)
    app = make_app(setup=setup_hooks, MAILTRACK_SMTP_URL=server.url(), MAILTRACK_DEFAULT_SENDER=SENDER,
                   MAILTRACK_BOT_AFTER_SEND_SECONDS=0)
    mt = app.extensions["mailtrack"].extension
    people = [{"contact_id": "c1", "email": "ann@example.com"},
              {"contact_id": "c2", "email": "bob@example.com", "subject": "Bob, a sale"}]
    with app.app_context():
        ids = mt.track_messages(people, subject="A sale", html=HTML, campaign_id="spring",
                                template_id="sale", type="CAMPAIGN", tenant_id="t1")
        assert len(ids) == 2
        db = app.extensions["sqlalchemy"]
        for mid in ids:
            assert mt.send(db.session.get(Message, mid)).status == MessageStatus.SENT.value
    received = {r.rcpt_tos[0]: r for r in server.handler.received}
    assert set(received) == {"ann@example.com", "bob@example.com"}
    assert received["ann@example.com"].message["Subject"] == "A sale"
    assert received["bob@example.com"].message["Subject"] == "Bob, a sale"
    raw = received["bob@example.com"].raw.decode()
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in received["bob@example.com"].raw
    html = received["bob@example.com"].message.get_body(("html",)).get_content()
    links = re.findall(r'href="https?://[^"/]+(/mailtrack/t/c/[^"]+)"', html)
    assert len(links) == 2 and "/mailtrack/t/o/" in raw.replace("=\r\n", "")
    client = app.test_client()
    resp = client.get(links[0].replace("&amp;", "&"), headers={"User-Agent": BROWSER})
    assert resp.status_code == 302 and resp.headers["Location"].startswith("https://shop.example/sale?x=1")
    # The click belongs to Bob's message, campaign and tenant (and no other tenant sees it).
    report = client.get(f"{API}/campaigns/spring/tracking/clicks", headers=hdrs("t1")).get_json()
    assert [(r["contact_id"], r["email_address"]) for r in report["results"]] == [("c2", "bob@example.com")]
    assert client.get(f"{API}/campaigns/spring/tracking/clicks", headers=hdrs("t2")).status_code == 404


def test_an_invalid_recipient_stores_nothing(make_app):
    app = make_app()
    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        with pytest.raises(ValidationError):
            mt.track_messages([{"contact_id": "c1", "email": "ann@example.com"},
                               {"contact_id": "c2", "email": "not an address"}],
                              subject="A sale", html=HTML, campaign_id="spring")
        db = app.extensions["sqlalchemy"]
        assert db.session.execute(sa.select(sa.func.count()).select_from(Message)).scalar() == 0
        with pytest.raises(TypeError):
            mt.track_messages([{"contact_id": "c1", "email": "ann@example.com"}], subject="x", colour="red")
