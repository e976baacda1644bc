"""Reading one received mail: what it is and which sent message it names. No database here.

- A **DSN** (RFC 3464 ``multipart/report; report-type=delivery-status``): per recipient,
  ``Action: failed`` is a bounce, hard for a ``5.x.x`` status and soft for ``4.x.x``;
  ``Action: delivered`` is a delivery; ``delayed`` (a warning: the server keeps trying) and
  ``relayed``/``expanded`` are ignored. The sent message is named by the original headers
  the report carries (``message/rfc822`` or ``text/rfc822-headers``).
- An **ARF report** (RFC 5965 ``report-type=feedback-report``): a complaint.
- **Other bounces** (Exim's plain-text ones, Exchange, qmail and the rest): GNU Mailman's
  detectors (``flufl.bounce``) find the failed recipients, permanent or temporary; the
  status code and diagnostic are taken from the text where it has them. Temporary-only
  findings are delay warnings and ignored.
- An **auto-reply** (RFC 3834 ``Auto-Submitted`` other than ``no``, ``X-Autoreply``,
  ``X-Autorespond``, ``Precedence: auto_reply/bulk/junk``, out-of-office subjects):
  never a person's reply.
- A **reply**: anything else with ``In-Reply-To``/``References``; its own text (without the
  quoted original) comes from ``mail-parser-reply``.

Bad input raises :class:`Unreadable` with a short reason (``malformed``, ``too-deep``), which
the caller counts; nothing else escapes for bad mail.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from typing import Any

from ..errors import ConfigurationError
from ..textpart import html_to_text
from .matching import message_ids_in

#: Deepest MIME nesting read (real mail nests a few levels; a DSN of a forwarded mail six).
MAX_MIME_DEPTH = 20
#: Most MIME parts read in one mail.
MAX_MIME_PARTS = 500
#: Longest diagnostic text kept in an event's details.
MAX_DIAGNOSTIC = 1000
#: Longest body text or HTML kept of a reply (characters).
MAX_BODY_CHARS = 256 * 1024
#: Characters of a reply's text handed to the reply parser (the reply itself comes first).
REPLY_SCAN_CHARS = 32 * 1024
#: Languages whose reply headers ("On ... wrote:", "Am ... schrieb ...:") are recognised.
REPLY_LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pl", "sv", "da", "cs", "ja", "ko", "zh")

#: An enhanced status code (RFC 3463), not a piece of an IP address or version number.
_STATUS = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?![\w.])")
_SMTP_CODE = re.compile(r"^\s*([45]\d\d)[\s-]", re.MULTILINE)
_QUOTED_MESSAGE_ID = re.compile(r"^[ \t>]*Message-ID:[ \t]*(<[^<>\s]{1,250}>)", re.IGNORECASE | re.MULTILINE)
_DAEMONS = ("mailer-daemon", "postmaster", "mail-daemon", "mail-delivery-subsystem", "mailerdaemon")
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (status notification|failure|has failed)|mail delivery failed|returned mail|"
    r"failure notice|undelivered mail|nondeliverable|non-delivery|delivery problem", re.IGNORECASE)
_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort|svar)|autosvar|automatisch(e)? antwoord|"
    r"abwesenheit(snotiz)?|out of (the )?office|r[ée]ponse automatique|absence|risposta automatica|"
    r"respuesta autom[áa]tica|fuera de la oficina|odpowied[źz] automatyczna|"
    r"vacation|on vacation|frånvaro|afwezig)\b", re.IGNORECASE)
_BLANK_RUNS = re.compile(r"\n{4,}")
_VERP_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "X-Rcpt-To", "To")


class Unreadable(Exception):
    """The mail cannot be read; ``reason`` is what the caller counts it as."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Reading:
    """What a received mail is. ``kind`` is ``None`` for mail that is none of the kinds."""

    kind: str | None
    #: Message-IDs that may name the sent message, likeliest first.
    message_ids: list[str] = field(default_factory=list)
    #: Header values whose addresses may carry our VERP tag.
    verp_sources: list[str] = field(default_factory=list)
    #: Lower-cased addresses the report is about (empty: unknown).
    recipients: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: The received mail's identity: its Message-ID, else a digest of its bytes.
    dedup: tuple[str, str] = ("", "")
    date: dt.datetime | None = None
    #: 002's inbound fields, for a reply.
    reply: dict[str, Any] | None = None
    #: A DSN's outcome per recipient, ``(addresses, kind, details)``, failures first: the
    #: caller picks the contact's (a report may also name a message's cc recipients).
    per_recipient: list[tuple[list[str], str, dict[str, Any]]] = field(default_factory=list)
    reason: str = ""


