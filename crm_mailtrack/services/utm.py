"""UTM tags of a contact: one per contact and combination of ``utm_*`` values.

A tag is written by :func:`upsert_tag` only, in the caller's transaction: the click path
(:mod:`.tracking`, in the click's own transaction, and its journal replay) and
:func:`add_utm` (Python API and JSON API). A combination seen again is counted (``hits``)
and its ``last_active`` moved forward; only a new tag makes a ``utm_added`` event and a
``utm_tag_added`` signal. Concurrent first sightings meet in the dialect's
``INSERT ... ON CONFLICT DO UPDATE`` on the unique key, so they make one tag and never fail.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import sqlalchemy as sa

from ..db import insert, transaction
from ..errors import NotFound, ValidationError
from ..models import ContactEvent, EventType, UtmTag, events, utcnow, utm_tags
from ..requestinfo import anonymize_ip
from ..state import MailTrackState
from .common import UNSET, check_lengths, emit, tenant_key
from .prepared import ConnectionRunner, Prepared, Runner, aware_binds

UTM_FIELDS = (
    "utm_campaign", "utm_source", "utm_medium", "utm_content", "utm_term", "useragent", "url",
    "referer", "query", "remotehost", "last_active",
)
#: The five values that identify a tag.
UTM_KEYS = UTM_FIELDS[:5]
_UTM_ADDED = EventType.UTM_ADDED.value
#: Columns :func:`upsert_tag` binds (``hits`` starts at 1).
_TAG_COLUMNS = ("tenant_id", "contact_id", "utm_key", *UTM_FIELDS, "date_added")


def combination_key(values: Mapping[str, Any]) -> str:
    """The identity of a combination: SHA-256 of the five ``utm_*`` values as a JSON list
    (missing and empty alike). The 0004 migration computes the same for existing rows."""
    return _combination_key(tuple(values.get(k) or None for k in UTM_KEYS))


@lru_cache(maxsize=4096)
def _combination_key(combination: tuple[Any, ...]) -> str:
    """Cached per combination: a campaign's links share a few."""
    canon = json.dumps(list(combination), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


_TAG_BINDS = {name: utm_tags.c[name].type for name in _TAG_COLUMNS}


@lru_cache(maxsize=8)
def _upsert(dialect: sa.Dialect) -> Prepared:
    """``INSERT ... ON CONFLICT (tenant_id, contact_id, utm_key) DO UPDATE`` counting the
    sighting and keeping the latest ``last_active``; RETURNING ``id`` and ``hits`` (1: a
    new tag). Compiled once per dialect: a person's click on a tagged link runs it."""
    stmt = insert(dialect.name, utm_tags).values(
        {**{name: sa.bindparam(name, type_=utm_tags.c[name].type) for name in _TAG_COLUMNS},
         "hits": sa.literal_column("1")})
    seen, latest = utm_tags.c.last_active, stmt.excluded.last_active
    stmt = stmt.on_conflict_do_update(
        index_elements=[utm_tags.c.tenant_id, utm_tags.c.contact_id, utm_tags.c.utm_key],
        set_={"hits": utm_tags.c.hits + sa.literal_column("1"),
              "last_active": sa.case((seen.is_(None) | (latest > seen), latest), else_=seen)},
    ).returning(utm_tags.c.id, utm_tags.c.hits)
    return Prepared(stmt, dialect, aware_binds(dialect, _TAG_BINDS))


_EVENT_BINDS = {name: events.c[name].type for name in ("tenant_id", "contact_id", "occurred_at", "url", "details")}


@lru_cache(maxsize=8)
def _added_event(dialect: sa.Dialect) -> Prepared:
    stmt = sa.insert(events).values(
        {**{name: sa.bindparam(name, type_=type_) for name, type_ in _EVENT_BINDS.items()},
         "type": sa.literal_column(f"'{_UTM_ADDED}'"), "is_machine": sa.false()},
    ).returning(events.c.id)
    return Prepared(stmt, dialect, aware_binds(dialect, _EVENT_BINDS))


class TagWrite:
    """What :func:`upsert_tag` wrote: the tag as stored, and the ``utm_added`` event when
    the tag is new (``None`` when an existing one was counted again). ``tag`` is built
    when first read: a click counting a known tag again never needs it."""

    def __init__(self, values: Mapping[str, Any], event: ContactEvent | None) -> None:
        self._values = values
        self._tag: UtmTag | None = None
        self.event = event

    @property
    def tag(self) -> UtmTag:
        if self._tag is None:
            self._tag = UtmTag(**self._values)
        return self._tag

    @tag.setter
    def tag(self, tag: UtmTag) -> None:
        self._tag = tag

    @property
    def created(self) -> bool:
        return self.event is not None

    def notify(self, *, safe: bool) -> None:
        """``utm_tag_added`` (and ``event_recorded``) for a new tag; call after the commit."""
        if self.event is not None:
            emit(_UTM_ADDED, safe=safe, event=self.event, contact_id=self.tag.contact_id, message_id=None,
                 campaign_id=None, url=self.tag.url, utm=self.tag)


def upsert_tag(runner: Runner, values: Mapping[str, Any]) -> TagWrite:
    """Store one sighting of a combination in ``runner``'s transaction. ``values``:
    ``tenant_id``, ``contact_id`` and the fields of :data:`UTM_FIELDS` (missing ones are
    ``None``; ``last_active`` and ``date_added`` timezone-aware). The returned tag is the
    stored one when new; for a combination seen before only its ``id`` and ``hits`` are
    read back (the rest are this sighting's values)."""
    params = {name: values.get(name) for name in _TAG_COLUMNS}
    params["utm_key"] = combination_key(values)
    params["date_added"] = params["date_added"] or utcnow()
    row = runner.first(_upsert(runner.dialect), params)
    stored = {**params, "id": row.id, "hits": row.hits}
    if row.hits != 1:
        return TagWrite(stored, None)
    details = {"utmId": row.id, **{k: params[k] for k in UTM_KEYS if params[k]}}
    event_values = {"tenant_id": params["tenant_id"], "contact_id": params["contact_id"],
                    "occurred_at": params["date_added"], "url": params["url"], "details": details}
    event_id = runner.first(_added_event(runner.dialect), event_values).id
    event = ContactEvent(id=event_id, type=_UTM_ADDED, is_machine=False, **event_values)
    return TagWrite(stored, event)


def add_utm(state: MailTrackState, contact_id: str, *, tenant_id: Any = UNSET, safe_signals: bool = False,
            **fields: Any) -> UtmTag:
    """Add a tag (or count its combination again): see :func:`add_utm_tag`."""
    return add_utm_tag(state, contact_id, tenant_id=tenant_id, safe_signals=safe_signals, **fields).tag


def add_utm_tag(state: MailTrackState, contact_id: str, *, tenant_id: Any = UNSET, safe_signals: bool = False,
                **fields: Any) -> TagWrite:
    """Add a tag by hand (Python or JSON API). ``remotehost`` must be an IP address; it is
    stored anonymized (IPv4 /24, IPv6 /48) like the tracking routes' IPs unless
    ``MAILTRACK_ANONYMIZE_IP`` is off. A combination the contact already has is counted
    again (``hits``, ``last_active``) and keeps its first details; nothing else is added."""
    unknown = sorted(set(fields) - set(UTM_FIELDS))
    if unknown:
        raise ValidationError({name: ["Unknown field."] for name in unknown})
    host = fields.get("remotehost")
    if host not in (None, ""):
        stored = anonymize_ip(host, state.anonymize_ip) if isinstance(host, str) else None
        if stored is None:
            raise ValidationError({"remotehost": ["Not a valid IP address."]})
        fields["remotehost"] = stored
    check_lengths(utm_tags, contact_id=str(contact_id), **{k: v for k, v in fields.items() if isinstance(v, str)})
    last_active = fields.get("last_active")
    if isinstance(last_active, dt.datetime) and last_active.tzinfo is None:
        fields["last_active"] = last_active.replace(tzinfo=dt.timezone.utc)
    with transaction(state) as session:
        written = upsert_tag(ConnectionRunner(session.connection()),
                             {**fields, "tenant_id": tenant_key(state, tenant_id), "contact_id": str(contact_id)})
    written.tag = session.get(UtmTag, written.tag.id) or written.tag  # the session's own instance
    written.notify(safe=safe_signals)
    return written


def remove_utm(state: MailTrackState, contact_id: str, utm_id: int, *, tenant_id: Any = UNSET) -> None:
    """Remove one tag of the contact; :class:`NotFound` when the contact has no such tag."""
    tenant = tenant_key(state, tenant_id)
    try:
        utm_id = int(utm_id)
    except (TypeError, ValueError):
        raise NotFound(f"No UTM tag {utm_id!r} for this contact.") from None
    with transaction(state) as session:
        result = session.execute(
            sa.delete(UtmTag.__table__).where(
                UtmTag.id == utm_id, UtmTag.tenant_id == tenant, UtmTag.contact_id == str(contact_id)
            )
        )
        if not result.rowcount:
            raise NotFound(f"No UTM tag {utm_id} for this contact.")
        event = ContactEvent(tenant_id=tenant, type=EventType.UTM_REMOVED.value, contact_id=str(contact_id),
                             occurred_at=utcnow(), details={"utmId": utm_id})
        session.add(event)
    emit(event.type, event=event, contact_id=str(contact_id), message_id=None, campaign_id=None,
         url=None, utm_id=utm_id)


def list_utm(state: MailTrackState, contact_id: str, *, tenant_id: Any = UNSET) -> list[UtmTag]:
    tenant = tenant_key(state, tenant_id)
    return list(state.session.execute(
        sa.select(UtmTag).where(UtmTag.tenant_id == tenant, UtmTag.contact_id == str(contact_id)).order_by(UtmTag.id)
    ).scalars())


def utm_params(url: str) -> dict[str, str]:
    """The ``utm_*`` fields of a destination's query string (known UTM names only)."""
    return dict(_utm_pairs(url))


@lru_cache(maxsize=4096)
def _utm_pairs(url: str) -> tuple[tuple[str, str], ...]:
    """Cached per destination: every click on a link has the same."""
    try:
        pairs = parse_qsl(urlsplit(url).query, keep_blank_values=False)
    except ValueError:
        return ()
    return tuple((k, v[:255]) for k, v in pairs if k in UTM_KEYS)


def click_tag(runner: Runner, click: Any, entry: Mapping[str, Any], utm: Mapping[str, str]) -> TagWrite:
    """The tag of a person's click on a destination with ``utm_*`` parameters, written in
    the click's own transaction (``click``: the stored row, with its
    ``tenant_id`` and ``contact_id``; ``entry``: the click's values)."""
    at = entry["occurred_at"]
    return upsert_tag(runner, {
        **utm, "tenant_id": click.tenant_id, "contact_id": click.contact_id, "url": entry["url"],
        "useragent": entry.get("user_agent"), "remotehost": entry.get("ip"), "last_active": at,
        "date_added": at,
    })
