"""Data minimisation: erasing a contact; purging old raw events while keeping the totals
true; the cap on what an event's ``details`` may store.

``purge(state, older_than_days)`` moves every event older than the cutoff into
``mailtrack_event_rollups`` (one row per tenant, UTC day, type, human/machine, campaign,
message and link, with a count) and deletes the raw rows, day by day, each day in one
transaction. On PostgreSQL, a whole month older than the cutoff is one transaction
instead: its partition is rolled up and dropped (``DROP TABLE``, no row-by-row delete; the
few events a purge keeps are moved out first), see :mod:`.partitions`. What survives a purge and what does not is listed in ``docs/metrics-bots.md``:
totals and per-message / per-message-and-link uniques survive; who, when exactly, from where
and with what device do not.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from .. import config as cfg
from ..db import dialect_name, insert, transaction, unavailable_as_503, utc_day
from ..errors import ValidationError
from ..instrument import link_id as make_link_id
from ..inbound_models import inbound
from ..models import campaign_links, dnc, event_rollups, events, links, messages, utcnow, utm_tags
from ..state import MailTrackState
from ..tokens import Purpose
from . import dnc as dnc_service
from . import partitions as partitions_service
from . import stats
from .common import UNSET, tenant_key
from .contactclicks import IMPORT_REASON

_KEY = ("tenant_id", "day", "type", "is_machine", "campaign_id", "message_id", "link_id")

#: Events a purge may roll up and delete. ContactClicks imports are kept: they are the only
#: record of a contact's imported click total, and rollups carry no contact id. So are events
#: the analytics cells have not counted as they are (services/stats.py): a rollup is counted
#: as folded, so only folded events may become one (the purge folds first; a straggler
#: waits for the next purge).
def _purgeable(table: Any) -> Any:
    """The condition of :data:`_PURGEABLE` on ``table`` (the events or one partition)."""
    c = table.c
    return sa.and_(
        sa.or_(c.machine_reason.is_(None), c.machine_reason != IMPORT_REASON),
        sa.or_(c.type.not_in(stats.FLAG_TYPES), c.folded_as.is_not_distinct_from(c.is_machine)),
    )


_PURGEABLE = _purgeable(events)


#: The token of a signed click link in a message's stored HTML.
_CLICK_TOKEN = re.compile(r"/t/c/([A-Za-z0-9_.-]+)")
#: Tokens of stored messages are read whatever their age (``MAILTRACK_LINK_MAX_AGE`` is
#: about clicks, not about knowing which links a stored message carries).
_ANY_AGE = 2**62
_SCAN_BATCH = 200


def _message_links(state: MailTrackState, message_id: str, html: str | None) -> set[str]:
    """The link ids of the signed click links in a stored message's HTML."""
    found: set[str] = set()
    for token in set(_CLICK_TOKEN.findall(html or "")):
        payload = state.signer.loads(Purpose.CLICK, token, max_age=_ANY_AGE)
        if isinstance(payload, list) and len(payload) == 2 and payload[0] == message_id and isinstance(payload[1], str):
            found.add(make_link_id(payload[1]))
    return found


