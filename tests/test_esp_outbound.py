"""``MAILTRACK_ESP``: outbound mail carries the header its provider echoes back with our
message id under ``mailtrack_id`` (asserted on the raw bytes a real SMTP server receives),
and ``MAILTRACK_WEBHOOKS`` / ``MAILTRACK_ESP`` are checked at ``init_app``, naming the key."""
from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from crm_mailtrack import ConfigurationError
from esp_signing import TOPIC

SENDER = "crm@example.com"


def sent_raw(make_app, server, handler, **config) -> tuple[str, bytes]:
    app = make_app(MAILTRACK_SMTP_URL=server.url(), MAILTRACK_DEFAULT_SENDER=SENDER, **config)
    with app.app_context():
        mt = app.extensions["mailtrack"].extension
        msg = mt.send(mt.track_message(contact_id="c1", email="ann@example.com", subject="Hi", html="<p>hi</p>"))
        assert msg.status == "SENT"
        [got] = handler.received
        return msg.id, got.raw


@pytest.mark.parametrize("esp, header", [
    ("sendgrid", 'X-SMTPAPI: {"unique_args": {"mailtrack_id": "%s"}}'),
    ("mailgun", 'X-Mailgun-Variables: {"mailtrack_id": "%s"}'),
    ("postmark", "X-PM-Metadata-mailtrack_id: %s"),
    ("ses", "X-SES-MESSAGE-TAGS: mailtrack_id=%s"),
])
def test_outbound_mail_carries_the_providers_echo_header(make_app, _server, handler, esp, header):
    message_id, raw = sent_raw(make_app, _server, handler, MAILTRACK_ESP=esp)
    lines = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert (header % message_id).encode() in lines
    others = [b"X-SMTPAPI", b"X-Mailgun-Variables", b"X-PM-Metadata", b"X-SES-MESSAGE-TAGS"]
    assert sum(any(line.startswith(o) for o in others) for line in lines) == 1
    if esp in ("sendgrid", "mailgun"):  # the header value is the JSON the provider parses
        value = next(line for line in lines if line.startswith(header.split(":")[0].encode())).split(b": ", 1)[1]
        assert json.loads(value) in ({"unique_args": {"mailtrack_id": message_id}}, {"mailtrack_id": message_id})


def test_ses_configuration_set_is_sent_with_the_tags(make_app, _server, handler):
    _, raw = sent_raw(make_app, _server, handler, MAILTRACK_ESP="ses",
                      MAILTRACK_WEBHOOKS={"ses": {"topic_arns": [TOPIC], "configuration_set": "crm-events"}})
    assert b"\r\nX-SES-CONFIGURATION-SET: crm-events\r\n" in raw


@pytest.mark.parametrize("esp", [None, "resend"])
def test_no_echo_header_without_one(make_app, _server, handler, esp):
    _, raw = sent_raw(make_app, _server, handler, MAILTRACK_ESP=esp)
    head = raw.split(b"\r\n\r\n", 1)[0]
    for name in (b"X-SMTPAPI", b"X-Mailgun-Variables", b"X-PM-Metadata", b"X-SES-"):
        assert name not in head


def _rsa_public_key_b64() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return base64.b64encode(key.public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)).decode()


@pytest.mark.parametrize("config, key, words", [
    ({"MAILTRACK_WEBHOOKS": {"sparkpost": {}}}, "MAILTRACK_WEBHOOKS", "unknown providers"),
    ({"MAILTRACK_WEBHOOKS": ["ses"]}, "MAILTRACK_WEBHOOKS", "mapping"),
    ({"MAILTRACK_WEBHOOKS": {"ses": {}}}, "MAILTRACK_WEBHOOKS", "topic_arns"),
    ({"MAILTRACK_WEBHOOKS": {"ses": {"topic_arns": ["not-an-arn"]}}}, "MAILTRACK_WEBHOOKS", "topic_arns"),
    ({"MAILTRACK_WEBHOOKS": {"ses": {"topic_arns": [TOPIC], "fetch": "urllib"}}}, "MAILTRACK_WEBHOOKS", "fetch"),
    ({"MAILTRACK_WEBHOOKS": {"sendgrid": {"public_key": "not base64 DER"}}}, "MAILTRACK_WEBHOOKS", "public_key"),
    ({"MAILTRACK_WEBHOOKS": {"sendgrid": {"public_key": _rsa_public_key_b64()}}}, "MAILTRACK_WEBHOOKS", "ECDSA"),
    ({"MAILTRACK_WEBHOOKS": {"mailgun": {"signing_key": ""}}}, "MAILTRACK_WEBHOOKS", "signing_key"),
    ({"MAILTRACK_WEBHOOKS": {"mailgun": {"signing_key": "k", "tolerance_seconds": 0}}}, "MAILTRACK_WEBHOOKS",
     "tolerance_seconds"),
    ({"MAILTRACK_WEBHOOKS": {"mailgun": {"signing_key": "k", "signingkey": "k"}}}, "MAILTRACK_WEBHOOKS",
     "unknown settings"),
    ({"MAILTRACK_WEBHOOKS": {"postmark": {"username": "u"}}}, "MAILTRACK_WEBHOOKS", "password"),
    ({"MAILTRACK_WEBHOOKS": {"resend": {"secret": "whsec_!!!"}}}, "MAILTRACK_WEBHOOKS", "secret"),
    ({"MAILTRACK_ESP": "sparkpost"}, "MAILTRACK_ESP", "one of"),
    ({"MAILTRACK_WEBHOOK_MAX_BODY_BYTES": 0}, "MAILTRACK_WEBHOOK_MAX_BODY_BYTES", "bytes"),
])
def test_bad_webhook_config_fails_at_init_app_naming_the_key(make_app, config, key, words):
    with pytest.raises(ConfigurationError) as info:
        make_app(**config)
    assert key in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("package, provider, settings", [
    ("standardwebhooks", "resend", {"secret": "whsec_" + base64.b64encode(b"x" * 32).decode()}),
    ("cryptography", "ses", {"topic_arns": [TOPIC]}),
    ("cryptography", "sendgrid", {"public_key": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"}),
])
def test_a_missing_esp_extra_is_named_at_init_app(make_app, monkeypatch, package, provider, settings):
    import sys

    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(ConfigurationError) as info:
        make_app(MAILTRACK_WEBHOOKS={provider: settings})
    assert "crm_mailtrack[esp]" in str(info.value) and package in str(info.value)


def test_the_hook_lives_under_the_url_prefix(make_app):
    from esp_signing import basic

    app = make_app(MAILTRACK_URL_PREFIX="/crm/tracking",
                   MAILTRACK_WEBHOOKS={"postmark": {"username": "u", "password": "p" * 20}})
    body = {"RecordType": "Delivery", "Recipient": "x@example.com", "MessageID": "m", "DeliveredAt": "2021-02-21T16:34:52Z"}
    client = app.test_client()
    assert client.post("/crm/tracking/hooks/postmark", json=body, headers=basic("u", "p" * 20)).json["unmatched"] == 1
    assert client.post("/mailtrack/hooks/postmark", json=body, headers=basic("u", "p" * 20)).status_code == 404
