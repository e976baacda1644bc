"""UTM tags of a contact."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ..errors import DatabaseUnavailable, NotFound, ValidationError
from ..models import ContactEvent, EventType, UtmTag, utcnow
from ..state import MailTrackState
from .common import UNSET, check_lengths, emit, tenant_key

UTM_FIELDS = (
    "utm_campaign", "utm_source", "utm_medium", "utm_content", "utm_term", "useragent", "url",
    "referer", "query", "remotehost", "last_active",
)


def add_utm(state: MailTrackState, contact_id: str, *, tenant_id: Any = UNSET, safe_signals: bool = False,
            **fields: Any) -> UtmTag:
    unknown = sorted(set(fields) - set(UTM_FIELDS))
    if unknown:
        raise ValidationError({name: ["Unknown field."] for name in unknown})
    check_lengths(UtmTag.__table__, contact_id=str(contact_id),
                  **{k: v for k, v in fields.items() if isinstance(v, str)})
    tenant = tenant_key(state, tenant_id)
    tag = UtmTag(tenant_id=tenant, contact_id=str(contact_id), date_added=utcnow(), **fields)
    session = state.session
    try:
        session.add(tag)
        session.flush()
        event = ContactEvent(
            tenant_id=tenant, type=EventType.UTM_ADDED.value, contact_id=str(contact_id),
            occurred_at=tag.date_added, url=tag.url,
            details={"utmId": tag.id, **{k: v for k, v in fields.items() if k.startswith("utm_") and v}},
        )
        session.add(event)
        session.commit()
    except sa.exc.SQLAlchemyError as exc:
        session.rollback()
        raise DatabaseUnavailable() from exc
    emit(event.type, safe=safe_signals, event=event, contact_id=str(contact_id), message_id=None,
         campaign_id=None, url=tag.url, utm=tag)
    return tag


def remove_utm(state: MailTrackState, contact_id: str, utm_id: int, *, tenant_id: Any = UNSET) -> None:
    """Remove one tag of the contact; :class:`NotFound` when the contact has no such tag."""
    tenant = tenant_key(state, tenant_id)
    session = state.session
    try:
        utm_id = int(utm_id)
    except (TypeError, ValueError):
        raise NotFound(f"No UTM tag {utm_id!r} for this contact.") from None
    try:
        result = session.execute(
            sa.delete(UtmTag.__table__).where(
                UtmTag.id == utm_id, UtmTag.tenant_id == tenant, UtmTag.contact_id == str(contact_id)
            )
        )
        if not result.rowcount:
            session.rollback()
            raise NotFound(f"No UTM tag {utm_id} for this contact.")
        event = ContactEvent(tenant_id=tenant, type=EventType.UTM_REMOVED.value, contact_id=str(contact_id),
                             occurred_at=utcnow(), details={"utmId": utm_id})
        session.add(event)
        session.commit()
    except sa.exc.SQLAlchemyError as exc:
        session.rollback()
        raise DatabaseUnavailable() from exc
    emit(event.type, event=event, contact_id=str(contact_id), message_id=None, campaign_id=None,
         url=None, utm_id=utm_id)


def list_utm(state: MailTrackState, contact_id: str, *, tenant_id: Any = UNSET) -> list[UtmTag]:
    tenant = tenant_key(state, tenant_id)
    return list(state.session.execute(
        sa.select(UtmTag).where(UtmTag.tenant_id == tenant, UtmTag.contact_id == str(contact_id)).order_by(UtmTag.id)
    ).scalars())


def utm_params(url: str) -> dict[str, str]:
    """The ``utm_*`` fields of a destination's query string (known UTM names only)."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        pairs = parse_qsl(urlsplit(url).query, keep_blank_values=False)
    except ValueError:
        return {}
    known = UTM_FIELDS[:5]
    return {k: v[:255] for k, v in pairs if k in known}


def record_click_utm(state: MailTrackState, click: Any, url: str, *, ip: str | None = None,
                     user_agent: str | None = None) -> UtmTag | None:
    """After a human click whose destination carries ``utm_*`` parameters, store them as a
    UTM tag of the clicking contact, in the message's tenant.

    ``click`` is the stored click row the tracking insert returned (``contact_id``,
    ``tenant_id``, final ``is_machine`` verdict), so no lookup is needed; machine clicks
    never tag. Never raises: a UTM tag is never worth a failed redirect.
    """
    from .common import log

    if click.is_machine:
        return None
    params = utm_params(url)
    if not params:
        return None
    try:
        return add_utm(state, click.contact_id, tenant_id=click.tenant_id, safe_signals=True, url=url,
                       useragent=user_agent, remotehost=ip, last_active=utcnow(), **params)
    except Exception:  # noqa: BLE001 - a UTM tag is never worth a failed redirect
        state.session.rollback()
        log.warning("mailtrack: UTM tag of a click not stored", exc_info=True)
        return None