def require_libraries() -> None:
    """Import the inbound extra's libraries, or say which extra installs them."""
    try:
        import flufl.bounce  # noqa: F401
        import mailparser_reply  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"Reading received mail needs the 'inbound' extra: pip install 'crm_mailtrack[inbound]' ({exc})."
        ) from None


def header(msg: Message, name: str) -> str:
    """A header's value, RFC 2047 words decoded; ``""`` when absent or undecodable."""
    value = msg.get(name)
    if value is None:
        return ""
    try:
        return str(make_header(decode_header(str(value)))).strip()
    except (UnicodeError, LookupError, ValueError, TypeError, AssertionError):
        return str(value).strip()


def _walk(msg: Message) -> list[Message]:
    """Every part, depth-first, refusing absurd nesting or part counts (iterative: no
    recursion to exhaust)."""
    parts: list[Message] = []
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        if depth > MAX_MIME_DEPTH:
            raise Unreadable("too-deep", f"MIME parts nested over {MAX_MIME_DEPTH} levels")
        parts.append(part)
        if len(parts) > MAX_MIME_PARTS:
            raise Unreadable("malformed", f"over {MAX_MIME_PARTS} MIME parts")
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend((child, depth + 1) for child in reversed(payload) if isinstance(child, Message))
    return parts


