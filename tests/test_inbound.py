"""Received mail (MailTrack.ingest_mail, flask mailtrack ingest-mail): DSNs, ARF complaints,
auto-replies and replies matched to a message really sent through the extension (aiosmtpd on
loopback), with its real Message-ID and VERP envelope sender filled into the samples of
tests/data/inbound/; and hostile input."""
from __future__ import annotations

import email.utils
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack import DNCReason
from crm_mailtrack.inbound_models import inbound
from crm_mailtrack.models import dnc, events, messages
from crm_mailtrack.services import inbound as inbound_service
from crm_mailtrack.services import verp
from crm_mailtrack.state import get_state

DATA = Path(__file__).parent / "data" / "inbound"
SENDER = "crm@shop.test"
BOUNCES = "bounces@crm.shop.test"
SUBJECT = "Autumn offer"
QUOTED = "Our autumn offer: 20% off every box until Friday."


def rows(db, table: sa.Table, **where: Any) -> list[Any]:
    q = sa.select(table).where(*(table.c[k] == v for k, v in where.items()))
    with db.engine.connect() as conn:
        return list(conn.execute(q).mappings())


class Sent:
    """A message sent through the extension, and what the SMTP server received."""

    def __init__(self, app: Any, handler: Any, contact_id: str, email: str, **extra: Any) -> None:
        mt = app.extensions["mailtrack"].extension
        handler.received.clear()
        msg = mt.track_message(contact_id=contact_id, email=email, subject=SUBJECT, campaign_id="autumn",
                               html=f"<p>Hello Ann,<br>{QUOTED}</p>", **extra)
        mt.send(msg)
        [received] = handler.received
        self.id = msg.id
        self.email = email
        self.contact_id = contact_id
        self.mail_from = received.mail_from
        self.message_id = received.message["Message-ID"]

    def render(self, name: str, **override: str) -> bytes:
        values = {"MESSAGE_ID": self.message_id, "BOUNCE_TO": self.mail_from, "SENDER": SENDER,
                  "RCPT": self.email, "SUBJECT": SUBJECT, "MAIL_ID": f"<{uuid.uuid4().hex}@mx.example.net>",
                  "DATE": email.utils.format_datetime(email.utils.localtime()), **override}
        text = (DATA / name).read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace(f"%%{key}%%", value)
        assert "%%" not in text, name
        return text.encode("utf-8")


@pytest.fixture
def mail_app(make_app, _server):
    app = make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER=f"Shop <{SENDER}>",
                   MAILTRACK_BOUNCE_ADDRESS=BOUNCES)
    with app.app_context():
        yield app


@pytest.fixture
def db(mail_app):
    return mail_app.extensions["sqlalchemy"]


@pytest.fixture
def client(mail_app):
    return mail_app.test_client()


@pytest.fixture
def sent(mail_app, handler):
    return Sent(mail_app, handler, "c1", "ann@example.net")


def ingest(app, raw: bytes, **kw: Any):
    return app.extensions["mailtrack"].extension.ingest_mail(raw, **kw)


def result(raw: bytes, **kw: Any) -> inbound_service.IngestResult:
    return inbound_service.ingest(get_state(), raw, **kw)


# -- VERP ------------------------------------------------------------------------------------

def test_the_envelope_sender_is_a_short_signed_verp_address(sent, mail_app):
    local, _, domain = sent.mail_from.rpartition("@")
    assert domain == "crm.shop.test" and len(local) <= 64
    assert re.fullmatch(rf"bounces\+{sent.id}-[a-z2-7]{{16}}", local), local
    state = get_state()
    assert verp.message_id_of(state, sent.mail_from) == sent.id
    assert verp.message_id_of(state, sent.mail_from.upper()) == sent.id  # a server folded the case
    signature = local.rpartition("-")[2]
    other_id = sent.id[:-1] + ("1" if sent.id.endswith("0") else "0")  # never the id itself
    forged = [
        f"bounces+{sent.id}-{'a' * 16}@crm.shop.test",  # made-up signature
        f"bounces+{other_id}-{signature}@crm.shop.test",  # another id, this id's signature
        f"bounces+{sent.id}-{signature}@evil.test",  # another domain
        f"other+{sent.id}-{signature}@crm.shop.test",
        f"bounces+{sent.id}@crm.shop.test", "bounces@crm.shop.test", "", "x" * 400,
        f"bounces+{sent.id}-{'é' * 16}@crm.shop.test",  # a signature that is not ASCII
    ]
    assert [verp.message_id_of(state, a) for a in forged] == [None] * len(forged)