def erase_contact(state: MailTrackState, contact_id: str, *, tenant_id: Any = UNSET) -> int:
    """Delete every tracked row of a contact in one transaction; return the rows deleted.

    The contact's events, Do-Not-Contact entries, UTM tags, messages and received replies go, and with them
    the tracked links (``mailtrack_links``, ``mailtrack_campaign_links``) that only the
    contact's messages carried: a personalised URL (``?email=...``) must not outlive its
    contact; links that other messages carry stay. Before its DNC entries go, each is kept
    as a suppression record of the contact's addresses (a keyed hash, no personal data;
    see :mod:`crm_mailtrack.services.dnc`), so an unsubscribed address stays unmailable.
    """
    tenant = tenant_key(state, tenant_id)
    contact_id = str(contact_id)
    total = 0
    with transaction(state) as session:
        conn = session.connection()
        own = sa.and_(messages.c.tenant_id == tenant, messages.c.contact_id == contact_id)
        mine = sa.and_(events.c.tenant_id == tenant, events.c.contact_id == contact_id)
        own_links: dict[str | None, set[str]] = {}  # campaign id -> link ids of its erased messages
        own_ids: list[str] = []
        addresses: set[str] = set()
        for row in session.execute(sa.select(messages.c.id, messages.c.email, messages.c.campaign_id,
                                             messages.c.html).where(own)):
            own_ids.append(row.id)
            addresses.add(row.email)
            own_links.setdefault(row.campaign_id, set()).update(_message_links(state, row.id, row.html))
        addresses.update(session.execute(
            sa.select(events.c.email).where(mine, events.c.email.is_not(None)).distinct()).scalars())
        clicked = set(session.execute(
            sa.select(events.c.link_id).where(mine, events.c.link_id.is_not(None)).distinct()).scalars())
        contact = state.hooks.load_contact(contact_id)
        if contact is not None and isinstance(contact.get("email"), str):
            addresses.add(contact["email"])
        dnc_service.suppress(state, tenant, contact_id, addresses)

        # out of the analytics cells first: the contact's messages (with all their events),
        # then the contact's events on other messages (forwards, shared mail)
        stats.forget_messages(conn, own)
        stats.forget_events(conn, sa.and_(
            mine, sa.or_(events.c.message_id.is_(None), events.c.message_id.not_in(sa.select(messages.c.id).where(own)))))
        for table in (events, dnc, utm_tags, inbound, messages):
            result = session.execute(
                sa.delete(table).where(table.c.tenant_id == tenant, table.c.contact_id == contact_id))
            total += result.rowcount or 0
        total += _drop_unshared_links(state, tenant, own_links, clicked, own_ids)
    return total


def _drop_unshared_links(state: MailTrackState, tenant: str, own_links: dict[str | None, set[str]],
                         clicked: Iterable[str], erased_ids: list[str]) -> int:
    """Delete the links (and campaign links) that no remaining message carries; called
    after the contact's messages and events are deleted. The remaining messages that may
    carry them are read: those of the same campaigns (any tenant, as ``campaign_links``
    lists them) and those without a campaign in the same tenant."""
    candidates = set(clicked).union(*own_links.values()) if own_links else set(clicked)
    if not candidates:
        return 0
    session = state.session
    seen_in_campaign: dict[tuple[str, str | None], set[str]] = {}
    seen_anywhere = set(session.execute(  # another contact's click proves another message carried it
        sa.select(events.c.link_id).where(events.c.link_id.in_(candidates)).distinct()).scalars())
    seen_anywhere.update(session.execute(  # as does a rolled-up click of another message
        sa.select(event_rollups.c.link_id).where(
            event_rollups.c.link_id.in_(candidates),
            event_rollups.c.message_id.not_in(erased_ids or [""])).distinct()).scalars())
    campaigns = sa.select(campaign_links.c.tenant_id, campaign_links.c.campaign_id).where(
        campaign_links.c.link_id.in_(candidates))
    scope = sa.or_(
        sa.tuple_(messages.c.tenant_id, messages.c.campaign_id).in_(campaigns),
        sa.and_(messages.c.tenant_id == tenant, messages.c.campaign_id.is_(None)),
    )
    query = sa.select(messages.c.id, messages.c.tenant_id, messages.c.campaign_id, messages.c.html).where(
        scope, messages.c.html.is_not(None))
    for row in session.execute(query.execution_options(yield_per=_SCAN_BATCH)):
        carried = _message_links(state, row.id, row.html) & candidates
        if carried:
            seen_anywhere |= carried
            seen_in_campaign.setdefault((row.tenant_id, row.campaign_id), set()).update(carried)
    deleted = 0
    for campaign_id, link_ids in own_links.items():
        if campaign_id is None:
            continue
        gone = link_ids - seen_in_campaign.get((tenant, campaign_id), set())
        if gone:
            deleted += session.execute(sa.delete(campaign_links).where(
                campaign_links.c.tenant_id == tenant, campaign_links.c.campaign_id == campaign_id,
                campaign_links.c.link_id.in_(gone))).rowcount or 0
    orphans = candidates - seen_anywhere
    if orphans:
        deleted += session.execute(sa.delete(campaign_links).where(campaign_links.c.link_id.in_(orphans))).rowcount or 0
        deleted += session.execute(sa.delete(links).where(links.c.id.in_(orphans))).rowcount or 0
    return deleted


