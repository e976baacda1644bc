"""The built package inside a host CRM of its own, as a new user meets it.

``python -m build`` makes the sdist and, from it, the wheel; the wheel is installed with
Flask-Migrate and Flask-WTF into a fresh venv (not the source tree). ``tests/hostapp`` (own
models, Flask-Migrate, CSRFProtect, a session login and authorizer, ProxyFix) runs in that
venv: its ``flask db migrate`` in subprocesses, and the CRM under werkzeug's real server on
a port the OS picks. Mail goes through aiosmtpd on loopback and is checked as the raw bytes
received; its links and List-Unsubscribe are followed with a real HTTP client
(``http.client``), through the "reverse proxy" headers the CRM is configured for.

Built once per session; skipped (with the reason) only when the build cannot fetch its
build dependencies (offline).
"""
from __future__ import annotations

import asyncio
import email
import email.policy
import http.client
import json
import os
import re
import sqlite3
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PUBLIC_ORIGIN = "https://crm.example.com"  # MAILTRACK_BASE_URL of tests/hostapp
INTEGRATION_TOKEN = "hostapp-integration-token"
CLIENT_IP = "203.0.113.7"
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
OFFLINE_SIGNS = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
                 "No matching distribution found for setuptools", "ProxyError", "Could not fetch URL")


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, **kwargs)


def _skip_if_offline(result: subprocess.CompletedProcess[str], what: str) -> None:
    output = result.stdout + result.stderr
    if result.returncode != 0 and any(sign in output for sign in OFFLINE_SIGNS):
        pytest.skip(f"{what} needs the package index and it cannot be reached: {output.strip()[-300:]}")
    assert result.returncode == 0, f"{what} failed:\n{output[-3000:]}"


@dataclass
class Built:
    sdist: Path
    wheel: Path
    python: Path  # the venv's interpreter


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """sdist and wheel from ``python -m build``, and a venv holding the wheel."""
    base = tmp_path_factory.mktemp("host-wheel")
    dist = base / "dist"
    result = _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], cwd=base)
    _skip_if_offline(result, "python -m build")
    [sdist], [wheel] = list(dist.glob("*.tar.gz")), list(dist.glob("*.whl"))
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).check_returncode()
    python = venv / "bin" / "python"
    install = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--disable-pip-version-check", str(wheel), "Flask-Migrate>=4.0", "Flask-WTF>=1.3"], cwd=base)
    _skip_if_offline(install, "pip install of the wheel")
    return Built(sdist=sdist, wheel=wheel, python=python)


# -- the package files ----------------------------------------------------------------------

def test_sdist_and_wheel_hold_what_a_user_needs(built: Built) -> None:
    """LICENSE in both; the sdist ships the docs the README names and no test modules (the
    suite needs the repository); the wheel has the migrations and templates; the README
    shown on a package index has no relative links."""
    with tarfile.open(built.sdist) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
        readme = sdist.extractfile(next(m for m in sdist.getmembers() if m.name.endswith("/PKG-INFO")))
        pkg_info = readme.read().decode() if readme else ""
    assert "LICENSE" in names
    assert {"docs/metrics.md", "docs/metrics-bots.md", "docs/api.md", "docs/communications.md"} <= names
    assert not [n for n in names if n.startswith("tests/")]
    with zipfile.ZipFile(built.wheel) as wheel:
        wheel_names = set(wheel.namelist())
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in wheel_names)
    assert {"crm_mailtrack/py.typed", "crm_mailtrack/migrations/env.py",
            "crm_mailtrack/templates/mailtrack/unsubscribe.html"} <= wheel_names
    assert any(n.startswith("crm_mailtrack/migrations/versions/0001_") for n in wheel_names)
    links = re.findall(r"\]\(([^)]+)\)", pkg_info)
    assert links, "the README lost its links?"
    assert [u for u in links if not u.startswith(("https://", "http://", "mailto:"))] == []


# -- the host CRM ------------------------------------------------------------------------------

