"""VERP: the envelope sender that names its message (``MAILTRACK_BOUNCE_ADDRESS``).

With ``bounces@crm.example.com`` configured, a message's envelope sender (``MAIL FROM``,
which receiving servers write into ``Return-Path`` and send bounces to) is
``bounces+<message id>-<signature>@crm.example.com``. The signature is a short HMAC of the
message id (:meth:`~crm_mailtrack.tokens.TokenSigner.short_signature`, purpose
``mailtrack.bounce``): a bounce addressed to a made-up or altered tag matches nothing. The
tag is lower-case letters and digits only, as some servers fold the letter case of a local
part; the whole local part stays within RFC 5321's 64 octets.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from email.utils import getaddresses

from ..state import MailTrackState
from ..tokens import Purpose

#: Message ids that fit in a tag (``new_message_id`` makes 24 hex digits).
_TAGGABLE_ID = re.compile(r"[0-9a-z]{1,32}")
#: RFC 5321 4.5.3.1.1.
MAX_LOCAL_PART = 64


def envelope_sender(state: MailTrackState, message_id: str) -> str | None:
    """The VERP envelope sender of ``message_id``; the plain bounce address when the id
    cannot be tagged (too long, other characters); ``None`` without a bounce address."""
    configured = state.settings.bounce_address
    if configured is None:
        return None
    local, domain = configured
    if _TAGGABLE_ID.fullmatch(message_id):
        signature = state.signer.short_signature(Purpose.BOUNCE, message_id)
        tagged = f"{local}+{message_id}-{signature}"
        if len(tagged) <= MAX_LOCAL_PART:
            return f"{tagged}@{domain}"
    return f"{local}@{domain}"


def message_id_of(state: MailTrackState, address: str) -> str | None:
    """The message id an address's VERP tag names, when the tag is ours and its signature
    verifies; else ``None`` (another address, a forged or damaged tag)."""
    configured = state.settings.bounce_address
    if configured is None or not isinstance(address, str) or len(address) > 320:
        return None
    local, _, domain = address.strip().strip("<>").rpartition("@")
    prefix = configured[0].lower() + "+"
    local = local.lower()
    if domain.lower() != configured[1] or not local.startswith(prefix):
        return None
    message_id, _, signature = local[len(prefix):].rpartition("-")
    if not _TAGGABLE_ID.fullmatch(message_id) or len(signature) != 16:
        return None
    if not state.signer.verify_short_signature(Purpose.BOUNCE, message_id, signature):
        return None
    return message_id


def message_ids_in(state: MailTrackState, header_values: Iterable[str]) -> list[str]:
    """The verified message ids named by the addresses in ``header_values`` (``To``,
    ``Delivered-To``, ``X-Original-To``, ``Return-Path`` ...), in order, without repeats."""
    if state.settings.bounce_address is None:
        return []
    found: list[str] = []
    for _, address in getaddresses([v for v in header_values if isinstance(v, str)]):
        mid = message_id_of(state, address)
        if mid is not None and mid not in found:
            found.append(mid)
    return found


__all__ = ["envelope_sender", "message_id_of", "message_ids_in", "MAX_LOCAL_PART"]
