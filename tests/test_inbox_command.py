"""``flask mailtrack fetch-inbox`` against a real Dovecot on loopback, with the real
``services.inbound.ingest`` on SQLite and PostgreSQL: mail sent through the extension (to a
recording SMTP server) comes back as bounces (quoting the original, or naming it by its VERP
envelope address only) and replies; the command's output, counts and exit status; what it
leaves on the server (stored and duplicate mail marked or deleted, unmatched mail marked
ignored, failed mail untouched); two fetchers deleting from one mailbox at once; its errors
(no traceback, never the password)."""
from __future__ import annotations

import email
import email.parser
import email.policy
import threading
from typing import Any
from urllib.parse import quote

import pytest

from crm_mailtrack import signals
from crm_mailtrack.services import inbound
from crm_mailtrack.services.inbox import FetchReport, InboxFetcher, fetch_inbox

from conftest import API_TOKEN

import imapserver
from imapserver import (  # noqa: F401 - _dovecot, dovecot, fresh_dovecot: fixtures
    STORED_FLAGS, USER, Dovecot, _dovecot, dovecot, fresh_dovecot, flags_by_subject, mail,
)

pytestmark = pytest.mark.skipif(imapserver.available() is not None, reason=str(imapserver.available()))


# -- mail that comes back --------------------------------------------------------------------

def _dsn(sent: Any, recipient: str, n: int) -> bytes:
    """A Postfix-style RFC 3464 bounce of ``sent`` (a message the recording SMTP server
    received), addressed to its envelope sender, quoting its headers."""
    headers = sent.raw.split(b"\r\n\r\n", 1)[0].decode()
    return (
        f"Return-Path: <>\r\nFrom: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\n"
        f"To: {sent.mail_from}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Date: Mon, 30 Nov 2026 10:00:{n % 60:02d} +0000\r\nMessage-ID: <dsn-{n}@mx.example.com>\r\n"
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


def _verp_only_dsn(envelope_to: str, recipient: str, n: int) -> bytes:
    """An Exim-style RFC 3464 bounce that returns nothing of the original (no headers, no
    Message-ID): only the address it was delivered to (``Delivered-To``, as Postfix's
    ``flags=D`` and Dovecot's LDA write it) can name the message."""
    return (
        f"Return-Path: <>\r\nDelivered-To: {envelope_to}\r\n"
        f"From: Mail Delivery System <Mailer-Daemon@mx.example.org>\r\nTo: {envelope_to}\r\n"
        f"Subject: Mail delivery failed: returning message to sender\r\n"
        f"Date: Mon, 30 Nov 2026 10:05:00 +0000\r\nMessage-ID: <E1verp-{n}@mx.example.org>\r\n"
        f"Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="V{n}"\r\n\r\n'
        f"--V{n}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nThis message was created automatically by "
        f"mail delivery software.\r\n\r\nA message that you sent could not be delivered to one or more of\r\n"
        f"its recipients. This is a permanent error.\r\n\r\n  {recipient}\r\n    host mx.example.org "
        f"[192.0.2.7]\r\n    SMTP error from remote mail server after RCPT TO:<{recipient}>:\r\n"
        f"    550 5.1.1 No such user\r\n\r\n"
        f"--V{n}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n"
        f"Action: failed\r\nFinal-Recipient: rfc822;{recipient}\r\nStatus: 5.1.1\r\n"
        f"Remote-MTA: dns; mx.example.org\r\nDiagnostic-Code: smtp; 550 5.1.1 No such user\r\n\r\n--V{n}--\r\n"
    ).encode()


def _deep(levels: int) -> bytes:
    """Multiparts nested ``levels`` deep (the service skips over 20 as too-deep)."""
    return b"Subject: deep\r\nMessage-ID: <deep@mx.test>\r\nMIME-Version: 1.0\r\n" + b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(levels)
    ) + b"Content-Type: text/plain\r\n\r\nhi\r\n" + b"".join(b"--b%d--\r\n" % i for i in reversed(range(levels)))


def _types(app: Any, message_id: str) -> list[str]:
    import sqlalchemy as sa

    from crm_mailtrack.models import events

    with app.app_context():
        session = app.extensions["mailtrack"].session
        return sorted(session.execute(sa.select(events.c.type).where(events.c.message_id == message_id)).scalars())


def _events(app: Any) -> list[tuple[str, str, str]]:
    """``(type, tenant key, message id)`` of every event received mail can record, sorted."""
    import sqlalchemy as sa

    from crm_mailtrack.models import events

    with app.app_context():
        session = app.extensions["mailtrack"].session
        rows = session.execute(sa.select(events.c.type, events.c.tenant_id, events.c.message_id)
                               .where(events.c.type.in_(["bounce", "complaint", "reply", "auto_reply", "delivered"])))
        return sorted(tuple(r) for r in rows)


