"""``fetch-inbox`` against a real Dovecot on loopback (IMAP, IMAPS, IMAP STARTTLS, POP3S,
POP3 STLS): what is read, what is handed to ``ingest`` (byte for byte), and what is left
and flagged on the server afterwards; mark or delete; two fetchers at once; a session the
server drops; failing, malformed and oversized mail; the errors. The fetcher is
driven with a real recording ``ingest`` that parses each message with the standard library
and keeps each Message-ID once, as ``MailTrack.ingest_mail`` does with its storage."""
from __future__ import annotations

from typing import Any

import pytest

from crm_mailtrack import ConfigurationError
from crm_mailtrack.errors import DatabaseUnavailable
from crm_mailtrack.services.inbox import InboxError, InboxFetcher, Outcome, fetch_inbox
from crm_mailtrack.services.inbox_url import parse_inbox_url

import imapserver
from imapserver import (  # noqa: F401 - _dovecot, dovecot, fresh_dovecot: fixtures
    STORED_FLAGS, USER, Dovecot, _dovecot, dovecot, fresh_dovecot, RecordingIngest, flags_by_subject, mail,
)

pytestmark = pytest.mark.skipif(imapserver.available() is not None, reason=str(imapserver.available()))


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
    assert problems["4"].startswith("malformed: CloseBoundaryNotFoundDefect")
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


@pytest.mark.parametrize("scheme", ["imaps", "imap+starttls"])
def test_imap_over_tls_verifies_the_certificate_against_cafile(dovecot: Dovecot, scheme: str) -> None:
    dovecot.append(mail("over tls"))
    ingest = RecordingIngest()
    report = fetch_inbox(parse_inbox_url(dovecot.url(scheme)), ingest)
    assert (report.fetched, report.stored) == (1, 1)
    assert flags_by_subject(dovecot) == {"over tls": STORED_FLAGS}

    # without the CA that signed it, the same server is refused before anything is read
    untrusted = parse_inbox_url(dovecot.url(scheme).replace(f"cafile={dovecot.cert}", "").replace("?&", "?"))
    assert untrusted.cafile is None
    with pytest.raises(InboxError, match="TLS certificate is not trusted.*cafile"):
        fetch_inbox(untrusted, ingest)


@pytest.mark.parametrize("scheme", ["pop3s", "pop3+starttls", "pop3"])
def test_pop3_deletes_only_what_was_stored(dovecot: Dovecot, scheme: str) -> None:
    for subject, extra in (("first", ""), ("unmatched", "X-Test: unmatched\r\n"), ("failing", "X-Test: fail\r\n"),
                           ("second", "")):
        dovecot.append(mail(subject, extra=extra))
    dovecot.append(mail("dup"))
    dovecot.append(mail("dup"))  # the same mail delivered twice: stored once, both copies deleted
    ingest = RecordingIngest()

    report = fetch_inbox(parse_inbox_url(dovecot.url(scheme)), ingest, delete=True, batch_size=2)

    assert (report.fetched, report.stored, report.duplicate, report.ignored, report.failed) == (6, 3, 1, 1, 1)
    assert len(ingest.calls) == 6 and sorted(ingest.stored) == ["<dup@mx.test>", "<first@mx.test>",
                                                                 "<second@mx.test>"]
    assert ingest.stored["<first@mx.test>"] == mail("first")  # byte for byte through POP3's dot-stuffing
    assert sorted(flags_by_subject(dovecot)) == ["failing", "unmatched"]


def test_imap_delete_expunges_stored_mail_and_keeps_the_rest(dovecot: Dovecot) -> None:
    for subject, extra in (("stored", ""), ("unmatched", "X-Test: unmatched\r\n"), ("failing", "X-Test: fail\r\n")):
        dovecot.append(mail(subject, extra=extra))
    report = fetch_inbox(parse_inbox_url(dovecot.url("imap")), RecordingIngest(), delete=True)
    assert (report.stored, report.ignored, report.failed) == (1, 1, 1)
    assert flags_by_subject(dovecot) == {"unmatched": {"$MailtrackIgnored"}, "failing": set()}


def test_a_limit_leaves_the_rest_for_the_next_run(dovecot: Dovecot) -> None:
    for n in range(5):
        dovecot.append(mail(f"m{n}"))
    ingest = RecordingIngest()
    first = fetch_inbox(parse_inbox_url(dovecot.url("imap")), ingest, limit=3, batch_size=2)
    assert (first.fetched, first.stored, first.left) == (3, 3, 2)
    second = fetch_inbox(parse_inbox_url(dovecot.url("imap")), ingest, limit=3)
    assert (second.fetched, second.stored, second.left) == (2, 2, 0)
    assert len(ingest.calls) == 5 and len(ingest.stored) == 5


