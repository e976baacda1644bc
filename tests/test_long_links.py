"""Links too long to track (issue 18): a URL whose signed click token would be longer than
the click route reads (``tokens.MAX_TOKEN_LENGTH``) is sent as it is, untracked, so no link
in a mail answers 404. Sent through a real SMTP server on loopback, one message
(``track_message`` + ``send``) and a campaign (``send_campaign``, the bulk path), and every
link of what arrives is followed on the tracking route."""
from __future__ import annotations

import base64
import html as html_lib
import logging
import random
import re
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack.instrument import link_id
from crm_mailtrack.models import links
from crm_mailtrack.state import get_state
from crm_mailtrack.tokens import MAX_TOKEN_LENGTH, Purpose

from conftest import BASE_URL, path_of

SENDER = "crm@example.com"
CLICK_PREFIX = f"{BASE_URL}/mailtrack/t/c/"
UTM = {"utm_source": "crm", "utm_medium": "email", "utm_campaign": "spring-sale-2026"}


def _incompressible_url(length: int, seed: int) -> str:
    """An http URL of exactly ``length`` characters whose query is random URL-safe base64
    (about 6 bits a character: zlib cannot shrink it below its base64 length)."""
    head = f"https://shop.test/p/{seed}?q="
    body = base64.urlsafe_b64encode(random.Random(seed).randbytes(length)).decode()
    return head + body[: length - len(head)]


NORMAL = "https://shop.test/offer?id=7"
#: The size issue 18 names: it compresses to a token of about 3,650 characters, which fits.
MEDIUM = _incompressible_url(3500, 1)
#: Its token is well over 4,096 characters.
HUGE = _incompressible_url(4200, 2)
HTML = (f'<html><body><p><a href="{NORMAL}">normal</a></p><p><a href="{MEDIUM}">medium</a></p>'
        f'<p><a href="{html_lib.escape(HUGE)}">huge</a></p></body></html>')


def _token_length(url: str) -> int:
    """The length of a click token for ``url`` (message ids are 24 characters)."""
    return len(get_state().signer.dumps(Purpose.CLICK, ["0" * 24, url]))


@pytest.fixture
def sapp(make_app: Any, _server: Any) -> Any:
    _server.handler.received.clear()
    app = make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER=SENDER)
    with app.app_context():
        yield app


def _mt(app: Any) -> Any:
    return app.extensions["mailtrack"].extension


def _anchors(mail_html: str) -> dict[str, str]:
    """``{link text: href}`` of the visible links of a mail's HTML part."""
    return {text: html_lib.unescape(href)
            for href, text in re.findall(r'<a href="([^"]*)">(\w+)</a>', mail_html)}


def _check_mail(app: Any, mail: Any, expected: dict[str, tuple[str, bool]]) -> None:
    """Every visible link of ``mail`` either redirects (302) to its destination through the
    click route or is the original URL; ``expected`` is ``{text: (destination, tracked)}``."""
    body = mail.get_body(("html",)).get_content()
    text = mail.get_body(("plain",)).get_content()
    anchors = _anchors(body)
    assert set(anchors) == set(expected)
    client = app.test_client()
    for name, (dest, tracked) in expected.items():
        href = anchors[name]
        if tracked:
            assert href.startswith(CLICK_PREFIX), name
            resp = client.get(path_of(href))
            assert resp.status_code == 302, name
            assert resp.headers["Location"] == dest, name
        else:
            assert href == dest, name  # the original URL, as written
        # the text part always shows the destination itself, never a click link
        assert f"{name} ({dest})" in " ".join(text.split()), name
    assert "/t/c/" not in text
    # the only click links in the HTML are those of the tracked visible links
    assert body.count(CLICK_PREFIX) == sum(tracked for _, tracked in expected.values())


def _stored_link_ids(app: Any) -> set[str]:
    session = app.extensions["mailtrack"].session
    out = set(session.execute(sa.select(links.c.id)).scalars())
    session.commit()
    return out


def test_the_sizes_straddle_the_limit(sapp):
    """The test URLs are what they claim: MEDIUM's token fits, HUGE's does not."""
    assert _token_length(MEDIUM) <= MAX_TOKEN_LENGTH < _token_length(HUGE)


def test_a_link_too_long_to_track_is_sent_as_written_and_every_link_works(sapp, _server, caplog):
    mt = _mt(sapp)
    with caplog.at_level(logging.WARNING, logger="crm_mailtrack"):
        msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="Links", html=HTML)
    mt.send(msg)
    [got] = _server.handler.received
    _check_mail(sapp, got.message, {"normal": (NORMAL, True), "medium": (MEDIUM, True), "huge": (HUGE, False)})
    # the untracked link is logged once, by link id, and is not among the message's links
    [warning] = [r for r in caplog.records if "not tracked" in r.getMessage()]
    assert warning.levelno == logging.WARNING and link_id(HUGE) in warning.getMessage()
    assert _stored_link_ids(sapp) == {link_id(NORMAL), link_id(MEDIUM)}


