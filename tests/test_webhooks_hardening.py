"""Outbound webhooks hardened: internal destinations refused at creation and again at each
delivery (server-side request forgery), secret rotation with both keys signing for the
overlap (verified with the ``standardwebhooks`` library), and ``flask mailtrack purge``
deleting finished deliveries and old ESP receipts. Real loopback receiver, real DNS
resolution of ``localhost``, SQLite and PostgreSQL."""
from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack.inbound_models import webhook_receipts
from crm_mailtrack.models import events, utcnow
from crm_mailtrack.services import webhooks
from crm_mailtrack.services.webhook_http import forbidden_reason
from crm_mailtrack.state import get_state

from test_webhooks_outbound import ALLOW, API, Receiver, _click, _log, _subscribe

standardwebhooks = pytest.importorskip("standardwebhooks", reason="standardwebhooks is in the dev extra")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


# -- SSRF: at creation --------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook",  # loopback
    "http://localhost/hook",  # a name resolving to loopback
    "http://2130706433/hook",  # loopback spelled as one number (resolved as the socket layer does)
    "http://10.1.2.3/hook", "http://172.16.0.1/hook", "http://192.168.1.10/hook",  # RFC 1918
    "http://169.254.169.254/latest/meta-data/",  # link-local: the cloud metadata service
    "http://224.0.0.1/hook",  # multicast
    "http://0.0.0.0/hook",  # unspecified
    "http://240.0.0.1/hook",  # reserved
    "http://100.64.0.1/hook",  # shared address space (not globally reachable)
    "http://[::1]/hook", "http://[fd12:3456::1]/hook", "http://[fe80::1]/hook",  # IPv6 loopback, ULA, link-local
    "http://[ff02::1]/hook", "http://[::]/hook",  # IPv6 multicast, unspecified
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
    "http://[2002:a00:1::]/hook",  # 6to4 of 10.0.0.1
])
def test_internal_destinations_are_refused_at_creation(client, api_headers, url):
    resp = client.post(f"{API}/webhooks", json={"url": url}, headers=api_headers)
    assert resp.status_code == 422 and resp.content_type == "application/problem+json"
    assert "url" in resp.json["errors"], resp.json
    assert "MAILTRACK_OUTBOUND_WEBHOOK_ALLOW_PRIVATE" in str(resp.json["errors"]["url"])
    assert client.get(f"{API}/webhooks", headers=api_headers).json == {"webhooks": []}  # nothing stored


@pytest.mark.parametrize("url", ["https://93.184.215.14/hook", "https://[2606:4700::1111]/hook",
                                 "https://hooks.invalid/not-resolvable-yet"])
def test_public_destinations_are_accepted(client, api_headers, url):
    resp = client.post(f"{API}/webhooks", json={"url": url}, headers=api_headers)
    assert resp.status_code == 201, resp.json


def test_the_key_allows_internal_destinations(make_app, api_headers):
    app = make_app(**ALLOW)
    resp = app.test_client().post(f"{API}/webhooks", json={"url": "http://10.1.2.3/hook"}, headers=api_headers)
    assert resp.status_code == 201


def test_forbidden_reason_names_the_kind():
    import ipaddress

    assert forbidden_reason(ipaddress.ip_address("169.254.169.254")) == "link-local"
    assert forbidden_reason(ipaddress.ip_address("127.0.0.1")) == "loopback"
    assert forbidden_reason(ipaddress.ip_address("8.8.8.8")) is None


# -- SSRF: at delivery --------------------------------------------------------------------------

def test_a_name_resolving_to_loopback_is_refused_at_delivery(make_app, api_headers, receiver, caplog):
    """Created while internal destinations were allowed; the app that delivers does not allow
    them: the delivery fails, is logged, and the receiver gets nothing."""
    allowed = make_app(**ALLOW)
    strict = make_app()  # same database
    url = f"http://localhost:{receiver.port}/hooks/crm"
    with allowed.app_context():
        hook = _subscribe(allowed, api_headers, url, eventTypes=["click"])
    with strict.app_context():
        _click(strict, strict.extensions["mailtrack"].extension)
        with caplog.at_level(logging.WARNING, logger="crm_mailtrack.webhooks"):
            totals = webhooks.run(get_state(strict))
        assert totals == {"collected": 1, "delivered": 0, "failed": 1}
        assert receiver.requests == []
        (entry,) = _log(strict, api_headers, hook["id"])
        assert entry["status"] == "pending" and entry["attempts"] == 1 and entry["lastStatus"] is None
        assert entry["lastError"].startswith("Refused: localhost resolves to 127.0.0.1, a loopback address")
        assert any("refused" in r.getMessage() and "localhost" in r.getMessage() for r in caplog.records)
    with allowed.app_context():  # the same delivery, where allowed, reaches the receiver
        totals = webhooks.run(get_state(allowed), utcnow() + dt.timedelta(seconds=10))
        assert totals["delivered"] == 1 and len(receiver.requests) == 1
        standardwebhooks.Webhook(hook["secret"]).verify(receiver.requests[0][1], receiver.requests[0][0])


