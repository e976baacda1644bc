"""``MAILTRACK_WEBHOOKS`` and ``MAILTRACK_ESP``, read and checked once (by ``Settings`` at
``init_app``): a bad value fails there, naming the key, not at the first webhook.

Keys per provider (DESIGN 8.4), each refused when unknown so that a typo is not a
silently open endpoint:

* ``ses``: ``topic_arns`` (required, list), ``auto_confirm`` (default ``True``: confirm a
  SubscriptionConfirmation of an allowed topic), ``configuration_set`` (sent as
  ``X-SES-CONFIGURATION-SET`` when ``MAILTRACK_ESP = "ses"``), ``fetch`` (a callable
  ``fetch(url) -> bytes``: how the signing certificate and the SubscribeURL are fetched;
  default :func:`.fetch.https_get`);
* ``sendgrid``: ``public_key`` (base64 DER, as the console shows it), ``tolerance_seconds``;
* ``mailgun``: ``signing_key``, ``tolerance_seconds``;
* ``postmark``: ``username``, ``password``;
* ``resend``: ``secret`` (``whsec_...``).
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ... import config as cfg
from ...errors import ConfigurationError

PROVIDERS = ("ses", "sendgrid", "mailgun", "postmark", "resend")
#: Seconds a signed timestamp may be away from now (SendGrid, Mailgun); Svix's own is 5 min.
DEFAULT_TOLERANCE_SECONDS = 300

_KEYS = {
    "ses": {"topic_arns", "auto_confirm", "configuration_set", "fetch"},
    "sendgrid": {"public_key", "tolerance_seconds"},
    "mailgun": {"signing_key", "tolerance_seconds"},
    "postmark": {"username", "password"},
    "resend": {"secret"},
}


@dataclass(frozen=True)
class ProviderConfig:
    """One provider's checked configuration; ``key`` is what verifies its requests (the
    loaded public key, the HMAC key bytes, the Svix verifier ...)."""

    name: str
    options: Mapping[str, Any]
    key: Any = None
    tolerance: float = DEFAULT_TOLERANCE_SECONDS
    fetch: Callable[[str], bytes] | None = None


@dataclass(frozen=True)
class EspSettings:
    """The resolved webhook settings of one app."""

    providers: Mapping[str, ProviderConfig]
    #: ``MAILTRACK_ESP``: the provider whose echo header outbound mail carries.
    esp: str | None
    max_body_bytes: int
    #: SNS signing certificates by URL (their public keys), filled on first use.
    certificates: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)


def _fail(message: str) -> ConfigurationError:
    return ConfigurationError(f"{cfg.WEBHOOKS}: {message}")


def _string(name: str, options: Mapping[str, Any], key: str) -> str:
    value = options.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _fail(f"{name}.{key} must be a non-empty string.")
    return value


def _tolerance(name: str, options: Mapping[str, Any]) -> float:
    value = options.get("tolerance_seconds", DEFAULT_TOLERANCE_SECONDS)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86400:
        raise _fail(f"{name}.tolerance_seconds must be a number of seconds between 1 and 86400.")
    return float(value)


def _provider(name: str, options: Any) -> ProviderConfig:
    if not isinstance(options, Mapping):
        raise _fail(f"{name} must be a mapping of its settings, such as {{'signing_key': '...'}}.")
    unknown = set(options) - _KEYS[name]
    if unknown:
        raise _fail(f"{name} has unknown settings {sorted(unknown)}; known: {sorted(_KEYS[name])}.")
    if name == "ses":
        arns = options.get("topic_arns")
        if isinstance(arns, str):
            arns = [arns]
        if not arns or not isinstance(arns, (list, tuple, set, frozenset)) or not all(
                isinstance(a, str) and a.startswith(("arn:aws:sns:", "arn:aws-cn:sns:", "arn:aws-us-gov:sns:"))
                for a in arns):
            raise _fail("ses.topic_arns must list the SNS topic ARNs to accept, "
                        "such as ['arn:aws:sns:us-east-1:123456789012:ses-events'].")
        fetch = options.get("fetch")
        if fetch is not None and not callable(fetch):
            raise _fail("ses.fetch must be a callable fetch(url) -> bytes.")
        if not isinstance(options.get("auto_confirm", True), bool):
            raise _fail("ses.auto_confirm must be True or False.")
        if "configuration_set" in options:
            _string(name, options, "configuration_set")
        from .base import require_extra
        from .fetch import https_get

        require_extra("cryptography.x509")  # verifying needs it: say so now, not at the first request
        return ProviderConfig(name, dict(options, topic_arns=frozenset(arns)), key=frozenset(arns),
                              fetch=fetch or https_get)
    if name == "sendgrid":
        raw = _string(name, options, "public_key")
        from .base import require_extra

        serialization = require_extra("cryptography.hazmat.primitives.serialization")
        ec = require_extra("cryptography.hazmat.primitives.asymmetric.ec")
        try:
            key = serialization.load_der_public_key(base64.b64decode(raw.strip(), validate=True))
        except (ValueError, binascii.Error, TypeError):
            raise _fail("sendgrid.public_key must be the verification key as the SendGrid console shows "
                        "it (base64 DER).") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise _fail("sendgrid.public_key is not an elliptic-curve (ECDSA) public key.")
        return ProviderConfig(name, dict(options), key=key, tolerance=_tolerance(name, options))
    if name == "mailgun":
        return ProviderConfig(name, dict(options), key=_string(name, options, "signing_key").encode(),
                              tolerance=_tolerance(name, options))
    if name == "postmark":
        user, password = _string(name, options, "username"), _string(name, options, "password")
        return ProviderConfig(name, dict(options), key=(user.encode(), password.encode()))
    secret = _string(name, options, "secret")
    from .base import require_extra

    standardwebhooks = require_extra("standardwebhooks")
    try:
        verifier = standardwebhooks.Webhook(secret)
    except Exception:  # noqa: BLE001 - the library raises assorted errors on a bad secret
        raise _fail("resend.secret must be the endpoint's signing secret as Resend shows it ('whsec_...').") from None
    return ProviderConfig(name, dict(options), key=verifier)


def from_config(conf: Mapping[str, Any]) -> EspSettings:
    """The checked ``MAILTRACK_WEBHOOKS``, ``MAILTRACK_ESP`` and
    ``MAILTRACK_WEBHOOK_MAX_BODY_BYTES`` of ``conf``."""
    hooks = conf.get(cfg.WEBHOOKS) or {}
    if not isinstance(hooks, Mapping):
        raise _fail("must be a mapping of provider names to their settings, such as "
                    "{'mailgun': {'signing_key': '...'}}.")
    unknown = [name for name in hooks if name not in PROVIDERS]
    if unknown:
        raise _fail(f"unknown providers {unknown}; known: {list(PROVIDERS)}.")
    esp = conf.get(cfg.ESP)
    if esp is not None and esp not in PROVIDERS:
        raise ConfigurationError(f"{cfg.ESP} must be None or one of {list(PROVIDERS)}, not {esp!r}.")
    limit = conf.get(cfg.WEBHOOK_MAX_BODY_BYTES, cfg.DEFAULTS[cfg.WEBHOOK_MAX_BODY_BYTES])
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigurationError(f"{cfg.WEBHOOK_MAX_BODY_BYTES} must be a positive whole number of bytes, "
                                 f"not {limit!r}.")
    return EspSettings({name: _provider(name, options) for name, options in hooks.items()}, esp, limit)


__all__ = ["PROVIDERS", "ProviderConfig", "EspSettings", "from_config"]