def _by_message_id(dovecot: Dovecot) -> dict[str, set[str]]:
    """The flags of each message left on the server, by its Message-ID."""
    return {email.parser.BytesHeaderParser().parsebytes(raw)["Message-ID"]: flags
            for flags, raw in dovecot.mailbox().values()}


def _sending_app(make_app: Any, _server: Any, dovecot: Dovecot, scheme: str = "imaps", **config: Any) -> Any:
    return make_app(MAILTRACK_SMTP_URL=_server.url(), MAILTRACK_DEFAULT_SENDER="CRM <crm@crm.test>",
                    MAILTRACK_INBOX_URL=dovecot.url(scheme), **config)


def _send(app: Any, handler: Any, *people: tuple[str, str | None]) -> tuple[list[str], list[Any]]:
    """Send one message to each ``(address, tenant)`` through the extension and SMTP; return
    their ids and what the SMTP server received for each, in the same order."""
    ids = []
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        for address, tenant in people:
            msg = mt.track_message(contact_id=address.split("@")[0], email=address, subject="Your offer",
                                   html=f"<p>Hello {address}</p>", tenant_id=tenant)
            ids.append(mt.send(msg).id)
    by_rcpt = {r.rcpt_tos[0]: r for r in handler.received}
    return ids, [by_rcpt[address] for address, _ in people]


def _threaded_ingest(app: Any) -> Any:
    """The command's ingest for a fetcher in a thread of its own (its own app context)."""
    state = app.extensions["mailtrack"]

    def ingest(raw: bytes) -> inbound.IngestResult:
        with app.app_context():
            return inbound.ingest(state, raw)

    return ingest


# -- flask mailtrack fetch-inbox -------------------------------------------------------------

def test_fetch_inbox_command_ingests_marks_and_reports(make_app, dovecot: Dovecot, _server: Any,
                                                       handler: Any) -> None:
    app = _sending_app(make_app, _server, dovecot)
    (t1_id, _), (to_t1, to_t2) = _send(app, handler, ("ann@example.com", "t1"), ("cy@example.org", "t2"))
    dovecot.append(_dsn(to_t1, "ann@example.com", 1))
    dovecot.append(_dsn(to_t2, "cy@example.org", 2))  # another tenant's message: --tenant t1 matches nothing
    dovecot.append(mail("a person").replace(b"mailer-daemon@mx.test", b"someone@example.com"))
    dovecot.append(_deep(30))

    result = app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox", "--tenant", "t1"])

    assert result.exit_code == 0, result.output
    user = quote(USER, safe="")
    assert f"mailtrack: imaps://{user}@127.0.0.1:{dovecot.ports['imaps']}/INBOX: 4 fetched: 1 stored, " \
           "0 duplicate, 2 ignored (unmatched), 1 malformed, 0 failed\n" in result.stdout
    assert "Fetching" in result.stderr  # the progress bar
    assert ": too-deep: " in result.stderr  # the malformed one, with the service's reason
    assert _events(app) == [("bounce", "t1", t1_id)]
    assert _by_message_id(dovecot) == {"<dsn-1@mx.example.com>": STORED_FLAGS,
                                       "<dsn-2@mx.example.com>": {"$MailtrackIgnored"},
                                       "<a-person@mx.test>": {"$MailtrackIgnored"},
                                       "<deep@mx.test>": {"$MailtrackSkipped"}}

    again = app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox", "--tenant", "t1"])
    assert again.exit_code == 0 and "0 fetched" in again.stdout
    assert _events(app) == [("bounce", "t1", t1_id)]


