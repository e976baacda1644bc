"""Preparing a campaign: many tracked messages from one template, stored in bulk.

``track_message`` parses the HTML, validates every destination and builds every link for
one message. A campaign sends the same HTML to thousands of recipients, where only the
signed tokens differ (they carry the message id). :func:`track_messages` therefore runs the
very same :func:`~.messages.instrument` once, with a signer that writes numbered
placeholders instead of tokens and records what each would have signed; each recipient then
costs only its own signatures and one string join. Rows are written with executemany
(``insertmanyvalues`` on PostgreSQL) on the host's session, in one transaction.

Where that is not safe it is not done: a recipient with its own ``html`` is instrumented on
its own, and so is every recipient when the template output carries the message id anywhere
but inside a signed token.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import html as html_lib
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from ..db import chunks, transaction
from ..errors import ValidationError
from ..models import MessageStatus, messages, utcnow
from ..state import MailTrackState
from ..tokens import Purpose, fits
from .common import UNSET, check_lengths, tenant_key
from .messages import _EMAIL, _EXTRA_FIELDS, instrument, new_message_id, store_links

#: Per-recipient keys besides ``contact_id`` and ``email``.
RECIPIENT_FIELDS = frozenset({
    "subject", "html", "text", "related_entity_type", "related_entity_id", "variables",
    "conversation_id", "cc", "bcc",
})
_COMMON_FIELDS = frozenset({"campaign_id", "template_id", "template_name", "type", "related_entity_type",
                            "related_entity_id"}) | _EXTRA_FIELDS


class _RecordingSigner:
    """Stands in for the token signer while the template is instrumented: each ``dumps``
    returns a placeholder and remembers (purpose, payload).

    A click token is also signed for real, once per link of the template (never per
    recipient): when it is too long for the click route (:func:`~crm_mailtrack.tokens.fits`)
    it is returned as it is, unrecorded, so ``instrument`` leaves that link untracked as it
    does for one message."""

    def __init__(self, nonce: str, real: Any) -> None:
        self.nonce = nonce
        self.real = real
        self.calls: list[tuple[Purpose, Any]] = []

    def dumps(self, purpose: Purpose, payload: Any) -> str:
        if purpose is Purpose.CLICK:
            token: str = self.real.dumps(purpose, payload)
            if not fits(token):
                return token
        self.calls.append((purpose, payload))
        return f"{self.nonce}x{len(self.calls) - 1}x"


class _Template:
    """The instrumented HTML and headers of a template, split around its token slots."""

    def __init__(self, state: MailTrackState, html: str | None, *, track_opens: bool, track_clicks: bool,
                 text: str | None) -> None:
        self.state = state
        nonce = "mtslot" + secrets.token_hex(8)
        placeholder_id = "mtmsg" + secrets.token_hex(10)
        while nonce in (html or "") or placeholder_id in (html or ""):  # pragma: no cover - 2**-64
            nonce, placeholder_id = "mtslot" + secrets.token_hex(8), "mtmsg" + secrets.token_hex(10)
        recorder = _RecordingSigner(nonce, state.signer)
        fake = dataclasses.replace(state, signer=recorder)
        out_html, headers, self.tracked, self.text = instrument(
            fake, placeholder_id, html, track_opens=track_opens, track_clicks=track_clicks, text=text
        )
        self.calls = recorder.calls
        slot = re.compile(re.escape(nonce) + r"x(\d+)x")
        # Safe only if the message id appears nowhere but inside the (signed) payloads, and
        # the text part (destinations, never a token) holds neither: every recipient shares it.
        texts = [out_html or "", *(str(v) for v in headers.values())]
        shared_text = self.text or ""
        self.safe = (not any(placeholder_id in t for t in texts)
                     and placeholder_id not in shared_text and nonce not in shared_text
                     and all(_only_placeholder(payload, placeholder_id) for _, payload in self.calls))
        self.placeholder_id = placeholder_id
        # Per recipient only the tokens are new: what to sign and where it goes are set here.
        self.jobs = [(purpose, _filler(payload, placeholder_id)) for purpose, payload in self.calls]
        self.html_format = None if out_html is None else _format(slot.split(out_html))
        self.header_formats = {k: _format(slot.split(v)) for k, v in headers.items()}

    def render(self, message_id: str) -> tuple[str | None, dict[str, str]] | None:
        """The HTML and headers for ``message_id``; ``None`` when one of its tokens is too
        long for the route that reads it (a compressed payload's length varies a little with
        the id): the caller instruments that recipient on its own."""
        dumps = self.state.signer.dumps
        # tokens are URL-safe base64 and '.': escaping is a no-op, kept for the contract
        tokens = [html_lib.escape(dumps(purpose, fill(message_id)), quote=True) for purpose, fill in self.jobs]
        if tokens and not fits(max(tokens, key=len)):
            return None
        return (
            None if self.html_format is None else self.html_format.format(*tokens),
            {k: fmt.format(*tokens) for k, fmt in self.header_formats.items()},
        )


def _only_placeholder(payload: Any, pid: str) -> bool:
    if isinstance(payload, str):
        return payload == pid or pid not in payload
    if isinstance(payload, (list, tuple)):
        return all(_only_placeholder(p, pid) for p in payload)
    return not isinstance(payload, Mapping)  # dict payloads: not handled, instrument one by one


def _substitute(payload: Any, pid: str, message_id: str) -> Any:
    if payload == pid:
        return message_id
    if isinstance(payload, (list, tuple)):
        return [_substitute(p, pid, message_id) for p in payload]
    return payload


def _filler(payload: Any, pid: str) -> Callable[[str], Any]:
    """A function of the message id giving ``payload`` with the placeholder id replaced
    (what :func:`_substitute` gives, with the usual flat payloads prepared once)."""
    if isinstance(payload, str) and payload == pid:
        return lambda message_id: message_id
    if isinstance(payload, list) and not any(isinstance(p, (list, tuple)) for p in payload):
        where = [i for i, p in enumerate(payload) if p == pid]

        def fill(message_id: str) -> list[Any]:
            out = payload.copy()
            for i in where:
                out[i] = message_id
            return out

        return fill
    return lambda message_id: _substitute(payload, pid, message_id)


def _format(parts: list[str]) -> str:
    """A :meth:`str.format` template from ``parts``, which alternate text and slot numbers
    (``re.split`` with one group): slot ``n`` becomes field ``{n}``, braces in text are doubled."""
    return "".join(
        "{" + str(int(part)) + "}" if i % 2 else part.replace("{", "{{").replace("}", "}}")
        for i, part in enumerate(parts)
    )


def track_messages(
    state: MailTrackState,
    recipients: Iterable[Mapping[str, Any]],
    *,
    subject: str,
    html: str | None = None,
    text: str | None = None,
    scheduled_at: dt.datetime | None = None,
    track_opens: bool | None = None,
    track_clicks: bool | None = None,
    tenant_id: Any = UNSET,
    commit: bool = True,
    batch_size: int = 1000,
    **common: Any,
) -> list[str]:
    """Store one tracked message per recipient (``{"contact_id", "email", ...}``) and their
    links; return the message ids in recipient order. All or nothing: every recipient is
    validated before anything is written. Keywords as :func:`~.messages.track_message`;
    a recipient may override ``subject``, ``html``, ``text``, ``related_entity_*``,
    ``variables``, ``conversation_id``, ``cc``, ``bcc``. Without ``text`` (for everyone or
    for a recipient), each message's text part is derived from its HTML, as
    ``track_message`` does: a template's is derived once and shared."""
    unknown = sorted(set(common) - _COMMON_FIELDS)
    if unknown:
        raise TypeError(f"track_messages() got unexpected keyword arguments: {', '.join(unknown)}")
    recipients = list(recipients)
    _validate(recipients, common)
    track_opens = state.track_opens if track_opens is None else bool(track_opens)
    track_clicks = state.track_clicks if track_clicks is None else bool(track_clicks)
    if scheduled_at is not None and scheduled_at.tzinfo is None:
        scheduled_at = scheduled_at.replace(tzinfo=dt.timezone.utc)
    tenant = tenant_key(state, tenant_id)
    campaign_id = None if common.get("campaign_id") is None else str(common["campaign_id"])
    template = _Template(state, html, track_opens=track_opens, track_clicks=track_clicks, text=text)
    now = utcnow()
    status = (MessageStatus.SCHEDULED if scheduled_at else MessageStatus.PENDING).value
    base = {name: None for name in _COMMON_FIELDS}
    base.update({k: (None if v is None else v) for k, v in common.items()})
    base["campaign_id"] = campaign_id
    if base.get("related_entity_id") is not None:
        base["related_entity_id"] = str(base["related_entity_id"])
    base.update(tenant_id=tenant, text=template.text, subject=subject or "", scheduled_at=scheduled_at, status=status,
                track_opens=track_opens, track_clicks=track_clicks, created_at=now, updated_at=now)
    tracked: dict[str, str] = dict(template.tracked)
    rows: list[dict[str, Any]] = []
    ids: list[str] = []
    for r in recipients:
        message_id = new_message_id()
        own_html = r.get("html", html)
        row = dict(base)
        rendered = None if "html" in r or not template.safe else template.render(message_id)
        if rendered is None:
            out_html, headers, own_tracked, row["text"] = instrument(
                state, message_id, own_html, track_opens=track_opens, track_clicks=track_clicks, text=text
            )
            tracked.update(own_tracked)
        else:
            out_html, headers = rendered
        row.update(id=message_id, contact_id=str(r["contact_id"]), email=r["email"], html=out_html,
                   original_html=own_html, headers=headers)
        for key in RECIPIENT_FIELDS - {"html"}:
            if key in r:
                row[key] = r[key] if key != "related_entity_id" or r[key] is None else str(r[key])
        rows.append(row)
        ids.append(message_id)
    _store(state, tenant, campaign_id, rows, tracked, batch_size=batch_size, commit=commit)
    return ids


