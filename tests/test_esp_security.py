"""Hostile input to the ESP webhooks: bad signatures, expired timestamps, replays,
certificate URLs elsewhere, wrong topics, oversized and malformed bodies. Every one is a
4xx problem+json, never a 500, and stores nothing (no event, no receipt)."""
from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import time
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import rsa

from crm_mailtrack.inbound_models import webhook_receipts
from crm_mailtrack.models import events
from esp_signing import (
    CERT_URL, MAILGUN_KEY, POSTMARK, RESEND_SECRET, TOPIC, SendGrid, basic, mailgun, resend_headers, sample,
)
from test_esp_webhooks import HOOKS, postmark_event, send, ses_record
from test_esp_webhooks import happ, sg, sns  # noqa: F401 - fixtures


@pytest.fixture
def happ_config() -> dict[str, Any]:
    """A body limit (64 KiB) that the oversized-body test passes by a few bytes."""
    return {"MAILTRACK_WEBHOOK_MAX_BODY_BYTES": 64 * 1024}


@pytest.fixture
def msg(happ) -> Any:
    return send(happ)


def nothing_stored(app) -> bool:
    with app.extensions["mailtrack"].engine.connect() as conn:
        types = [r[0] for r in conn.execute(sa.select(events.c.type))]
        receipts = conn.execute(sa.select(sa.func.count()).select_from(webhook_receipts)).scalar_one()
    return [t for t in types if t != "send"] == [] and receipts == 0


def refused(app, provider: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None,
            status: int = 401) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = app.test_client().post(f"{HOOKS}/{provider}", data=raw,
                                  headers=headers or {"Content-Type": "application/json"})
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True))
    assert resp.mimetype == "application/problem+json" and resp.json["status"] == status
    assert nothing_stored(app)
    return resp


# -- SNS ------------------------------------------------------------------------------------------

def test_sns_tampered_message_is_401(happ, msg, sns):
    note = sns.notification(ses_record("ses_bounce.json", msg))
    note["Message"] = note["Message"].replace("Permanent", "Transient")
    resp = refused(happ, "ses", note)
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="mailtrack"'


def test_sns_signed_with_another_key_is_401(happ, msg, sns):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    note = sns.sign({k: v for k, v in sns.notification(ses_record("ses_bounce.json", msg)).items()
                     if k != "Signature"}, key=other)
    refused(happ, "ses", note)


@pytest.mark.parametrize("url", [
    "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-x.pem",
    "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com@evil.example/x.pem",
    "https://user@sns.us-east-1.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com:8443/x.pem",
    "https://s3.amazonaws.com/sns.us-east-1.amazonaws.com/x.pem",
    "ftp://sns.us-east-1.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com:99999/x.pem",
])
def test_sns_certificate_elsewhere_is_refused_unfetched(happ, msg, sns, url):
    note = sns.notification(ses_record("ses_bounce.json", msg), SigningCertURL=url)
    refused(happ, "ses", note)
    assert sns.fetched == []


def test_sns_china_region_certificate_host_is_accepted(happ, msg, sns):
    url = "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-cn.pem"
    sns.cert_urls.add(url)
    note = sns.notification(ses_record("ses_bounce.json", msg), SigningCertURL=url)
    resp = happ.test_client().post(f"{HOOKS}/ses", data=json.dumps(note))
    assert resp.status_code == 200 and resp.json["stored"] == 1


def test_sns_topic_outside_the_allow_list_is_403_unfetched(happ, msg, sns):
    note = sns.notification(ses_record("ses_bounce.json", msg), topic="arn:aws:sns:us-east-1:999999999999:other")
    refused(happ, "ses", note, status=403)
    assert sns.fetched == []


def test_sns_unknown_signature_version_and_garbage_signature_are_401(happ, msg, sns):
    note = sns.notification(ses_record("ses_bounce.json", msg))
    refused(happ, "ses", dict(note, SignatureVersion="3"))
    refused(happ, "ses", dict(note, Signature="%%% not base64 %%%"))
    refused(happ, "ses", {k: v for k, v in note.items() if k != "Signature"})


def test_sns_certificate_that_cannot_be_fetched_or_read_or_expired_is_401(happ, msg, sns):
    note = sns.notification(ses_record("ses_bounce.json", msg),
                            SigningCertURL="https://sns.us-east-1.amazonaws.com/missing.pem")
    refused(happ, "ses", note)
    sns.pem = b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"
    refused(happ, "ses", sns.notification(ses_record("ses_bounce.json", msg)))


