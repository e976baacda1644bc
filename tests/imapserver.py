"""A real Dovecot (IMAP, IMAPS, POP3, POP3S) on loopback for the inbox tests, started by the
test itself from Debian's ``/usr/sbin/dovecot`` with its own configuration in a temporary
directory: a passwd-file user, mail in a Maildir, a self-signed certificate for the TLS ports.

No free-port race: the four listening sockets are bound to port 0 by the test and handed to
Dovecot through systemd's socket-activation protocol (``LISTEN_PID``/``LISTEN_FDS``, fds 3..6),
which Debian's build supports; Dovecot adopts an inherited socket whose port matches a listener.

Runs as any user. As root, Dovecot refuses to run its login processes or to access mail as
root, so it uses its own ``dovenull``/``dovecot`` users (made by the Debian package) and the mail
belongs to ``nobody``; as anyone else, everything runs as that user (Dovecot's rootless mode)."""
from __future__ import annotations

import email
import email.errors
import email.parser
import email.policy
import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from crm_mailtrack.services.inbound import DUPLICATE, MALFORMED, RECORDED, UNMATCHED, IngestResult

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
#: A user whose name and password need percent-encoding in a URL (no ':' : passwd-file fields).
USER = "bounces@crm.test"
PASSWORD = "p@ss/w%rd #1"
PROTOCOLS = ("imap", "imaps", "pop3", "pop3s")

# Puts the inherited sockets at fds 3.., says they are ours (LISTEN_PID is this pid, which exec
# keeps) and becomes Dovecot.
_LAUNCH = """
import os, sys
fds = [int(f) for f in sys.argv[1].split(",")]
high = [os.dup(fd) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = str(len(fds))
os.execv(sys.argv[2], sys.argv[2:])
"""


def available() -> str | None:
    """Why the Dovecot tests cannot run here, or ``None`` when they can."""
    if not os.path.exists(DOVECOT):
        return f"{DOVECOT} is absent (install Debian's dovecot-imapd and dovecot-pop3d; .ci/run does)"
    if os.geteuid() == 0:
        for name in ("dovenull", "dovecot", "nobody"):
            try:
                pwd.getpwnam(name)
            except KeyError:
                return f"running as root, Dovecot needs the system user {name!r} (made by the Debian package)"
    if shutil.which("openssl") is None:
        return "the openssl command is absent (it makes the test certificate)"
    return None


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    return cert, key


