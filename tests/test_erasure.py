"""Right to erasure, as a host sees it: the erased contact's personalised tracked links are
gone from the links table and the campaign's links report (links other contacts' messages
carry stay), and an address that was on Do-Not-Contact stays unmailable after its contact
is erased (a suppression record that holds no personal data), at send time on a real SMTP
server."""
from __future__ import annotations

import re
import time
from typing import Any

import sqlalchemy as sa
from apihelpers import API, BROWSER, hdrs
from conftest import path_of
from mailserver import MailServer

from crm_mailtrack import MailTrack
from crm_mailtrack.models import campaign_links, links, suppressions

ADA_URL = "https://shop.example/offer?email=ada@example.com&name=Ada+Lovelace"
BOB_URL = "https://shop.example/offer?email=bob@example.com&name=Bob+Ray"
SHARED = "https://shop.example/sale"
ADA_ONLY_ELSEWHERE = "https://shop.example/ada-only-page"  # Ada's, in a message without a campaign


def _html(*urls: str) -> str:
    return "<html><body>" + "".join(f'<a href="{u.replace("&", "&amp;")}">x</a>' for u in urls) + "</body></html>"


def _track(mt: Any, contact_id: str, email: str, campaign_id: str | None, *urls: str) -> Any:
    return mt.track_message(contact_id=contact_id, email=email, subject="Offer", html=_html(*urls),
                            campaign_id=campaign_id)


def _stored_urls(db: Any) -> set[str]:
    return set(db.session.execute(sa.select(links.c.url)).scalars())


def _report_urls(client: Any, campaign: str) -> set[str]:
    resp = client.get(f"{API}/campaigns/{campaign}/links", headers=hdrs())
    assert resp.status_code == 200
    return {item["url"] for item in resp.get_json()["links"]}


def test_erasure_removes_the_links_only_the_contacts_messages_carried(mailtrack, db, client):
    ada = _track(mailtrack, "ada", "ada@example.com", "spring", ADA_URL, SHARED)
    _track(mailtrack, "bob", "bob@example.com", "spring", BOB_URL, SHARED)
    _track(mailtrack, "ada", "ada@example.com", None, ADA_ONLY_ELSEWHERE)
    _track(mailtrack, "cy", "cy@example.com", "autumn", SHARED)
    link = next(u for u in re.findall(r'href="([^"]+/t/c/[^"]+)"', ada.html))
    assert client.get(path_of(link), headers=BROWSER).status_code == 302  # Ada clicked
    assert _report_urls(client, "spring") == {ADA_URL, BOB_URL, SHARED}

    erased = mailtrack.erase_contact("ada")

    assert _report_urls(client, "spring") == {BOB_URL, SHARED}
    assert _report_urls(client, "autumn") == {SHARED}
    assert _stored_urls(db) == {BOB_URL, SHARED}
    dump = " ".join(str(v) for table in (links, campaign_links) for row in db.session.execute(sa.select(table))
                    for v in row)
    assert "ada" not in dump.lower()
    # 2 messages + 1 click event + 2 links + 1 campaign link (Ada's URL in "spring")
    assert erased == 6


def test_a_link_other_contacts_messages_carry_stays_even_outside_the_campaign(mailtrack, db, client):
    _track(mailtrack, "ada", "ada@example.com", "spring", SHARED, ADA_URL)
    _track(mailtrack, "bob", "bob@example.com", None, ADA_URL)  # the same URL, sent to Bob too
    mailtrack.erase_contact("ada")
    assert _stored_urls(db) == {ADA_URL}  # Bob's message carries it: the row stays
    assert db.session.execute(sa.select(campaign_links)).all() == []  # "spring" carries nothing now


def _smtp_app(make_app: Any, server: MailServer, **config: Any) -> Any:
    def hooks(mt: MailTrack) -> None:
        @mt.contact_loader
        def _contact(contact_id: str) -> dict[str, Any] | None:
            return {"ada": {"email": "Ada@Example.com"}, "ada2": {"email": "ada@example.com"}}.get(contact_id)

    return make_app(setup=hooks, MAILTRACK_SMTP_URL=server.url(), MAILTRACK_DEFAULT_SENDER="crm@example.com",
                    **config)


