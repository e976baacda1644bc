"""Amazon SNS message verification, as AWS documents it ("Verifying the signatures of
Amazon SNS messages"): the string to sign is the message's fields in a fixed order, each
``name\\nvalue\\n``; ``SignatureVersion`` 1 signs it with SHA1withRSA, 2 with SHA256withRSA;
the certificate comes only from an https ``sns.<region>.amazonaws.com`` (``.com.cn``)
address, and the topic must be one this app accepts.

Certificates (and the SubscribeURL of a confirmation) are fetched through one function,
``MAILTRACK_WEBHOOKS["ses"]["fetch"]`` (default :func:`.fetch.https_get`); a certificate's public
key is cached per URL (AWS names each certificate file by its content). No third-party SNS
validator is used: the ones on PyPI are unmaintained and fetch with their own client, which
a host (or a test) could not replace.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .base import ConfirmationFailed, NotAllowed, SignatureInvalid, WebhookRequest, parse_json, require_extra
from .config import EspSettings, ProviderConfig
from .fetch import MAX_FETCH_BYTES, https_get

#: Hosts SNS serves certificates and confirmations from.
SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
#: Fields signed, in order, per message type (Subject only when present).
SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
#: Certificates kept per app.
CACHE_SIZE = 32


def sns_url(url: Any) -> str:
    """``url`` if it is an https URL on an SNS host (no credentials, no other port), else
    :class:`SignatureInvalid`."""
    if not isinstance(url, str):
        raise SignatureInvalid("The SNS message names no certificate URL.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SignatureInvalid("The SNS certificate URL is malformed.") from None
    if (parts.scheme != "https" or not SNS_HOST.match(parts.hostname or "") or parts.username
            or parts.password or port not in (None, 443) or any(c.isspace() for c in url)):
        raise SignatureInvalid("The SNS URL is not an https address on sns.<region>.amazonaws.com.")
    return url


def _public_key(esp: EspSettings, config: ProviderConfig, url: str, now: dt.datetime) -> Any:
    cached = esp.certificates.get(url)
    if cached is None:
        x509 = require_extra("cryptography.x509")
        try:
            pem = config.fetch(url)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - any fetch failure: the signature cannot be checked
            raise SignatureInvalid("The SNS signing certificate could not be fetched.") from None
        try:
            if not isinstance(pem, bytes) or len(pem) > MAX_FETCH_BYTES:
                raise ValueError
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise SignatureInvalid("The SNS signing certificate is not a certificate.") from None
        cached = (cert.public_key(), cert.not_valid_before_utc, cert.not_valid_after_utc)
        if len(esp.certificates) >= CACHE_SIZE:
            esp.certificates.clear()
        esp.certificates[url] = cached
    key, not_before, not_after = cached
    if not not_before <= now <= not_after:
        raise SignatureInvalid("The SNS signing certificate is not valid now.")
    return key


def string_to_sign(message: Mapping[str, Any]) -> bytes:
    fields = SIGNED_FIELDS[message["Type"]]
    parts = []
    for name in fields:
        value = message.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise SignatureInvalid(f"The SNS message has no {name}.")
        parts.append(f"{name}\n{value}\n")
    return "".join(parts).encode("utf-8")


def verify(esp: EspSettings, config: ProviderConfig, request: WebhookRequest, now: dt.datetime) -> dict[str, Any]:
    """The SNS message of ``request``, verified; 401 for a bad signature or certificate URL,
    403 for a topic outside ``topic_arns``."""
    message = parse_json(request.body)
    if not isinstance(message, dict) or message.get("Type") not in SIGNED_FIELDS:
        raise SignatureInvalid("Not an SNS message.")
    if message.get("TopicArn") not in config.key:
        raise NotAllowed("Messages of this SNS topic are not accepted here (MAILTRACK_WEBHOOKS ses.topic_arns).")
    version = message.get("SignatureVersion")
    if version not in ("1", "2"):
        raise SignatureInvalid("Unsupported SNS SignatureVersion.")
    url = sns_url(message.get("SigningCertURL"))
    try:
        signature = base64.b64decode(message.get("Signature") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise SignatureInvalid("The SNS signature is not base64.") from None
    data = string_to_sign(message)
    key = _public_key(esp, config, url, now)
    hashes = require_extra("cryptography.hazmat.primitives.hashes")
    padding = require_extra("cryptography.hazmat.primitives.asymmetric.padding")
    exceptions = require_extra("cryptography.exceptions")
    try:
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA1() if version == "1" else hashes.SHA256())
    except (exceptions.InvalidSignature, AttributeError, TypeError, ValueError):
        raise SignatureInvalid("The SNS signature does not match.") from None
    return message


def confirm(config: ProviderConfig, message: Mapping[str, Any]) -> None:
    """Confirm a verified SubscriptionConfirmation by fetching its SubscribeURL (same host
    rules as the certificate); 502 when that fails."""
    url = sns_url(message.get("SubscribeURL"))
    try:
        config.fetch(url)  # type: ignore[misc]
    except Exception:  # noqa: BLE001
        raise ConfirmationFailed("The SNS subscription could not be confirmed: its SubscribeURL failed.") from None


__all__ = ["verify", "confirm", "https_get", "string_to_sign", "sns_url", "SNS_HOST"]
