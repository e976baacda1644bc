"""``flask mailtrack fetch-inbox`` against a real Dovecot on loopback: the command's output,
counts and exit status, what it leaves on the server, its errors (no traceback, never the
password), and, once ``MailTrack.ingest_mail`` is in the build, mail sent through the
extension coming back as a bounce and a reply."""
from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from crm_mailtrack import MailTrack
from crm_mailtrack.services.inbox import FetchReport, fetch_inbox

import imapserver
from imapserver import STORED_FLAGS, USER, Dovecot, flags_by_subject, mail

pytestmark = pytest.mark.skipif(imapserver.available() is not None, reason=str(imapserver.available()))


@pytest.fixture(scope="module")
def _dovecot() -> Iterator[Dovecot]:
    with Dovecot() as server:
        yield server


@pytest.fixture
def fresh_dovecot() -> Iterator[Dovecot]:
    """A server of the test's own: after a failed login, Dovecot delays the next logins from
    the same address by seconds (its auth penalty), so each such test fails once, here."""
    with Dovecot() as server:
        yield server


@pytest.fixture
def dovecot(_dovecot: Dovecot) -> Dovecot:
    """The module's server with an empty INBOX."""
    _dovecot.empty()
    return _dovecot


# -- flask mailtrack fetch-inbox -------------------------------------------------------------

class HostMailTrack(MailTrack):
    """A host's MailTrack whose ``ingest_mail`` records a ``bounce`` event for mail from
    ``mailer-daemon`` (the command's plumbing under test: app context, tenant, outcomes)."""

    def ingest_mail(self, raw: bytes, *, tenant_id: Any = None) -> list[Any]:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        if msg["X-Test"] == "fail":
            raise RuntimeError("could not store it")
        if "mailer-daemon" not in str(msg["From"]):
            return []
        return [self.record_event("c1", "bounce", email="ann@example.com", tenant_id=tenant_id,
                                  details={"subject": str(msg["Subject"])})]


def _events(app: Any) -> list[tuple[str, str | None, str]]:
    import sqlalchemy as sa

    from crm_mailtrack.models import events

    session = app.extensions["mailtrack"].session
    return [tuple(r) for r in session.execute(sa.select(events.c.type, events.c.tenant_id, events.c.details))]


def test_fetch_inbox_command_ingests_marks_and_reports(make_app, dovecot: Dovecot) -> None:
    dovecot.append(mail("bounced"))
    dovecot.append(mail("a person", extra="").replace(b"mailer-daemon@mx.test", b"ann@example.com"))
    app = make_app(mailtrack=HostMailTrack(), MAILTRACK_INBOX_URL=dovecot.url("imaps"))

    result = app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox", "--tenant", "t1"])

    assert result.exit_code == 0, result.output
    user = quote(USER, safe="")
    assert f"mailtrack: imaps://{user}@127.0.0.1:{dovecot.ports['imaps']}/INBOX: 2 fetched: 1 stored, " \
           "0 duplicate, 1 ignored (unmatched), 0 malformed, 0 failed" in result.stdout
    assert "Fetching" in result.stderr  # the progress bar
    with app.app_context():
        assert [(t, tenant, d["subject"]) for t, tenant, d in _events(app)] == [("bounce", "t1", "bounced")]
    assert flags_by_subject(dovecot) == {"bounced": STORED_FLAGS, "a person": {"$MailtrackIgnored"}}

    again = app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox", "--tenant", "t1"])
    assert again.exit_code == 0 and "0 fetched" in again.stdout
    with app.app_context():
        assert len(_events(app)) == 1


