"""The server side of ``fetch-inbox``: one IMAP or POP3 session through the standard library
(``imaplib``, ``poplib``), reduced to what the fetcher needs: list what is left to handle,
read a message's size and bytes, and settle a message (mark or delete) once it is handled.

IMAP marks with keywords, so a message is never read twice and a person reading the same
mailbox sees what the machine did: stored mail gets ``\\Seen $MailtrackStored`` (or is
deleted and expunged by UID), unmatched mail ``$MailtrackIgnored`` and malformed or oversized
mail ``$MailtrackSkipped`` (both left unread, never deleted). A server that refuses keywords
gets ``\\Seen`` for all three. POP3 has no flags: stored mail is deleted (the deletions take
effect at the end of each batch, when the session is closed), everything else stays.
"""
from __future__ import annotations

import imaplib
import poplib
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Protocol

from ..errors import MailTrackError
from .inbox_url import InboxSettings

STORED = "$MailtrackStored"
IGNORED = "$MailtrackIgnored"
SKIPPED = "$MailtrackSkipped"
#: How a handled message is marked on IMAP: by what happened to it.
MARKS = {"stored": STORED, "ignored": IGNORED, "skipped": SKIPPED}

#: The session broke (the server closed it, the network dropped, a timeout): reconnect.
DROPPED = (imaplib.IMAP4.abort, OSError, EOFError)
#: The server refused a command (checked after DROPPED: IMAP4.abort is an IMAP4.error).
PROTOCOL_ERRORS = (imaplib.IMAP4.error, poplib.error_proto)


class InboxError(MailTrackError):
    """The mailbox cannot be read: connection, TLS, login or mailbox refused. The message
    names the server and the user, never the password."""


class Unreadable(Exception):
    """This one message cannot be read from the server (the session is still usable, or
    has been reopened)."""


@dataclass(frozen=True)
class Meta:
    """What the server says about a message before it is downloaded."""

    size: int


class Mailbox(Protocol):
    """One session; keys are IMAP UIDs or POP3 UIDLs, both stable across sessions."""

    def connect(self) -> None: ...
    def unhandled(self) -> list[str]: ...
    def meta(self, keys: list[str]) -> dict[str, Meta]: ...
    def read(self, key: str) -> bytes | None: ...
    def settle(self, key: str, how: str, *, delete: bool) -> None: ...
    def commit(self) -> None: ...
    def close(self) -> None: ...