# -- secret rotation ----------------------------------------------------------------------------

def test_a_rotated_secret_signs_beside_the_old_one_for_the_overlap_then_alone(make_app, api_headers, receiver):
    app = make_app(**ALLOW)
    with app.app_context():
        hook = _subscribe(app, api_headers, receiver.url, eventTypes=["click"])
        client = app.test_client()
        before = utcnow()
        resp = client.post(f"{API}/webhooks/{hook['id']}/rotate-secret", headers=api_headers)
        assert resp.status_code == 200, resp.json
        rotated = resp.json
        assert rotated["id"] == hook["id"] and rotated["secret"].startswith("whsec_")
        assert rotated["secret"] != hook["secret"]
        until = dt.datetime.fromisoformat(rotated["previousSecretValidUntil"].replace("Z", "+00:00"))
        assert dt.timedelta(hours=24) <= until - before <= dt.timedelta(hours=24, seconds=5)
        assert "secret" not in client.get(f"{API}/webhooks/{hook['id']}", headers=api_headers).json

        mt = app.extensions["mailtrack"].extension
        _click(app, mt, "during")
        state = get_state(app)
        assert webhooks.run(state)["delivered"] == 1
        headers, body, _ = receiver.requests[0]
        assert len(headers["webhook-signature"].split(" ")) == 2
        for secret in (hook["secret"], rotated["secret"]):  # either key verifies it
            assert standardwebhooks.Webhook(secret).verify(body, headers)["type"] == "click"

        _click(app, mt, "after")
        assert webhooks.run(state, utcnow() + dt.timedelta(hours=25))["delivered"] == 1
        headers, body, _ = receiver.requests[1]
        assert len(headers["webhook-signature"].split(" ")) == 1
        assert standardwebhooks.Webhook(rotated["secret"]).verify(body, headers)["type"] == "click"
        with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
            standardwebhooks.Webhook(hook["secret"]).verify(body, headers)

        assert client.post(f"{API}/webhooks/no-such-hook/rotate-secret", headers=api_headers).status_code == 404


# -- retention ----------------------------------------------------------------------------------

POSTMARK = {"postmark": {"username": "hook", "password": "hook-password"}}


def _unmatched_postmark_event(app: Any, n: int) -> None:
    auth = base64.b64encode(b"hook:hook-password").decode()
    body = {"RecordType": "Delivery", "MessageID": f"pm-unknown-{n}", "Recipient": f"x{n}@example.com",
            "DeliveredAt": "2026-11-30T12:00:00Z"}
    resp = app.test_client().post("/mailtrack/hooks/postmark", json=body, headers={"Authorization": f"Basic {auth}"})
    assert resp.status_code == 200 and resp.json["unmatched"] == 1, resp.json


def _count(app: Any, table: sa.Table, *where: Any) -> int:
    session = get_state(app).session
    n = session.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()
    session.commit()
    return int(n)


