"""Helpers shared by the services: tenant resolution, column length checks, signals."""
from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from flask import current_app

from ..errors import ValidationError
from ..signals import SIGNAL_FOR_TYPE, event_recorded
from ..state import MailTrackState

log = logging.getLogger("crm_mailtrack")


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: Marks "argument not given" where ``None`` is a meaningful value (``tenant_id=None``).
UNSET: Any = _Unset()


def tenant_key(state: MailTrackState, tenant_id: Any = UNSET) -> str:
    """The stored tenant key: the explicit ``tenant_id``, else ``tenant_loader()``, with
    ``None`` (no tenant) stored as ``""``."""
    if tenant_id is UNSET:
        loader = state.hooks.tenant_loader
        tenant_id = loader() if loader is not None else None
    return "" if tenant_id is None else str(tenant_id)


def tenant_out(key: str | None) -> str | None:
    """The public form of a stored tenant key."""
    return key or None


def check_lengths(table: sa.Table, **values: Any) -> None:
    """Refuse strings longer than their column, naming each field: PostgreSQL would refuse
    them as a database error (a misleading 503), SQLite would silently store them."""
    errors: dict[str, list[str]] = {}
    for name, value in values.items():
        length = getattr(table.c[name].type, "length", None)
        if isinstance(value, str) and length is not None and len(value) > length:
            errors[name] = [f"Longer than maximum length {length}."]
    if errors:
        raise ValidationError(errors)


def emit(event_type: str, *, safe: bool = False, **kwargs: Any) -> None:
    """Send the type's signal and ``event_recorded``, sender = the current app.

    With ``safe`` (the public tracking routes) each subscriber runs isolated: one that
    raises is logged and neither stops the others nor reaches the recipient. Opens and
    clicks always carry ``is_machine`` and ``machine_reason`` (taken from ``event`` when
    the caller does not give them).
    """
    if event_type in _VERDICT_TYPES and "is_machine" not in kwargs:
        event = kwargs.get("event")
        kwargs["is_machine"] = bool(getattr(event, "is_machine", False))
        kwargs["machine_reason"] = getattr(event, "machine_reason", None)
    for signal in (SIGNAL_FOR_TYPE.get(event_type), event_recorded):
        if signal is not None:
            send(signal, safe=safe, **kwargs)


#: Event types whose signals carry the machine verdict.
_VERDICT_TYPES = frozenset({"open", "click"})


def send(signal: Any, *, safe: bool = False, **kwargs: Any) -> None:
    """Send one signal with the current app as sender (see :func:`emit` for ``safe``)."""
    if not signal.receivers:
        return
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if not safe:
        signal.send(app, **kwargs)
        return
    for receiver in signal.receivers_for(app):
        try:
            receiver(app, **kwargs)
        except Exception:  # noqa: BLE001 - a subscriber's bug must not break tracking
            log.exception("mailtrack: subscriber %r of %s raised", receiver, signal.name)


def has_receivers(event_type: str) -> bool:
    sig = SIGNAL_FOR_TYPE.get(event_type)
    return bool(event_recorded.receivers or (sig is not None and sig.receivers))