def _text(part: Message) -> str:
    """A leaf part's content as text (transfer encoding and charset undone, errors replaced)."""
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return raw.decode(charset, errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")


def _date(msg: Message) -> dt.datetime | None:
    try:
        value = parsedate_to_datetime(header(msg, "Date"))
    except (TypeError, ValueError, IndexError):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def _address_field(value: str) -> str:
    """``rfc822; ann@example.com`` -> ``ann@example.com`` (lower-cased)."""
    _, _, addr = value.rpartition(";")
    return addr.strip().strip("<>").lower()


def _status_type(status: str) -> str:
    return "soft" if status.startswith("4") else "hard"


def _original_headers(parts: list[Message]) -> Message | None:
    """The headers of the sent message a report or bounce carries."""
    for part in parts:
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers"):
            return HeaderParser(policy=compat32).parsestr(_text(part), headersonly=True)
    return None


def _report_blocks(part: Message) -> list[Message]:
    """The field blocks of a ``message/delivery-status`` or ``message/feedback-report``
    part: the email package parses the first kind into blocks; the rest is text."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    blocks = re.split(r"\r?\n[ \t]*\r?\n", _text(part).strip())
    return [HeaderParser(policy=compat32).parsestr(block) for block in blocks if block.strip()]


def _candidates(msg: Message, original: Message | None, body: str = "") -> list[str]:
    ids: list[str] = []
    if original is not None:
        ids += message_ids_in(header(original, "Message-ID"))
    ids += _QUOTED_MESSAGE_ID.findall(body[:200_000])
    ids += message_ids_in(header(msg, "In-Reply-To"))
    ids += list(reversed(message_ids_in(header(msg, "References"))))
    return list(dict.fromkeys(ids))


def _verp_sources(msg: Message, original: Message | None) -> list[str]:
    values = [v for name in _VERP_HEADERS for v in (msg.get_all(name) or []) if isinstance(v, str)]
    if original is not None:
        values += [v for v in (original.get_all("Return-Path") or []) if isinstance(v, str)]
    return values


def _dsn(msg: Message, parts: list[Message], status_part: Message) -> Reading:
    blocks = _report_blocks(status_part)
    per_message, per_recipient = (blocks[0], blocks[1:]) if blocks else (None, [])
    reporting = _address_field(header(per_message, "Reporting-MTA")) if per_message is not None else ""
    failed, delivered, recipients = [], [], []
    for block in per_recipient:
        action = header(block, "Action").lower()
        final = _address_field(header(block, "Final-Recipient"))
        original_rcpt = _address_field(header(block, "Original-Recipient"))
        recipients += [a for a in (original_rcpt, final) if a]
        status = (_STATUS.search(header(block, "Status")) or _STATUS.search(header(block, "Diagnostic-Code")))
        entry = {"addresses": [a for a in (original_rcpt, final) if a],
                 "recipient": original_rcpt or final, "status": status.group(0) if status else None,
                 "diagnostic": re.sub(r"\s+", " ", header(block, "Diagnostic-Code"))[:MAX_DIAGNOSTIC] or None,
                 "action": action, "reportingMta": reporting or None}
        if action == "failed":
            failed.append(entry)
        elif action == "delivered":
            delivered.append(entry)
    original = _original_headers(parts)
    reading = Reading(kind=None, message_ids=_candidates(msg, original),
                      verp_sources=_verp_sources(msg, original), recipients=list(dict.fromkeys(recipients)))
    for entry in failed:
        status = entry["status"] or "5.0.0"
        details = {"bounceType": _status_type(status), **{k: v for k, v in entry.items() if v}, "status": status}
        reading.per_recipient.append((entry["addresses"], "bounce", details))
    for entry in delivered:
        reading.per_recipient.append((entry["addresses"], "delivered", {k: v for k, v in entry.items() if v}))
    if reading.per_recipient:
        _, reading.kind, reading.details = reading.per_recipient[0]
    else:
        reading.reason = "a delay warning or relay notice (no failed or delivered recipient)"
    for _, _, details in reading.per_recipient:
        details.pop("addresses", None)
    return reading


def _arf(msg: Message, parts: list[Message], report: Message | None) -> Reading:
    fields = _report_blocks(report)[0] if report is not None and _report_blocks(report) else Message()
    original = _original_headers(parts)
    rcpt = _address_field(header(fields, "Original-Rcpt-To"))
    details = {"feedbackType": header(fields, "Feedback-Type").lower() or "abuse",
               "userAgent": header(fields, "User-Agent")[:200] or None,
               "reportedBy": parseaddr(header(msg, "From"))[1].rpartition("@")[2].lower() or None}
    return Reading(kind="complaint", message_ids=_candidates(msg, original),
                   verp_sources=_verp_sources(msg, original), recipients=[rcpt] if rcpt else [],
                   details={k: v for k, v in details.items() if v})


def _is_daemon(msg: Message) -> bool:
    sender = parseaddr(header(msg, "From"))[1].lower()
    return (sender.partition("@")[0] in _DAEMONS or header(msg, "Return-Path").strip() == "<>"
            or bool(msg.get("X-Failed-Recipients")) or bool(_BOUNCE_SUBJECT.search(header(msg, "Subject"))))


def _plain_bounce(msg: Message, parts: list[Message]) -> Reading:
    """A bounce in no standard format: Mailman's detectors, then the text for its codes."""
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # noqa: BLE001 - a detector's bug on odd input is not our caller's problem
        temporary, permanent = frozenset(), frozenset()
    text = "\n".join(_text(p) for p in parts if p.get_content_maintype() == "text")[:200_000]
    original = _original_headers(parts)
    found = sorted(a.decode("utf-8", "replace").lower() for a in (permanent or temporary))
    reading = Reading(kind=None, message_ids=_candidates(msg, original, text),
                      verp_sources=_verp_sources(msg, original), recipients=found)
    if not permanent:
        reading.reason = ("a delay warning (temporary failures only)" if temporary
                          else "bounce-like mail in which no failed recipient was found")
        return reading
    status = _STATUS.search(text)
    code = _SMTP_CODE.search(text)
    line = next((ln.strip() for ln in text.splitlines()
                 if (status and status.group(0) in ln) or (code and code.group(1) in ln)), "")
    value = status.group(0) if status else None
    kind = _status_type(value) if value else ("soft" if code and code.group(1).startswith("4") else "hard")
    reading.kind = "bounce"
    reading.details = {k: v for k, v in {
        "bounceType": kind, "status": value, "smtpCode": code.group(1) if code else None,
        "diagnostic": re.sub(r"\s+", " ", line)[:MAX_DIAGNOSTIC] or None, "recipient": found[0],
        "detector": "flufl.bounce"}.items() if v}
    return reading


def auto_reply_reason(msg: Message) -> str | None:
    """Why ``msg`` is an automatic answer (RFC 3834 and the common non-standard marks), or
    ``None`` for a person's mail."""
    auto = header(msg, "Auto-Submitted").lower()
    if auto and not auto.startswith("no"):
        return f"auto-submitted: {auto.split(';')[0]}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Auto-Reply", "X-Mail-Autoreply",
                 "X-Vacation"):
        if msg.get(name):
            return name.lower()
    precedence = (header(msg, "Precedence") or header(msg, "X-Precedence")).lower()
    if precedence in ("auto_reply", "bulk", "junk"):
        return f"precedence: {precedence}"
    if header(msg, "X-Autogenerated").lower() == "reply" or msg.get("X-MS-Exchange-Inbox-Rules-Loop"):
        return "autogenerated"
    if _AUTO_SUBJECT.search(header(msg, "Subject")):
        return "subject"
    return None