def test_an_unsubscribed_address_stays_unmailable_after_erasure(make_app, _server, handler):
    app = _smtp_app(make_app, _server)
    mt = app.extensions["mailtrack"].extension
    client = app.test_client()
    with app.app_context():
        first = mt.track_message(contact_id="ada", email="Ada@Example.com", subject="Hi", html=_html(SHARED))
        unsub = path_of(first.headers["List-Unsubscribe"][1:-1])
    assert client.post(unsub, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    result = app.test_cli_runner().invoke(args=["mailtrack", "erase-contact", "ada", "--yes"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        db = app.extensions["sqlalchemy"]
        rows = db.session.execute(sa.select(suppressions)).all()
        assert len(rows) == 1
        stored = " ".join(str(v) for v in rows[0]).lower()
        assert "ada" not in stored and "example" not in stored  # no address, no contact id
        # the same person, erased: as the same contact id, or re-imported under a new one
        assert not mt.can_contact("ada") and not mt.can_contact("ada2")
        assert mt.can_contact("ada2", "sms")  # suppressed on the channel she left only
        for contact_id in ("ada", "ada2"):
            msg = mt.track_message(contact_id=contact_id, email="ADA@example.COM", subject="Again",
                                   html=_html(SHARED))
            assert mt.send(msg).status == "SUPPRESSED"
        other = mt.track_message(contact_id="bob", email="bob@example.com", subject="Hi", html=_html(SHARED))
        assert mt.send(other).status == "SENT"
    assert [r.rcpt_tos for r in handler.received] == [["bob@example.com"]]  # nothing reached Ada


def test_suppressions_follow_the_secret_key_and_its_fallbacks(make_app, _server, handler, tmp_path):
    old = "old-secret-key-" + "o" * 24
    app = _smtp_app(make_app, _server, MAILTRACK_SECRET_KEY=old)
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        mt.track_message(contact_id="ada", email="ada@example.com", subject="Hi", html=_html(SHARED))
        mt.add_dnc("ada")
        mt.erase_contact("ada")
        assert not mt.can_contact("ada2")
        url = app.config["SQLALCHEMY_DATABASE_URI"]
    # the same database, after a key rotation: the old key in the fallbacks keeps it in force
    rotated = _smtp_app(make_app, _server, SQLALCHEMY_DATABASE_URI=url, MAILTRACK_SECRET_KEY="new-secret-key-" + "n" * 24,
                        MAILTRACK_SECRET_KEY_FALLBACKS=[old])
    with rotated.app_context():
        mt = rotated.extensions["mailtrack"].extension
        assert not mt.can_contact("ada2")
        msg = mt.track_message(contact_id="ada2", email="ada@example.com", subject="Again", html=_html(SHARED))
        assert mt.send(msg).status == "SUPPRESSED"
    # ... and without it the suppression is no longer recognised (documented: keep retired keys)
    dropped = _smtp_app(make_app, _server, SQLALCHEMY_DATABASE_URI=url, MAILTRACK_SECRET_KEY="new-secret-key-" + "n" * 24)
    with dropped.app_context():
        assert dropped.extensions["mailtrack"].extension.can_contact("ada2")
    assert handler.received == []


def test_suppression_rows_are_stable_and_scoped_to_the_erased_tenant(make_app, _server, handler):
    """The stored hash is HMAC-SHA256 over ``tenant NUL channel NUL address`` (trimmed,
    lower-cased) with a key derived from the secret key: rows written by an earlier release
    must keep matching, and an erasure in one tenant suppresses only that tenant's channels."""
    import hashlib
    import hmac

    secret = "pinned-secret-key-" + "p" * 24
    app = _smtp_app(make_app, _server, MAILTRACK_SECRET_KEY=secret)
    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        mt.add_dnc("ada", "sms", tenant_id="t2")  # another tenant's entry of the same contact id
        mt.add_dnc("ada", tenant_id="t1")
        mt.erase_contact("ada", tenant_id="t1")
        db = app.extensions["sqlalchemy"]
        rows = db.session.execute(sa.select(suppressions.c.tenant_id, suppressions.c.channel,
                                            suppressions.c.address_hash, suppressions.c.date_added)).all()
        key = hmac.new(secret.encode(), b"mailtrack.suppression", hashlib.sha256).digest()
        expected = hmac.new(key, b"t1\0email\0ada@example.com", hashlib.sha256).hexdigest()
        assert [(r.tenant_id, r.channel, r.address_hash) for r in rows] == [("t1", "email", expected)]
        assert rows[0].date_added is not None
        assert not mt.can_contact("ada2", tenant_id="t1")
        assert mt.can_contact("ada2", tenant_id="t2") and mt.can_contact("ada2", "sms", tenant_id="t2")
        assert mt.can_contact("ada2", "sms", tenant_id="t1")
        # a second erasure of the same address adds nothing
        mt.add_dnc("ada", tenant_id="t1")
        mt.erase_contact("ada", tenant_id="t1")
        assert db.session.execute(sa.select(sa.func.count()).select_from(suppressions)).scalar() == 1


def test_a_bytes_secret_key_derives_the_suppression_key_from_its_bytes(make_app, _server, handler):
    """``MAILTRACK_SECRET_KEY`` may be bytes (as Flask's ``SECRET_KEY`` may): the key is
    derived from those bytes, not from their ``repr``, so the same secret given as text
    or as bytes keeps the same suppressions."""
    import hashlib
    import hmac

    secret = b"bytes-secret-key-" + b"\xc3\xa9" * 16
    app = _smtp_app(make_app, _server, MAILTRACK_SECRET_KEY=secret)
    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        mt.add_dnc("ada")
        mt.erase_contact("ada")
        db = app.extensions["sqlalchemy"]
        stored = db.session.execute(sa.select(suppressions.c.address_hash)).scalars().all()
        key = hmac.new(secret, b"mailtrack.suppression", hashlib.sha256).digest()
        assert stored == [hmac.new(key, b"\0email\0ada@example.com", hashlib.sha256).hexdigest()]
        assert not mt.can_contact("ada2")
        url = app.config["SQLALCHEMY_DATABASE_URI"]
    as_text = _smtp_app(make_app, _server, SQLALCHEMY_DATABASE_URI=url, MAILTRACK_SECRET_KEY=secret.decode())
    with as_text.app_context():
        assert not as_text.extensions["mailtrack"].extension.can_contact("ada2")


def test_erasure_finds_the_links_of_messages_older_than_the_link_max_age(make_app, monkeypatch):
    """``MAILTRACK_LINK_MAX_AGE`` ends a click link's life for recipients, not the erasure's
    knowledge of which links a stored message carries: a personalised URL sent long ago
    still goes with its contact."""
    from itsdangerous.timed import TimestampSigner

    app = make_app(MAILTRACK_LINK_MAX_AGE=3600)
    mt = app.extensions["mailtrack"].extension
    db = app.extensions["sqlalchemy"]
    with app.app_context():
        monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 30 * 86400)
        _track(mt, "ada", "ada@example.com", "spring", ADA_URL, SHARED)
        _track(mt, "bob", "bob@example.com", "spring", BOB_URL, SHARED)
        monkeypatch.undo()
        assert _stored_urls(db) == {ADA_URL, BOB_URL, SHARED}
        mt.erase_contact("ada")
        assert _stored_urls(db) == {BOB_URL, SHARED}


def test_an_erasure_suppresses_only_the_erased_contacts_channels(make_app, _server, handler):
    """Another contact's Do-Not-Contact channels in the same tenant are not carried over to
    the erased contact's address."""
    app = _smtp_app(make_app, _server)
    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        mt.add_dnc("bob", "sms")  # someone else's entry on another channel
        mt.add_dnc("ada")  # email only
        mt.erase_contact("ada")
        assert not mt.can_contact("ada2")
        assert mt.can_contact("ada2", "sms")
        db = app.extensions["sqlalchemy"]
        assert db.session.execute(sa.select(suppressions.c.channel)).scalars().all() == ["email"]


def test_a_blank_address_from_the_contact_loader_is_not_suppressed(make_app):
    """The loader's address joins the ones to suppress only when it is not blank: a blank
    one would suppress every contact without an address."""
    def hooks(mt: MailTrack) -> None:
        mt.contact_loader(lambda contact_id: {"email": "   "} if contact_id == "ada" else {"email": ""})

    app = make_app(setup=hooks)
    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        _track(mt, "ada", "ada@example.com", None, SHARED)
        mt.add_dnc("ada")
        mt.erase_contact("ada")
        db = app.extensions["sqlalchemy"]
        assert db.session.execute(sa.select(sa.func.count()).select_from(suppressions)).scalar() == 1
        assert mt.can_contact("nobody")  # the loader gives "" for everyone else