def test_a_verp_address_from_before_a_key_rotation_still_names_its_message(sent, make_app):
    """Bounces come back days after the mail went out: with the signing key moved to the
    fallbacks, the envelope sender of mail sent before still names its message; once the
    old key is retired it names nothing."""
    from conftest import SECRET

    new_key = "key-after-rotation-" + "n" * 24
    rotated = make_app(SECRET_KEY=new_key, MAILTRACK_SECRET_KEY_FALLBACKS=[SECRET], MAILTRACK_BOUNCE_ADDRESS=BOUNCES)
    with rotated.app_context():
        assert verp.message_id_of(get_state(), sent.mail_from) == sent.id
    retired = make_app(SECRET_KEY=new_key, MAILTRACK_BOUNCE_ADDRESS=BOUNCES)
    with retired.app_context():
        assert verp.message_id_of(get_state(), sent.mail_from) is None


def test_without_a_bounce_address_the_envelope_sender_is_the_from_address(make_app, _server, handler):
    app = make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER=f"Shop <{SENDER}>")
    with app.app_context():
        assert Sent(app, handler, "c1", "ann@example.net").mail_from == SENDER


@pytest.mark.parametrize("bad", ["bounces", "bounces+x@crm.shop.test", "a" * 23 + "@crm.shop.test",
                                 "Bounces <bounces@crm.shop.test>", "bounces@", "bounces@-bad-.test", 42])
def test_a_bad_bounce_address_is_refused_at_init_app(make_app, bad):
    from crm_mailtrack import ConfigurationError

    with pytest.raises(ConfigurationError, match="MAILTRACK_BOUNCE_ADDRESS"):
        make_app(MAILTRACK_BOUNCE_ADDRESS=bad)


# -- bounces ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sample, status, diagnostic", [
    ("postfix_hard.eml", "5.1.1", "User unknown in virtual mailbox table"),
    ("gmail_hard.eml", "5.1.1", "The email account that you tried to reach does not exist"),
    ("office365_hard.eml", "5.1.10", "RESOLVER.ADR.RecipientNotFound"),
    ("flufl/exim_01.eml", "5.1.1", "unknown or illegal user"),
    ("flufl/qmail_01.eml", None, None),
    ("flufl/exchange55_01.eml", None, None),
])
def test_a_hard_bounce_is_recorded_and_puts_the_contact_on_dnc(sent, mail_app, db, recorded_signals, sample,
                                                               status, diagnostic):
    [event] = ingest(mail_app, sent.render(sample))
    assert (event.type, event.message_id, event.contact_id, event.email) == ("bounce", sent.id, "c1", sent.email)
    assert event.details["bounceType"] == "hard"
    if status is not None:
        assert event.details["status"] == status
        assert diagnostic in event.details["diagnostic"]
    [entry] = rows(db, dnc, contact_id="c1")
    assert (entry["reason"], entry["channel_id"]) == (int(DNCReason.BOUNCED), sent.id)
    assert recorded_signals.names() == ["dnc_added", "event_recorded", "email_bounced", "event_recorded"]
    assert recorded_signals.of("email_bounced")[0]["event"].id == event.id


def test_soft_bounces_put_the_contact_on_dnc_at_the_limit(mail_app, handler, db):
    sends = [Sent(mail_app, handler, "c1", "ann@example.net") for _ in range(3)]
    for i, s in enumerate(sends):
        [event] = ingest(mail_app, s.render("postfix_soft.eml"))
        assert (event.details["bounceType"], event.details["status"]) == ("soft", "4.2.2")
        assert "Mailbox full" in event.details["diagnostic"]
        assert len(rows(db, dnc)) == (1 if i == 2 else 0)
    assert rows(db, dnc)[0]["comments"] == "3 soft bounces in a row"


def test_a_positive_dsn_is_a_delivery(sent, mail_app, recorded_signals):
    [event] = ingest(mail_app, sent.render("postfix_delivered.eml"))
    assert (event.type, event.details["status"]) == ("delivered", "2.0.0")
    assert recorded_signals.names() == ["email_delivered", "event_recorded"]


def test_a_delay_warning_is_ignored(sent, mail_app, db):
    got = result(sent.render("postfix_delayed.eml"))
    assert (got.status, got.events) == ("ignored", [])
    assert rows(db, events, type="bounce") == []


