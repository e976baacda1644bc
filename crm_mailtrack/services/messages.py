"""Outbound messages: storing them and instrumenting their HTML and headers."""
from __future__ import annotations

import datetime as dt
import re
import secrets
from typing import Any


from ..db import dialect_name, insert, transaction
from ..errors import NotFound, ValidationError
from ..instrument import (
    HONEYPOT_TARGET,
    append_pixel,
    apply_utm,
    honeypot_tag,
    link_id,
    rewrite_links,
    rewrite_links_and_text,
    validate_destination,
)
from ..models import Message, MessageStatus, campaign_links, links, messages, utcnow
from ..state import MailTrackState
from ..textpart import html_to_text
from ..tokens import MAX_TOKEN_LENGTH, Purpose, fits
from .common import UNSET, check_lengths, log, tenant_key

_EMAIL = re.compile(r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+$")


def new_message_id() -> str:
    """Random, not sequential: a message id never reveals how many messages exist."""
    return secrets.token_hex(12)


def click_url(state: MailTrackState, message_id: str, url: str, *, root: str | None = None) -> str:
    """The signed click URL of ``url`` for the message; ``url`` itself (validated, not
    tracked) when its token would be too long for the click route (:func:`untracked`)."""
    dest = validate_destination(url)
    token = state.signer.dumps(Purpose.CLICK, [message_id, dest])
    if not fits(token):
        untracked(dest, token)
        return dest
    return f"{root or state.external_root()}/t/c/{token}"


def untracked(dest: str, token: str) -> None:
    """Log (warning, logger ``crm_mailtrack``) a link left untracked because its click token
    is longer than :data:`~crm_mailtrack.tokens.MAX_TOKEN_LENGTH`, the most the click route
    reads: a link to the route would answer 404, the destination itself works."""
    log.warning("link %s not tracked: its click token would be %d characters, over the %d the "
                "click route accepts; the mail links to the destination itself (%.80s...)",
                link_id(dest), len(token), MAX_TOKEN_LENGTH, dest)


def open_url(state: MailTrackState, message_id: str, *, root: str | None = None) -> str:
    return f"{root or state.external_root()}/t/o/{state.signer.dumps(Purpose.OPEN, message_id)}"


def honeypot_url(state: MailTrackState, message_id: str, *, root: str | None = None) -> str:
    """The hidden honeypot link of a message (see :mod:`crm_mailtrack.bots`)."""
    token = state.signer.dumps(Purpose.CLICK, [message_id, HONEYPOT_TARGET])
    return f"{root or state.external_root()}/t/h/{token}"


def unsubscribe_url(state: MailTrackState, message_id: str, *, root: str | None = None) -> str:
    return f"{root or state.external_root()}/t/u/{state.signer.dumps(Purpose.UNSUBSCRIBE, message_id)}"


def instrument(
    state: MailTrackState,
    message_id: str,
    html: str | None,
    *,
    track_opens: bool,
    track_clicks: bool,
    text: str | None = None,
) -> tuple[str | None, dict[str, str], dict[str, str], str | None]:
    """Tracked HTML, List-Unsubscribe headers, ``{link_id: url}`` of the tracked links, and
    the text part: ``text`` if given, else one derived from ``html``.

    The derived text shows each link's destination (with the UTM parameters the HTML's link
    adds), not the signed click link: a person reading plain text sees where a link goes
    and can read it (a signed URL is long and opaque, which looks like phishing in plain
    text), and the text does not depend on the message id, so a campaign shares one and a
    copy of the message (``resend``) can reuse it. Clicks in the text part are therefore
    not tracked. It is made before the hidden honeypot link and the open pixel are added:
    neither is ever part of it.

    A link whose click token would be longer than the click route reads
    (:data:`~crm_mailtrack.tokens.MAX_TOKEN_LENGTH`: a URL of some 3,000 characters that do
    not compress) keeps its href exactly as written, in the HTML and the text part, is not
    in the tracked links, and is logged (:func:`untracked`). The check is the length of the
    token just signed.
    """
    root = state.external_root()
    tracked: dict[str, str] = {}
    shown: dict[str, str] = {}
    utm = state.utm_defaults

    def rewrite(dest: str) -> str | None:
        dest = validate_destination(apply_utm(dest, utm))
        if not track_clicks:
            shown[dest] = dest
            return dest
        # dest is validated just above: sign it directly (click_url would validate again)
        token = state.signer.dumps(Purpose.CLICK, [message_id, dest])
        if not fits(token):
            untracked(dest, token)
            return None  # the href stays as written
        tracked[link_id(dest)] = dest
        url = f"{root}/t/c/{token}"
        shown[url] = dest
        return url

    if html is not None:
        if (track_clicks or utm) and text is None:
            # one parse gives both: the text sees each link's new href, mapped back by `shown`
            html, _, text = rewrite_links_and_text(html, rewrite, link=lambda href: shown.get(href, href))
        elif track_clicks or utm:
            html, _ = rewrite_links(html, rewrite)
        elif text is None:
            text = html_to_text(html)
        if tracked and state.settings.bot_policy.honeypot:
            html = append_pixel(html, "", tag=honeypot_tag(honeypot_url(state, message_id, root=root)))
        if track_opens:
            html = append_pixel(html, open_url(state, message_id, root=root))
    headers = {
        "List-Unsubscribe": f"<{unsubscribe_url(state, message_id, root=root)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    return html, headers, tracked, text


def track_message(
    state: MailTrackState,
    *,
    contact_id: str,
    email: str,
    subject: str,
    html: str | None = None,
    text: str | None = None,
    campaign_id: str | None = None,
    template_id: str | None = None,
    template_name: str | None = None,
    type: str | None = None,
    related_entity_type: str | None = None,
    related_entity_id: str | None = None,
    scheduled_at: dt.datetime | None = None,
    track_opens: bool | None = None,
    track_clicks: bool | None = None,
    tenant_id: Any = UNSET,
    commit: bool = True,
    **extra: Any,
) -> Message:
    """Store an outbound message with instrumented HTML and headers, and its text part:
    ``text`` as given, else derived from ``html`` (see :func:`instrument`)."""
    if not isinstance(email, str) or not _EMAIL.match(email):
        raise ValidationError({"email": ["Not a valid email address."]})
    if contact_id is None or str(contact_id) == "":
        raise ValidationError({"contact_id": ["Missing data for required field."]})
    unknown = sorted(set(extra) - _EXTRA_FIELDS)
    if unknown:
        raise TypeError(f"track_message() got unexpected keyword arguments: {', '.join(unknown)}")
    check_lengths(messages, contact_id=str(contact_id), email=email, campaign_id=campaign_id,
                  template_id=template_id, template_name=template_name, type=type,
                  related_entity_type=related_entity_type, related_entity_id=related_entity_id,
                  **{k: v for k, v in extra.items() if isinstance(v, str)})
    track_opens = state.track_opens if track_opens is None else bool(track_opens)
    track_clicks = state.track_clicks if track_clicks is None else bool(track_clicks)
    if scheduled_at is not None and scheduled_at.tzinfo is None:
        scheduled_at = scheduled_at.replace(tzinfo=dt.timezone.utc)
    message_id = new_message_id()
    tracked_html, headers, tracked, text = instrument(
        state, message_id, html, track_opens=track_opens, track_clicks=track_clicks, text=text
    )
    tenant = tenant_key(state, tenant_id)
    now = utcnow()
    message = Message(
        id=message_id,
        tenant_id=tenant,
        contact_id=str(contact_id),
        email=email,
        subject=subject or "",
        html=tracked_html,
        text=text,
        original_html=html,
        headers=headers,
        campaign_id=None if campaign_id is None else str(campaign_id),
        template_id=template_id,
        template_name=template_name,
        type=type,
        related_entity_type=related_entity_type,
        related_entity_id=None if related_entity_id is None else str(related_entity_id),
        scheduled_at=scheduled_at,
        status=(MessageStatus.SCHEDULED if scheduled_at else MessageStatus.PENDING).value,
        track_opens=track_opens,
        track_clicks=track_clicks,
        created_at=now,
        updated_at=now,
        **extra,
    )
    with transaction(state, commit=commit) as session:
        session.add(message)
        store_links(state, tenant, message.campaign_id, tracked)
    return message


#: Further Message columns a caller (the communications API) may set.
_EXTRA_FIELDS = frozenset({
    "conversation_id", "sender_email", "sender_name", "reply_to", "cc", "bcc", "variables",
    "created_by", "updated_by",
})


def store_links(state: MailTrackState, tenant: str, campaign_id: str | None, tracked: dict[str, str]) -> None:
    """Remember tracked links (and which campaign carries them); idempotent."""
    if not tracked:
        return
    session = state.session
    dialect = dialect_name(state)
    session.execute(
        insert(dialect, links).on_conflict_do_nothing(index_elements=["id"]),
        [{"id": lid, "url": url} for lid, url in tracked.items()],
    )
    if campaign_id is not None:
        session.execute(
            insert(dialect, campaign_links).on_conflict_do_nothing(),
            [{"tenant_id": tenant, "campaign_id": campaign_id, "link_id": lid} for lid in tracked],
        )


def get_message(state: MailTrackState, message_id: str, *, tenant_id: Any = UNSET) -> Message:
    tenant = tenant_key(state, tenant_id)
    message = state.session.get(Message, str(message_id))
    if message is None or message.tenant_id != tenant:
        raise NotFound(f"No message {message_id!r}.")
    return message


def message_id_of(message: Message | str) -> str:
    return message if isinstance(message, str) else message.id


__all__ = ["track_message", "click_url", "open_url", "unsubscribe_url", "get_message", "utcnow"]