def _explain(inbox: InboxSettings, exc: BaseException, doing: str) -> InboxError:
    where = f"{inbox.host}:{inbox.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = " (a private CA? add ?cafile=/path/to/ca.pem to MAILTRACK_INBOX_URL)"
        return InboxError(f"{doing} {where}: the server's TLS certificate is not trusted: "
                          f"{exc.verify_message or exc}{hint}")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return InboxError(f"{doing} {where}: no answer within {inbox.timeout:g} seconds")
    text = (exc.strerror or str(exc)) if isinstance(exc, OSError) else (exc.args[0] if exc.args else exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return InboxError(f"{doing} {where}: {text}")


class ImapMailbox:
    """IMAP4rev1 (imaps, imap+starttls, imap) on one mailbox."""

    def __init__(self, inbox: InboxSettings) -> None:
        self.inbox = inbox
        self.conn: imaplib.IMAP4 | None = None
        self.keywords = True
        self.uidvalidity: str | None = None
        self.uidplus = False

    def connect(self) -> None:
        inbox = self.inbox
        try:
            if inbox.tls == "implicit":
                conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(inbox.host, inbox.port, ssl_context=inbox.ssl_context(),
                                                        timeout=inbox.timeout)
            else:
                conn = imaplib.IMAP4(inbox.host, inbox.port, timeout=inbox.timeout)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise _explain(inbox, exc, "could not connect to the IMAP server") from None
        try:
            if inbox.tls == "starttls":
                conn.starttls(ssl_context=inbox.ssl_context())
        except (OSError, imaplib.IMAP4.error) as exc:
            _shutdown(conn)
            raise _explain(inbox, exc, "STARTTLS failed with the IMAP server") from None
        try:
            conn.login(inbox.username, inbox.password)
        except imaplib.IMAP4.abort as exc:
            _shutdown(conn)
            raise _explain(inbox, exc, "the IMAP server ended the session during login") from None
        except (imaplib.IMAP4.error, UnicodeError) as exc:
            _shutdown(conn)
            raise _explain(inbox, exc, f"login as {inbox.username!r} refused by the IMAP server") from None
        except OSError as exc:
            _shutdown(conn)
            raise _explain(inbox, exc, "the IMAP server ended the session during login") from None
        try:
            typ, data = conn.select(_quote(inbox.mailbox or "INBOX"))
        except (OSError, imaplib.IMAP4.error) as exc:
            _shutdown(conn)
            raise _explain(inbox, exc, "the IMAP server ended the session after login") from None
        if typ != "OK":
            conn.logout()
            raise InboxError(f"the IMAP server {inbox.host}:{inbox.port} has no mailbox {inbox.mailbox!r} "
                             f"({_text(data)})")
        permanent = conn.untagged_responses.get("PERMANENTFLAGS", [b""])[-1] or b""
        self.keywords = b"\\*" in permanent
        validity = conn.untagged_responses.get("UIDVALIDITY", [None])[-1]
        if self.uidvalidity is not None and validity != self.uidvalidity:
            # UIDs of the last session mean nothing now: the fetcher starts over
            conn.logout()
            raise InboxError(f"the mailbox {inbox.mailbox!r} was recreated during the run (UIDVALIDITY changed); "
                             "run fetch-inbox again")
        self.uidvalidity = validity
        self.uidplus = "UIDPLUS" in conn.capabilities
        self.conn = conn

    def _conn(self) -> imaplib.IMAP4:
        assert self.conn is not None, "connect() first"
        return self.conn

    def unhandled(self) -> list[str]:
        if self.keywords:
            criteria = ["UNDELETED", "UNKEYWORD", STORED, "UNKEYWORD", IGNORED, "UNKEYWORD", SKIPPED]
        else:
            criteria = ["UNDELETED", "UNSEEN"]
        typ, data = self._conn().uid("SEARCH", *criteria)
        if typ != "OK":
            raise InboxError(f"the IMAP server refused SEARCH: {_text(data)}")
        return [uid.decode() for uid in (data[0] or b"").split()]

    def meta(self, keys: list[str]) -> dict[str, Meta]:
        typ, data = self._conn().uid("FETCH", ",".join(keys), "(UID RFC822.SIZE)")
        found: dict[str, Meta] = {}
        for line in data:
            text = line[0] if isinstance(line, tuple) else line
            if not isinstance(text, bytes):
                continue
            uid, size = _UID.search(text), _SIZE.search(text)
            if uid and size:
                found[uid.group(1).decode()] = Meta(int(size.group(1)))
        return found

    def read(self, key: str) -> bytes | None:
        """The message's bytes, or ``None`` when it is gone or another run has handled it
        since the search (its flags say so)."""
        typ, data = self._conn().uid("FETCH", key, "(UID FLAGS BODY.PEEK[])")
        if typ != "OK":
            raise Unreadable(_text(data))
        for head, body, tail in _records(data):
            uid = _UID.search(head + tail)
            if uid is None or uid.group(1).decode() != key:
                continue  # an unsolicited FETCH about another message
            if _handled(_flag_set(_FLAGS.search(head + tail)), self.keywords):
                return None
            return body
        return None

    def settle(self, key: str, how: str, *, delete: bool) -> None:
        conn = self._conn()
        if how == "stored" and delete:
            typ, data = conn.uid("STORE", key, "+FLAGS.SILENT", "(\\Deleted)")
            if typ == "OK" and self.uidplus:
                typ, data = conn.uid("EXPUNGE", key)
        elif self.keywords:
            flags = f"(\\Seen {STORED})" if how == "stored" else f"({MARKS[how]})"
            typ, data = conn.uid("STORE", key, "+FLAGS.SILENT", flags)
        else:
            typ, data = conn.uid("STORE", key, "+FLAGS.SILENT", "(\\Seen)")
        if typ != "OK":
            raise InboxError(f"the IMAP server refused to mark message UID {key}: {_text(data)}")

    def commit(self) -> None:
        if self.conn is not None and not self.uidplus:
            self.conn.expunge()  # without UID EXPUNGE, this expunges every \Deleted message

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            conn.logout()
        except (*DROPPED, imaplib.IMAP4.error):
            _shutdown(conn)


class Pop3Mailbox:
    """POP3 (pop3s, pop3+starttls, pop3). Deletions are kept in the session until
    :meth:`commit` (QUIT) and made again after a reconnect, so a drop loses none."""

    def __init__(self, inbox: InboxSettings) -> None:
        self.inbox = inbox
        self.conn: poplib.POP3 | None = None
        self.numbers: dict[str, int] = {}
        self.deleted: list[str] = []

    def connect(self) -> None:
        inbox = self.inbox
        try:
            if inbox.tls == "implicit":
                conn: poplib.POP3 = poplib.POP3_SSL(inbox.host, inbox.port, timeout=inbox.timeout,
                                                    context=inbox.ssl_context())
            else:
                conn = poplib.POP3(inbox.host, inbox.port, timeout=inbox.timeout)
        except (OSError, poplib.error_proto) as exc:
            raise _explain(inbox, exc, "could not connect to the POP3 server") from None
        try:
            if inbox.tls == "starttls":
                conn.stls(context=inbox.ssl_context())
        except (OSError, poplib.error_proto) as exc:
            conn.close()
            raise _explain(inbox, exc, "STLS failed with the POP3 server") from None
        try:
            conn.user(inbox.username)
            conn.pass_(inbox.password)
        except (poplib.error_proto, UnicodeError) as exc:
            conn.close()
            raise _explain(inbox, exc, f"login as {inbox.username!r} refused by the POP3 server") from None
        except OSError as exc:
            conn.close()
            raise _explain(inbox, exc, "the POP3 server ended the session during login") from None
        try:
            numbers = {}
            for line in conn.uidl()[1]:
                number, uidl = line.split(b" ", 1)
                numbers[uidl.decode("ascii", "replace")] = int(number)
            # deletions a dropped session did not commit: make them again (never re-ingested)
            for uidl in self.deleted:
                if uidl in numbers:
                    conn.dele(numbers[uidl])
        except (OSError, poplib.error_proto) as exc:
            conn.close()
            raise _explain(inbox, exc, "the POP3 server ended the session after login") from None
        self.conn = conn
        self.numbers = numbers

    def _conn(self) -> poplib.POP3:
        assert self.conn is not None, "connect() first"
        return self.conn

    def _call(self, name: str, *args: object) -> tuple[bytes, list[bytes], int] | bytes:
        """A POP3 command; an ``-ERR`` on a session that is no longer alive (the server
        says "shutting down" and closes) is a drop, not a refusal."""
        conn = self._conn()
        try:
            return getattr(conn, name)(*args)
        except poplib.error_proto as exc:
            if not _refusal(exc):
                raise  # poplib's own complaint (a line too long): the session is out of step
            try:
                conn.noop()
            except (*DROPPED, poplib.error_proto):
                raise ConnectionResetError(f"the POP3 session ended: {_text(list(exc.args))}") from exc
            raise

    def unhandled(self) -> list[str]:
        return sorted(self.numbers, key=self.numbers.__getitem__)

    def meta(self, keys: list[str]) -> dict[str, Meta]:
        sizes = {}
        for line in self._call("list")[1]:
            number, size = line.split()[:2]
            sizes[int(number)] = int(size)
        return {key: Meta(sizes[self.numbers[key]])
                for key in keys if self.numbers.get(key) in sizes}

    def read(self, key: str) -> bytes | None:
        number = self.numbers.get(key)
        if number is None:
            return None
        try:
            lines = self._call("retr", number)[1]
        except poplib.error_proto as exc:
            detail = exc.args[0] if exc.args else b""
            if _refusal(exc):
                return None  # deleted by another session
            # poplib refuses lines over 2048 bytes (RFC 5322 allows 998): the session is out
            # of step, so it is reopened (its deletions are made again) and the message skipped
            self._reopen()
            raise Unreadable(f"POP3 could not read the message: {detail!r}") from None
        return b"\r\n".join(lines) + b"\r\n"

    def _reopen(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        self.connect()

    def settle(self, key: str, how: str, *, delete: bool) -> None:
        if how != "stored":
            return  # POP3 has no flags: only stored mail is touched (deleted)
        self._call("dele", self.numbers[key])
        self.deleted.append(key)

    def commit(self) -> None:
        """QUIT (the server deletes now) and log in again for the next batch."""
        if self.conn is None:
            return
        self._call("quit")
        self.conn = None
        self.deleted = []
        self.connect()

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            conn.quit()
            self.deleted = []
        except (*DROPPED, poplib.error_proto):
            conn.close()


def open_mailbox(inbox: InboxSettings) -> Mailbox:
    return ImapMailbox(inbox) if inbox.protocol == "imap" else Pop3Mailbox(inbox)


_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")


def _flag_set(match: re.Match[bytes] | None) -> frozenset[str]:
    return frozenset(match.group(1).decode("ascii", "replace").split()) if match else frozenset()


def _handled(flags: frozenset[str], keywords: bool) -> bool:
    if not keywords:
        return "\\Seen" in flags
    return bool(flags & {STORED, IGNORED, SKIPPED}) or "\\Deleted" in flags


def _records(data: list[object]) -> list[tuple[bytes, bytes, bytes]]:
    """imaplib's FETCH answer as ``(text before the literal, literal, text after it)``."""
    records: list[tuple[bytes, bytes, bytes]] = []
    for item in data:
        if isinstance(item, tuple) and len(item) == 2:
            records.append((bytes(item[0]), bytes(item[1]), b""))
        elif isinstance(item, bytes) and records and not records[-1][2]:
            head, body, _ = records[-1]
            records[-1] = (head, body, item)
    return records


def _refusal(exc: poplib.error_proto) -> bool:
    """The server answered -ERR (rather than poplib refusing what it read)."""
    return bool(exc.args) and isinstance(exc.args[0], bytes) and exc.args[0].startswith(b"-ERR")


def _shutdown(conn: imaplib.IMAP4) -> None:
    try:
        conn.shutdown()
    except OSError:
        pass  # already closed (a failed TLS handshake closes the socket)


def _quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(data: object) -> str:
    if isinstance(data, list) and data:
        data = data[0]
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)


__all__ = ["InboxError", "Unreadable", "Meta", "Mailbox", "ImapMailbox", "Pop3Mailbox", "open_mailbox",
           "DROPPED", "PROTOCOL_ERRORS", "STORED", "IGNORED", "SKIPPED"]
