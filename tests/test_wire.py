"""What a mail server receives, byte for byte: header lines as RFC 5322 writes them (no
RFC 2047 encoded words in List-Unsubscribe, CRLF, lines of at most 998 octets), a bare
envelope sender with a non-ASCII display name against a server that does not offer
SMTPUTF8, a text part that never shows the hidden honeypot link or the open pixel, and a
sender that outlives ``MAILTRACK_SENDING_TIMEOUT_SECONDS``."""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from email.headerregistry import Address
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack import ConfigurationError, MessageStatus
from crm_mailtrack.models import events, messages
from crm_mailtrack.services import bulk, sending
from crm_mailtrack.state import get_state

from conftest import BASE_URL
from mailserver import MailServer, Received, RecordingHandler

LONG_BASE = "https://crm.example-company-with-a-long-name.example"
HTML = ('<html><body><p>Hello Ann,</p><p><a href="https://shop.test/offer?id=7">See the offer</a></p>'
        '<p><a href="https://shop.test/">https://shop.test/</a> <a href="mailto:sales@acme.example">write</a></p>'
        '</body></html>')


@pytest.fixture(scope="module")
def _ascii_server():
    """A server that does not offer SMTPUTF8 (and refuses ``MAIL FROM ... SMTPUTF8``)."""
    with MailServer(RecordingHandler(), smtputf8=False) as srv:
        yield srv


def _fresh(srv: MailServer) -> MailServer:
    srv.handler.received.clear()
    srv.handler.on_data = None
    return srv


@pytest.fixture
def server(_server: MailServer) -> MailServer:
    return _fresh(_server)


@pytest.fixture
def ascii_server(_ascii_server: MailServer) -> MailServer:
    return _fresh(_ascii_server)


def _mt(app: Any) -> Any:
    return app.extensions["mailtrack"].extension