def test_a_complaint_from_a_feedback_loop(sent, mail_app, db, recorded_signals):
    [event] = ingest(mail_app, sent.render("yahoo_arf.eml"))
    assert (event.type, event.message_id) == ("complaint", sent.id)
    assert event.details["feedbackType"] == "abuse" and event.details["reportedBy"] == "arf.mail.yahoo.com"
    [entry] = rows(db, dnc)
    assert (entry["reason"], entry["comments"]) == (int(DNCReason.UNSUBSCRIBED), "complaint")
    assert "email_complained" in recorded_signals.names()


def test_reports_match_by_message_id_without_verp(make_app, _server, handler):
    """No bounce address: the original headers' Message-ID inside the report decides."""
    app = make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER=f"Shop <{SENDER}>")
    with app.app_context():
        s = Sent(app, handler, "c1", "ann@example.net")
        for sample, kind in (("postfix_hard.eml", "bounce"), ("yahoo_arf.eml", "complaint"),
                             ("flufl/exim_01.eml", "bounce")):
            [event] = ingest(app, s.render(sample, BOUNCE_TO="crm@shop.test"))
            assert (event.type, event.message_id) == (kind, s.id)


# -- auto-replies and replies ----------------------------------------------------------------

@pytest.mark.parametrize("sample", ["autoreply_gmail_vacation.eml", "autoreply_exchange_oof.eml",
                                    "autoreply_outlook_de_subject.eml", "autoreply_vacation_verp.eml"])
def test_an_auto_reply_is_never_a_reply(sent, mail_app, db, recorded_signals, sample):
    [event] = ingest(mail_app, sent.render(sample))
    assert (event.type, event.message_id) == ("auto_reply", sent.id)
    assert rows(db, inbound) == [] and rows(db, dnc) == []
    assert recorded_signals.names() == ["event_recorded"]


@pytest.mark.parametrize("sample, own_text, name", [
    ("reply_en_gmail.eml", "Thanks, I'd like to order 3 more boxes \u2013 can you ship them this week?", "Ann Example"),
    ("reply_de_outlook.eml", "bitte senden Sie mir das Angebot für 20 Stück.", "Anna Müller"),
    ("reply_fr_apple.eml", "Merci, je suis intéressée par l'offre.", "Claire Dupont"),
    ("reply_es_gmail.eml", "¿Tienen también cajas grandes?", "Lucía García"),
    ("reply_nl_outlook.eml", "Graag een offerte voor 50 dozen.", "Joost de Vries"),
])
def test_a_reply_is_stored_for_the_thread(sent, mail_app, db, client, api_headers, recorded_signals, sample,
                                          own_text, name):
    raw = sent.render(sample)
    [event] = ingest(mail_app, raw)
    assert (event.type, event.message_id, event.contact_id) == ("reply", sent.id, "c1")
    [row] = rows(db, inbound)
    assert event.details == {"inboundId": row["id"]} and row["event_id"] == event.id
    assert own_text in row["reply_text"] and QUOTED not in row["reply_text"]
    assert own_text in row["body_text"] and QUOTED in row["body_text"]  # the whole body is kept too
    assert (row["from_email"], row["from_name"], row["in_reply_to"]) == (sent.email, name, sent.message_id)
    replied = recorded_signals.of("email_replied")
    assert len(replied) == 1 and replied[0]["inbound"].id == row["id"] and replied[0]["event"].id == event.id

    answer = client.get(f"/mailtrack/api/communications/{sent.id}/thread", headers=api_headers)
    assert answer.status_code == 200
    [item] = answer.json["inbound"]
    assert item["id"] == row["id"] and item["parentCommunicationId"] == sent.id
    assert (item["fromEmail"], item["fromName"], item["status"]) == (sent.email, name, "NEW")
    assert item["inReplyTo"] == sent.message_id and item["internetMessageId"] == row["internet_message_id"]
    assert item["subject"].endswith(SUBJECT) and own_text in item["bodyText"] and own_text in item["replyText"]
    assert item["receivedAt"] and item["conversationId"] == sent.id
    assert [o["id"] for o in answer.json["outbound"]] == [sent.id]


def test_a_reply_keeps_its_html_and_leaves_attachments_out(sent, mail_app, db):
    ingest(mail_app, sent.render("reply_nl_outlook.eml"))
    [row] = rows(db, inbound)
    assert row["body_html"].startswith("<html>") and "JVBERi0" not in (row["body_text"] + row["body_html"])


