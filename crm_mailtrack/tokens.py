"""Signed tracking tokens: itsdangerous, one salt per purpose, key rotation, max age.

A token proves that this extension produced it for one purpose. Payloads carry opaque ids
and, for clicks, the destination; never an email address. Verification failures of every
kind (bad signature, wrong purpose, expired, over-long, malformed) are one answer:
``None``, which routes turn into 404.
"""
from __future__ import annotations

import binascii
import enum
import hmac
import json
from base64 import urlsafe_b64encode
from collections.abc import Sequence
from json.encoder import encode_basestring
from typing import Any

from itsdangerous import BadData, Serializer, Signer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, int_to_bytes
from itsdangerous.encoding import base64_decode, bytes_to_int

#: Tokens longer than this are refused before any signature work (a link in a mail is
#: never this long; a longer one is an attack or a mangled link).
MAX_TOKEN_LENGTH = 4096


class Purpose(str, enum.Enum):
    """One salt per purpose: a token made for one can never be used for another."""

    CLICK = "mailtrack.click"
    OPEN = "mailtrack.open"
    UNSUBSCRIBE = "mailtrack.unsubscribe"
    CURSOR = "mailtrack.cursor"


#: JSON payloads up to this many bytes are not zlib-compressed (see :class:`_Serializer`).
COMPRESS_ABOVE = 512


class _Serializer(URLSafeTimedSerializer):
    """itsdangerous' URL-safe timed serializer, compressing only long payloads.

    Setting up zlib costs about 170 us per token, most of the time of signing one, to save
    a few bytes on the short payloads of tracking links (bench/bench_instrument.py). Tokens
    stay standard: ``loads`` of any itsdangerous reader takes compressed and plain alike.
    """

    def dump_payload(self, obj: Any) -> bytes:
        raw = Serializer.dump_payload(self, obj)
        if len(raw) > COMPRESS_ABOVE:
            return super().dump_payload(obj)
        return base64_encode(raw)


#: itsdangerous' compact JSON (``ensure_ascii=False``, no spaces) with the encoder built once:
#: ``json.dumps`` with keywords builds a new encoder on every call.
_JSON_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

#: A sample signed at start-up by both paths: :class:`_TokenMaker` is used only if they agree.
_SELF_CHECK = ["0" * 24, "https://example.test/p\u00e4th?q=1&r=\"2\""]
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _json(payload: Any) -> str:
    """:data:`_JSON_ENCODE`, with the payloads of tracking tokens (a string, a list of
    strings) written directly with the encoder's own string function."""
    if type(payload) is list and all(type(item) is str for item in payload):
        return "[" + ",".join(map(encode_basestring, payload)) + "]"
    if type(payload) is str:
        return encode_basestring(payload)  # type: ignore[no-any-return]
    return _JSON_ENCODE(payload)