def _headers(raw: bytes) -> list[bytes]:
    """The header fields of a raw message, each unfolded as RFC 5322 says (a CRLF followed
    by whitespace is removed), after checking the physical lines."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert len(line) <= 998, line[:80]
        assert b"\n" not in line and b"\r" not in line
    return [re.sub(rb"\r\n(?=[ \t])", b"", field) for field in re.split(rb"\r\n(?![ \t])", head)]


def _header(raw: bytes, name: str) -> bytes:
    found = [f for f in _headers(raw) if f.lower().startswith(name.lower().encode() + b":")]
    assert len(found) == 1, (name, found)
    return found[0]


def _crlf_only(raw: bytes) -> bool:
    return raw.count(b"\n") == raw.count(b"\r\n") and raw.count(b"\r") == raw.count(b"\r\n")


def _parsed(got: Received) -> Any:
    return email.message_from_bytes(got.raw, policy=email.policy.default)


def test_list_unsubscribe_and_every_header_are_written_as_rfc_5322_says(make_app, server):
    app = make_app(MAILTRACK_SMTP_URL=server.url(), MAILTRACK_BASE_URL=LONG_BASE,
                   MAILTRACK_DEFAULT_SENDER="crm@example.com")
    with app.app_context():
        mt = _mt(app)
        msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="Your offer", html=HTML)
        unsubscribe = msg.headers["List-Unsubscribe"]
        assert len("List-Unsubscribe: " + unsubscribe) > 78  # too long for one 78-character line
        sent = mt.send(msg)
    assert sent.status == MessageStatus.SENT.value, sent.error_message
    [got] = server.handler.received
    raw = got.raw
    assert _crlf_only(raw)
    assert _header(raw, "List-Unsubscribe") == b"List-Unsubscribe: " + unsubscribe.encode("ascii")
    assert unsubscribe.startswith(f"<{LONG_BASE}/mailtrack/t/u/") and unsubscribe.endswith(">")
    assert _header(raw, "List-Unsubscribe-Post") == b"List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    assert _header(raw, "Message-ID") == b"Message-ID: " + sent.internet_message_id.encode("ascii")
    assert _header(raw, "From") == b"From: crm@example.com"
    assert _header(raw, "To") == b"To: ann@example.com"
    assert _header(raw, "Subject") == b"Subject: Your offer"
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"=?" not in head and head.isascii()
    parsed = _parsed(got)
    assert parsed["List-Unsubscribe"] == unsubscribe
    assert parsed.get_body(("plain",)) is not None and parsed.get_body(("html",)) is not None


def test_long_ascii_header_values_fold_only_at_whitespace(make_app, server):
    """A host's own header and a long ASCII subject: folded at spaces (a long word is left
    whole), never turned into encoded words; a non-ASCII subject is RFC 2047 text."""
    app = make_app(MAILTRACK_SMTP_URL=server.url(), MAILTRACK_DEFAULT_SENDER="crm@example.com")
    token = "x" * 120
    subject = "Quarterly report " + " ".join(["numbers"] * 12) + " " + token
    with app.app_context():
        mt = _mt(app)
        msg = mt.track_message(contact_id="c1", email="ann@example.com", subject=subject, html=HTML)
        state = get_state()
        row = state.session.get(type(msg), msg.id)
        row.headers = {**row.headers, "X-Campaign-Ref": "ref-" + "y" * 100}
        state.session.commit()
        second = mt.track_message(contact_id="c2", email="bob@example.com", subject="Grüße aus Düsseldorf",
                                  html=HTML)
        assert mt.send(msg).status == MessageStatus.SENT.value
        assert mt.send(second).status == MessageStatus.SENT.value
    first_raw, second_raw = (r.raw for r in server.handler.received)
    assert _header(first_raw, "X-Campaign-Ref") == b"X-Campaign-Ref: ref-" + b"y" * 100
    assert _header(first_raw, "Subject") == b"Subject: " + subject.encode("ascii")
    assert b"=?" not in first_raw.split(b"\r\n\r\n", 1)[0]
    subject_line = _header(second_raw, "Subject")
    assert subject_line.isascii() and b"=?utf-8?" in subject_line
    assert _parsed(server.handler.received[1])["Subject"] == "Grüße aus Düsseldorf"


def test_a_non_ascii_sender_name_reaches_a_server_without_smtputf8(make_app, ascii_server):
    app = make_app(MAILTRACK_SMTP_URL=ascii_server.url(),
                   MAILTRACK_DEFAULT_SENDER="Vertrieb Düsseldorf <sales@acme.example>")
    with app.app_context():
        mt = _mt(app)
        msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="Grüße", html=HTML,
                               cc=["Zoë Ångström <zoe@example.com>"], bcc=["Jürgen <audit@example.com>"])
        sent = mt.send(msg)
        assert sent.status == MessageStatus.SENT.value, sent.error_message
        assert sent.internet_message_id.endswith("@acme.example>")
    [got] = ascii_server.handler.received
    assert got.mail_from == "sales@acme.example"
    assert sorted(got.rcpt_tos) == ["ann@example.com", "audit@example.com", "zoe@example.com"]
    assert "SMTPUTF8" not in got.mail_options
    head = got.raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii() and _crlf_only(got.raw)
    assert b"Bcc" not in head and b"J\xc3\xbcrgen" not in got.raw
    parsed = _parsed(got)
    assert parsed["From"].addresses == (Address("Vertrieb Düsseldorf", addr_spec="sales@acme.example"),)
    assert parsed["Cc"].addresses == (Address("Zoë Ångström", addr_spec="zoe@example.com"),)
    assert parsed["Subject"] == "Grüße"


def test_the_messages_sender_name_wins_over_the_configured_one(make_app, ascii_server):
    app = make_app(MAILTRACK_SMTP_URL=ascii_server.url(),
                   MAILTRACK_DEFAULT_SENDER="Vertrieb Düsseldorf <sales@acme.example>")
    with app.app_context():
        mt = _mt(app)
        msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="s", html=HTML,
                               sender_name="Åsa Öberg, Sales", reply_to="Support Köln <help@acme.example>")
        assert mt.send(msg).status == MessageStatus.SENT.value
    [got] = ascii_server.handler.received
    assert got.mail_from == "sales@acme.example" and got.raw.split(b"\r\n\r\n", 1)[0].isascii()
    parsed = _parsed(got)
    assert parsed["From"].addresses == (Address("Åsa Öberg, Sales", addr_spec="sales@acme.example"),)
    assert parsed["Reply-To"].addresses == (Address("Support Köln", addr_spec="help@acme.example"),)


@pytest.mark.parametrize("value", [
    "not an address", "Sales <>", "a@example.com, b@example.com", "Sales <sales@>", "<@example.com>", 42,
])
def test_a_default_sender_that_is_no_single_address_is_refused_at_init_app(make_app, value):
    with pytest.raises(ConfigurationError, match="MAILTRACK_DEFAULT_SENDER"):
        make_app(MAILTRACK_DEFAULT_SENDER=value)


@pytest.mark.parametrize("value", ["sales@acme.example", "Vertrieb Düsseldorf <sales@acme.example>",
                                   '"Sales, EMEA" <sales@acme.example>', None])
def test_a_default_sender_with_or_without_a_name_is_accepted(make_app, value):
    make_app(MAILTRACK_DEFAULT_SENDER=value)


# -- the text part ------------------------------------------------------------------------

def _hidden_and_pixel(html: str) -> tuple[str, str]:
    honeypot = re.search(r'href="([^"]+/t/h/[^"]+)"', html).group(1)
    pixel = re.search(r'src="([^"]+/t/o/[^"]+)"', html).group(1)
    return honeypot, pixel


def test_track_message_sets_a_text_part_without_honeypot_or_pixel(make_app):
    app = make_app(MAILTRACK_UTM_DEFAULTS={"utm_source": "crm"})
    with app.app_context():
        msg = _mt(app).track_message(contact_id="c1", email="ann@example.com", subject="s", html=HTML)
        honeypot, pixel = _hidden_and_pixel(msg.html)
        text = msg.text
    assert text is not None
    assert honeypot not in text and pixel not in text and "/t/" not in text
    # the destinations as the HTML's tracked links lead to them (UTM parameters included)
    assert text == ("Hello Ann,\n\nSee the offer (https://shop.test/offer?id=7&utm_source=crm)\n\n"
                        "https://shop.test/ (https://shop.test/?utm_source=crm) write (mailto:sales@acme.example)\n")


def test_the_sent_text_part_exists_and_shows_no_honeypot(make_app, server):
    app = make_app(MAILTRACK_SMTP_URL=server.url(), MAILTRACK_DEFAULT_SENDER="crm@example.com")
    with app.app_context():
        mt = _mt(app)
        msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="s", html=HTML)
        assert mt.send(msg).status == MessageStatus.SENT.value
    [got] = server.handler.received
    parsed = _parsed(got)
    html = parsed.get_body(("html",)).get_content()
    text = parsed.get_body(("plain",)).get_content()
    honeypot, pixel = _hidden_and_pixel(html)
    assert "See the offer (https://shop.test/offer?id=7)" in text
    assert honeypot not in text and pixel not in text and "/t/h/" not in text
    assert b"/t/h/" not in got.raw.split(b"text/plain", 1)[1].split(b"text/html", 1)[0]


def test_a_stored_message_without_text_is_sent_without_the_honeypot_in_its_text(make_app, server):
    """A row stored without ``text`` (by an earlier version): the text part derived at send
    time from the tracked HTML leaves out the hidden link."""
    app = make_app(MAILTRACK_SMTP_URL=server.url(), MAILTRACK_DEFAULT_SENDER="crm@example.com")
    with app.app_context():
        mt = _mt(app)
        msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="s", html=HTML)
        state = get_state()
        state.session.execute(sa.update(messages).where(messages.c.id == msg.id).values(text=None))
        state.session.commit()
        assert mt.send(msg.id).status == MessageStatus.SENT.value
    parsed = _parsed(server.handler.received[0])
    text = parsed.get_body(("plain",)).get_content()
    assert "See the offer" in text and "/t/h/" not in text and "/t/o/" not in text


def test_bulk_messages_get_the_same_text_part(app):
    state = get_state()
    ids = bulk.track_messages(state, [{"contact_id": f"c{i}", "email": f"c{i}@example.com"} for i in range(3)]
                              + [{"contact_id": "own", "email": "own@example.com", "html": "<a href='https://o.test/'>o</a>"},
                                 {"contact_id": "given", "email": "given@example.com", "text": "Given"}],
                              subject="s", html=HTML)
    single = _mt(app).track_message(contact_id="x", email="x@example.com", subject="s", html=HTML)
    rows = dict(state.session.execute(sa.select(messages.c.id, messages.c.text).where(messages.c.id.in_(ids))).all())
    texts = [rows[i] for i in ids]
    assert texts[:3] == [single.text] * 3
    assert texts[3] == "o (https://o.test/)\n" and texts[4] == "Given"
    assert all("/t/" not in t for t in texts)


# -- a sender that outlives the sending timeout ---------------------------------------------

def test_a_sender_alive_past_the_timeout_does_not_overwrite_the_reclaimed_failed(make_app, server, recorded_signals):
    """While the server holds DATA, time passes (the claim is aged past the timeout) and
    ``send_due`` in another app context marks the message FAILED as interrupted. The sender
    then hears 250: the row stays FAILED with its one ``failed`` event, nothing announces a
    send, and the error message says the mail was delivered after all."""
    app = make_app(MAILTRACK_SMTP_URL=server.url(), MAILTRACK_DEFAULT_SENDER="crm@example.com")
    timeout = sending.sending_timeout(app.extensions["mailtrack"])

    def meanwhile() -> None:
        with app.app_context():
            state = get_state()
            state.session.execute(sa.update(messages).values(
                updated_at=dt.datetime.now(dt.timezone.utc) - timeout - dt.timedelta(seconds=60)))
            state.session.commit()
            assert sending.fail_interrupted(state) == 1

    server.handler.on_data = meanwhile
    with app.app_context():
        mt = _mt(app)
        msg = mt.track_message(contact_id="c1", email="ann@example.com", subject="s", html=HTML)
        out = mt.send(msg)
        assert len(server.handler.received) == 1  # it was delivered
        state = get_state()
        row = state.session.execute(sa.select(messages).where(messages.c.id == msg.id)).one()
        types = list(state.session.execute(sa.select(events.c.type).where(events.c.message_id == msg.id)).scalars())
    assert row.status == MessageStatus.FAILED.value and out.status == MessageStatus.FAILED.value
    assert row.error_message.startswith(sending.INTERRUPTED)
    assert "delivered" in row.error_message and row.internet_message_id in row.error_message
    assert row.sent_at is None
    assert types == ["failed"]
    assert recorded_signals.of("message_sent") == []
    assert [kw["message_id"] for kw in recorded_signals.of("message_failed")] == [msg.id]