def test_with_a_tenant_only_its_messages_match(sent, mail_app, db):
    assert result(sent.render("reply_en_gmail.eml"), tenant_id="t2").status == "unmatched"
    assert rows(db, inbound) == []
    assert len(ingest(mail_app, sent.render("reply_en_gmail.eml"), tenant_id=None)) == 1


# -- exactly once, erasure -------------------------------------------------------------------

@pytest.mark.parametrize("sample", ["postfix_hard.eml", "reply_en_gmail.eml", "yahoo_arf.eml"])
def test_the_same_mail_ingested_twice_is_stored_once(sent, mail_app, db, recorded_signals, sample):
    raw = sent.render(sample)
    assert len(ingest(mail_app, raw)) == 1
    names = recorded_signals.names()
    again = result(raw)
    assert (again.status, again.events) == ("duplicate", [])
    assert recorded_signals.names() == names
    assert len(rows(db, events, message_id=sent.id)) == len(rows(db, events, message_id=sent.id, type="send")) + 1
    assert len(rows(db, inbound)) == (1 if sample.startswith("reply") else 0)


def test_the_same_mail_without_a_message_id_is_stored_once(sent, mail_app, db):
    raw = re.sub(rb"(?m)^Message-ID: .*\n", b"", sent.render("reply_en_gmail.eml"))
    assert b"Message-ID" not in raw
    assert len(ingest(mail_app, raw)) == 1 and ingest(mail_app, raw) == []
    assert len(rows(db, inbound)) == 1


def test_erasing_the_contact_or_deleting_the_message_removes_its_replies(mail_app, handler, db, client,
                                                                         api_headers):
    first, second = (Sent(mail_app, handler, cid, f"{cid}@example.net") for cid in ("c1", "c2"))
    for s in (first, second):
        ingest(mail_app, s.render("reply_en_gmail.eml"))
    assert len(rows(db, inbound)) == 2
    mail_app.extensions["mailtrack"].extension.erase_contact("c1")
    assert [r["contact_id"] for r in rows(db, inbound)] == ["c2"]
    assert client.delete(f"/mailtrack/api/communications/{second.id}", headers=api_headers).status_code == 204
    assert rows(db, inbound) == []


# -- what is skipped -------------------------------------------------------------------------

def test_mail_about_a_cc_recipient_does_not_touch_the_contact(mail_app, handler, db):
    s = Sent(mail_app, handler, "c1", "ann@example.net")
    session = get_state().session
    session.execute(sa.update(messages).where(messages.c.id == s.id).values(cc=["boss@example.net"]))
    session.commit()
    got = result(s.render("postfix_hard.eml", RCPT="boss@example.net"))
    assert (got.status, got.events) == ("ignored", []) and rows(db, dnc) == []


def test_a_forged_verp_tag_matches_nothing(sent, mail_app, db):
    other_id = "0" * 24
    forged = f"bounces+{other_id}-{sent.mail_from.rpartition('-')[2]}"
    raw = sent.render("flufl/qmail_01.eml", BOUNCE_TO=forged)
    assert result(raw).status == "unmatched"
    assert rows(db, dnc) == [] and rows(db, events, type="bounce") == []


def test_mail_naming_no_message_of_ours_is_unmatched(sent, mail_app):
    raw = sent.render("reply_en_gmail.eml", MESSAGE_ID="<unknown@elsewhere.test>")
    assert result(raw).status == "unmatched"
    plain = b"From: someone@example.net\nTo: crm@shop.test\nSubject: hello\nMessage-ID: <x@y.test>\n\nhi\n"
    assert result(plain).status == "ignored"


@pytest.mark.parametrize("raw", [
    b"", b"   \r\n", b"\x00\xff\xfe garbage \x80\x81" * 50, b"not a header line at all\n\nbody",
    b"From: a@b.test\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"x\"\n\n--x\n"
    b"Content-Type: message/delivery-status\n\n\xff\xfe\n\n--x",  # a report with a broken status part
    b"From: MAILER-DAEMON@x.test\nSubject: Undelivered Mail\nContent-Type: text/plain; charset=no-such-charset\n\n"
    b"\xff\xfe 550 5.1.1 <a@b.test>",
])
def test_malformed_mail_is_skipped_not_raised(sent, mail_app, db, raw):
    got = result(raw)
    assert got.events == [] and got.status in ("malformed", "ignored", "unmatched")
    assert ingest(mail_app, raw) == []
    assert rows(db, events, type="bounce") == []


