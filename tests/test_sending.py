"""Sending through a real SMTP server on loopback: what arrives (headers, both parts,
tracked links), Do-Not-Contact suppression, refused recipients, a server that is down,
STARTTLS with AUTH, SMTPS, and the URL parsing."""
from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack import ConfigurationError, MessageStatus
from crm_mailtrack.errors import Conflict
from crm_mailtrack.models import events
from crm_mailtrack.services.sending import html_to_text, parse_smtp_url

from conftest import BASE_URL
from mailserver import MailServer, RecordingHandler, refusing_port, self_signed_cert

SENDER = "crm@example.com"
HTML = ('<html><head><style>p{}</style></head><body><p>Hello <b>Ann</b>,</p>'
        '<p><a href="https://shop.test/offer?id=7">See the offer</a></p></body></html>')


@pytest.fixture
def server(_server: MailServer) -> MailServer:
    """The module's server with a clean record (starting one per test costs ~1 s)."""
    _server.handler.received.clear()
    _server.handler.refuse.clear()
    return _server


@pytest.fixture
def handler(server: MailServer) -> RecordingHandler:
    return server.handler


@pytest.fixture
def sapp(make_app, server: MailServer):
    app = make_app(MAILTRACK_SMTP_URL=server.url(), MAILTRACK_DEFAULT_SENDER=SENDER)
    with app.app_context():
        yield app


def _mt(app: Any) -> Any:
    return app.extensions["mailtrack"].extension


def _events(app: Any, message_id: str) -> list[str]:
    session = app.extensions["mailtrack"].session
    return list(session.execute(sa.select(events.c.type).where(events.c.message_id == message_id)).scalars())


def test_send_delivers_both_parts_with_tracking_and_headers(sapp, handler, recorded_signals):
    mt = _mt(sapp)
    msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="Your offer", html=HTML)
    sent = mt.send(msg)

    assert sent.status == MessageStatus.SENT.value
    assert sent.sent_at is not None and sent.error_message is None
    assert len(handler.received) == 1
    got = handler.received[0]
    assert got.mail_from == SENDER and got.rcpt_tos == ["ann@example.com"]
    mail = got.message
    assert mail["From"] == SENDER and mail["To"] == "ann@example.com" and mail["Subject"] == "Your offer"
    assert mail["Message-ID"] == sent.internet_message_id and sent.internet_message_id.endswith("@example.com>")
    assert mail["List-Unsubscribe"] == msg.headers["List-Unsubscribe"]
    assert mail["List-Unsubscribe"].startswith(f"<{BASE_URL}/mailtrack/t/u/")
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail.get_content_type() == "multipart/alternative"
    html = mail.get_body(("html",)).get_content()
    text = mail.get_body(("plain",)).get_content()
    click = re.search(r'href="([^"]+)"', html).group(1)
    assert click.startswith(f"{BASE_URL}/mailtrack/t/c/")
    assert "/t/o/" in html  # the open pixel
    # the text part shows the destination, not the signed link (see docs/communications.md)
    assert "Hello Ann," in text and "See the offer (https://shop.test/offer?id=7)" in text
    assert "/t/" not in text and "p{}" not in text
    assert _events(sapp, msg.id) == ["send"]
    [sent_signal] = recorded_signals.of("message_sent")
    assert sent_signal["message"].id == msg.id and sent_signal["event"].type == "send"
    assert sent_signal["contact_id"] == "c1" and sent_signal["message_id"] == msg.id


def test_given_text_part_is_used_and_cc_bcc_reach_the_envelope_only(sapp, handler):
    mt = _mt(sapp)
    msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="s", html=HTML, text="Plain words")
    from crm_mailtrack.services.messages import get_message

    row = get_message(sapp.extensions["mailtrack"], msg.id)
    row.cc, row.bcc, row.sender_name = ["boss@example.com"], ["audit@example.com"], "Acme Sales"
    sapp.extensions["mailtrack"].session.commit()
    mt.send(msg)
    got = handler.received[0]
    assert sorted(got.rcpt_tos) == ["ann@example.com", "audit@example.com", "boss@example.com"]
    assert got.message["Cc"] == "boss@example.com" and got.message["Bcc"] is None
    assert got.message["From"] == f"Acme Sales <{SENDER}>"
    assert got.message.get_body(("plain",)).get_content().strip() == "Plain words"


def test_do_not_contact_recipient_is_suppressed_never_sent(sapp, handler, recorded_signals):
    mt = _mt(sapp)
    mt.add_dnc("c1", "email")
    msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="s", html=HTML)
    out = mt.send(msg)
    assert out.status == MessageStatus.SUPPRESSED.value
    assert handler.received == []
    assert "send" not in _events(sapp, msg.id)
    assert recorded_signals.of("message_sent") == []


def test_refused_recipient_fails_with_the_servers_reason(sapp, handler, recorded_signals):
    handler.refuse.add("nobody@example.com")
    mt = _mt(sapp)
    msg = mt.track_message(contact_id="c2", email="nobody@example.com", subject="s", html=HTML)
    out = mt.send(msg)
    assert out.status == MessageStatus.FAILED.value
    assert "550" in out.error_message and "User unknown" in out.error_message
    assert out.sent_at is None
    assert handler.received == []
    assert _events(sapp, msg.id) == ["failed"]
    [failed] = recorded_signals.of("message_failed")
    assert failed["error"] == out.error_message and failed["message"].id == msg.id


