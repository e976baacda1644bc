"""Tracking tokens from the recipient's side: any bad token (tampered, truncated, over-long,
wrong purpose, expired, signed with a retired key) is a 404 with nothing stored and never a
redirect; the pixel stays a 200 GIF but records nothing."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import sqlalchemy as sa
from itsdangerous.timed import TimestampSigner

from crm_mailtrack.models import events, messages
from crm_mailtrack.tokens import MAX_TOKEN_LENGTH, Purpose

from conftest import path_of

KEY_A = "key-A-" + "a" * 30
KEY_B = "key-B-" + "b" * 30


def tracked(app: Any, **kw: Any) -> dict[str, str]:
    """A stored message's three tracking paths (click, open, unsubscribe)."""
    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        msg = mt.track_message(contact_id="c1", email="alice@example.com", subject="s",
                               html='<a href="https://dest.test/page?x=1">go</a>', **kw)
        return {
            "click": path_of(re.search(r'href="([^"]+/t/c/[^"]+)">go</a>', msg.html).group(1)),
            "open": path_of(re.search(r'src="([^"]+/t/o/[^"]+)"', msg.html).group(1)),
            "unsub": path_of(msg.headers["List-Unsubscribe"][1:-1]),
            "id": msg.id,
        }


def event_count(app: Any) -> int:
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(events)).scalar()


def flip(token: str, part: int) -> str:
    """Change one character in the middle of a token part (0 payload, 2 signature)."""
    parts = token.rsplit(".", 2)
    s = parts[part]
    i = len(s) // 2
    parts[part] = s[:i] + ("A" if s[i] != "A" else "B") + s[i + 1:]
    return ".".join(parts)


def swap_token(path: str, token: str) -> str:
    return path.rsplit("/", 1)[0] + "/" + token


def assert_refused(app: Any, path: str) -> None:
    client = app.test_client()
    before = event_count(app)
    for method in (client.get, client.head):
        resp = method(path)
        assert resp.status_code == 404, (path, resp.status_code)
        assert "Location" not in resp.headers
    assert event_count(app) == before


def assert_pixel_records_nothing(app: Any, path: str) -> None:
    before = event_count(app)
    resp = app.test_client().get(path)
    assert resp.status_code == 200 and resp.mimetype == "image/gif"
    assert "no-store" in resp.headers["Cache-Control"]
    assert event_count(app) == before


@pytest.fixture
def host(make_app):
    return make_app()


def test_valid_click_is_the_control(host):
    p = tracked(host)
    resp = host.test_client().get(p["click"])
    assert resp.status_code == 302 and resp.headers["Location"] == "https://dest.test/page?x=1"
    assert event_count(host) == 1


@pytest.mark.parametrize("part", [0, 2], ids=["payload", "signature"])
def test_tampered_tokens(host, part):
    p = tracked(host)
    for kind in ("click", "open", "unsub"):
        token = p[kind].rsplit("/", 1)[1]
        bad = swap_token(p[kind], flip(token, part))
        assert bad != p[kind]
        if kind == "open":
            assert_pixel_records_nothing(host, bad)
        else:
            assert_refused(host, bad)


def test_truncated_overlong_and_garbage_tokens(host):
    p = tracked(host)
    token = p["click"].rsplit("/", 1)[1]
    for bad in (token[:-3], token[: len(token) // 2], token + "x" * 4200, "x", "...", "%00",
                "a" * 5000):
        assert_refused(host, swap_token(p["click"], bad))
        assert_pixel_records_nothing(host, swap_token(p["open"], bad))
    assert len(token + "x" * 4200) > 4096


def test_wrong_purpose(host):
    p = tracked(host)
    open_token = p["open"].rsplit("/", 1)[1]
    unsub_token = p["unsub"].rsplit("/", 1)[1]
    click_token = p["click"].rsplit("/", 1)[1]
    assert_refused(host, swap_token(p["click"], open_token))
    assert_refused(host, swap_token(p["click"], unsub_token))
    assert_refused(host, swap_token(p["unsub"], click_token))
    assert_refused(host, swap_token(p["unsub"], open_token))
    assert host.test_client().post(swap_token(p["unsub"], open_token)).status_code == 404
    assert_pixel_records_nothing(host, swap_token(p["open"], click_token))
    assert_pixel_records_nothing(host, swap_token(p["open"], unsub_token))


def test_expired_links(make_app, monkeypatch):
    app = make_app(MAILTRACK_LINK_MAX_AGE=3600)
    real = TimestampSigner.get_timestamp
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 7200)
    old = tracked(app)
    monkeypatch.setattr(TimestampSigner, "get_timestamp", real)
    fresh = tracked(app)
    assert_refused(app, old["click"])
    assert_pixel_records_nothing(app, old["open"])
    # an unsubscribe link never expires (tests/test_tracking_routes.py)
    assert app.test_client().get(fresh["click"]).status_code == 302
    assert event_count(app) == 1