def test_fetch_inbox_command_exits_1_when_a_message_failed(make_app, dovecot: Dovecot) -> None:
    dovecot.append(mail("bounced"))
    dovecot.append(mail("failing", extra="X-Test: fail\r\n"))
    app = make_app(mailtrack=HostMailTrack(), MAILTRACK_INBOX_URL=dovecot.url("pop3s"))
    result = app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox"])
    assert result.exit_code == 1
    assert "1 stored, 0 duplicate, 0 ignored (unmatched), 0 malformed, 1 failed" in result.stdout
    assert "message " in result.stderr and "RuntimeError: could not store it" in result.stderr
    assert "Error: 1 message failed and stays on the server for the next run" in result.stderr
    assert "Traceback" not in result.output
    assert list(flags_by_subject(dovecot)) == ["failing"]  # POP3: the stored one is deleted


@pytest.mark.parametrize("scheme", ["imaps", "pop3s", "imap"])
def test_fetch_inbox_command_with_a_wrong_password_is_a_clear_error(make_app, fresh_dovecot: Dovecot,
                                                                    scheme: str) -> None:
    dovecot = fresh_dovecot
    app = make_app(mailtrack=HostMailTrack(), MAILTRACK_INBOX_URL=dovecot.url(scheme, password="Wr0ng-pw"))
    result = app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert f"Error: login as '{USER}' refused by the {scheme[:4].upper()} server 127.0.0.1:" in result.stderr
    assert "Wr0ng-pw" not in result.output and "Traceback" not in result.output


def test_fetch_inbox_command_errors_without_an_inbox_url_or_ingest_mail(make_app, dovecot: Dovecot) -> None:
    result = make_app(mailtrack=HostMailTrack()).test_cli_runner().invoke(args=["mailtrack", "fetch-inbox"])
    assert result.exit_code == 1 and "Error: MAILTRACK_INBOX_URL is not set" in result.stderr
    if not hasattr(MailTrack, "ingest_mail"):
        app = make_app(MAILTRACK_INBOX_URL=dovecot.url("imap"))
        result = app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox"])
        assert result.exit_code == 1 and "has no MailTrack.ingest_mail" in result.stderr


# -- end to end: mail sent through the extension comes back ---------------------------------

def _dsn(sent: Any, recipient: str, n: int) -> bytes:
    """A Postfix-style RFC 3464 bounce of ``sent`` (a message the recording SMTP server
    received), addressed to its envelope sender, quoting its headers."""
    headers = sent.raw.split(b"\r\n\r\n", 1)[0].decode()
    return (
        f"Return-Path: <>\r\nFrom: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\n"
        f"To: {sent.mail_from}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Date: Mon, 30 Nov 2026 10:00:0{n} +0000\r\nMessage-ID: <dsn-{n}@mx.example.com>\r\n"
        f"Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="B{n}"\r\n\r\n'
        f"--B{n}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"This is the mail system at host mx.example.com.\r\n\r\nI'm sorry to have to inform you that your "
        f"message could not\r\nbe delivered to one or more recipients.\r\n\r\n<{recipient}>: host "
        f"mx.example.com[192.0.2.25] said: 550 5.1.1\r\n    <{recipient}>: Recipient address rejected: User "
        f"unknown\r\n\r\n--B{n}\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.com\r\nArrival-Date: Mon, 30 Nov 2026 09:59:58 +0000\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nOriginal-Recipient: rfc822;{recipient}\r\nAction: failed\r\n"
        f"Status: 5.1.1\r\nRemote-MTA: dns; mx.example.com\r\nDiagnostic-Code: smtp; 550 5.1.1 <{recipient}>: "
        f"Recipient address rejected: User unknown\r\n\r\n"
        f"--B{n}\r\nContent-Type: text/rfc822-headers\r\n\r\n{headers}\r\n--B{n}--\r\n"
    ).encode()


