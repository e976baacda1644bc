"""Outbound webhooks: hosts outside Python subscribe URLs to event types; each event is
POSTed to them signed as the Standard Webhooks specification says.

Nothing happens on the click path. Recording an event writes only the event row; a later
run (``flask mailtrack deliver-webhooks`` from cron, or the Celery task
``crm_mailtrack.deliver_webhooks`` from beat) first *collects*: for each enabled endpoint,
the tenant's events after the endpoint's ``last_event_id`` become delivery rows, each with
its JSON body fixed once (every retry sends the same bytes). Then it *delivers* what is due.

- Signature: ``webhook-id`` is the event's stable id (``evt_<id>``, the same on every
  retry, so receivers deduplicate), ``webhook-timestamp`` the send time in epoch seconds,
  ``webhook-signature`` ``v1,`` + base64 of HMAC-SHA256 over ``id.timestamp.body`` with the
  key in the endpoint's ``whsec_`` secret. For :data:`SECRET_OVERLAP` after a rotation
  (:func:`rotate_secret`) the header carries a second ``v1,`` signature, with the old key.
- Destinations: :mod:`.webhook_http` refuses internal addresses (server-side request
  forgery) at creation and again at each delivery, unless
  ``MAILTRACK_OUTBOUND_WEBHOOK_ALLOW_PRIVATE``.
- Retries: a delivery that gets no 2xx (3xx included: redirects are not followed) is tried
  again after each wait of ``MAILTRACK_OUTBOUND_WEBHOOK_RETRY_SCHEDULE`` (about a day in
  all), then marked ``failed``. An endpoint whose attempts fail
  ``MAILTRACK_OUTBOUND_WEBHOOK_DISABLE_AFTER`` times in a row is disabled (its pending
  deliveries wait until it is enabled again).
- Concurrency: a delivery is leased with a conditional UPDATE before its POST, so two runs
  never post it at the same time; collection is idempotent (one row per endpoint and event).
- Ids are assigned before commit, so on PostgreSQL an event may become visible after a
  higher id was collected; each collection therefore also looks back
  :data:`LOOKBACK` ids for events that have no delivery yet.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import sqlalchemy as sa

from ..db import dialect_name, insert, transaction
from ..errors import NotFound, ValidationError
from ..models import EVENT_TYPES, events, utcnow
from ..state import MailTrackState
from ..webhook_models import WebhookDelivery, WebhookEndpoint, webhook_deliveries, webhook_endpoints
from . import webhook_http

#: Ids below an endpoint's ``last_event_id`` checked again for late commits.
LOOKBACK = 1000
#: Seconds a delivery stays leased to the run posting it, beyond the receiver's timeout.
LEASE_MARGIN = 60
#: How long after a secret rotation deliveries are signed with the old key too.
SECRET_OVERLAP = dt.timedelta(hours=24)


# -- signing -----------------------------------------------------------------------------------

def new_secret() -> str:
    """A fresh ``whsec_`` secret: 24 random bytes, base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` value (``v1,<base64 HMAC-SHA256 of id.timestamp.body>``)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signatures(secret: str, previous: str | None, rotated_at: dt.datetime | None, now: dt.datetime,
               msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header: the current key's signature, and during
    :data:`SECRET_OVERLAP` after a rotation the previous key's too (space-separated, as
    Standard Webhooks allows), so receivers can switch keys at their own pace."""
    value = sign(secret, msg_id, timestamp, body)
    if previous and rotated_at is not None and now < rotated_at + SECRET_OVERLAP:
        value += " " + sign(previous, msg_id, timestamp, body)
    return value


def event_msg_id(event_id: int) -> str:
    return f"evt_{event_id}"


# -- endpoints ---------------------------------------------------------------------------------

def _check(url: str, event_types: list[str], *, allow_private: bool) -> None:
    errors: dict[str, list[str]] = {}
    problem = webhook_http.url_problem(url, allow_private=allow_private)
    if problem is not None:
        errors["url"] = [problem]
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if unknown:
        errors["eventTypes"] = [f"Unknown event type(s): {', '.join(unknown)}."]
    if errors:
        raise ValidationError(errors)


def create_endpoint(state: MailTrackState, tenant: str, url: str, event_types: list[str] | None = None,
                    description: str | None = None) -> WebhookEndpoint:
    """Subscribe ``url`` to ``event_types`` (none: all) from now on: events recorded before
    are not sent."""
    event_types = sorted(set(event_types or []))
    _check(url, event_types, allow_private=state.settings.webhook_allow_private)
    with transaction(state) as session:
        last = session.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0))).scalar_one()
        now = utcnow()
        endpoint = WebhookEndpoint(id=secrets.token_hex(12), tenant_id=tenant, url=url, secret=new_secret(),
                                   event_types=event_types, description=description, enabled=True,
                                   failure_streak=0, last_event_id=int(last), created_at=now, updated_at=now)
        session.add(endpoint)
    return endpoint


def list_endpoints(state: MailTrackState, tenant: str) -> list[WebhookEndpoint]:
    return list(state.session.execute(
        sa.select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    ).scalars())


def get_endpoint(state: MailTrackState, tenant: str, endpoint_id: str) -> WebhookEndpoint:
    row = state.session.execute(
        sa.select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant, WebhookEndpoint.id == endpoint_id)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("No such webhook.")
    return row


def delete_endpoint(state: MailTrackState, tenant: str, endpoint_id: str) -> None:
    """Remove an endpoint and its delivery log."""
    get_endpoint(state, tenant, endpoint_id)
    with transaction(state) as session:
        session.execute(sa.delete(webhook_deliveries).where(webhook_deliveries.c.endpoint_id == endpoint_id))
        session.execute(sa.delete(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id,
                                                           webhook_endpoints.c.tenant_id == tenant))


def enable_endpoint(state: MailTrackState, tenant: str, endpoint_id: str) -> WebhookEndpoint:
    """Enable an endpoint again (its failure streak starts over; waiting deliveries go out
    at the next run)."""
    get_endpoint(state, tenant, endpoint_id)
    with transaction(state) as session:
        session.execute(sa.update(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id).values(
            enabled=True, disabled_reason=None, failure_streak=0, updated_at=utcnow()))
    return get_endpoint(state, tenant, endpoint_id)


def rotate_secret(state: MailTrackState, tenant: str, endpoint_id: str, now: dt.datetime | None = None
                  ) -> WebhookEndpoint:
    """Give an endpoint a new secret (returned on the endpoint, shown once by the API); the
    current one stays valid beside it for :data:`SECRET_OVERLAP` (a second rotation within
    that time drops the oldest key)."""
    get_endpoint(state, tenant, endpoint_id)
    now = now or utcnow()
    ep = webhook_endpoints.c
    with transaction(state) as session:
        session.execute(sa.update(webhook_endpoints).where(ep.id == endpoint_id, ep.tenant_id == tenant).values(
            previous_secret=ep.secret, secret=new_secret(), secret_rotated_at=now, updated_at=now))
    return get_endpoint(state, tenant, endpoint_id)


def list_deliveries(state: MailTrackState, tenant: str, endpoint_id: str, *, limit: int = 100,
                    status: str | None = None) -> list[WebhookDelivery]:
    """An endpoint's delivery log, newest first."""
    get_endpoint(state, tenant, endpoint_id)
    query = (sa.select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
             .order_by(WebhookDelivery.id.desc()).limit(limit))
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    return list(state.session.execute(query).scalars())


# -- collecting --------------------------------------------------------------------------------

def _payload(row: Any) -> str:
    occurred = row.occurred_at.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    data = {
        "id": event_msg_id(row.id), "type": row.type, "contactId": row.contact_id, "email": row.email,
        "messageId": row.message_id, "campaignId": row.campaign_id, "url": row.url, "occurredAt": occurred,
        "isMachine": bool(row.is_machine), "machineReason": row.machine_reason, "details": row.details,
    }
    return json.dumps({"type": row.type, "timestamp": occurred, "data": data}, separators=(",", ":"),
                      ensure_ascii=False)


def collect(state: MailTrackState, now: dt.datetime | None = None, *, batch_size: int = 1000) -> int:
    """Turn new events into deliveries (due at ``now``) for every enabled endpoint; return how many."""
    made = 0
    cols = (events.c.id, events.c.type, events.c.contact_id, events.c.email, events.c.message_id,
            events.c.campaign_id, events.c.url, events.c.occurred_at, events.c.is_machine,
            events.c.machine_reason, events.c.details)
    endpoints = list(state.session.execute(
        sa.select(webhook_endpoints.c.id, webhook_endpoints.c.tenant_id, webhook_endpoints.c.event_types,
                  webhook_endpoints.c.last_event_id).where(webhook_endpoints.c.enabled.is_(True))
    ).all())
    state.session.commit()
    dialect = dialect_name(state)
    for ep in endpoints:
        scope = [events.c.tenant_id == ep.tenant_id]
        if ep.event_types:
            scope.append(events.c.type.in_(list(ep.event_types)))
        known = sa.select(webhook_deliveries.c.id).where(webhook_deliveries.c.endpoint_id == ep.id,
                                                         webhook_deliveries.c.event_id == events.c.id)
        late = sa.select(*cols).where(*scope, events.c.id > ep.last_event_id - LOOKBACK,
                                      events.c.id <= ep.last_event_id, ~sa.exists(known))
        last = ep.last_event_id
        with transaction(state) as session:
            rows = list(session.execute(late).all())
            while True:
                fresh = list(session.execute(
                    sa.select(*cols).where(*scope, events.c.id > last).order_by(events.c.id).limit(batch_size)
                ).all())
                rows.extend(fresh)
                if fresh:
                    last = fresh[-1].id
                if len(fresh) < batch_size:
                    break
            if rows:
                due = now or utcnow()
                session.execute(insert(dialect, webhook_deliveries).on_conflict_do_nothing(
                    index_elements=["endpoint_id", "event_id"]), [
                    {"endpoint_id": ep.id, "tenant_id": ep.tenant_id, "event_id": r.id, "event_type": r.type,
                     "payload": _payload(r), "status": "pending", "attempts": 0, "next_attempt_at": due,
                     "created_at": utcnow()} for r in rows])
                made += len(rows)
            if last != ep.last_event_id:
                session.execute(sa.update(webhook_endpoints).where(webhook_endpoints.c.id == ep.id)
                                .values(last_event_id=last))
    return made


# -- delivering --------------------------------------------------------------------------------

def _lease(state: MailTrackState, delivery_id: int, due: dt.datetime, now: dt.datetime) -> bool:
    until = now + dt.timedelta(seconds=state.settings.webhook_timeout + LEASE_MARGIN)
    with transaction(state) as session:
        return session.execute(
            sa.update(webhook_deliveries)
            .where(webhook_deliveries.c.id == delivery_id, webhook_deliveries.c.status == "pending",
                   webhook_deliveries.c.next_attempt_at == due)
            .values(next_attempt_at=until)
        ).rowcount == 1


def _record(state: MailTrackState, row: Any, status: int | None, error: str | None, now: dt.datetime) -> None:
    schedule = state.settings.webhook_retry_schedule
    attempts = row.attempts + 1
    values: dict[str, Any] = {"attempts": attempts, "last_attempt_at": now, "last_status": status,
                              "last_error": error}
    if error is None:
        values.update(status="delivered", next_attempt_at=None)
    elif attempts > len(schedule):
        values.update(status="failed", next_attempt_at=None)
    else:
        values.update(next_attempt_at=now + dt.timedelta(seconds=schedule[attempts - 1]))
    with transaction(state) as session:
        session.execute(sa.update(webhook_deliveries).where(webhook_deliveries.c.id == row.id).values(**values))
        ep = webhook_endpoints.c
        if error is None:
            session.execute(sa.update(webhook_endpoints).where(ep.id == row.endpoint_id).values(failure_streak=0))
            return
        streak = session.execute(
            sa.update(webhook_endpoints).where(ep.id == row.endpoint_id)
            .values(failure_streak=ep.failure_streak + 1).returning(ep.failure_streak)
        ).scalar_one_or_none()
        if streak is not None and streak >= state.settings.webhook_disable_after:
            session.execute(sa.update(webhook_endpoints).where(ep.id == row.endpoint_id, ep.enabled.is_(True)).values(
                enabled=False, updated_at=now,
                disabled_reason=f"{streak} failed attempts in a row; last: {error}"))


def deliver_due(state: MailTrackState, now: dt.datetime | None = None, *, limit: int = 100) -> dict[str, int]:
    """POST up to ``limit`` due deliveries of enabled endpoints; count the outcomes."""
    now = now or utcnow()
    d, ep = webhook_deliveries.c, webhook_endpoints.c
    due = list(state.session.execute(
        sa.select(d.id, d.endpoint_id, d.event_id, d.payload, d.attempts, d.next_attempt_at, ep.url, ep.secret,
                  ep.previous_secret, ep.secret_rotated_at)
        .join(webhook_endpoints, ep.id == d.endpoint_id)
        .where(d.status == "pending", d.next_attempt_at <= now, ep.enabled.is_(True))
        .order_by(d.next_attempt_at, d.id).limit(limit)
    ).all())
    state.session.commit()
    counts = {"delivered": 0, "failed": 0}
    for row in due:
        if not _lease(state, row.id, row.next_attempt_at, now):
            continue  # another run has it
        msg_id, timestamp = event_msg_id(row.event_id), int(time.time())
        status, error = webhook_http.post(row.url, row.payload, {
            "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures(row.secret, row.previous_secret, row.secret_rotated_at, now,
                                            msg_id, timestamp, row.payload),
        }, state.settings.webhook_timeout, allow_private=state.settings.webhook_allow_private)
        _record(state, row, status, error, now)
        counts["delivered" if error is None else "failed"] += 1
    return counts


def run(state: MailTrackState, now: dt.datetime | None = None, *, limit: int = 100) -> dict[str, int]:
    """Collect, then deliver everything due (in batches of ``limit``)."""
    totals = {"collected": collect(state, now), "delivered": 0, "failed": 0}
    while True:
        counts = deliver_due(state, now, limit=limit)
        totals["delivered"] += counts["delivered"]
        totals["failed"] += counts["failed"]
        if counts["delivered"] + counts["failed"] < limit:
            return totals


__all__ = ["new_secret", "sign", "event_msg_id", "create_endpoint", "list_endpoints", "get_endpoint", "delete_endpoint",
           "enable_endpoint", "rotate_secret", "signatures", "SECRET_OVERLAP", "list_deliveries", "collect", "deliver_due", "run", "LOOKBACK"]