def test_absurdly_deep_mime_nesting_is_skipped(sent, mail_app, db):
    depth = 300
    head = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(depth))
    tail = "".join(f"\n--b{i}--\n" for i in reversed(range(depth)))
    raw = (f"From: MAILER-DAEMON@x.test\nIn-Reply-To: {sent.message_id}\nMIME-Version: 1.0\n" + head
           + "Content-Type: text/plain\n\n550 5.1.1 user unknown\n" + tail).encode()
    got = result(raw)
    assert (got.status, got.events) == ("too-deep", [])
    assert rows(db, events, type="bounce") == [] and rows(db, dnc) == []


def test_huge_mail_is_skipped(make_app, _server, handler, tmp_path):
    app = make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER=SENDER,
                   MAILTRACK_BOUNCE_ADDRESS=BOUNCES, MAILTRACK_INBOUND_MAX_BYTES=20_000)
    with app.app_context():
        s = Sent(app, handler, "c1", "ann@example.net")
        raw = s.render("reply_en_gmail.eml").replace(b"Ann\n", b"Ann\n" + b"x" * 30_000 + b"\n", 1)
        got = result(raw)
        assert (got.status, got.events) == ("too-large", [])
        runner = app.test_cli_runner()
        out = runner.invoke(args=["mailtrack", "ingest-mail"], input=raw)
        assert out.exit_code == 0 and "too-large" in out.output


# -- the command -----------------------------------------------------------------------------

def test_ingest_mail_command_from_a_file_and_from_stdin(sent, mail_app, db, tmp_path):
    runner = mail_app.test_cli_runner()
    path = tmp_path / "bounce.eml"
    path.write_bytes(sent.render("postfix_hard.eml"))
    out = runner.invoke(args=["mailtrack", "ingest-mail", str(path)])
    assert out.exit_code == 0, out.output
    assert "recorded bounce" in out.output and sent.id in out.output
    out = runner.invoke(args=["mailtrack", "ingest-mail"], input=path.read_bytes())
    assert out.exit_code == 0 and "duplicate" in out.output
    out = runner.invoke(args=["mailtrack", "ingest-mail"], input=sent.render("reply_de_outlook.eml"))
    assert out.exit_code == 0 and "recorded reply" in out.output
    out = runner.invoke(args=["mailtrack", "ingest-mail"], input=b"garbage")
    assert out.exit_code == 0 and "malformed" in out.output
    assert len(rows(db, events, type="bounce")) == 1 and len(rows(db, inbound)) == 1


def test_ingest_mail_command_takes_the_envelope_recipient(sent, mail_app):
    raw = re.sub(rb"(?m)^(To|Delivered-To): .*\n", b"", sent.render("flufl/qmail_01.eml"))
    assert result(raw).status == "unmatched"  # nothing in the mail names the message
    out = mail_app.test_cli_runner().invoke(args=["mailtrack", "ingest-mail", "--recipient", sent.mail_from],
                                            input=raw)
    assert out.exit_code == 0 and "recorded bounce" in out.output


def test_ingest_mail_command_asks_the_mail_server_to_retry_when_the_database_is_down(sent, mail_app):
    raw = sent.render("postfix_hard.eml")
    get_state().session.remove()  # no open transaction (PostgreSQL's DROP TABLE would wait for it)
    mt = mail_app.extensions["mailtrack"].extension
    mt.drop_all()
    try:
        out = mail_app.test_cli_runner().invoke(args=["mailtrack", "ingest-mail"], input=raw)
        assert out.exit_code == 75, out.output
        assert "stays with the mail server" in out.output and "init-db" in out.output
    finally:
        get_state().session.remove()
        mt.create_all()  # the PostgreSQL schema is shared by the process's tests


# -- reports ---------------------------------------------------------------------------------

def test_bounces_and_complaints_in_analytics(mail_app, handler, client, api_headers):
    sends = [Sent(mail_app, handler, f"c{i}", f"c{i}@example.net") for i in range(5)]
    ingest(mail_app, sends[0].render("postfix_hard.eml"))
    ingest(mail_app, sends[1].render("yahoo_arf.eml"))
    ingest(mail_app, sends[2].render("reply_en_gmail.eml"))
    for query in ("", "?campaignId=autumn"):
        got = client.get(f"/mailtrack/api/communications/analytics{query}", headers=api_headers).json
        assert (got["totalSent"], got["totalBounced"], got["totalDelivered"], got["totalComplained"]) == (5, 1, 4, 1)
        assert (got["bounceRate"], got["complaintRate"]) == (0.2, 0.25)