def _reply(sent: Any, sender: str) -> bytes:
    original = email.message_from_bytes(sent.raw, policy=email.policy.default)
    return (
        f"From: Bob <{sender}>\r\nTo: {original['From']}\r\nSubject: Re: {original['Subject']}\r\n"
        f"Date: Mon, 30 Nov 2026 11:00:00 +0000\r\nMessage-ID: <reply-1@mail.example.net>\r\n"
        f"In-Reply-To: {original['Message-ID']}\r\nReferences: {original['Message-ID']}\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Yes please, send me the offer.\r\n\r\nOn Mon, 30 Nov 2026, CRM wrote:\r\n> Hello Bob\r\n"
    ).encode()


def _types(app: Any, message_id: str) -> list[str]:
    import sqlalchemy as sa

    from crm_mailtrack.models import events

    session = app.extensions["mailtrack"].session
    return sorted(session.execute(sa.select(events.c.type).where(events.c.message_id == message_id)).scalars())


@pytest.mark.skipif(not hasattr(MailTrack, "ingest_mail"), reason="MailTrack.ingest_mail is not in this build")
def test_bounce_and_reply_to_sent_mail_come_back_through_fetch_inbox(make_app, dovecot: Dovecot, _server: Any,
                                                                     handler: Any) -> None:
    app = make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER="CRM <crm@crm.test>",
                   MAILTRACK_BOUNCE_ADDRESS="bounces@crm.test", MAILTRACK_INBOX_URL=dovecot.url("imaps"))
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        ann = mt.send(mt.track_message(contact_id="ann", email="ann@example.com", subject="Your offer",
                                       html="<p>Hello Ann</p>"))
        bob = mt.send(mt.track_message(contact_id="bob", email="bob@example.net", subject="Your offer",
                                       html="<p>Hello Bob</p>"))
        ann_id, bob_id = ann.id, bob.id
    to_ann, to_bob = sorted(handler.received, key=lambda r: r.rcpt_tos[0])
    assert to_ann.rcpt_tos == ["ann@example.com"] and to_bob.rcpt_tos == ["bob@example.net"]
    dovecot.append(_dsn(to_ann, "ann@example.com", 1))
    dovecot.append(_reply(to_bob, "bob@example.net"))
    dovecot.append(mail("unrelated").replace(b"mailer-daemon@mx.test", b"someone@else.test"))

    result = app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox"])

    assert result.exit_code == 0, result.output
    assert "3 fetched: 2 stored, 0 duplicate, 1 ignored (unmatched), 0 malformed, 0 failed" in result.stdout
    with app.app_context():
        assert "bounce" in _types(app, ann_id) and "reply" in _types(app, bob_id)
        assert app.extensions["mailtrack"].extension.can_contact("ann") is False  # a hard bounce
        before = (_types(app, ann_id), _types(app, bob_id))
    assert flags_by_subject(dovecot) == {"Undelivered Mail Returned to Sender": STORED_FLAGS,
                                         "Re: Your offer": STORED_FLAGS, "unrelated": {"$MailtrackIgnored"}}

    # the same bounce delivered again, read by two fetchers at once: still stored once
    dovecot.append(_dsn(to_ann, "ann@example.com", 1))
    dovecot.append(_dsn(to_ann, "ann@example.com", 1))

    def ingest(raw: bytes) -> Any:
        with app.app_context():
            return app.extensions["mailtrack"].extension.ingest_mail(raw)

    reports: list[FetchReport] = []
    threads = [threading.Thread(target=lambda: reports.append(fetch_inbox(
        app.extensions["mailtrack"].settings.inbox, ingest, delete=True))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(reports) == 2 and sum(r.failed + r.malformed for r in reports) == 0
    assert sum(r.fetched for r in reports) >= 2
    with app.app_context():
        assert (_types(app, ann_id), _types(app, bob_id)) == before
    assert "0 fetched" in app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox"]).stdout
    # every copy is either deleted (stored again = duplicate) or marked; none is left unread for the machine
    left = dovecot.mailbox()
    assert 3 <= len(left) <= 5
    assert all(flags & {"$MailtrackStored", "$MailtrackIgnored"} for flags, _ in left.values())

