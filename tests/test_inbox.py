"""``fetch-inbox`` against a real Dovecot on loopback (IMAP, IMAPS, IMAP STARTTLS, POP3S,
POP3 STLS): what is read, what is handed to ``ingest`` (byte for byte), and what is left
and flagged on the server afterwards; mark or delete; two fetchers at once; a session the
server drops; failing, malformed and oversized mail; the command's errors. The fetcher is
driven with a real recording ``ingest`` that parses each message with the standard library
and keeps each Message-ID once, as ``MailTrack.ingest_mail`` does with its storage."""
from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from crm_mailtrack import ConfigurationError, MailTrack
from crm_mailtrack.errors import DatabaseUnavailable
from crm_mailtrack.services.inbox import FetchReport, InboxError, InboxFetcher, Outcome, fetch_inbox
from crm_mailtrack.services.inbox_url import parse_inbox_url

import imapserver
from imapserver import PASSWORD, USER, Dovecot

pytestmark = pytest.mark.skipif(imapserver.available() is not None, reason=str(imapserver.available()))

STORED_FLAGS = {"\\Seen", "$MailtrackStored"}


@pytest.fixture(scope="module")
def _dovecot() -> Iterator[Dovecot]:
    with Dovecot() as server:
        yield server


@pytest.fixture
def dovecot(_dovecot: Dovecot) -> Dovecot:
    """The module's server with an empty INBOX."""
    conn = _dovecot.imap()
    try:
        conn.uid("STORE", "1:*", "+FLAGS.SILENT", "(\\Deleted)")
        conn.expunge()
    finally:
        conn.logout()
    return _dovecot