@pytest.mark.parametrize("scheme, delete", [("imap", False), ("imap", True), ("pop3s", True)],
                         ids=["imap-mark", "imap-delete", "pop3s"])
def test_two_fetchers_at_once_store_each_message_once(dovecot: Dovecot, scheme: str, delete: bool) -> None:
    count = 40
    for n in range(count):
        dovecot.append(mail(f"m{n}"))
    ingest = RecordingIngest()
    fetchers = [InboxFetcher(parse_inbox_url(dovecot.url(scheme)), ingest, delete=delete, batch_size=7)
                for _ in range(2)]
    # both list the same 40 messages before either handles one: the worst case for a cron overlap
    assert [f.count() for f in fetchers] == [count, count]
    reports = imapserver.run_at_once(fetchers, timeout=120)

    assert len(reports) == 2
    assert sorted(ingest.stored) == sorted(f"<m{n}@mx.test>" for n in range(count))
    assert sum(r.stored for r in reports) == count  # each stored by exactly one of them
    assert sum(r.failed + r.malformed + r.ignored for r in reports) == 0
    for r in reports:  # what one did not store, it saw done by the other (flags, gone, or ingest's dedup)
        assert r.stored + r.duplicate == r.fetched
        assert r.fetched == count if not delete else r.fetched <= count
    left = dovecot.mailbox()
    if delete:
        assert left == {}
    else:
        assert len(left) == count and all(flags == STORED_FLAGS for flags, _ in left.values())


@pytest.mark.parametrize("scheme", ["imap", "pop3"])
def test_a_dropped_connection_is_reopened_and_nothing_is_read_twice(dovecot: Dovecot, scheme: str) -> None:
    for n in range(6):
        dovecot.append(mail(f"m{n}"))
    ingest = RecordingIngest()
    kicked: list[int] = []

    def kick(calls: int) -> None:
        if calls in (2, 5):  # the server ends the session while a message is being stored
            dovecot.kick()
            kicked.append(calls)

    ingest.on_call = kick
    report = fetch_inbox(parse_inbox_url(dovecot.url(scheme)), ingest, delete=scheme == "pop3", batch_size=4)

    assert kicked == [2, 5], (report, dovecot.log_text()[-3000:])
    assert (report.fetched, report.stored, report.stopped) == (6, 6, None)
    assert len(ingest.calls) == 6  # the marks (and POP3's uncommitted deletions) were made after reconnecting
    if scheme == "pop3":
        assert dovecot.mailbox() == {}
    else:
        assert all(flags == STORED_FLAGS for flags, _ in dovecot.mailbox().values())


def test_an_unavailable_database_stops_the_run_and_touches_nothing(dovecot: Dovecot) -> None:
    for n in range(3):
        dovecot.append(mail(f"m{n}"))
    ingest = RecordingIngest()
    stored_before = ingest.__call__

    def ingest_until_down(raw: bytes) -> Any:
        if len(ingest.calls) == 1:
            ingest.calls.append(raw)
            raise DatabaseUnavailable("the database is unavailable")
        return stored_before(raw)

    report = fetch_inbox(parse_inbox_url(dovecot.url("imap")), ingest_until_down)
    assert report.stopped is not None and "database is unavailable" in report.stopped
    assert (report.fetched, report.stored) == (1, 1)
    assert sorted(flags for flags, _ in dovecot.mailbox().values()) == [set(), set(), STORED_FLAGS]


def test_a_server_that_is_not_there_is_a_clear_error() -> None:
    from mailserver import refusing_port

    with refusing_port() as port:
        with pytest.raises(InboxError) as err:
            fetch_inbox(parse_inbox_url(f"imaps://u:pw@127.0.0.1:{port}/INBOX"), RecordingIngest())
    assert str(err.value) == f"could not connect to the IMAP server 127.0.0.1:{port}: Connection refused"


def test_a_wrong_password_or_mailbox_is_a_clear_error(fresh_dovecot: Dovecot) -> None:
    dovecot = fresh_dovecot
    with pytest.raises(InboxError, match="has no mailbox 'Nowhere'"):
        fetch_inbox(parse_inbox_url(dovecot.url("imap", mailbox="Nowhere")), RecordingIngest())
    with pytest.raises(InboxError) as err:  # last: after a failed login, Dovecot slows the next ones
        fetch_inbox(parse_inbox_url(dovecot.url("imaps", password="wrong-secret")), RecordingIngest())
    assert f"login as {USER!r} refused by the IMAP server 127.0.0.1:" in str(err.value)
    assert "wrong-secret" not in str(err.value)


