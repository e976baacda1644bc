"""Signed tracking tokens: itsdangerous, one salt per purpose, key rotation, max age.

A token proves that this extension produced it for one purpose. Payloads carry opaque ids
and, for clicks, the destination; never an email address. Verification failures of every
kind (bad signature, wrong purpose, expired, over-long, malformed) are one answer:
``None``, which routes turn into 404.
"""
from __future__ import annotations

import base64
import enum
import hmac
from collections.abc import Sequence
from typing import Any

from itsdangerous import BadData, Serializer, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode

#: Tokens longer than this are refused before any signature work (a longer one is an attack
#: or a mangled link). The signing side uses the same bound: a link whose click token would
#: be longer is left untracked (:func:`fits`), so no mail ever carries a token this refuses.
MAX_TOKEN_LENGTH = 4096


def fits(token: str) -> bool:
    """Whether :meth:`TokenSigner.loads` would read ``token`` at all (its length is within
    :data:`MAX_TOKEN_LENGTH`): the signing side's check on a token it has just made."""
    return len(token) <= MAX_TOKEN_LENGTH


class Purpose(str, enum.Enum):
    """One salt per purpose: a token made for one can never be used for another."""

    CLICK = "mailtrack.click"
    OPEN = "mailtrack.open"
    UNSUBSCRIBE = "mailtrack.unsubscribe"
    CURSOR = "mailtrack.cursor"
    #: The VERP envelope sender of sent mail (``MAILTRACK_BOUNCE_ADDRESS``): :meth:`TokenSigner.short_signature`.
    BOUNCE = "mailtrack.bounce"


#: Bytes of HMAC in a short signature: 80 bits, 16 base32 characters.
SHORT_SIGNATURE_BYTES = 10

#: JSON payloads up to this many bytes are not zlib-compressed (see :class:`_Serializer`).
COMPRESS_ABOVE = 512


class _Signer(TimestampSigner):
    """itsdangerous' timestamp signer, deriving each key once.

    ``Signer.derive_key`` (a hash of salt and secret) runs for every token signed and for
    every key tried on verification; its documented override point keeps the result per
    key here instead. The signatures are itsdangerous' own.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._derived: dict[str | bytes | None, bytes] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        # Kept per argument as itsdangerous gives it: None (signing: the current key) or
        # one of ``secret_keys`` (verifying); ``super()`` turns either into the key.
        derived = self._derived.get(secret_key)
        if derived is None:
            derived = self._derived[secret_key] = super().derive_key(secret_key)
        return derived


class _Serializer(URLSafeTimedSerializer):
    """itsdangerous' URL-safe timed serializer with one :class:`_Signer` per serializer
    (made once, not per token: ``make_signer``), compressing only long payloads.

    Setting up zlib costs about 170 us per token, most of the time of signing one, to save
    a few bytes on the short payloads of tracking links (bench/bench_instrument.py). Tokens
    stay standard: ``loads`` of any itsdangerous reader takes compressed and plain alike.
    """

    default_signer = _Signer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._signer = super().make_signer()

    def make_signer(self, salt: str | bytes | None = None) -> TimestampSigner:
        # loads and dumps pass the serializer's own salt. The made signer and a new one for
        # the same salt sign alike (only the time differs): not mutated (docs/development.md).
        if salt is None or salt == self.salt:  # pragma: no mutate
            return self._signer  # type: ignore[no-any-return]
        return super().make_signer(salt)  # type: ignore[return-value]  # pragma: no mutate

    def dump_payload(self, obj: Any) -> bytes:
        raw = Serializer.dump_payload(self, obj)
        # Compressed or not, a token verifies everywhere: where the bound lies is a speed
        # choice (bench/bench_instrument.py), not mutated (docs/development.md).
        if len(raw) > COMPRESS_ABOVE:  # pragma: no mutate
            return super().dump_payload(obj)
        return base64_encode(raw)


class TokenSigner:
    """Signs and verifies the tokens of one app.

    ``keys`` is ``[*fallbacks, current]``: the last key signs, every key verifies, as in
    Flask's session interface. ``max_age`` (seconds) applies to click and open links only:
    an unsubscribe link must keep working for as long as the mail may be read (CAN-SPAM
    asks for at least 30 days), and cursors have their own lifetime.
    """

    #: Purposes whose tokens ``max_age`` does not limit.
    UNLIMITED = frozenset({Purpose.UNSUBSCRIBE, Purpose.CURSOR})

    def __init__(self, keys: Sequence[str | bytes], max_age: int | None = None) -> None:
        self.max_age = max_age
        self._serializers = {p: _Serializer(list(keys), salt=p.value) for p in Purpose}

    def dumps(self, purpose: Purpose, payload: Any) -> str:
        return self._serializers[purpose].dumps(payload)  # type: ignore[no-any-return]

    def short_signature(self, purpose: Purpose, value: str) -> str:
        """A compact signature of ``value`` for places where an itsdangerous token does not
        fit: the local part of an address (at most 64 characters, and some mail servers
        change its letter case). The HMAC of itsdangerous' signer for ``purpose`` (the
        same derived key and algorithm), cut to :data:`SHORT_SIGNATURE_BYTES` and written
        in lower-case base32 without padding."""
        signer = self._serializers[purpose].make_signer()
        return self._short(signer, signer.secret_keys[-1], value)

    def verify_short_signature(self, purpose: Purpose, value: str, signature: str) -> bool:
        """Whether ``signature`` (any letter case) is :meth:`short_signature` of ``value``
        under the current key or a fallback."""
        if not isinstance(signature, str) or not isinstance(value, str):
            return False
        given = signature.lower().encode("ascii", "replace")
        signer = self._serializers[purpose].make_signer()
        return any(hmac.compare_digest(self._short(signer, key, value).encode(), given)
                   for key in reversed(signer.secret_keys))

    @staticmethod
    def _short(signer: Any, key: bytes, value: str) -> str:
        digest = signer.algorithm.get_signature(signer.derive_key(key), value.encode("utf-8"))
        return base64.b32encode(digest[:SHORT_SIGNATURE_BYTES]).decode("ascii").lower()

    def loads(self, purpose: Purpose, token: str, max_age: int | None = None) -> Any | None:
        """The payload of a valid token, or ``None`` for any invalid one."""
        if not token or not fits(token):
            return None
        age = max_age if max_age is not None else (None if purpose in self.UNLIMITED else self.max_age)
        try:
            return self._serializers[purpose].loads(token, max_age=age)
        except (BadData, ValueError, TypeError, UnicodeError):
            # BadData covers signature, expiry and payload-decoding failures; the others
            # cover a payload that decodes to garbage (e.g. zlib errors on tampered data).
            return None
        except Exception:  # noqa: BLE001 - e.g. zlib.error: a tampered token is still a 404
            return None
