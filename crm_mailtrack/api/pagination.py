"""Opaque, signed keyset cursors for ``next_link`` pagination.

A cursor is an itsdangerous token (salt ``Purpose.CURSOR``) carrying the *scope* it was
made for (which report, which filters, which tenant) and the *position* of the last row
served, e.g. ``[occurred_at, id]``. The next page asks for rows strictly after that
position, so rows arriving between two requests never shift a page (no skip, no repeat)
and page N costs what page 1 costs. A cursor that is tampered with, or replayed against
another report or tenant, is a 400.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from flask import request

from ..errors import BadRequest
from ..state import get_state
from ..tokens import Purpose

#: Bumped when the payload layout changes: old cursors then fail cleanly with a 400.
_VERSION = 1


def encode_cursor(scope: Mapping[str, Any], position: Sequence[Any]) -> str:
    """A signed token for "the rows after ``position`` in ``scope``"."""
    payload = {"v": _VERSION, "s": {k: _plain(v) for k, v in scope.items()}, "p": [_plain(v) for v in position]}
    return get_state().signer.dumps(Purpose.CURSOR, payload)


def decode_cursor(token: str, scope: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[Any]]:
    """``(scope, position)`` of a valid cursor; :class:`BadRequest` otherwise.

    With ``scope``, every key given must match the cursor's own (a cursor of campaign A
    is not valid for campaign B, nor for another tenant).
    """
    payload = get_state().signer.loads(Purpose.CURSOR, token)
    if not (
        isinstance(payload, dict)
        and payload.get("v") == _VERSION
        and isinstance(payload.get("s"), dict)
        and isinstance(payload.get("p"), list)
    ):
        raise BadRequest("The pagination cursor is invalid or was tampered with.")
    found: dict[str, Any] = payload["s"]
    if scope is not None and any(found.get(k) != _plain(v) for k, v in scope.items()):
        raise BadRequest("The pagination cursor belongs to another listing.")
    return found, payload["p"]


def next_link(token: str, path: str | None = None) -> str:
    """The relative URL of the next page: the current path with only ``?next=<token>``."""
    base = path if path is not None else request.script_root + request.path
    return f"{base}?next={quote(token, safe='')}"


def parse_position_time(value: Any) -> dt.datetime:
    """The timestamp part of a position (stored as ISO 8601); :class:`BadRequest` if bad."""
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise BadRequest("The pagination cursor is invalid or was tampered with.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def parse_position_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("The pagination cursor is invalid or was tampered with.")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).isoformat()
    return value