class Dovecot:
    """``with Dovecot() as server:`` a running server; ``server.url("imaps")`` is a
    MAILTRACK_INBOX_URL that reaches it (trusting its certificate through ``cafile``)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mt-dovecot-"))
        self.sockets: dict[str, socket.socket] = {}
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.cert, self.key = _self_signed(self.dir)
        self.conf = self.dir / "dovecot.conf"
        self.log = self.dir / "dovecot.log"

    # -- what the tests use -------------------------------------------------------------

    def url(self, scheme: str = "imap", *, mailbox: str = "INBOX", password: str = PASSWORD,
            query: str = "") -> str:
        port = self.ports[scheme.replace("+starttls", "")]
        params = [p for p in (f"cafile={quote(str(self.cert))}" if scheme != "imap" and scheme != "pop3" else "",
                              "timeout=10", query) if p]
        path = "" if scheme.startswith("pop3") else "/" + quote(mailbox)
        return (f"{scheme}://{quote(USER, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}{path}"
                f"?{'&'.join(params)}")

    def imap(self) -> imaplib.IMAP4:
        """A plain IMAP session of the test user, with INBOX selected (the test's own view)."""
        conn = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=10)
        conn.login(USER, PASSWORD)
        conn.select("INBOX")
        return conn

    def append(self, raw: bytes, *, flags: str | None = None, mailbox: str = "INBOX") -> None:
        """Deliver ``raw`` into ``mailbox`` with IMAP APPEND."""
        conn = self.imap()
        try:
            typ, data = conn.append(mailbox, flags, None, raw)
            assert typ == "OK", data
        finally:
            conn.logout()

    def mailbox(self, mailbox: str = "INBOX") -> dict[int, tuple[set[str], bytes]]:
        """``{uid: (flags, raw)}`` of every message left in ``mailbox``, read without
        changing a flag (BODY.PEEK)."""
        conn = self.imap()
        try:
            conn.select(f'"{mailbox}"', readonly=True)
            typ, data = conn.uid("SEARCH", "ALL")
            uids = [int(u) for u in data[0].split()]
            found: dict[int, tuple[set[str], bytes]] = {}
            for uid in uids:
                typ, data = conn.uid("FETCH", str(uid), "(FLAGS BODY.PEEK[])")
                head = b" ".join(part[0] if isinstance(part, tuple) else part for part in data)
                body = next(part[1] for part in data if isinstance(part, tuple))
                flags = head.split(b"FLAGS (", 1)[1].split(b")", 1)[0].decode().split()
                found[uid] = (set(flags), body)
            return found
        finally:
            conn.logout()

    def empty(self, mailbox: str = "INBOX") -> None:
        """Delete every message of ``mailbox``."""
        conn = self.imap()
        try:
            conn.select(mailbox)
            conn.uid("STORE", "1:*", "+FLAGS.SILENT", "(\\Deleted)")
            conn.expunge()
        finally:
            conn.logout()

    def kick(self) -> None:
        """Disconnect every session of the test user (the server dropping the connection),
        and return once the server lists none: ``doveadm kick`` only signals the sessions, and
        on a busy machine one could still answer a command after it returned."""
        subprocess.run([DOVEADM, "-c", str(self.conf), "kick", USER], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            who = subprocess.run([DOVEADM, "-c", str(self.conf), "who", "-1"], capture_output=True, text=True)
            if not any(line.split()[:1] == [USER] for line in who.stdout.splitlines()):
                return
            time.sleep(0.02)
        raise AssertionError(f"the sessions of {USER} outlived doveadm kick:\n{who.stdout}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- start and stop -----------------------------------------------------------------

    def _write_config(self) -> None:
        root = os.geteuid() == 0
        me = pwd.getpwuid(os.geteuid())
        mail_user = pwd.getpwnam("nobody") if root else me
        login_user = "dovenull" if root else me.pw_name
        internal_user = "dovecot" if root else me.pw_name
        internal_group = "dovecot" if root else _group_name(me.pw_gid)
        home = self.dir / "home"
        home.mkdir()
        if root:  # the mail processes run as nobody: they must reach and own the home
            os.chmod(self.dir, 0o711)
            os.chown(home, mail_user.pw_uid, mail_user.pw_gid)
        (self.dir / "run").mkdir()
        (self.dir / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        listeners = {
            proto: f"""
service {proto}-login {{
  chroot =
  inet_listener {proto} {{
    address = 127.0.0.1
    port = {self.ports[proto]}
  }}
  inet_listener {proto}s {{
    address = 127.0.0.1
    port = {self.ports[proto + 's']}
    ssl = yes
  }}
}}"""
            for proto in ("imap", "pop3")
        }
        self.conf.write_text(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
instance_name = {self.dir.name}
log_path = {self.log}
protocols = imap pop3
listen = 127.0.0.1
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
first_valid_uid = {min(mail_user.pw_uid, 500)}
first_valid_gid = 0
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.dir}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={home}/%u
}}
mail_location = maildir:~/Maildir
service anvil {{
  chroot =
}}
{listeners["imap"]}
{listeners["pop3"]}
""")

    def __enter__(self) -> Dovecot:
        try:
            for proto in PROTOCOLS:
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                sock.listen(64)
                self.sockets[proto] = sock
                self.ports[proto] = sock.getsockname()[1]
            self._write_config()
            fds = [self.sockets[p].fileno() for p in PROTOCOLS]
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _LAUNCH, ",".join(map(str, fds)), DOVECOT, "-F", "-c", str(self.conf)],
                pass_fds=fds, stdout=subprocess.DEVNULL, stderr=(self.dir / "stderr.txt").open("wb"),
            )
            for sock in self.sockets.values():  # Dovecot holds them now; if it dies, connecting fails
                sock.close()
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"dovecot exited with status {self.proc.returncode}:\n"
                                   f"{(self.dir / 'stderr.txt').read_text()}\n{self.log_text()}")
            try:
                self.imap().logout()
                return
            except (OSError, imaplib.IMAP4.error) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dovecot did not answer: {exc}\n{self.log_text()}") from exc
                time.sleep(0.1)

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        for sock in self.sockets.values():
            sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _group_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name


# -- what the inbox tests deliver and ingest ------------------------------------------------

STORED_FLAGS = {"\\Seen", "$MailtrackStored"}


def mail(subject: str, *, extra: str = "", body: str = "hello") -> bytes:
    """A message whose Message-ID derives from its subject."""
    mid = subject.replace(" ", "-")
    return (f"From: Postmaster <mailer-daemon@mx.test>\r\nTo: bounces@crm.test\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{mid}@mx.test>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
            f"{extra}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


class RecordingIngest:
    """Answers as :func:`crm_mailtrack.services.inbound.ingest` does, without its database:
    parses each message (a defect or absurd nesting: ``malformed``, with the parser's error
    as the reason, never raised), stores each Message-ID once (``duplicate`` the second
    time), ``unmatched`` for mail it does not want (``X-Test: unmatched``), and raises for
    ``X-Test: fail`` (a store that fails)."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.stored: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.on_call: Any = None

    def __call__(self, raw: bytes) -> IngestResult:
        with self.lock:
            self.calls.append(raw)
        if self.on_call is not None:
            self.on_call(len(self.calls))
        try:
            msg = email.message_from_bytes(raw, policy=email.policy.default.clone(raise_on_defect=True))
        except (email.errors.MessageError, email.errors.MessageDefect, UnicodeError, RecursionError) as exc:
            return IngestResult(MALFORMED, reason=f"{type(exc).__name__}: {exc}")
        if msg["X-Test"] == "fail":
            raise RuntimeError("the store refused it")
        if msg["X-Test"] == "unmatched":
            return IngestResult(UNMATCHED, reason="names no message of ours")
        with self.lock:
            if msg["Message-ID"] in self.stored:
                return IngestResult(DUPLICATE)
            self.stored[msg["Message-ID"]] = raw
        return IngestResult(RECORDED)


def flags_by_subject(server: Dovecot) -> dict[str, set[str]]:
    """The flags of each message left on the server, by subject (headers only are parsed)."""
    found = {}
    for flags, raw in server.mailbox().values():
        found[email.parser.BytesHeaderParser().parsebytes(raw)["Subject"]] = flags
    return found


def run_at_once(fetchers: list[Any], *, timeout: float) -> list[Any]:
    """Run ``fetchers`` (``InboxFetcher``s that have listed the mailbox already) in threads
    released together, as two cron jobs overlapping; their reports, in the order they ended
    (fewer than given when one did not end within ``timeout`` seconds)."""
    reports: list[Any] = []
    start = threading.Barrier(len(fetchers))

    def run(fetcher: Any) -> None:
        start.wait()
        with fetcher:
            reports.append(fetcher.run())

    threads = [threading.Thread(target=run, args=(f,)) for f in fetchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return reports


# -- fixtures: a module takes them with ``from imapserver import _dovecot, dovecot, fresh_dovecot``


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