def test_links_without_max_age_never_expire(make_app, monkeypatch):
    app = make_app()
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 10 * 365 * 86400)
    p = tracked(app)
    monkeypatch.undo()
    assert app.test_client().get(p["click"]).status_code == 302


@pytest.mark.parametrize("fallback_key", ["SECRET_KEY_FALLBACKS", "MAILTRACK_SECRET_KEY_FALLBACKS"])
@pytest.mark.parametrize("as_list", [True, False], ids=["list", "one-string"])
def test_key_rotation(make_app, fallback_key, as_list):
    """The old key in the fallbacks (a list, or one key as a plain string) keeps old links working."""
    old_app = make_app(SECRET_KEY=KEY_A)
    p = tracked(old_app)
    rotated = make_app(SECRET_KEY=KEY_B, **{fallback_key: [KEY_A] if as_list else KEY_A})
    resp = rotated.test_client().get(p["click"])
    assert resp.status_code == 302 and resp.headers["Location"] == "https://dest.test/page?x=1"
    assert rotated.test_client().get(p["unsub"]).status_code == 200
    # New links are signed with B: they work without A, and an app on A alone refuses them.
    new = tracked(rotated)
    retired = make_app(SECRET_KEY=KEY_B)
    assert retired.test_client().get(new["click"]).status_code == 302
    assert_refused(retired, p["click"])
    assert_refused(retired, p["unsub"])
    assert_pixel_records_nothing(retired, p["open"])
    assert_refused(make_app(SECRET_KEY=KEY_A), new["click"])


def test_mailtrack_secret_key_wins_over_secret_key(make_app):
    a = make_app(MAILTRACK_SECRET_KEY=KEY_A)
    p = tracked(a)
    assert make_app(SECRET_KEY=KEY_A).test_client().get(p["click"]).status_code == 302
    assert_refused(make_app(MAILTRACK_SECRET_KEY=KEY_B), p["click"])


# -- tokens already in sent mail ----------------------------------------------------------------

LEGACY = json.loads((Path(__file__).parent / "data" / "legacy_tokens.json").read_text("utf-8"))


def _legacy_app(make_app: Any, **config: Any) -> Any:
    """An app on the fixture's keys (current + retired) holding the fixture's messages."""
    old, current = LEGACY["keys"]
    app = make_app(SECRET_KEY=current, MAILTRACK_SECRET_KEY_FALLBACKS=[old], **config)
    paths = tracked(app)
    template = paths["id"]
    app.config["TEST_PREFIX"] = paths["click"].split("/t/c/", 1)[0]
    ids = {t["payload"] if t["purpose"] in ("open", "unsubscribe") else t["payload"][0]
           for t in LEGACY["tokens"] if t["purpose"] != "cursor"}
    with app.app_context(), app.extensions["mailtrack"].engine.begin() as conn:
        row = dict(conn.execute(sa.select(messages).where(messages.c.id == template)).one()._mapping)
        for message_id in ids:
            conn.execute(sa.insert(messages).values({**row, "id": message_id}))
    return app


def _legacy(purpose: str) -> list[dict[str, Any]]:
    return [t for t in LEGACY["tokens"] if t["purpose"] == purpose]