def mail(subject: str, *, extra: str = "", body: str = "hello") -> bytes:
    """A message whose Message-ID derives from its subject."""
    mid = subject.replace(" ", "-")
    return (f"From: Postmaster <mailer-daemon@mx.test>\r\nTo: bounces@crm.test\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{mid}@mx.test>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
            f"{extra}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


class RecordingIngest:
    """Parses each message (raising on a defect, as a strict parser does), stores each
    Message-ID once (``DUPLICATE`` the second time), returns ``[]`` for mail it does not
    want (``X-Test: unmatched``) and raises for ``X-Test: fail`` (a store that fails)."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.stored: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.on_call: Any = None

    def __call__(self, raw: bytes) -> Any:
        with self.lock:
            self.calls.append(raw)
        if self.on_call is not None:
            self.on_call(len(self.calls))
        msg = email.message_from_bytes(raw, policy=email.policy.default.clone(raise_on_defect=True))
        if msg["X-Test"] == "fail":
            raise RuntimeError("the store refused it")
        if msg["X-Test"] == "unmatched":
            return []
        with self.lock:
            if msg["Message-ID"] in self.stored:
                return Outcome.DUPLICATE
            self.stored[msg["Message-ID"]] = raw
        return [f"event of {msg['Message-ID']}"]


def flags_by_subject(server: Dovecot) -> dict[str, set[str]]:
    found = {}
    for flags, raw in server.mailbox().values():
        found[email.message_from_bytes(raw)["Subject"]] = flags
    return found


# -- the URL --------------------------------------------------------------------------------

def test_inbox_url_forms_percent_decoding_and_defaults() -> None:
    imaps = parse_inbox_url("imaps://bounces%40crm.example.com:p%40ss%2Fw%25rd%20%231@imap.example.com/Bounces%20In")
    assert (imaps.scheme, imaps.host, imaps.port, imaps.username, imaps.password, imaps.mailbox, imaps.timeout,
            imaps.cafile, imaps.tls) == ("imaps", "imap.example.com", 993, "bounces@crm.example.com",
                                         "p@ss/w%rd #1", "Bounces In", 30.0, None, "implicit")
    assert parse_inbox_url("imap://u:p@localhost").port == 143
    assert parse_inbox_url("imap://u:p@localhost").mailbox == "INBOX"
    assert parse_inbox_url("imap://u:p@localhost").tls is None
    assert parse_inbox_url("imap+starttls://u:p@localhost").tls == "starttls"
    pop = parse_inbox_url("pop3s://u:p@[::1]?cafile=/etc/ca%20dir/ca.pem&timeout=5")
    assert (pop.protocol, pop.host, pop.port, pop.mailbox, pop.cafile, pop.timeout) == (
        "pop3", "::1", 995, None, "/etc/ca dir/ca.pem", 5.0)
    assert parse_inbox_url("pop3://u:p@localhost:1110").port == 1110
    # what is shown (logs, progress) never holds the password
    assert "p@ss" not in repr(imaps) and "p%40ss" not in str(imaps)
    assert str(imaps) == "imaps://bounces%40crm.example.com@imap.example.com:993/Bounces%20In"


@pytest.mark.parametrize("url", [
    "http://u:secret-pw@host/", "imaps://host/INBOX", "imaps://u@host/INBOX", "imaps://u:secret-pw@/INBOX",
    "imaps://u:secret-pw@host:99999/", "imaps://u:secret-pw@host/?verify=no", "imaps://u:secret-pw@host/?timeout=0",
    "pop3s://u:secret-pw@host/INBOX", "imaps://u:secret-pw@host/IN BOX", "imaps://u:secret#pw@host/", "",
])
def test_a_bad_inbox_url_fails_init_app_naming_the_key_and_not_the_password(make_app, url: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        make_app(MAILTRACK_INBOX_URL=url)
    assert "MAILTRACK_INBOX_URL" in str(err.value)
    assert "secret" not in str(err.value)


def test_the_inbox_url_is_resolved_once_into_settings(make_app) -> None:
    app = make_app(MAILTRACK_INBOX_URL="imaps://u%40x:pw@imap.example.com/INBOX?cafile=/ca.pem")
    inbox = app.extensions["mailtrack"].settings.inbox
    assert (inbox.username, inbox.password, inbox.cafile) == ("u@x", "pw", "/ca.pem")
    assert make_app().extensions["mailtrack"].settings.inbox is None


# -- reading, marking, deleting ----------------------------------------------------------------

def test_imap_hands_each_new_message_over_byte_for_byte_and_flags_it_by_outcome(dovecot: Dovecot) -> None:
    messages = {
        "stored": mail("stored"),
        "unmatched": mail("unmatched", extra="X-Test: unmatched\r\n"),
        "failing": mail("failing", extra="X-Test: fail\r\n"),
        # cut off inside a multipart (no closing boundary): the strict parser refuses it
        "malformed": (b"Subject: malformed\r\nMessage-ID: <m4@mx.test>\r\nMIME-Version: 1.0\r\n"
                      b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n'),
        "huge": mail("huge", body="x" * 200_000),
        "stored 2": mail("stored 2", extra="Content-Transfer-Encoding: 8bit\r\n",
                         body="Gr\u00fc\u00dfe, 8-bit\tand trailing spaces  "),
    }
    for raw in messages.values():
        dovecot.append(raw)
    ingest = RecordingIngest()
    seen: list[Outcome] = []

    with InboxFetcher(parse_inbox_url(dovecot.url("imap")), ingest, max_bytes=100_000, batch_size=4) as fetcher:
        assert fetcher.count() == 6
        report = fetcher.run(progress=seen.append)

    assert (report.fetched, report.stored, report.duplicate, report.ignored, report.malformed, report.failed) == (
        6, 2, 0, 1, 2, 1)
    assert seen == [Outcome.STORED, Outcome.IGNORED, Outcome.FAILED, Outcome.MALFORMED, Outcome.MALFORMED,
                    Outcome.STORED]
    assert report.stopped is None and report.left == 0
    # exactly the bytes the server holds; the oversized one was never downloaded
    assert ingest.calls == [messages[s] for s in ("stored", "unmatched", "failing", "malformed", "stored 2")]
    problems = dict(report.problems)  # by UID, in the order of delivery
    assert problems["3"] == "RuntimeError: the store refused it"
    assert problems["4"].startswith("CloseBoundaryNotFoundDefect")
    assert problems["5"] == f"{len(messages['huge'])} bytes, over the limit of 100000"
    assert sorted(problems) == ["3", "4", "5"]
    assert flags_by_subject(dovecot) == {
        "stored": STORED_FLAGS, "stored 2": STORED_FLAGS,
        "unmatched": {"$MailtrackIgnored"},  # left unread for a person, never deleted
        "malformed": {"$MailtrackSkipped"}, "huge": {"$MailtrackSkipped"},
        "failing": set(),  # untouched: the next run reads it again
    }

    # the next run reads only the failed one (the store works again): now it is stored
    again = RecordingIngest()
    retried = fetch_inbox(parse_inbox_url(dovecot.url("imap")),
                          lambda raw: again(raw.replace(b"X-Test: fail", b"X-Test: ok")), max_bytes=100_000)
    assert (retried.fetched, retried.stored, retried.failed) == (1, 1, 0)
    assert again.calls == [messages["failing"].replace(b"X-Test: fail", b"X-Test: ok")]
    assert flags_by_subject(dovecot)["failing"] == STORED_FLAGS
    assert fetch_inbox(parse_inbox_url(dovecot.url("imap")), RecordingIngest()).fetched == 0