def test_sns_expired_certificate_is_401(happ, msg, sns):
    from esp_signing import _certificate

    sns.pem = _certificate(sns.key, days=10, offset_days=-20)
    refused(happ, "ses", sns.notification(ses_record("ses_bounce.json", msg)))


def test_sns_confirmation_with_a_subscribe_url_elsewhere_is_401(happ, sns):
    refused(happ, "ses", sns.confirmation(subscribe_url="https://evil.example/?Action=ConfirmSubscription"))
    assert not any("evil" in url for url in sns.fetched)


# -- SendGrid ---------------------------------------------------------------------------------

def sendgrid_body(msg) -> bytes:
    return json.dumps([{"email": msg.email, "timestamp": 1513299569, "event": "bounce", "type": "bounce",
                        "sg_event_id": "b-1", "mailtrack_id": msg.id}]).encode()


def test_sendgrid_bad_missing_or_stale_signatures_are_401(happ, msg, sg):
    body = sendgrid_body(msg)
    refused(happ, "sendgrid", body, SendGrid().headers(body))  # another key
    refused(happ, "sendgrid", body, {"Content-Type": "application/json"})
    refused(happ, "sendgrid", body.replace(b"bounce\"", b"delivered\"", 1), sg.headers(body))
    refused(happ, "sendgrid", body, sg.headers(body, timestamp=int(time.time()) - 3600))
    refused(happ, "sendgrid", body, sg.headers(body, timestamp=int(time.time()) + 3600))
    bad = sg.headers(body)
    bad["X-Twilio-Email-Event-Webhook-Signature"] = "not base64!"
    refused(happ, "sendgrid", body, bad)
    bad["X-Twilio-Email-Event-Webhook-Timestamp"] = "yesterday"
    refused(happ, "sendgrid", body, bad)


# -- Mailgun ----------------------------------------------------------------------------------

def mailgun_body(msg) -> dict[str, Any]:
    body = sample("mailgun_failed.json")
    body.pop("signature")
    body["event-data"].update(recipient=msg.email, **{"user-variables": {"mailtrack_id": msg.id}})
    return body


def test_mailgun_bad_signature_or_old_timestamp_is_401(happ, msg):
    refused(happ, "mailgun", mailgun(mailgun_body(msg), key="key-wrong"))
    refused(happ, "mailgun", mailgun(mailgun_body(msg), timestamp=int(time.time()) - 3600))
    refused(happ, "mailgun", mailgun_body(msg))  # no signature at all
    refused(happ, "mailgun", json.dumps(dict(mailgun_body(msg), signature={"timestamp": 1, "token": "x",
                                                                           "signature": "é"})).encode())


def test_mailgun_replayed_token_is_401_even_with_another_body(happ, msg):
    token = "f" * 50
    first = happ.test_client().post(f"{HOOKS}/mailgun", data=mailgun(mailgun_body(msg), token=token))
    assert first.status_code == 200 and first.json["stored"] == 1
    captured = json.loads(mailgun(mailgun_body(msg), token=token))
    forged = mailgun_body(msg)
    forged["event-data"].update(event="complained", id="forged-1")
    forged["signature"] = captured["signature"]  # the signature does not cover the body
    resp = happ.test_client().post(f"{HOOKS}/mailgun", data=json.dumps(forged))
    assert resp.status_code == 401
    with happ.extensions["mailtrack"].engine.connect() as conn:
        assert [r[0] for r in conn.execute(sa.select(events.c.type).where(events.c.type != "send")
                                           .where(events.c.type != "dnc_added"))] == ["bounce"]


def test_mailgun_parent_signature_of_a_subaccount_is_accepted(happ, msg):
    signed = json.loads(mailgun(mailgun_body(msg)))
    signed["signature"]["parent-signature"] = signed["signature"]["signature"]
    signed["signature"]["signature"] = "0" * 64  # the subaccount's own key is not ours
    resp = happ.test_client().post(f"{HOOKS}/mailgun", data=json.dumps(signed))
    assert resp.status_code == 200 and resp.json["stored"] == 1


# -- Postmark and Resend ----------------------------------------------------------------------