def check_details(state: MailTrackState, details: Mapping[str, Any] | None) -> None:
    """Refuse ``details`` whose compact UTF-8 JSON is longer than ``MAILTRACK_MAX_DETAILS_BYTES``
    (or that cannot be JSON at all) with :class:`ValidationError` (422 on the API): a
    webhook or import should store a summary, not a whole payload."""
    if not details:
        return
    limit = state.settings.max_details_bytes
    try:
        size = len(json.dumps(details, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except RecursionError:
        raise ValidationError({"details": ["Nested too deeply to store."]}) from None
    except (TypeError, ValueError) as exc:
        raise ValidationError({"details": [f"Not storable as JSON: {exc}"]}) from None
    if size > limit:
        raise ValidationError({"details": [
            f"Larger than the {limit} bytes an event may store ({size} bytes as JSON; "
            f"{cfg.MAX_DETAILS_BYTES})."]})


def _rollup_insert(dialect: str, start: dt.datetime, end: dt.datetime) -> Any:
    """``INSERT INTO rollups SELECT ... GROUP BY ... ON CONFLICT DO UPDATE count += ...``."""
    day = utc_day(dialect, events.c.occurred_at)
    blank = sa.literal("")
    src = (
        sa.select(
            events.c.tenant_id,
            day.label("day"),
            events.c.type,
            events.c.is_machine,
            sa.func.coalesce(events.c.campaign_id, blank),
            sa.func.coalesce(events.c.message_id, blank),
            sa.func.coalesce(events.c.link_id, blank),
            sa.func.count(),
        )
        .where(events.c.occurred_at >= start, events.c.occurred_at < end, _PURGEABLE)
        .group_by(events.c.tenant_id, day, events.c.type, events.c.is_machine,
                  events.c.campaign_id, events.c.message_id, events.c.link_id)
    )
    stmt = insert(dialect, event_rollups).from_select([*_KEY, "count"], src)
    return stmt.on_conflict_do_update(
        index_elements=list(_KEY), set_={"count": event_rollups.c.count + stmt.excluded["count"]}
    )


def _midnight(moment: dt.datetime) -> dt.datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def purge_days(state: MailTrackState, older_than_days: int, *, now: dt.datetime | None = None
               ) -> list[tuple[dt.datetime, dt.datetime]]:
    """The ``[start, end)`` UTC slices that :func:`purge` will process (oldest first): the
    whole monthly partitions older than the cutoff (PostgreSQL), then each remaining day."""
    if isinstance(older_than_days, bool) or not isinstance(older_than_days, int) or older_than_days < 0:
        raise ValidationError({"older_than": ["Must be a whole number of days >= 0."]})
    cutoff = (now or utcnow()) - dt.timedelta(days=older_than_days)
    with unavailable_as_503():
        stats.fold(state)  # only folded events are purgeable (see _PURGEABLE)
        with state.engine.connect() as conn:
            whole = [(p.start, p.end) for p in partitions_service.droppable(conn, cutoff)]
            outside = [sa.or_(events.c.occurred_at < start, events.c.occurred_at >= end) for start, end in whole]
            oldest = conn.execute(
                sa.select(sa.func.min(events.c.occurred_at)).where(events.c.occurred_at < cutoff, _PURGEABLE,
                                                                   *outside)
            ).scalar()
    slices: list[tuple[dt.datetime, dt.datetime]] = list(whole)  # type: ignore[arg-type]
    if oldest is not None:
        if isinstance(oldest, str):  # SQLite aggregate: raw text
            oldest = dt.datetime.fromisoformat(oldest)
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=dt.timezone.utc)
        start = _midnight(oldest)
        while start < cutoff:
            end = min(start + dt.timedelta(days=1), cutoff)
            if not any(w_start <= start and end <= w_end for w_start, w_end in whole):  # type: ignore[operator]
                slices.append((start, end))
            start = end
    return sorted(slices)


def purge(
    state: MailTrackState,
    older_than_days: int,
    *,
    now: dt.datetime | None = None,
    progress: Callable[[int], Any] | None = None,
) -> int:
    """Roll up and delete every event that occurred more than ``older_than_days`` ago;
    returns the number of raw events deleted.

    Each UTC day is one transaction (REPEATABLE READ on PostgreSQL, SQLite's single
    writer), so the rollup and the delete see the same rows: an event is either still raw
    or counted in the rollups, never both, never neither. A whole monthly partition older
    than the cutoff (PostgreSQL) is one transaction too: rolled up, then dropped. An
    interrupted purge is simply run again.
    """
    engine = state.engine
    dialect = dialect_name(engine)
    deleted = 0
    slices = purge_days(state, older_than_days, now=now)
    with unavailable_as_503(), engine.connect() as conn:
        months = {(p.start, p.end): p for p in partitions_service.partitions(conn)}
    has_default = (None, None) in months
    for start, end in slices:
        month = months.get((start, end))
        with unavailable_as_503(), engine.connect() as conn:
            if dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                dropped = _drop_month(conn, month, has_default) if month is not None else None
                if dropped is not None:
                    deleted += dropped
                else:
                    conn.execute(_rollup_insert(dialect, start, end))
                    result = conn.execute(
                        sa.delete(events).where(
                            events.c.occurred_at >= start, events.c.occurred_at < end, _PURGEABLE
                        )
                    )
                    deleted += result.rowcount or 0
        if progress is not None:
            progress(1)
    return deleted


def _drop_month(conn: sa.Connection, month: partitions_service.Partition, has_default: bool) -> int | None:
    """Roll up and drop a monthly partition; the events a purge keeps (:data:`_PURGEABLE`)
    move to the default partition first. Returns the events dropped, or ``None`` when
    there is nowhere to keep its kept events: the caller deletes rows instead."""
    quote = conn.dialect.identifier_preparer.quote
    # First, before the snapshot: writers of this old month (a late replay, an import)
    # wait until the drop is done, so the rollup counts every row the drop removes.
    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{partitions_service.LOCK_TIMEOUT}'"))
    conn.execute(sa.text(f"LOCK TABLE {quote(month.name)} IN SHARE MODE"))
    part = sa.table(month.name, *(sa.column(c.name) for c in events.c))
    purgeable = _purgeable(part)
    dropped, kept = conn.execute(sa.select(
        sa.func.count().filter(purgeable), sa.func.count().filter(sa.not_(purgeable))).select_from(part)).one()
    if kept and not has_default:
        return None  # no default partition to keep them in
    start, end = month.start, month.end
    assert start is not None and end is not None
    conn.execute(_rollup_insert("postgresql", start, end))
    if kept:
        cols = [c.name for c in events.c]
        conn.execute(sa.text(f"ALTER TABLE mailtrack_events DETACH PARTITION {quote(month.name)}"))
        conn.execute(sa.insert(events).from_select(
            cols, sa.select(*(part.c[c] for c in cols)).where(sa.not_(purgeable))))
    conn.execute(sa.text(f"DROP TABLE {quote(month.name)}"))
    return int(dropped)


def rolled_up_counts(state: MailTrackState, tenant: str, *, campaign_id: str | None = None,
                     include_bots: bool = False) -> dict[str, int]:
    """Totals by event type of the purged events of a tenant (optionally one campaign):
    what a report adds to its count of the raw events."""
    query = (
        sa.select(event_rollups.c.type, sa.func.sum(event_rollups.c.count))
        .where(event_rollups.c.tenant_id == tenant)
        .group_by(event_rollups.c.type)
    )
    if campaign_id is not None:
        query = query.where(event_rollups.c.campaign_id == str(campaign_id))
    if not include_bots:
        query = query.where(event_rollups.c.is_machine == sa.false())
    with state.engine.connect() as conn:
        return {row[0]: int(row[1]) for row in conn.execute(query)}


__all__ = ["check_details", "erase_contact", "purge", "purge_days", "rolled_up_counts"]