def test_purge_deletes_finished_deliveries_and_old_receipts(make_app, api_headers, receiver):
    app = make_app(MAILTRACK_OUTBOUND_WEBHOOK_RETRY_SCHEDULE=[1], MAILTRACK_WEBHOOKS=POSTMARK, **ALLOW)
    failing = Receiver()
    failing.answers = [500]
    try:
        with app.app_context():
            ok = _subscribe(app, api_headers, receiver.url, eventTypes=["click"])
            bad = _subscribe(app, api_headers, failing.url, eventTypes=["click"])
            mt = app.extensions["mailtrack"].extension
            state = get_state(app)
            old = utcnow() - dt.timedelta(days=40)
            _click(app, mt, "one")
            webhooks.run(state, old)  # ok: delivered; bad: attempt 1 of 2
            webhooks.run(state, old + dt.timedelta(seconds=2))  # bad: failed (schedule spent)
            _click(app, mt, "two")
            webhooks.run(state, old + dt.timedelta(seconds=3))  # ok: delivered; bad: pending
            assert [e["status"] for e in _log(app, api_headers, ok["id"])] == ["delivered", "delivered"]
            assert [e["status"] for e in _log(app, api_headers, bad["id"])] == ["pending", "failed"]
            runner = app.test_cli_runner()

            # Within the collector's look-back: kept (it would otherwise send them again).
            out = runner.invoke(args=["mailtrack", "purge", "--older-than", "30", "--yes"])
            assert out.exit_code == 0, out.output
            assert "purged 0 finished outbound webhook deliveries" in out.output
            posts = len(receiver.requests) + len(failing.requests)

            # Many events later (ids past the look-back), the old finished ones go.
            session = state.session
            last = session.execute(sa.select(sa.func.max(events.c.id))).scalar_one()
            session.execute(sa.insert(events).values(id=last + webhooks.LOOKBACK + 1, tenant_id="", type="click",
                                                     email="far@example.com", occurred_at=utcnow()))
            session.commit()
            webhooks.collect(state, utcnow() + dt.timedelta(days=1))  # not due before the purge
            for n in range(3):
                _unmatched_postmark_event(app, n)
            session.execute(sa.update(webhook_receipts).where(  # two of them 40 days old
                webhook_receipts.c.key.in_(sa.select(webhook_receipts.c.key).where(
                    webhook_receipts.c.kind == "unmatched").order_by(webhook_receipts.c.key).limit(2).scalar_subquery()))
                .values(received_at=old))
            session.execute(sa.insert(webhook_receipts), [
                {"provider": "mailgun", "kind": "nonce", "key": "old-token", "received_at": utcnow() - dt.timedelta(days=3)},
                {"provider": "mailgun", "kind": "nonce", "key": "new-token", "received_at": utcnow()}])
            session.commit()

            out = runner.invoke(args=["mailtrack", "purge", "--older-than", "30", "--yes"])
            assert out.exit_code == 0, out.output
            assert ("purged 3 finished outbound webhook deliveries and 2 unmatched ESP webhook receipts older than "
                    "30 days, 1 expired ESP replay nonces") in out.output
            assert [e["status"] for e in _log(app, api_headers, ok["id"])] == ["pending"]  # the far event
            assert [e["status"] for e in _log(app, api_headers, bad["id"])] == ["pending", "pending"]
            assert _count(app, webhook_receipts, webhook_receipts.c.kind == "unmatched") == 1
            assert _count(app, webhook_receipts, webhook_receipts.c.kind == "nonce") == 1
            # Nothing purged is sent again.
            webhooks.run(state, utcnow() + dt.timedelta(days=2))
            sent = [h["webhook-id"] for h, _, _ in receiver.requests]
            assert len(sent) == len(set(sent)) and len(receiver.requests) + len(failing.requests) == posts + 3
    finally:
        failing.close()


# -- HTTPS through the pinned connection --------------------------------------------------------

def _tls_files(tmp_path: Any, host: str) -> tuple[str, str, str]:
    """A CA and a server certificate for ``host`` it signs (files: CA, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = [str(tmp_path / f"{host}-{n}.pem") for n in ("ca", "cert", "key")]
    for path, data in zip(paths, (ca.public_bytes(serialization.Encoding.PEM),
                                  cert.public_bytes(serialization.Encoding.PEM),
                                  key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))):
        with open(path, "wb") as fh:
            fh.write(data)
    return paths[0], paths[1], paths[2]


@pytest.mark.parametrize("cert_host, delivered", [("localhost", True), ("other.example", False)])
def test_https_connects_to_the_checked_address_and_verifies_the_url_host(make_app, api_headers, tmp_path,
                                                                         monkeypatch, cert_host, delivered):
    """The connection goes to the resolved address, yet TLS is verified against the URL's
    host name: a certificate for another name is refused."""
    import ssl

    ca, cert, key = _tls_files(tmp_path, cert_host)
    monkeypatch.setenv("SSL_CERT_FILE", ca)  # the default context trusts the test CA
    receiver = Receiver()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    receiver.server.socket = tls.wrap_socket(receiver.server.socket, server_side=True)
    try:
        app = make_app(**ALLOW)
        with app.app_context():
            hook = _subscribe(app, api_headers, f"https://localhost:{receiver.port}/hooks/crm", eventTypes=["click"])
            _click(app, app.extensions["mailtrack"].extension)
            totals = webhooks.run(get_state(app))
            (entry,) = _log(app, api_headers, hook["id"])
            if delivered:
                assert totals["delivered"] == 1 and entry["status"] == "delivered"
                headers, body, _ = receiver.requests[0]
                assert headers["host"] == f"localhost:{receiver.port}"
                standardwebhooks.Webhook(hook["secret"]).verify(body, headers)
            else:
                assert totals["failed"] == 1 and receiver.requests == []
                assert "CERTIFICATE_VERIFY_FAILED" in entry["lastError"], entry["lastError"]
    finally:
        receiver.close()


def test_credentials_in_the_url_are_sent_as_basic_auth(make_app, api_headers, receiver):
    app = make_app(**ALLOW)
    with app.app_context():
        url = f"http://crm%40example:p%3Ass@127.0.0.1:{receiver.port}/hooks/crm?source=mailtrack"
        _subscribe(app, api_headers, url, eventTypes=["click"])
        _click(app, app.extensions["mailtrack"].extension)
        assert webhooks.run(get_state(app))["delivered"] == 1
        headers, _, path = receiver.requests[0]
        assert path == "/hooks/crm?source=mailtrack"
        assert headers["authorization"] == "Basic " + base64.b64encode(b"crm@example:p:ss").decode()
