"""Retention of the webhook logs, run by ``flask mailtrack purge --older-than DAYS`` after
the events (:func:`.privacy.purge`).

* Outbound webhook deliveries that are finished (``delivered``, or ``failed`` with the
  retries spent) and whose last attempt is older than the cutoff. Pending ones always stay.
  So do the deliveries of an endpoint's last :data:`.webhooks.LOOKBACK` event ids: the
  collector looks there for events without a delivery, and would send them again.
* ESP webhook receipts of events that matched no message (``kind = 'unmatched'``)
  received before the cutoff (a provider's retry of one that old is counted again).
* ESP replay nonces past :data:`.esp.store.NONCE_RETENTION` whatever the cutoff (the
  receiver already drops them when a new signed request comes; this also covers a
  provider that stopped sending).

Deliveries go in batches of ``batch_size`` rows, one short transaction each, so a large log
never holds a long lock; an interrupted purge is simply run again.
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from ..db import transaction
from ..errors import ValidationError
from ..inbound_models import webhook_receipts
from ..models import utcnow
from ..state import MailTrackState
from ..webhook_models import webhook_deliveries, webhook_endpoints
from .esp.store import NONCE_RETENTION
from .webhooks import LOOKBACK

FINISHED = ("delivered", "failed")


def purge_logs(state: MailTrackState, older_than_days: int, *, now: dt.datetime | None = None,
               batch_size: int = 5000) -> dict[str, int]:
    """Delete what the module docstring lists; the counts by kind:
    ``{"webhook_deliveries", "unmatched_receipts", "expired_nonces"}``."""
    if isinstance(older_than_days, bool) or not isinstance(older_than_days, int) or older_than_days < 0:
        raise ValidationError({"older_than": ["Must be a whole number of days >= 0."]})
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=older_than_days)
    d, ep = webhook_deliveries.c, webhook_endpoints.c
    collected_to = sa.select(ep.last_event_id).where(ep.id == d.endpoint_id).scalar_subquery()
    finished = sa.and_(d.status.in_(FINISHED), d.last_attempt_at < cutoff,
                       d.event_id <= collected_to - LOOKBACK)
    counts = {"webhook_deliveries": 0, "unmatched_receipts": 0, "expired_nonces": 0}
    while True:
        with transaction(state) as session:
            ids = list(session.execute(sa.select(d.id).where(finished).order_by(d.id).limit(batch_size)).scalars())
            if ids:
                counts["webhook_deliveries"] += session.execute(
                    sa.delete(webhook_deliveries).where(d.id.in_(ids), finished)).rowcount or 0
        if len(ids) < batch_size:
            break
    r = webhook_receipts.c
    with transaction(state) as session:
        counts["unmatched_receipts"] = session.execute(sa.delete(webhook_receipts).where(
            r.kind == "unmatched", r.received_at < cutoff)).rowcount or 0
        counts["expired_nonces"] = session.execute(sa.delete(webhook_receipts).where(
            r.kind == "nonce", r.received_at < now - NONCE_RETENTION)).rowcount or 0
    return counts


__all__ = ["purge_logs", "FINISHED"]