def _validate(recipients: list[Mapping[str, Any]], common: Mapping[str, Any]) -> None:
    errors: dict[str, list[str]] = {}
    for i, r in enumerate(recipients):
        email, contact_id = r.get("email"), r.get("contact_id")
        if not isinstance(email, str) or not _EMAIL.match(email):
            errors[f"recipients[{i}].email"] = ["Not a valid email address."]
        if contact_id is None or str(contact_id) == "":
            errors[f"recipients[{i}].contact_id"] = ["Missing data for required field."]
        extra = sorted(set(r) - RECIPIENT_FIELDS - {"contact_id", "email"})
        if extra:
            errors[f"recipients[{i}]"] = [f"Unknown field(s): {', '.join(extra)}."]
        try:
            check_lengths(messages, **{k: v for k, v in r.items()
                                       if k in messages.c and k != "contact_id" and isinstance(v, str)},
                          contact_id=str(contact_id))
        except ValidationError as exc:
            for field, msgs in exc.errors.items():
                errors[f"recipients[{i}].{field}"] = msgs
    try:
        check_lengths(messages, **{k: v for k, v in common.items() if isinstance(v, str)})
    except ValidationError as exc:
        errors.update(exc.errors)
    if errors:
        raise ValidationError(errors)


def _store(state: MailTrackState, tenant: str, campaign_id: str | None, rows: list[dict[str, Any]],
           tracked: dict[str, str], *, batch_size: int, commit: bool) -> None:
    with transaction(state, commit=commit) as session:
        for chunk in chunks(rows, batch_size):
            session.execute(sa.insert(messages), chunk)
        store_links(state, tenant, campaign_id, tracked)


__all__ = ["track_messages", "RECIPIENT_FIELDS"]
