"""CSV export of communication records, streamed row by row in constant memory.

The rows come from one SELECT (with the open and click counts as correlated aggregates)
read through a server-side cursor in batches (``stream_results`` + ``yield_per``), and each
row is written to the response as soon as it is formatted.

CSV injection (OWASP's advice): a text cell a spreadsheet could run as a formula is prefixed
with a single quote, namely one that starts with ``=``, ``+``, ``-``, ``@``, tab or CR, also
after leading whitespace (a spreadsheet trims spaces and no-break spaces) and in the
full-width or small forms of those signs (``＝``, ``﹦``...), which some spreadsheets read as
the ASCII ones. Separators: every text cell is enclosed in double quotes, and since a
spreadsheet that splits on ``;`` or tab (not this file's ``,``) may cut a cell there anyway,
a formula sign just after a ``;`` or tab inside a cell gets a single quote too
(``x;=HYPERLINK(...)`` is exported as ``x;'=HYPERLINK(...)``).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import re
import unicodedata
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
_FORMULA_SIGNS = frozenset("=+-@")
#: Stripped before looking at the first sign: what ``str.strip`` takes for whitespace (incl.
#: no-break and ideographic spaces) and the zero-width characters a spreadsheet ignores too.
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"
#: A formula sign (ASCII, full-width or small form) after a ``;`` or tab and optional
#: whitespace or double quotes.
_AFTER_SEPARATOR = re.compile(
    r"([;\t][\s\"\u200b\u200c\u200d\u2060\ufeff]*)(?=[=+\-@\uff1d\uff0b\uff0d\uff20\ufe66\ufe62\ufe63\ufe6b])")
BATCH = 500


def neutralise(value: Any) -> Any:
    """A text cell a spreadsheet could evaluate, made inert by a leading single quote."""
    if not isinstance(value, str) or not value:
        return value
    if ";" in value or "\t" in value:
        value = _AFTER_SEPARATOR.sub("\\1'", value)
    if value[0] in "\t\r":
        return "'" + value
    rest = value.lstrip().lstrip(_INVISIBLE).lstrip()
    if rest and (rest[0] in _FORMULA_SIGNS or unicodedata.normalize("NFKC", rest[0])[:1] in _FORMULA_SIGNS):
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
    """Yield the header line, then one CSV line per row (RFC 4180 quoting, CRLF; every text
    cell quoted, numbers bare)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC)

    def line(cells: Sequence[Any]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        return buffer.getvalue()

    yield ",".join(HEADER) + "\r\n"  # plain names: nothing to quote
    with (state.reports_engine or state.engine).connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=BATCH).execute(query)
        for row in result:
            yield line(_cells(row))


__all__ = ["HEADER", "export_query", "stream_csv", "neutralise"]
