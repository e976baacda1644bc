"""CSV export of communication records, streamed row by row in constant memory.

The rows come from one SELECT (with the open and click counts as correlated aggregates)
read through a server-side cursor in batches (``stream_results`` + ``yield_per``), and each
row is written to the response as soon as it is formatted. Cells that a spreadsheet would
run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or CR) are prefixed with a
single quote (OWASP's advice for CSV injection).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ..models import event_rollups, events, messages
from ..state import MailTrackState
from .communications import conditions, order_by

HEADER = (
    "id", "created", "sentAt", "scheduledAt", "status", "contactId", "recipient", "subject",
    "type", "templateId", "templateName", "campaignId", "relatedEntityType", "relatedEntityId",
    "conversationId", "senderEmail", "errorMessage", "openCount", "opened", "clickCount",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
BATCH = 500


def neutralise(value: Any) -> Any:
    """A text cell a spreadsheet would evaluate, made inert by a leading single quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _iso(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def export_query(tenant: str, *, filters: Mapping[str, Any] | None = None, search: Sequence[str] | None = None,
                 sort: Sequence[tuple[str, bool]] | None = None, include_bots: bool = False) -> sa.Select[Any]:
    """The export's SELECT: same filters and ordering as dynamic search (validated here,
    before any byte is streamed)."""
    human = [] if include_bots else [events.c.is_machine.is_(False)]

    rolled_human = [] if include_bots else [event_rollups.c.is_machine.is_(False)]

    def count_of(*types: str) -> sa.ColumnElement[Any]:
        """Raw events plus those a purge rolled up."""
        raw = (sa.select(sa.func.count()).select_from(events)
               .where(events.c.message_id == messages.c.id, events.c.type.in_(types), *human)
               .scalar_subquery())
        rolled = (sa.select(sa.func.coalesce(sa.func.sum(event_rollups.c.count), 0))
                  .where(event_rollups.c.message_id == messages.c.id,
                         event_rollups.c.tenant_id == messages.c.tenant_id,
                         event_rollups.c.type.in_(types), *rolled_human)
                  .scalar_subquery())
        return raw + rolled

    return sa.select(
        messages.c.id, messages.c.created_at, messages.c.sent_at, messages.c.scheduled_at,
        messages.c.status, messages.c.contact_id, messages.c.email, messages.c.subject, messages.c.type,
        messages.c.template_id, messages.c.template_name, messages.c.campaign_id,
        messages.c.related_entity_type, messages.c.related_entity_id, messages.c.conversation_id,
        messages.c.sender_email, messages.c.error_message,
        count_of("open").label("open_count"), count_of("click").label("click_count"),
    ).where(*conditions(tenant, filters, search)).order_by(*order_by(sort))


def _cells(row: Any) -> list[Any]:
    opened = row.open_count > 0 or row.click_count > 0  # a click implies an open
    values = [
        row.id, _iso(row.created_at), _iso(row.sent_at), _iso(row.scheduled_at), row.status,
        row.contact_id, row.email, row.subject, row.type, row.template_id, row.template_name,
        row.campaign_id, row.related_entity_type, row.related_entity_id, row.conversation_id,
        row.sender_email, row.error_message, int(row.open_count), "true" if opened else "false",
        int(row.click_count),
    ]
    return [neutralise("" if v is None else v) for v in values]


def stream_csv(state: MailTrackState, query: sa.Select[Any]) -> Iterator[str]:
    """Yield the header line, then one CSV line per row (RFC 4180 quoting, CRLF)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(cells: Sequence[Any]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        return buffer.getvalue()

    yield line(HEADER)
    with state.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=BATCH).execute(query)
        for row in result:
            yield line(_cells(row))


__all__ = ["HEADER", "export_query", "stream_csv", "neutralise"]