def test_a_failed_message_stays_and_comes_back_as_a_duplicate_that_is_deleted(make_app, dovecot: Dovecot,
                                                                              _server: Any, handler: Any) -> None:
    """A host's ``email_bounced`` subscriber raises after the commit: the bounce is stored, the
    run says failed and leaves the mail (exit 1); the next run finds it stored before
    (duplicate) and deletes it like stored mail, with no second event."""
    app = _sending_app(make_app, _server, dovecot, "pop3s")
    (ann_id, bob_id), (to_ann, to_bob) = _send(app, handler, ("ann@example.com", None), ("bob@example.net", None))
    dovecot.append(_dsn(to_ann, "ann@example.com", 1))
    dovecot.append(_reply(to_bob, "bob@example.net"))

    def subscriber(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("the host's subscriber broke")

    with signals.email_bounced.connected_to(subscriber):
        result = app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox"])
    assert result.exit_code == 1
    assert "2 fetched: 1 stored, 0 duplicate, 0 ignored (unmatched), 0 malformed, 1 failed" in result.stdout
    assert "RuntimeError: the host's subscriber broke" in result.stderr
    assert "Error: 1 message failed and stays on the server for the next run" in result.stderr
    assert "Traceback" not in result.output
    assert list(flags_by_subject(dovecot)) == ["Undelivered Mail Returned to Sender"]  # POP3: the reply is deleted

    again = app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox"])
    assert again.exit_code == 0, again.output
    assert "1 fetched: 0 stored, 1 duplicate, 0 ignored (unmatched), 0 malformed, 0 failed" in again.stdout
    assert dovecot.mailbox() == {}
    assert _types(app, ann_id) == ["bounce", "send"] and _types(app, bob_id) == ["reply", "send"]


@pytest.mark.parametrize("scheme", ["imaps", "pop3s", "imap"])
def test_fetch_inbox_command_with_a_wrong_password_is_a_clear_error(make_app, fresh_dovecot: Dovecot,
                                                                    scheme: str) -> None:
    dovecot = fresh_dovecot
    app = make_app(MAILTRACK_INBOX_URL=dovecot.url(scheme, password="Wr0ng-pw"))
    result = app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert f"Error: login as '{USER}' refused by the {scheme[:4].upper()} server 127.0.0.1:" in result.stderr
    assert "Wr0ng-pw" not in result.output and "Traceback" not in result.output


def test_fetch_inbox_command_errors_without_an_inbox_url(make_app) -> None:
    result = make_app().test_cli_runner().invoke(args=["mailtrack", "fetch-inbox"])
    assert result.exit_code == 1 and "Error: MAILTRACK_INBOX_URL is not set" in result.stderr


# -- end to end: mail sent through the extension comes back ---------------------------------

def test_bounce_and_reply_to_sent_mail_come_back_through_fetch_inbox(make_app, dovecot: Dovecot, _server: Any,
                                                                     handler: Any) -> None:
    app = _sending_app(make_app, _server, dovecot, MAILTRACK_BOUNCE_ADDRESS="bounces@crm.test")
    (ann_id, bob_id), (to_ann, to_bob) = _send(app, handler, ("ann@example.com", None), ("bob@example.net", None))
    dovecot.append(_dsn(to_ann, "ann@example.com", 1))
    dovecot.append(_reply(to_bob, "bob@example.net"))
    dovecot.append(mail("unrelated").replace(b"mailer-daemon@mx.test", b"someone@else.test"))

    result = app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox"])

    assert result.exit_code == 0, result.output
    assert "3 fetched: 2 stored, 0 duplicate, 1 ignored (unmatched), 0 malformed, 0 failed" in result.stdout
    assert _types(app, ann_id) == ["bounce", "send"] and _types(app, bob_id) == ["reply", "send"]
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        assert mt.can_contact("ann") is False and mt.can_contact("bob") is True  # a hard bounce; a reply
    assert flags_by_subject(dovecot) == {"Undelivered Mail Returned to Sender": STORED_FLAGS,
                                         "Re: Your offer": STORED_FLAGS, "unrelated": {"$MailtrackIgnored"}}
    with app.test_client() as client:
        thread = client.get(f"/mailtrack/api/communications/{bob_id}/thread",
                            headers={"Authorization": f"Bearer {API_TOKEN}"}).get_json()
    (reply,) = thread["inbound"]
    assert (reply["fromEmail"], reply["replyText"]) == ("bob@example.net", "Yes please, send me the offer.")

    # the same bounce delivered twice more, read by two fetchers at once with --delete: no
    # second event; both copies are duplicates and deleted, the rest stays as it was
    dovecot.append(_dsn(to_ann, "ann@example.com", 1))
    dovecot.append(_dsn(to_ann, "ann@example.com", 1))
    ingest = _threaded_ingest(app)
    reports: list[FetchReport] = []
    threads = [threading.Thread(target=lambda: reports.append(fetch_inbox(
        app.extensions["mailtrack"].settings.inbox, ingest, delete=True))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(reports) == 2 and sum(r.stored + r.ignored + r.failed + r.malformed for r in reports) == 0
    assert sum(r.duplicate for r in reports) >= 2
    assert _types(app, ann_id) == ["bounce", "send"] and _types(app, bob_id) == ["reply", "send"]
    assert flags_by_subject(dovecot) == {"Undelivered Mail Returned to Sender": STORED_FLAGS,
                                         "Re: Your offer": STORED_FLAGS, "unrelated": {"$MailtrackIgnored"}}
    assert "0 fetched" in app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox"]).stdout


def test_two_fetchers_deleting_at_once_store_each_mail_once_and_delete_all_they_stored(
        make_app, dovecot: Dovecot, _server: Any, handler: Any) -> None:
    """The cron overlap with the real ingest: both fetchers list the whole mailbox before either
    handles a message. Each received mail is recorded once; whatever one fetcher found stored
    by the other (flags, gone, or the service's ``duplicate``) is deleted too; only the mail
    that matches nothing is left, marked ignored."""
    count = 12
    app = _sending_app(make_app, _server, dovecot, "imap")
    ids, sent = _send(app, handler, *[(f"p{n}@example.com", None) for n in range(count)])
    for n, to in enumerate(sent):
        dovecot.append(_dsn(to, f"p{n}@example.com", n))
    for n in (0, 5, 11):  # delivered twice (an MTA that retried): the same Message-ID again
        dovecot.append(_dsn(sent[n], f"p{n}@example.com", n))
    dovecot.append(mail("unrelated one").replace(b"mailer-daemon@mx.test", b"someone@else.test"))
    dovecot.append(mail("unrelated two").replace(b"mailer-daemon@mx.test", b"someone@else.test"))

    ingest = _threaded_ingest(app)
    fetchers = [InboxFetcher(app.extensions["mailtrack"].settings.inbox, ingest, delete=True, batch_size=5)
                for _ in range(2)]
    assert [f.count() for f in fetchers] == [count + 5, count + 5]
    reports = imapserver.run_at_once(fetchers, timeout=180)

    assert len(reports) == 2, reports
    assert [r.stopped for r in reports] == [None, None] and sum(r.failed + r.malformed for r in reports) == 0
    assert sum(r.stored for r in reports) == count  # each distinct bounce recorded by exactly one
    assert sum(r.duplicate for r in reports) >= 3  # the re-delivered copies at least
    assert 2 <= sum(r.ignored for r in reports) <= 4  # the unrelated two, by one fetcher or both
    assert _events(app) == sorted(("bounce", "", i) for i in ids)
    assert _by_message_id(dovecot) == {"<unrelated-one@mx.test>": {"$MailtrackIgnored"},
                                       "<unrelated-two@mx.test>": {"$MailtrackIgnored"}}


def test_a_verp_addressed_bounce_from_imap_matches_its_message(make_app, dovecot: Dovecot, _server: Any,
                                                               handler: Any) -> None:
    """A bounce that quotes nothing of the original names the message by the signed VERP
    envelope sender alone; the same bounce with one character of the tag changed matches
    nothing."""
    app = _sending_app(make_app, _server, dovecot, MAILTRACK_BOUNCE_ADDRESS="bounces@crm.test")
    (ann_id, bob_id), (to_ann, to_bob) = _send(app, handler, ("ann@example.com", None), ("bob@example.net", None))
    verp = to_ann.mail_from
    assert verp.startswith("bounces+") and verp.endswith("@crm.test") and ann_id.lower() in verp
    local = verp.split("@")[0]
    forged = f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@crm.test"
    dovecot.append(_verp_only_dsn(verp, "ann@example.com", 1))
    dovecot.append(_verp_only_dsn(forged, "ann@example.com", 2))
    assert b"Your offer" not in _verp_only_dsn(verp, "ann@example.com", 1)  # nothing of the original

    result = app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox", "--delete"])

    assert result.exit_code == 0, result.output
    assert "2 fetched: 1 stored, 0 duplicate, 1 ignored (unmatched), 0 malformed, 0 failed" in result.stdout
    assert _types(app, ann_id) == ["bounce", "send"] and _types(app, bob_id) == ["send"]
    with app.app_context():
        assert app.extensions["mailtrack"].extension.can_contact("ann") is False
    assert _by_message_id(dovecot) == {"<E1verp-2@mx.example.org>": {"$MailtrackIgnored"}}


@pytest.mark.parametrize("delete", [False, True], ids=["mark", "delete"])
def test_mail_another_host_stored_before_is_a_duplicate_marked_or_deleted(make_app, dovecot: Dovecot, _server: Any,
                                                                         handler: Any, delete: bool) -> None:
    """The same bounce reached the app by another way first (another host's fetch-inbox whose
    mark was lost, a pipe transport): ``ingest_mail`` stored it. fetch-inbox finds it stored
    before (``duplicate``): marked like stored mail, or deleted with --delete; never
    ``$MailtrackIgnored``, and no second event."""
    app = _sending_app(make_app, _server, dovecot, "imap")
    (ann_id,), (to_ann,) = _send(app, handler, ("ann@example.com", None))
    bounce = _dsn(to_ann, "ann@example.com", 1)
    with app.app_context():
        assert [e.type for e in app.extensions["mailtrack"].extension.ingest_mail(bounce)] == ["bounce"]
    dovecot.append(bounce)

    result = app.test_cli_runner().invoke(args=["mailtrack", "fetch-inbox", *(["--delete"] if delete else [])])

    assert result.exit_code == 0, result.output
    assert "1 fetched: 0 stored, 1 duplicate, 0 ignored (unmatched), 0 malformed, 0 failed" in result.stdout
    assert _by_message_id(dovecot) == ({} if delete else {"<dsn-1@mx.example.com>": STORED_FLAGS})
    assert _types(app, ann_id) == ["bounce", "send"]
