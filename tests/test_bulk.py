"""Bulk campaign preparation (services.bulk.track_messages): same output as track_message,
stored in one go, all or nothing."""
from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from crm_mailtrack.errors import ValidationError
from crm_mailtrack.models import Message, campaign_links, events, links, messages
from crm_mailtrack.services import bulk
from crm_mailtrack.services import messages as message_service
from crm_mailtrack.state import get_state
from crm_mailtrack.tokens import Purpose

from conftest import path_of

HTML = (
    '<html><body><p>Hello &amp; welcome</p>'
    '<a href="https://shop.example/item?id=1&amp;c=2">item</a> '
    "<a href='mailto:sales@example.com'>mail</a> "
    '<a href="https://shop.example/">home</a><!-- <a href="https://hidden.example/"> -->'
    '<a data-mailtrack="off" href="https://untracked.example/">raw</a>'
    "</body></html>"
)
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"


def _untokened(text: str) -> str:
    return re.sub(r"/t/(\w)/[\w.\-]+", r"/t/\1/TOKEN", text)


def _recipients(n: int) -> list[dict[str, str]]:
    return [{"contact_id": f"c{i}", "email": f"c{i}@example.com"} for i in range(n)]


def test_bulk_messages_match_track_message_output_and_are_stored(app):
    state = get_state()
    ids = bulk.track_messages(state, _recipients(3), subject="Sale", html=HTML, text="plain",
                              campaign_id="spring", template_id="t1")
    assert len(ids) == len(set(ids)) == 3
    stored = {m.id: m for m in state.session.scalars(sa.select(Message)).all()}
    assert set(stored) == set(ids)
    for i, mid in enumerate(ids):
        m = stored[mid]
        expected_html, expected_headers, tracked, _ = message_service.instrument(
            state, mid, HTML, track_opens=True, track_clicks=True)
        # byte for byte what track_message would have written, tokens aside
        assert _untokened(m.html) == _untokened(expected_html)
        assert _untokened(str(m.headers)) == _untokened(str(expected_headers))
        assert (m.contact_id, m.email, m.subject, m.text, m.campaign_id, m.template_id, m.status) == (
            f"c{i}", f"c{i}@example.com", "Sale", "plain", "spring", "t1", "PENDING")
        assert m.original_html == HTML
        # each message's tokens carry its own id
        tokens = re.findall(r"/t/(\w)/([\w.\-]+)", m.html + str(m.headers))
        purposes = {"c": Purpose.CLICK, "h": Purpose.CLICK, "o": Purpose.OPEN, "u": Purpose.UNSUBSCRIBE}
        assert {kind for kind, _ in tokens} >= {"c", "o", "u"}
        for kind, token in tokens:
            payload = state.signer.loads(purposes[kind], token)
            assert (payload[0] if isinstance(payload, list) else payload) == mid
    got_links = dict(state.session.execute(sa.select(links.c.id, links.c.url)).all())
    assert got_links == tracked and sorted(tracked.values()) == [
        "https://shop.example/", "https://shop.example/item?id=1&c=2"]
    assert state.session.execute(sa.select(sa.func.count()).select_from(campaign_links)).scalar() == 2


def test_bulk_links_redirect_and_record_for_the_right_message(app, client):
    state = get_state()
    ids = bulk.track_messages(state, _recipients(2), subject="S", html=HTML, campaign_id="k")
    second = state.session.get(Message, ids[1])
    href = re.findall(r'href="([^"]+/t/c/[^"]+)"', second.html)[0]
    resp = client.get(path_of(href), headers={"User-Agent": BROWSER})
    assert resp.status_code == 302 and resp.headers["Location"] == "https://shop.example/item?id=1&c=2"
    row = state.session.execute(sa.select(events.c.message_id, events.c.contact_id, events.c.type)).one()
    assert tuple(row) == (ids[1], "c1", "click")


def test_recipient_with_own_html_is_instrumented_on_its_own(app):
    state = get_state()
    own = '<a href="https://own.example/">x</a>'
    ids = bulk.track_messages(
        state, [*_recipients(1), {"contact_id": "z", "email": "z@example.com", "html": own, "subject": "Yours"}],
        subject="S", html=HTML, campaign_id="k",
    )
    m = state.session.get(Message, ids[1])
    assert m.original_html == own and m.subject == "Yours" and "own.example" not in m.html
    assert state.session.get(Message, ids[0]).subject == "S"
    assert "https://own.example/" in state.session.execute(sa.select(links.c.url)).scalars().all()


def test_invalid_recipient_writes_nothing(app):
    state = get_state()
    with pytest.raises(ValidationError) as err:
        bulk.track_messages(state, [*_recipients(2), {"contact_id": "x", "email": "not-an-email"}],
                            subject="S", html=HTML)
    assert "recipients[2].email" in err.value.errors
    assert state.session.execute(sa.select(sa.func.count()).select_from(messages)).scalar() == 0
    with pytest.raises(TypeError):
        bulk.track_messages(state, _recipients(1), subject="S", bogus=1)


def test_text_only_and_untracked_campaigns(app):
    state = get_state()
    ids = bulk.track_messages(state, _recipients(2), subject="S", text="only text")
    assert all(state.session.get(Message, i).html is None for i in ids)
    ids = bulk.track_messages(state, _recipients(1), subject="S", html=HTML, track_clicks=False, track_opens=False)
    m = state.session.get(Message, ids[0])
    assert "/t/c/" not in m.html and "/t/o/" not in m.html and "/t/u/" in m.headers["List-Unsubscribe"]


def test_braces_and_slot_like_text_in_the_template_come_through_unchanged(app, client):
    """The per-recipient HTML is filled in with str.format: braces of CSS and of template
    languages in the HTML must stay as they are, and each link must still work."""
    state = get_state()
    html = ("<html><head><style>td{color:red} .b{{x}}</style></head><body><p>{0} {name} {{name}} }{</p>"
            '<a href="https://shop.example/{id}?q={0}">a</a><a href="https://shop.example/b">b</a></body></html>')
    ids = bulk.track_messages(state, _recipients(2), subject="S", html=html, campaign_id="k")
    for mid in ids:
        m = state.session.get(Message, mid)
        expected_html, expected_headers, _, _ = message_service.instrument(
            state, mid, html, track_opens=True, track_clicks=True)
        assert _untokened(m.html) == _untokened(expected_html)
        assert _untokened(str(m.headers)) == _untokened(str(expected_headers))
        hrefs = re.findall(r'href="([^"]+/t/c/[^"]+)"', m.html)
        got = [client.get(path_of(h), headers={"User-Agent": BROWSER}).headers["Location"] for h in hrefs]
        assert got == ["https://shop.example/%7Bid%7D?q=%7B0%7D", "https://shop.example/b"]