def test_a_campaign_sends_the_long_link_untracked_to_every_recipient(sapp, _server, caplog):
    recipients = [{"contact_id": f"c{i}", "email": f"c{i}@example.com"} for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="crm_mailtrack"):
        progress = _mt(sapp).send_campaign("long", recipients, subject="Links", html=HTML)
    assert progress["sent"] == 3
    assert sorted(r.rcpt_tos[0] for r in _server.handler.received) == [r["email"] for r in recipients]
    for got in _server.handler.received:
        _check_mail(sapp, got.message, {"normal": (NORMAL, True), "medium": (MEDIUM, True),
                                        "huge": (HUGE, False)})
    # the template is instrumented once: one warning for the campaign, not one per recipient
    assert len([r for r in caplog.records if "not tracked" in r.getMessage()]) == 1
    assert _stored_link_ids(sapp) == {link_id(NORMAL), link_id(MEDIUM)}


def test_utm_parameters_that_push_a_link_over_the_limit_leave_it_untracked(make_app, _server):
    """A link that fits on its own but not with the UTM parameters appended is sent as written
    (without them); a normal link gets them and is tracked."""
    _server.handler.received.clear()
    app = make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER=SENDER, MAILTRACK_UTM_DEFAULTS=UTM)
    with app.app_context():
        edge = next(url for url in (_incompressible_url(n, 3) for n in range(3900, 4100, 5))
                    if _token_length(url) > MAX_TOKEN_LENGTH - 60)
        with_utm = f"{edge}&utm_source=crm&utm_medium=email&utm_campaign=spring-sale-2026"
        assert _token_length(edge) <= MAX_TOKEN_LENGTH < _token_length(with_utm)
        page = f'<p><a href="{NORMAL}">normal</a> <a href="{edge}">edge</a></p>'
        mt = _mt(app)
        mt.send(mt.track_message(contact_id="c1", email="ann@example.com", subject="UTM", html=page))
        mt.send_campaign("utm", [{"contact_id": "c2", "email": "bob@example.com"}], subject="UTM", html=page)
        assert len(_server.handler.received) == 2
        normal = f"{NORMAL}&utm_source=crm&utm_medium=email&utm_campaign=spring-sale-2026"
        for got in _server.handler.received:
            _check_mail(app, got.message, {"normal": (normal, True), "edge": (edge, False)})


def test_a_recipient_with_its_own_long_html_in_a_campaign(sapp, _server):
    """A recipient with its own HTML is instrumented on its own path: same outcome."""
    own = f'<p><a href="{HUGE}">huge</a> <a href="{NORMAL}">normal</a></p>'
    recipients = [{"contact_id": "c1", "email": "c1@example.com", "html": own},
                  {"contact_id": "c2", "email": "c2@example.com"}]
    _mt(sapp).send_campaign("own", recipients, subject="Links", html=f'<p><a href="{NORMAL}">normal</a></p>')
    by_rcpt = {r.rcpt_tos[0]: r.message for r in _server.handler.received}
    _check_mail(sapp, by_rcpt["c1@example.com"], {"huge": (HUGE, False), "normal": (NORMAL, True)})
    _check_mail(sapp, by_rcpt["c2@example.com"], {"normal": (NORMAL, True)})


def test_click_url_gives_the_url_itself_when_its_token_would_be_too_long(sapp):
    mt = _mt(sapp)
    msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="s", html="<p>hi</p>")
    assert mt.click_url(msg, HUGE) == HUGE
    medium = mt.click_url(msg, MEDIUM)
    assert medium.startswith(CLICK_PREFIX)
    resp = sapp.test_client().get(path_of(medium))
    assert resp.status_code == 302 and resp.headers["Location"] == MEDIUM


def test_a_recipient_whose_token_comes_out_too_long_is_instrumented_on_its_own(sapp, _server, monkeypatch):
    """The template decides with a placeholder id; a recipient's real token may come out a
    little longer (compression varies with the id). Message ids of 32 characters (the column's
    most; the extension makes 24) make that certain here: the template tracks EDGE, every
    recipient's own token is too long, so each recipient gets EDGE untracked, never a 404."""
    import secrets

    from crm_mailtrack.services import bulk

    def lengths(url: str, make_id: Any) -> list[int]:
        return [len(get_state().signer.dumps(Purpose.CLICK, [make_id(), url])) for _ in range(20)]

    # the template's placeholder ids are "mtmsg" and 20 hex digits (services/bulk.py)
    edge = next(url for url in (_incompressible_url(n, 4) for n in range(3900, 4100))
                if max(lengths(url, lambda: "mtmsg" + secrets.token_hex(10))) < MAX_TOKEN_LENGTH
                and min(lengths(url, lambda: secrets.token_hex(16))) > MAX_TOKEN_LENGTH)
    monkeypatch.setattr(bulk, "new_message_id", lambda: secrets.token_hex(16))
    page = f'<p><a href="{NORMAL}">normal</a> <a href="{edge}">edge</a></p>'
    recipients = [{"contact_id": f"c{i}", "email": f"c{i}@example.com"} for i in range(2)]
    assert _mt(sapp).send_campaign("edge", recipients, subject="Edge", html=page)["sent"] == 2
    assert len(_server.handler.received) == 2
    for got in _server.handler.received:
        _check_mail(sapp, got.message, {"normal": (NORMAL, True), "edge": (edge, False)})