@dataclass
class RawMailServer:
    """aiosmtpd on a loopback socket the OS picked, keeping each message's bytes as received."""

    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok: queued"

    def _serve(self) -> None:
        from aiosmtpd.smtp import SMTP

        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            self.loop.create_server(lambda: SMTP(self, hostname="mail.test"), sock=self.sock))
        self.ready.set()
        self.loop.run_forever()
        server.close()
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Browser:
    """A real HTTP client that reaches the CRM the way its reverse proxy does (``Host``,
    ``X-Forwarded-*``: the CRM sees HTTPS, so Flask-WTF also checks the Referer of
    protected requests), and never follows redirects. With ``cookies`` it is a browser on a
    CRM page (cookies kept, same-origin Referer); without, a mail client or an integration."""

    def __init__(self, port: int, *, cookies: bool = True) -> None:
        self.port = port
        self.cookies: dict[str, str] | None = {} if cookies else None

    def request(self, method: str, url: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        parts = urllib.parse.urlsplit(url if "://" in url else PUBLIC_ORIGIN + url)
        assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_ORIGIN, url
        sent = {"Host": parts.netloc, "X-Forwarded-Proto": parts.scheme, "X-Forwarded-Host": parts.netloc,
                "X-Forwarded-For": CLIENT_IP, "User-Agent": BROWSER_UA, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.cookies is not None:  # a page of the CRM: same-origin requests carry a Referer
            sent.setdefault("Referer", PUBLIC_ORIGIN + "/")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=sent)
            resp = conn.getresponse()
            answer = Answer(resp.status, resp.headers, resp.read())
        finally:
            conn.close()
        if self.cookies is not None:
            for cookie in answer.headers.get_all("Set-Cookie") or []:
                name, _, rest = cookie.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
        return answer

    def form(self, url: str, data: dict[str, str], headers: dict[str, str] | None = None) -> Answer:
        return self.request("POST", url, body=urllib.parse.urlencode(data).encode(),
                            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})

    def api(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
        return self.request(method, "/mailtrack/api" + path,
                            body=None if body is None else json.dumps(body).encode(),
                            headers={"Accept": "application/json", "Content-Type": "application/json",
                                     **(headers or {})})


BEARER = {"Authorization": f"Bearer {INTEGRATION_TOKEN}"}


@dataclass
class Host:
    port: int
    mail: RawMailServer
    db_path: Path
    revisions: dict[str, str]
    crm_module: str

    def login(self) -> tuple[Browser, str]:
        browser = Browser(self.port)
        answer = browser.request("GET", "/login?user=ada")
        assert answer.status == 200
        return browser, answer.json()["csrf_token"]

    def new_contact(self, browser: Browser, token: str, email_address: str) -> int:
        answer = browser.form("/contacts", {"email": email_address, "first_name": "Ada", "csrf_token": token})
        assert answer.status == 201, answer.body
        return int(answer.json()["id"])

    def dnc(self, contact_id: int) -> list[Any]:
        answer = Browser(self.port, cookies=False).api("GET", f"/contacts/{contact_id}/dnc", headers=BEARER)
        assert answer.status == 200, answer.body
        return answer.json()["doNotContact"]

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db_path) as conn:
            return conn.execute(sql, params).fetchall()