@pytest.mark.parametrize("scheme", ["imap", "pop3s"])
def test_a_line_longer_than_rfc_5322_allows(dovecot: Dovecot, scheme: str) -> None:
    """IMAP reads it (a literal has a length); poplib refuses lines over 2048 bytes: that
    message is counted malformed, the session reopened, and the deletions before it stand."""
    dovecot.append(mail("before"))
    dovecot.append(mail("long line", body="y" * 3000))
    dovecot.append(mail("after"))
    ingest = RecordingIngest()
    report = fetch_inbox(parse_inbox_url(dovecot.url(scheme)), ingest, delete=scheme == "pop3s", batch_size=10)
    if scheme == "imap":
        assert (report.stored, report.malformed) == (3, 0)
        assert ingest.stored["<long-line@mx.test>"] == mail("long line", body="y" * 3000)
    else:
        assert (report.fetched, report.stored, report.malformed, report.stopped) == (3, 2, 1, None)
        assert list(flags_by_subject(dovecot)) == ["long line"]  # POP3 cannot mark it: it stays


def test_mime_nested_absurdly_deep_is_malformed_and_the_run_goes_on(dovecot: Dovecot) -> None:
    """2000 nested multiparts: the standard library's parser gives up (RecursionError)."""
    depth = 2000
    deep = b"Subject: deep\r\nMessage-ID: <deep@mx.test>\r\nMIME-Version: 1.0\r\n" + b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth)
    ) + b"Content-Type: text/plain\r\n\r\nhi\r\n" + b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    dovecot.append(deep)
    dovecot.append(mail("after"))
    ingest = RecordingIngest()
    report = fetch_inbox(parse_inbox_url(dovecot.url("imap")), ingest)
    assert (report.fetched, report.stored, report.malformed, report.failed) == (2, 1, 1, 0)
    assert report.problems[0][1].startswith("malformed: RecursionError")
    assert flags_by_subject(dovecot) == {"deep": {"$MailtrackSkipped"}, "after": STORED_FLAGS}


def test_a_server_that_never_answers_times_out_clearly() -> None:
    import socket

    with socket.socket() as silent:  # accepts connections (the backlog) but never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        with pytest.raises(InboxError) as err:
            fetch_inbox(parse_inbox_url(f"imaps://u:pw@127.0.0.1:{port}/INBOX?timeout=0.5"), RecordingIngest())
    assert str(err.value) == f"could not connect to the IMAP server 127.0.0.1:{port}: no answer within 0.5 seconds"


def test_a_connection_that_keeps_dropping_stops_the_run_and_loses_nothing(dovecot: Dovecot) -> None:
    for n in range(3):
        dovecot.append(mail(f"m{n}"))
    ingest = RecordingIngest()
    ingest.on_call = lambda calls: dovecot.kick()
    report = fetch_inbox(parse_inbox_url(dovecot.url("imap")), ingest, reconnects=0)
    assert report.stopped is not None and "keeps dropping" in report.stopped
    assert report.fetched == 0 and len(ingest.calls) == 1  # stored, but its mark could not be made
    assert sorted(flags for flags, _ in dovecot.mailbox().values()) == [set(), set(), set()]

    ingest.on_call = None  # the next run: the stored one comes back as a duplicate, and is marked
    again = fetch_inbox(parse_inbox_url(dovecot.url("imap")), ingest)
    assert (again.fetched, again.stored, again.duplicate) == (3, 2, 1)
    assert len(ingest.stored) == 3
    assert all(flags == STORED_FLAGS for flags, _ in dovecot.mailbox().values())


def test_a_named_mailbox_recreated_during_the_run_stops_it(dovecot: Dovecot) -> None:
    """UIDs mean nothing across UIDVALIDITY: after reconnecting to a recreated mailbox the
    run stops instead of marking whatever now has the old UIDs."""
    admin = dovecot.imap()
    admin.create('"Bounces In"')
    for n in range(2):
        admin.append('"Bounces In"', None, None, mail(f"m{n}"))
    admin.logout()

    def recreate(calls: int) -> None:
        if calls == 1:  # the session drops, and meanwhile the mailbox is made anew
            dovecot.kick()
            other = dovecot.imap()
            other.delete('"Bounces In"')
            other.create('"Bounces In"')
            other.append('"Bounces In"', None, None, mail("newcomer"))
            other.logout()

    ingest = RecordingIngest()
    ingest.on_call = recreate
    try:
        report = fetch_inbox(parse_inbox_url(dovecot.url("imap", mailbox="Bounces In")), ingest)
        assert [flags for flags, _ in dovecot.mailbox("Bounces In").values()] == [set()]  # the newcomer
    finally:
        admin = dovecot.imap()
        admin.delete('"Bounces In"')
        admin.logout()
    assert report.stopped is not None and "UIDVALIDITY changed" in report.stopped
    assert len(ingest.calls) == 1