def test_server_down_fails_and_nothing_is_left_sending(make_app):
    with refusing_port() as port:
        app = make_app(MAILTRACK_SMTP_URL=f"smtp://127.0.0.1:{port}?timeout=5", MAILTRACK_DEFAULT_SENDER=SENDER)
        with app.app_context():
            mt = _mt(app)
            msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="s", html=HTML)
            out = mt.send(msg)
            assert out.status == MessageStatus.FAILED.value
            assert "refused" in out.error_message.lower()
            assert _events(app, msg.id) == ["failed"]


def test_a_message_is_sent_once(sapp, handler):
    mt = _mt(sapp)
    msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="s", html=HTML)
    mt.send(msg)
    with pytest.raises(Conflict):
        mt.send(msg)
    assert len(handler.received) == 1


def test_no_sender_configured_fails_clearly(make_app, server, handler):
    app = make_app(MAILTRACK_SMTP_URL=server.url())
    with app.app_context():
        mt = _mt(app)
        msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="s", html=HTML)
        out = mt.send(msg)
        assert out.status == MessageStatus.FAILED.value and "MAILTRACK_DEFAULT_SENDER" in out.error_message
        assert handler.received == []


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    pair = self_signed_cert(tmp_path_factory.mktemp("tls"))
    if pair is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    return pair


def test_starttls_with_auth_and_percent_encoded_credentials(make_app, cert):
    handler = RecordingHandler()
    with MailServer(handler, scheme="smtp+starttls", cert=cert, auth=True) as srv:
        app = make_app(MAILTRACK_SMTP_URL=srv.url("crm%40example.com:p%3Ass%2Fw%40rd"), MAILTRACK_DEFAULT_SENDER=SENDER)
        with app.app_context():
            mt = _mt(app)
            msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="tls", html=HTML)
            assert mt.send(msg).status == MessageStatus.SENT.value
    assert handler.logins == [("crm@example.com", "p:ss/w@rd")]
    assert handler.received[0].message["Subject"] == "tls"


def test_wrong_password_fails_with_the_servers_reason(make_app, cert):
    handler = RecordingHandler()
    with MailServer(handler, scheme="smtp+starttls", cert=cert, auth=True) as srv:
        app = make_app(MAILTRACK_SMTP_URL=srv.url("crm%40example.com:wrong"), MAILTRACK_DEFAULT_SENDER=SENDER)
        with app.app_context():
            mt = _mt(app)
            msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="tls", html=HTML)
            out = mt.send(msg)
    assert out.status == MessageStatus.FAILED.value and out.error_message.startswith("535")
    assert handler.received == []


def test_smtps(make_app, cert):
    handler = RecordingHandler()
    with MailServer(handler, scheme="smtps", cert=cert) as srv:
        app = make_app(MAILTRACK_SMTP_URL=srv.url(), MAILTRACK_DEFAULT_SENDER=SENDER)
        with app.app_context():
            mt = _mt(app)
            msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="implicit tls", html=HTML)
            assert mt.send(msg).status == MessageStatus.SENT.value
    assert handler.received[0].message["Subject"] == "implicit tls"


def test_untrusted_certificate_is_refused(make_app, cert):
    handler = RecordingHandler()
    with MailServer(handler, scheme="smtps", cert=cert) as srv:
        app = make_app(MAILTRACK_SMTP_URL=f"smtps://127.0.0.1:{srv.port}?timeout=5", MAILTRACK_DEFAULT_SENDER=SENDER)
        with app.app_context():
            mt = _mt(app)
            msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="s", html=HTML)
            out = mt.send(msg)
    assert out.status == MessageStatus.FAILED.value and "CERTIFICATE_VERIFY_FAILED" in out.error_message
    assert handler.received == []


def test_parse_smtp_url():
    s = parse_smtp_url("smtp+starttls://us%40er:p%3Ass@mail.example.com?timeout=7")
    assert (s.scheme, s.host, s.port, s.username, s.password, s.timeout) == (
        "smtp+starttls", "mail.example.com", 587, "us@er", "p:ss", 7.0)
    assert parse_smtp_url("smtps://h").port == 465
    assert parse_smtp_url("smtp://h").port == 25 and parse_smtp_url("smtp://h").username is None
    for bad in ("http://h", "smtp://", "smtp://h:notaport", "smtp://h?timeout=x"):
        with pytest.raises(ConfigurationError):
            parse_smtp_url(bad)


def test_html_to_text():
    text = html_to_text('<p>One &amp; two</p><ul><li>a</li><li>b</li></ul><script>x()</script>'
                        '<a href="https://x.test/">https://x.test/</a> <a href="https://y.test/">Y</a>')
    assert text == "One & two\n\n- a\n- b\n\nhttps://x.test/ Y (https://y.test/)\n"