def _flask(built: Built, cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = _run([str(built.python), "-m", "flask", "--app", "hostapp:create_app", *args], cwd=cwd, env=env)
    assert result.returncode == 0, f"flask {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def host(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """The host CRM on the installed wheel: its migrations made with ``flask db`` (MailTrack
    initialised first, then a schema change with MailTrack initialised last), then served."""
    work = tmp_path_factory.mktemp("host-crm")
    db_path = work / "crm.db"
    mail = RawMailServer()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FLASK_APP")}
    env.update(PYTHONPATH=str(TESTS), HOSTAPP_DATABASE_URL=f"sqlite:///{db_path}", HOSTAPP_INSTANCE=str(work / "i"),
               HOSTAPP_SMTP_URL=f"smtp://127.0.0.1:{mail.port}", HOSTAPP_PROXY_HOPS="1",
               HOSTAPP_ORDER="mailtrack-first")
    where = _run([str(built.python), "-c", "import crm_mailtrack; print(crm_mailtrack.__file__)"], cwd=work, env=env)
    assert str(built.python.parent.parent) in where.stdout, where  # the wheel, not the source tree
    _flask(built, work, env, "db", "init")
    _flask(built, work, env, "mailtrack", "init-db")
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE legacy_import (id INTEGER PRIMARY KEY)")  # the host's own filter skips it
    migrated = _flask(built, work, env, "db", "migrate", "-m", "crm")
    # The host's tools say nothing about our tables (SQLite cannot reflect our expression index).
    assert "mailtrack" not in migrated.stderr, migrated.stderr
    _flask(built, work, env, "db", "upgrade")
    env.update(HOSTAPP_NOTES="1", HOSTAPP_ORDER="host-first")
    _flask(built, work, env, "db", "migrate", "-m", "notes")
    _flask(built, work, env, "db", "upgrade")
    revisions = {p.stem.split("_", 1)[1]: p.read_text() for p in (work / "migrations" / "versions").glob("*.py")}

    server = subprocess.Popen([str(built.python), "-m", "hostapp.serve"], cwd=work, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=(work / "server.log").open("w"))
    try:
        line = server.stdout.readline() if server.stdout else ""
        assert line.startswith("PORT "), f"server did not start: {line!r}\n{(work / 'server.log').read_text()}"
        yield Host(port=int(line.split()[1]), mail=mail, db_path=db_path, revisions=revisions,
                   crm_module=where.stdout.strip())
    finally:
        server.terminate()
        server.wait(10)
        mail.stop()


def test_flask_db_migrate_writes_the_hosts_tables_and_nothing_of_ours(host: Host) -> None:
    """Both revisions the host's ``flask db migrate`` wrote: its own tables (first with
    MailTrack initialised before Flask-Migrate, then after), never a ``mailtrack_`` table
    or index, nor a table the host's own ``include_object`` filter skips."""
    assert set(host.revisions) == {"crm", "notes"}
    assert "op.create_table('crm_contacts'" in host.revisions["crm"]
    assert "op.create_table('crm_notes'" in host.revisions["notes"]
    assert "op.create_table('crm_contacts'" not in host.revisions["notes"]  # already there
    assert "drop_" not in host.revisions["notes"].split("def downgrade", 1)[0]
    for name, text in host.revisions.items():
        assert "mailtrack_" not in text, name
        assert "legacy_import" not in text, name
    tables = {name for (name,) in host.rows("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"mailtrack_messages", "mailtrack_events", "mailtrack_alembic_version", "legacy_import"} <= tables


def _send(host: Host, address: str) -> tuple[int, str, bytes]:
    browser, token = host.login()
    contact_id = host.new_contact(browser, token, address)
    before = len(host.mail.received)
    answer = browser.form(f"/contacts/{contact_id}/mail", {"csrf_token": token})
    assert answer.status == 200, answer.body
    assert answer.json()["status"] == "SENT"
    assert len(host.mail.received) == before + 1
    mail_from, rcpt_tos, raw = host.mail.received[-1]
    assert rcpt_tos == [address]
    return contact_id, answer.json()["id"], raw


def _header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in raw else raw.split(b"\n\n", 1)[0]


def _links(raw: bytes) -> list[str]:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    html = message.get_body(("html",))
    assert html is not None
    return re.findall(r'(?:href|src)="([^"]+)"', html.get_content())


def test_the_mail_on_the_wire_carries_a_literal_list_unsubscribe(host: Host) -> None:
    """What a mailbox provider reads: the raw header is ``<https://...>`` (not RFC 2047
    encoded words), with the RFC 8058 one-click companion header."""
    _, _, raw = _send(host, "wire@example.net")
    headers = _header_block(raw)
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", headers)
    match = re.search(rb"^List-Unsubscribe: <(https://crm\.example\.com/mailtrack/t/u/[^>\s]+)>\r?$",
                      unfolded, flags=re.M)
    assert match, headers.decode("ascii", "replace")
    assert re.search(rb"^List-Unsubscribe-Post: List-Unsubscribe=One-Click\r?$", unfolded, flags=re.M)
    assert b"=?utf-8?" not in unfolded.lower().split(b"list-unsubscribe", 1)[1].split(b"\n", 1)[0]


def test_links_head_get_and_one_click_unsubscribe_with_a_real_client(host: Host) -> None:
    """Every link of the received mail answers HEAD and GET as the contract says, through
    the proxy headers (the stored address is the client's, not the proxy's); HEAD on the
    unsubscribe link changes nothing; the List-Unsubscribe POST (no cookie, no CSRF token)
    unsubscribes."""
    contact_id, message_id, raw = _send(host, "links@example.net")
    links = _links(raw)
    clicks = [u for u in links if "/mailtrack/t/c/" in u]
    pixel = [u for u in links if "/mailtrack/t/o/" in u]
    assert len(clicks) == 2 and len(pixel) == 1, links
    client = Browser(host.port, cookies=False)
    destinations = set()
    for url in clicks:
        head = client.request("HEAD", url)
        assert head.status == 302 and head.body == b""
        get = client.request("GET", url)
        assert get.status == 302
        assert get.headers["Location"] == head.headers["Location"]
        destinations.add(get.headers["Location"])
    assert destinations == {"https://shop.example.com/spring?x=1", "https://example.org/blog"}
    assert client.request("HEAD", pixel[0]).status == 200
    got = client.request("GET", pixel[0])
    assert got.status == 200 and got.headers["Content-Type"] == "image/gif"
    ips = {ip for (ip,) in host.rows("SELECT ip FROM mailtrack_events WHERE message_id = ? AND type = 'click'",
                                     message_id)}
    assert ips == {CLIENT_IP}

    # The header's value as a mail client decodes it (its raw form is the test above's).
    header = str(email.message_from_bytes(raw, policy=email.policy.default)["List-Unsubscribe"])
    url = re.fullmatch(r"<(https://[^>]+)>", header.strip()).group(1)  # type: ignore[union-attr]
    assert client.request("GET", url).status == 200
    head = client.request("HEAD", url)
    assert head.status == 200
    assert host.dnc(contact_id) == [], "HEAD on the unsubscribe link unsubscribed the contact"
    post = client.request("POST", url, body=b"List-Unsubscribe=One-Click",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert post.status == 200
    assert len(host.dnc(contact_id)) == 1


def test_the_json_api_under_csrf_protection(host: Host) -> None:
    """Bearer calls need no CSRF token; the session-authorised ones do (a cross-site form
    with the session cookie is refused and writes nothing); the host's own forms stay
    protected; a foreign contact id is 404 through the README-style loader."""
    browser, token = host.login()
    contact_id = host.new_contact(browser, token, "api@example.net")
    path = f"/contacts/{contact_id}/dnc/email/add"

    assert browser.form("/contacts", {"email": "x@example.net"}).status == 400  # host form, no token
    forged = browser.form("/mailtrack/api" + path, {"comments": "cross-site"},
                          headers={"Origin": "https://evil.example", "Referer": "https://evil.example/win",
                                   "Accept": "application/json"})
    assert forged.status == 400
    assert forged.headers["Content-Type"].startswith("application/problem+json")
    assert host.dnc(contact_id) == []

    with_token = browser.api("POST", path, {"comments": "by ada"}, headers={"X-CSRFToken": token})
    assert with_token.status == 200, with_token.body
    assert len(host.dnc(contact_id)) == 1

    bearer = Browser(host.port, cookies=False).api("POST", f"/contacts/{contact_id}/dnc/email/remove", {},
                                                  headers=BEARER)
    assert bearer.status == 200, bearer.body
    assert host.dnc(contact_id) == []

    anonymous = Browser(host.port, cookies=False).api("GET", f"/contacts/{contact_id}/dnc")
    assert anonymous.status == 401
    assert "bearer" not in anonymous.body.decode().lower()
    foreign = Browser(host.port, cookies=False).api("GET", "/contacts/abc/activity", headers=BEARER)
    assert foreign.status == 404