def test_tokens_signed_by_earlier_releases_still_work(make_app):
    """Tokens the earlier release signed (tests/data/legacy_tokens.json: short and
    zlib-compressed payloads, the current and a retired key, issued in 2023) keep working
    through every route: mail already sent must keep its links."""
    app = _legacy_app(make_app)
    pre = app.config["TEST_PREFIX"]
    client = app.test_client()
    clicks = [t for t in _legacy("click") if t["payload"][1] != "honeypot"]
    assert any(t["token"].startswith(".") for t in clicks)  # a compressed one among them
    for t in clicks:
        resp = client.get(f"{pre}/t/c/{t['token']}", headers={"User-Agent": "Mozilla/5.0 (X11; Linux) Firefox/128.0"})
        assert resp.status_code == 302 and unquote(resp.headers["Location"]) == t["payload"][1]
    (honeypot,) = [t for t in _legacy("click") if t["payload"][1] == "honeypot"]
    assert client.get(f"{pre}/t/h/{honeypot['token']}").status_code == 200
    (open_token,) = _legacy("open")
    assert client.get(f"{pre}/t/o/{open_token['token']}").status_code == 200
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        stored = conn.execute(sa.select(events.c.type, events.c.message_id, events.c.url)
                              .where(events.c.type.in_(["click", "open"]))).all()
    assert sorted(stored, key=repr) == sorted(
        [("click", t["payload"][0], t["payload"][1]) for t in clicks]
        + [("click", honeypot["payload"][0], None), ("open", open_token["payload"], None)], key=repr)
    (unsub,) = _legacy("unsubscribe")
    assert client.get(f"{pre}/t/u/{unsub['token']}").status_code == 200
    assert client.post(f"{pre}/t/u/{unsub['token']}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    (cursor,) = _legacy("cursor")
    with app.app_context():
        assert app.extensions["mailtrack"].signer.loads(Purpose.CURSOR, cursor["token"]) == cursor["payload"]


def test_old_tokens_expire_by_link_max_age_except_unsubscribe(make_app):
    app = _legacy_app(make_app, MAILTRACK_LINK_MAX_AGE=3600)
    pre = app.config["TEST_PREFIX"]
    (first, *_) = _legacy("click")
    assert_refused(app, f"{pre}/t/c/{first['token']}")
    assert_pixel_records_nothing(app, f"{pre}/t/o/{_legacy('open')[0]['token']}")
    assert app.test_client().get(f"{pre}/t/u/{_legacy('unsubscribe')[0]['token']}").status_code == 200


def _click_of_length(app: Any, length: int) -> tuple[str, str]:
    """A real click link whose token is exactly ``length`` characters, and its destination:
    the destination's path is random letters (zlib cannot shrink it), grown or cut until
    the signed token has that length. Up to ``MAX_TOKEN_LENGTH`` it is the link of a tracked
    message's HTML; a longer one the extension never puts in a mail (the link is left
    untracked: tests/test_long_links.py), so it is signed with the app's own signer."""
    import random

    rng = random.Random(length)
    mt = app.extensions["mailtrack"].extension
    size = length - 150
    for _ in range(40):
        dest = "https://dest.test/" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
                                              for _ in range(size))
        with app.app_context():
            if length <= MAX_TOKEN_LENGTH:
                msg = mt.track_message(contact_id="c1", email="alice@example.com", subject="s",
                                       html=f'<a href="{dest}">go</a>')
                found = re.search(r'href="([^"]+/t/c/[^"]+)">go</a>', msg.html)
                if found is None:  # too long: left untracked; its token's length steers the next try
                    size += length - len(app.extensions["mailtrack"].signer.dumps(Purpose.CLICK, [msg.id, dest]))
                    continue
                click = path_of(found.group(1))
            else:
                msg = mt.track_message(contact_id="c1", email="alice@example.com", subject="s", html="x")
                token = app.extensions["mailtrack"].signer.dumps(Purpose.CLICK, [msg.id, dest])
                click = path_of(mt.click_url(msg, "https://dest.test/")).rsplit("/", 1)[0] + "/" + token
        token = click.rsplit("/", 1)[1]
        if len(token) == length:
            return click, dest
        size += length - len(token)
    raise AssertionError(f"no token of {length} characters")


def test_a_token_of_the_longest_accepted_length_works_and_a_longer_one_is_refused(host):
    """Tokens up to 4096 characters are verified; longer ones are refused unread (a 404 with
    nothing stored), even when validly signed."""
    click, dest = _click_of_length(host, 4096)
    resp = host.test_client().get(click)
    assert resp.status_code == 302 and resp.headers["Location"] == dest
    assert event_count(host) == 1
    # base64 skips one length in four: 4097 cannot be made, 4098 can
    longer, _ = _click_of_length(host, 4098)
    assert_refused(host, longer)
    assert event_count(host) == 1