def _bodies(parts: list[Message]) -> tuple[str | None, str | None]:
    """The first inline text/plain and text/html parts (not attachments, not quoted mails)."""
    text = html = None
    for part in parts:
        if part.get_content_disposition() == "attachment" or part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain" and text is None:
            text = _text(part)[:MAX_BODY_CHARS]
        elif ctype == "text/html" and html is None:
            html = _text(part)[:MAX_BODY_CHARS]
        elif ctype == "message/rfc822":
            break  # a forwarded or quoted mail: not this mail's own body
    return text, html


def reply_text(body: str) -> str:
    """The reply's own text, without the quoted original, signature or disclaimer."""
    from mailparser_reply import EmailReplyParser

    try:
        # the reply's own text is at the top; a bound keeps the parser's regexes linear in practice
        latest = EmailReplyParser(languages=list(REPLY_LANGUAGES)).parse_reply(text=_tidy(body[:REPLY_SCAN_CHARS]))
    except Exception:  # noqa: BLE001 - regex-heavy code on odd text: keep the whole body
        latest = None
    return _drop_trailing_quote((latest if isinstance(latest, str) and latest.strip() else body).strip())


def _tidy(text: str) -> str:
    """Trailing blanks cut and runs of blank lines shortened: the reply parser's regexes take
    quadratic time on long runs of blank lines (measured: 8,000 newlines, 6 s)."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return _BLANK_RUNS.sub("\n\n\n", "\n".join(lines))


def _drop_trailing_quote(text: str) -> str:
    """Cut a quoted block (``>`` lines) at the end and the attribution line just above it
    ending in ``:`` (``El lun, ... escribió:``), for the attribution forms the reply parser
    does not know."""
    lines = text.splitlines()
    end = len(lines)
    while end and (lines[end - 1].lstrip().startswith(">") or not lines[end - 1].strip()):
        end -= 1
    if end == len(lines) or not any(ln.lstrip().startswith(">") for ln in lines[end:]):
        return text
    if end and lines[end - 1].rstrip().endswith(":"):
        end -= 1
    return "\n".join(lines[:end]).strip() or text


def _reply_fields(msg: Message, parts: list[Message]) -> dict[str, Any]:
    text, html = _bodies(parts)
    if text is None and html is not None:
        text = html_to_text(html)
    name, addr = parseaddr(header(msg, "From"))
    mid = message_ids_in(header(msg, "Message-ID"))
    return {
        "from_email": addr.lower()[:320] or None, "from_name": name[:255] or None,
        "subject": header(msg, "Subject")[:2000] or None,
        "recipients": [a.lower() for _, a in getaddresses([header(msg, "To")]) if a][:100],
        "cc": [a.lower() for _, a in getaddresses([header(msg, "Cc")]) if a][:100],
        "in_reply_to": (message_ids_in(header(msg, "In-Reply-To")) or [None])[0],
        "internet_message_id": mid[0] if mid else None,
        "body_text": text, "body_html": html, "reply_text": reply_text(text or "")[:MAX_BODY_CHARS] or None,
    }


def read(raw: bytes) -> Reading:
    """What ``raw`` (one RFC 5322 message) is; :class:`Unreadable` for mail that cannot be read."""
    if not isinstance(raw, (bytes, bytearray)) or not raw.strip():
        raise Unreadable("malformed", "empty")
    try:
        msg = message_from_bytes(bytes(raw), policy=compat32)
        parts = _walk(msg)
    except Unreadable:
        raise
    except (RecursionError, MemoryError) as exc:
        raise Unreadable("too-deep", type(exc).__name__) from None
    except Exception as exc:  # noqa: BLE001 - the parser's failure on hostile bytes is "malformed"
        raise Unreadable("malformed", f"{type(exc).__name__}: {exc}") from None
    if not msg.keys() or (msg.get("From") is None and msg.get("Message-ID") is None
                          and msg.get("Content-Type") is None):
        raise Unreadable("malformed", "no message headers")
    reading = _classify(msg, parts)
    own = message_ids_in(header(msg, "Message-ID"))
    reading.dedup = ("mail", own[0]) if own else ("mail-sha256", hashlib.sha256(bytes(raw)).hexdigest())
    reading.date = _date(msg)
    return reading


def _classify(msg: Message, parts: list[Message]) -> Reading:
    ctype = msg.get_content_type()
    report_type = str(msg.get_param("report-type") or "").lower() if ctype == "multipart/report" else ""
    status_part = next((p for p in parts if p.get_content_type() == "message/delivery-status"), None)
    feedback = next((p for p in parts if p.get_content_type() == "message/feedback-report"), None)
    # a report part counts in a report (or a daemon's mail), not in a person's forward of one
    reported = ctype == "multipart/report" or _is_daemon(msg) or report_type == "feedback-report"
    if report_type == "feedback-report" or (feedback is not None and reported):
        return _arf(msg, parts, feedback)
    if status_part is not None and reported:
        return _dsn(msg, parts, status_part)
    auto = auto_reply_reason(msg)
    if _is_daemon(msg):
        bounce = _plain_bounce(msg, parts)
        if bounce.kind is not None or auto is None:
            return bounce
    candidates = _candidates(msg, None)
    if auto is not None:
        return Reading(kind="auto_reply", message_ids=candidates, verp_sources=_verp_sources(msg, None),
                       details={k: v for k, v in {"reason": auto, "subject": header(msg, "Subject")[:200]}.items() if v})
    if not candidates:
        return Reading(kind=None, reason="not a reply, report or bounce (no In-Reply-To or References)")
    return Reading(kind="reply", message_ids=candidates, reply=_reply_fields(msg, parts))


__all__ = ["Reading", "Unreadable", "read", "require_libraries", "auto_reply_reason", "reply_text", "header",
           "MAX_MIME_DEPTH", "MAX_MIME_PARTS", "REPLY_LANGUAGES"]