def test_postmark_wrong_or_missing_credentials_are_401(happ, msg):
    body = postmark_event("postmark_bounce.json", msg)
    refused(happ, "postmark", body, basic(POSTMARK[0], "wrong"))
    refused(happ, "postmark", body, basic("other", POSTMARK[1]))
    refused(happ, "postmark", body, {"Content-Type": "application/json"})
    refused(happ, "postmark", body, {"Authorization": "Bearer " + POSTMARK[1]})


def test_resend_bad_expired_or_malformed_svix_headers_are_401(happ, msg):
    body = sample("resend_bounced.json")
    body["data"]["to"] = [msg.email]
    body["data"]["tags"] = {"mailtrack_id": msg.id}
    raw = json.dumps(body).encode()
    other = "whsec_" + base64.b64encode(b"another-secret-another-secret!!!").decode()
    refused(happ, "resend", raw, resend_headers(raw, secret=other))
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)
    refused(happ, "resend", raw, resend_headers(raw, timestamp=old))
    headers = resend_headers(raw)
    refused(happ, "resend", raw.replace(b"Permanent", b"Transient"), headers)
    refused(happ, "resend", raw, dict(headers, **{"svix-signature": "v1"}))
    refused(happ, "resend", raw, dict(headers, **{"svix-signature": "garbage,,,"}))
    refused(happ, "resend", raw, dict(headers, **{"svix-timestamp": "soon"}))
    refused(happ, "resend", raw, {"Content-Type": "application/json"})
    assert RESEND_SECRET != other


# -- bodies -----------------------------------------------------------------------------------

def test_oversized_bodies_are_413_unread(happ, sg):
    big = b"[" + b" " * (64 * 1024) + b"]"
    for provider, headers in (("sendgrid", sg.headers(big)), ("postmark", basic(*POSTMARK)), ("ses", None),
                              ("mailgun", None), ("resend", resend_headers(big))):
        refused(happ, provider, big, headers, status=413)


def test_malformed_bodies_are_400_after_authentication(happ, sg):
    for raw in (b"{not json", b"\xff\xfe\x00garbage", b"[" * 5000 + b"]" * 5000, b"\"text\""):
        refused(happ, "postmark", raw, basic(*POSTMARK), status=400)
        refused(happ, "sendgrid", raw, sg.headers(raw), status=400)
    for raw in (b"{not json", b"[" * 5000 + b"]" * 5000, b"[1]"):
        refused(happ, "resend", raw, resend_headers(raw), status=400)
    refused(happ, "ses", b"{not json", status=400)
    refused(happ, "ses", b"[1, 2]", status=401)


def test_random_bytes_never_give_a_500(happ, sg):
    rng = random.Random(15)
    for _ in range(40):
        raw = os.urandom(rng.randint(0, 300)) if rng.random() < 0.5 else json.dumps(
            {"Type": "Notification", "TopicArn": TOPIC, "SignatureVersion": rng.choice(["1", "2", 2, None]),
             "SigningCertURL": CERT_URL, "Message": rng.random(), "Signature": "AAAA"}).encode()
        for provider, headers in (("ses", None), ("sendgrid", sg.headers(raw)), ("mailgun", None),
                                  ("postmark", basic(*POSTMARK)), ("resend", resend_headers(raw))):
            resp = happ.test_client().post(f"{HOOKS}/{provider}", data=raw, headers=headers or {})
            assert resp.status_code < 500, (provider, raw, resp.status_code)
    assert nothing_stored(happ)
    assert MAILGUN_KEY


def test_database_unavailable_is_503_so_the_provider_retries(make_app):
    app = make_app(MAILTRACK_WEBHOOKS={"postmark": {"username": POSTMARK[0], "password": POSTMARK[1]}})
    with app.app_context():
        app.extensions["mailtrack"].extension.drop_all()
    body = {"RecordType": "Delivery", "Recipient": "ann@example.com", "MessageID": "m",
            "DeliveredAt": "2021-02-21T16:34:52Z", "Metadata": {"mailtrack_id": "0" * 24}}
    try:
        resp = app.test_client().post(f"{HOOKS}/postmark", json=body, headers=basic(*POSTMARK))
    finally:
        with app.app_context():  # the shared PostgreSQL schema is truncated, not rebuilt, per test
            app.extensions["mailtrack"].extension.create_all()
    assert resp.status_code == 503 and resp.mimetype == "application/problem+json"
    assert resp.headers["Retry-After"] == "30"