def test_complaints_and_replies_in_campaign_reports_and_audiences(mail_app, handler, client, api_headers):
    sends = [Sent(mail_app, handler, f"c{i}", f"c{i}@example.net") for i in range(3)]
    ingest(mail_app, sends[0].render("yahoo_arf.eml"))
    ingest(mail_app, sends[1].render("reply_fr_apple.eml"))
    ingest(mail_app, sends[2].render("autoreply_exchange_oof.eml"))
    api = "/mailtrack/api"
    for action, expect in (("complained", ["c0"]), ("replied", ["c1"])):
        got = client.get(f"{api}/campaigns/autumn/audience?action={action}", headers=api_headers)
        assert got.status_code == 200 and [r["contactId"] for r in got.json["results"]] == expect
    for kind, expect in (("complaints", ["c0"]), ("replies", ["c1"])):
        got = client.get(f"{api}/campaigns/autumn/tracking/{kind}", headers=api_headers)
        assert got.status_code == 200, got.json
        assert [r["contact_id"] for r in got.json["results"]] == expect
    got = client.get(f"{api}/contacts/c1/events/replies", headers=api_headers)
    assert got.status_code == 200 and len(got.json["events"]) == 1
    engagement = client.get(f"{api}/contacts/c1/engagement", headers=api_headers).json
    assert engagement["replies"] == 1
    assert client.get(f"{api}/contacts/c2/engagement", headers=api_headers).json["replies"] == 0


def test_a_reply_of_blank_lines_and_quote_marks_is_read(sent, mail_app, db):
    """Runs of blank lines made the reply parser's regexes quadratic (seconds per mail)."""
    raw = sent.render("reply_en_gmail.eml")
    raw = raw.replace(b"Ann\n", b"Ann\n" + b" \n" * 60_000 + b">\n" * 5_000, 1)
    [event] = ingest(mail_app, raw)
    [row] = rows(db, inbound)
    assert event.type == "reply" and row["reply_text"].startswith("Thanks, I'd like to order")


def test_two_fetchers_ingesting_the_same_mail_at_once_store_it_once(sent, mail_app, db):
    import threading

    raws = [sent.render("reply_en_gmail.eml"), sent.render("postfix_hard.eml")]
    get_state().session.commit()
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def fetcher(raw: bytes) -> None:
        with mail_app.app_context():
            barrier.wait()
            outcomes.append(result(raw).status)

    threads = [threading.Thread(target=fetcher, args=(raw,)) for raw in raws for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["duplicate", "duplicate", "recorded", "recorded"]
    assert len(rows(db, inbound)) == 1 and len(rows(db, events, type="reply")) == 1
    assert len(rows(db, events, type="bounce")) == 1 and len(rows(db, dnc)) == 1


def test_a_dsn_naming_several_recipients_records_the_contacts_outcome(mail_app, handler, db):
    s = Sent(mail_app, handler, "c1", "ann@example.net")
    session = get_state().session
    session.execute(sa.update(messages).where(messages.c.id == s.id).values(cc=["boss@example.net"]))
    session.commit()
    raw = s.render("postfix_hard.eml").decode()
    boss = ("Final-Recipient: rfc822; boss@example.net\nAction: failed\nStatus: 5.7.1\n"
            "Diagnostic-Code: smtp; 550 5.7.1 rejected by policy\n\n")
    ann = "Final-Recipient: rfc822; ann@example.net"
    raw = raw.replace(ann, boss + ann, 1).replace("Status: 5.1.1", "Status: 4.2.2", 1)
    [event] = ingest(mail_app, raw.encode())
    assert (event.details["bounceType"], event.details["status"], event.details["recipient"]) == (
        "soft", "4.2.2", "ann@example.net")
    assert rows(db, dnc) == []  # one soft bounce: under the limit


def test_an_ip_address_is_not_a_status_code(sent, mail_app):
    raw = sent.render("flufl/exim_01.eml").replace(b"553 5.1.1 unknown", b"553 unknown", 1)
    raw = raw.replace(b"host mailhost1.et.example.nl [130.161.33.163]", b"host mx [10.4.2.1]", 1)
    [event] = ingest(mail_app, raw)
    assert event.details["bounceType"] == "hard" and "status" not in event.details
    assert event.details["smtpCode"] == "553"