def _b64(data: bytes) -> bytes:
    """itsdangerous' ``base64_encode`` (URL-safe, unpadded) in one step."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=")


class _TokenMaker:
    """Signs the tokens of one purpose exactly as ``_Serializer.dumps`` does, without its
    per-token set-up.

    itsdangerous builds a new signer and derives its key (a SHA-1 of salt and secret) for
    every token; that was most of the time of instrumenting a link (bench/bench_instrument.py).
    Here the signer, the keyed hash states and the encoded timestamp of the current second
    are kept. The output is the serializer's own format, byte for byte (checked at start-up,
    else every token goes through the serializer), so verification, key rotation and max
    age are untouched and tokens issued before still verify.
    """

    def __init__(self, serializer: _Serializer) -> None:
        self._serializer = serializer
        self._signer = serializer.make_signer()
        self._stamp: tuple[int | None, bytes] = (None, b"")
        self._ok = False
        try:
            # HMAC (RFC 2104) as the hmac module computes it, from two keyed hash states
            # copied per token: cheaper than copying an hmac object.
            digest = self._signer.digest_method
            key = self._signer.derive_key()
            block = digest().block_size
            if len(key) > block:
                key = digest(key).digest()
            key = key.ljust(block, b"\0")
            self._inner = digest(bytes(b ^ 0x36 for b in key))
            self._outer = digest(bytes(b ^ 0x5C for b in key))
            self._ok = (serializer.dump_payload(_SELF_CHECK) == _b64(_json(_SELF_CHECK).encode("utf-8"))
                        and self._sign(b"x.y") == self._signer.get_signature(b"x.y"))
        except Exception:  # noqa: BLE001 - an exotic signer: the serializer does the work
            self._ok = False

    def _sign(self, value: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(value)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return _b64(outer.digest())

    def dumps(self, payload: Any) -> str:
        raw = _json(payload).encode("utf-8")
        if not self._ok or len(raw) > COMPRESS_ABOVE:
            return self._serializer.dumps(payload)
        # get_timestamp is looked up on the signer each time, so it can still be patched.
        now = self._signer.get_timestamp()
        stamp = self._stamp
        if stamp[0] != now:
            stamp = self._stamp = (now, b"." + base64_encode(int_to_bytes(now)))
        value = _b64(raw) + stamp[1]
        return (value + b"." + self._sign(value)).decode("ascii")


class _TokenReader:
    """Verifies the tokens of one purpose as ``_Serializer.loads`` does, without its
    per-token set-up (a new signer and a SHA-1 key derivation per key, every token).

    Only acceptance is decided here: a token whose signature matches one key's keyed HMAC
    (kept, copied per token), whose timestamp is within ``max_age`` and whose payload the
    serializer's own ``load_payload`` reads. Anything else (a bad, non-canonical or
    expired signature, a token of an exotic signer) goes to the serializer, whose answer
    stands. Used only if it reads a token the serializer signed at start-up.
    """

    def __init__(self, serializer: _Serializer) -> None:
        self._serializer = serializer
        self._signer = serializer.make_signer()
        digest = self._signer.digest_method
        mod: Any = "sha1" if digest is Signer.default_digest_method else digest
        # newest key first, as Signer.verify_signature tries them
        self._macs: list[Any] = [hmac.new(self._signer.derive_key(key), digestmod=mod)
                                 for key in reversed(serializer.secret_keys)]
        try:
            token = _Serializer.dumps(serializer, _SELF_CHECK)
            tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
            ok = self.loads(token, None) == _SELF_CHECK and self.loads(tampered, None) is _DEFER
        except Exception:  # noqa: BLE001 - an exotic signer: the serializer does the work
            ok = False
        if not ok:
            self._macs = []

    def loads(self, token: str, max_age: int | None) -> Any:
        """The payload of a token this reader accepts, else :data:`_DEFER`."""
        try:
            signed = token.encode("ascii")
        except UnicodeError:
            return _DEFER
        value, sep, sig = signed.rpartition(b".")
        if not sep:
            return _DEFER
        for mac in self._macs:
            mac = mac.copy()
            mac.update(value)
            if hmac.compare_digest(urlsafe_b64encode(mac.digest()).rstrip(b"="), sig):
                break
        else:
            return _DEFER
        payload, sep, stamp = value.rpartition(b".")
        if not sep:
            return _DEFER
        try:
            ts = bytes_to_int(base64_decode(stamp))
            if max_age is not None and not 0 <= self._signer.get_timestamp() - ts <= max_age:
                return _DEFER
            self._signer.timestamp_to_datetime(ts)  # what the serializer does (may raise)
            return self._serializer.load_payload(payload)
        except Exception:  # noqa: BLE001 - the serializer gives the answer
            return _DEFER


#: :meth:`_TokenReader.loads`' "not accepted here, ask the serializer".
_DEFER: Any = object()


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
        self._serializers = {
            p: _Serializer(list(keys), salt=p.value) for p in Purpose
        }
        self._makers = {p: _TokenMaker(s) for p, s in self._serializers.items()}
        self._readers = {p: _TokenReader(s) for p, s in self._serializers.items()}

    def dumps(self, purpose: Purpose, payload: Any) -> str:
        return self._makers[purpose].dumps(payload)

    def loads(self, purpose: Purpose, token: str, max_age: int | None = None) -> Any | None:
        """The payload of a valid token, or ``None`` for any invalid one."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        age = max_age if max_age is not None else (None if purpose in self.UNLIMITED else self.max_age)
        payload = self._readers[purpose].loads(token, age)
        if payload is not _DEFER:
            return payload
        try:
            return self._serializers[purpose].loads(token, max_age=age)
        except (BadData, ValueError, TypeError, UnicodeError):
            # BadData covers signature, expiry and payload-decoding failures; the others
            # cover a payload that decodes to garbage (e.g. zlib errors on tampered data).
            return None
        except Exception:  # noqa: BLE001 - e.g. zlib.error: a tampered token is still a 404
            return None
