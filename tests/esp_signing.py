"""Keys and signatures for the ESP webhook tests, made here with ``cryptography`` (and
``standardwebhooks`` for Svix): a real RSA certificate for SNS (served by a replaceable
fetch, no network), a real ECDSA P-256 key for SendGrid, HMAC for Mailgun and Svix,
Basic credentials for Postmark."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

DATA = Path(__file__).parent / "data" / "esp"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem"
SUBSCRIBE_URL = ("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn="
                 f"{TOPIC}&Token=2336412f37")
MAILGUN_KEY = "key-7e55f0fa4d5a2f1a7a6bbf4b0f9c6b3e"
RESEND_SECRET = "whsec_" + base64.b64encode(b"resend-test-secret-32-bytes-long").decode()
POSTMARK = ("hook-user", "hook-pässword")


def sample(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def _certificate(key: rsa.RSAPrivateKey, days: int = 30, offset_days: int = -1) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=offset_days))
            .not_valid_after(now + dt.timedelta(days=offset_days + days))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


class Sns:
    """An SNS stand-in: signs messages with its own RSA key and serves its certificate and
    subscription confirmations through :meth:`fetch` (given to the app as ``fetch``)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = _certificate(self.key)
        self.fetched: list[str] = []
        self.cert_urls = {CERT_URL}
        self.fail_confirm = False

    def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        if url.startswith("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"):
            if self.fail_confirm:
                raise OSError("connection refused")
            return b"<ConfirmSubscriptionResponse/>"
        if url in self.cert_urls:
            return self.pem
        raise OSError(f"404 {url}")

    def sign(self, message: dict[str, Any], version: str = "2", key: Any = None) -> dict[str, Any]:
        from crm_mailtrack.services.esp.sns import string_to_sign

        message = dict(message, SignatureVersion=version, SigningCertURL=message.get("SigningCertURL", CERT_URL))
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = (key or self.key).sign(string_to_sign(message), padding.PKCS1v15(), digest)
        message["Signature"] = base64.b64encode(signature).decode()
        return message

    def notification(self, record: Any, *, version: str = "2", topic: str = TOPIC, message_id: str | None = None,
                     subject: str | None = None, **extra: Any) -> dict[str, Any]:
        message = {"Type": "Notification", "MessageId": message_id or str(uuid.uuid4()), "TopicArn": topic,
                   "Message": json.dumps(record), "Timestamp": "2026-11-30T12:00:00.000Z",
                   "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe", **extra}
        if subject is not None:
            message["Subject"] = subject
        return self.sign(message, version)

    def confirmation(self, *, topic: str = TOPIC, subscribe_url: str = SUBSCRIBE_URL) -> dict[str, Any]:
        return self.sign({
            "Type": "SubscriptionConfirmation", "MessageId": str(uuid.uuid4()), "Token": "2336412f37",
            "TopicArn": topic, "SubscribeURL": subscribe_url, "Timestamp": "2026-11-30T12:00:00.000Z",
            "Message": f"You have chosen to subscribe to the topic {topic}.\nTo confirm the subscription, "
                       "visit the SubscribeURL included in this message.",
        })


class SendGrid:
    """A SendGrid stand-in with its own ECDSA P-256 key; :attr:`public_key` is the key as
    the console shows it (base64 DER)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public_key = base64.b64encode(self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": stamp, "Content-Type": "application/json"}


def mailgun(body: dict[str, Any], *, key: str = MAILGUN_KEY, timestamp: int | None = None,
            token: str | None = None) -> bytes:
    """``body`` with a fresh Mailgun signature (a new token unless given)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = token or uuid.uuid4().hex + uuid.uuid4().hex[:18]
    signature = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return json.dumps(dict(body, signature={"timestamp": stamp, "token": token, "signature": signature})).encode()


def resend_headers(body: bytes, *, secret: str = RESEND_SECRET, msg_id: str | None = None,
                   timestamp: dt.datetime | None = None) -> dict[str, str]:
    from standardwebhooks import Webhook

    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    when = timestamp or dt.datetime.now(dt.timezone.utc)
    signature = Webhook(secret).sign(msg_id, when, body.decode("utf-8", "replace"))
    return {"svix-id": msg_id, "svix-timestamp": str(int(when.timestamp())), "svix-signature": signature,
            "Content-Type": "application/json"}


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
