"""Finding the outbound message that something coming back concerns: by our own id, or by
the ``Message-ID`` header it was sent with (replies' ``In-Reply-To``/``References``, the
original headers inside a DSN or ARF report, an ESP's event)."""
from __future__ import annotations

import re
from collections.abc import Iterable

import sqlalchemy as sa

from ..models import Message, messages
from ..state import MailTrackState

#: One ``<id-left@id-right>`` of a Message-ID, In-Reply-To or References header.
_MSG_ID = re.compile(r"<([^<>\s]{1,250})>")


def message_ids_in(value: str | None) -> list[str]:
    """The ``<...>`` message ids in a header value, in order, each with its brackets; a bare
    id (some ESPs drop the brackets) counts as one."""
    if not value:
        return []
    found = [f"<{m}>" for m in _MSG_ID.findall(value)]
    if not found:
        bare = value.strip()
        if bare and "@" in bare and not any(c.isspace() or c in "<>" for c in bare) and len(bare) <= 250:
            found = [f"<{bare}>"]
    return found


def by_id(state: MailTrackState, message_id: str | None) -> Message | None:
    """The message with our id ``message_id`` (any tenant), or ``None``."""
    if not message_id or len(message_id) > messages.c.id.type.length:
        return None
    return state.session.get(Message, message_id)


def by_internet_message_id(state: MailTrackState, candidates: Iterable[str], *,
                           email: str | None = None) -> Message | None:
    """The sent message whose ``Message-ID`` is one of ``candidates`` (header values, with or
    without brackets; the first that matches wins), optionally only if it went to ``email``
    (case-insensitive). ``None`` when nothing matches."""
    ids: list[str] = []
    for value in candidates:
        for mid in message_ids_in(value):
            if mid not in ids:
                ids.append(mid)
    ids = ids[:50]  # callers list the likeliest first (In-Reply-To, then References newest first)
    if not ids:
        return None
    where = [messages.c.internet_message_id.in_(ids)]
    if email:
        where.append(sa.func.lower(messages.c.email) == email.strip().lower())
    found = {m.internet_message_id: m for m in state.session.execute(
        sa.select(Message).where(*where)).scalars()}
    for mid in ids:
        if mid in found:
            return found[mid]
    return None


__all__ = ["message_ids_in", "by_id", "by_internet_message_id"]
