"""Public tracking routes: click redirect, open pixel, one-click unsubscribe.

They need no login: the signed token is their only authority. They stay thin: verify the
token, hand the request's facts to a service, answer.
"""
from __future__ import annotations

from flask import Blueprint, Response, abort, render_template, request

from . import bots
from .devices import event_details
from .errors import DatabaseUnavailable
from .instrument import HONEYPOT_TARGET, link_id
from .models import ContactEvent, DNCReason, EventType, Message, utcnow
from .requestinfo import anonymize_ip, machine_reason, user_agent
from .services import dnc as dnc_service
from .services import events as event_service
from .services import utm as utm_service
from .state import get_state
from .tokens import Purpose

blueprint = Blueprint("mailtrack", __name__, template_folder="templates")

#: The smallest transparent GIF (43 bytes).
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_STORE = "no-store, no-cache, must-revalidate, private"
#: Event type values, read on every hit (an enum's ``.value`` is a property call).
_CLICK = EventType.CLICK.value
_OPEN = EventType.OPEN.value


def _facts(state, event_type: str | None = None) -> dict:
    """IP (anonymized unless configured otherwise), user agent and, for opens and clicks,
    the machine reason the request shows by itself (see :mod:`.bots`)."""
    req = request._get_current_object()  # type: ignore[attr-defined] # one proxy lookup, not three
    ip = anonymize_ip(req.remote_addr, state.anonymize_ip)
    ua = user_agent(req)
    reason = machine_reason(req)
    if event_type is not None:
        reason = bots.classify(state.settings.bot_policy, event_type, user_agent=ua, ip=ip, request_reason=reason)
    return {"ip": ip, "user_agent": ua, "machine_reason": reason}


@blueprint.route("/t/c/<token>", methods=["GET", "HEAD"])
def click(token: str) -> Response:
    """302 to exactly the signed destination; the click (and its UTM tag) is recorded, or
    journaled when the database fails."""
    state = get_state()
    payload = state.signer.loads(Purpose.CLICK, token)
    if not (isinstance(payload, list) and len(payload) == 2 and all(isinstance(p, str) for p in payload)):
        abort(404)
    message_id, url = payload
    if "\r" in url or "\n" in url or not url.startswith(("http://", "https://")):
        abort(404)  # never produced by us; refuse rather than redirect anywhere odd
    facts = _facts(state, _CLICK)
    # a human click on a destination with utm_* parameters also tags the contact, in the
    # click's own transaction
    utm = utm_service.utm_params(url) if "utm_" in url else None
    event_service.record_tracking_event(
        state, _CLICK, message_id, want_row=False, utm=utm, url=url, link_id=link_id(url),
        details=event_details(facts["user_agent"]), **facts
    )
    resp = Response(status=302)
    headers = resp.headers  # add() each: half the cost of Response(headers={...})
    headers.add("Location", url)
    headers.add("Cache-Control", NO_STORE)
    headers.add("Referrer-Policy", "no-referrer")
    return resp


@blueprint.route("/t/o/<token>")
def open_pixel(token: str) -> Response:
    """Always the 1x1 GIF; an open is recorded for a valid token. A HEAD (which Flask
    answers here too) fetches no image: it is stored as a machine open (``head-request``)."""
    state = get_state()
    message_id = state.signer.loads(Purpose.OPEN, token)
    if isinstance(message_id, str):
        facts = _facts(state, _OPEN)
        event_service.record_tracking_event(
            state, _OPEN, message_id, want_row=False, url=None, link_id=None,
            details=event_details(facts["user_agent"]), **facts
        )
    resp = Response(PIXEL, mimetype="image/gif")
    resp.headers.add("Cache-Control", NO_STORE)
    return resp


@blueprint.route("/t/h/<token>", methods=["GET", "HEAD"])
def honeypot(token: str) -> Response:
    """The hidden honeypot link of a message: no person can see or reach it, so a hit is a
    machine's. It is stored as a machine click, and the message's clicks around it are
    marked ``honeypot`` (see :mod:`.bots`)."""
    state = get_state()
    payload = state.signer.loads(Purpose.CLICK, token)
    if not (isinstance(payload, list) and len(payload) == 2 and payload[1] == HONEYPOT_TARGET
            and isinstance(payload[0], str)):
        abort(404)
    facts = {**_facts(state), "machine_reason": bots.HONEYPOT}
    details = {**(event_details(facts["user_agent"]) or {}), "honeypot": True}
    event_service.record_tracking_event(
        state, EventType.CLICK.value, payload[0], url=None, link_id=None, details=details, **facts
    )
    return Response(b"", mimetype="text/plain",
                    headers={"Cache-Control": NO_STORE, "X-Robots-Tag": "noindex"})


def _message_for(token: str):
    state = get_state()
    message_id = state.signer.loads(Purpose.UNSUBSCRIBE, token)
    if not isinstance(message_id, str):
        abort(404)
    try:
        # The token is the authority, so the message is looked up in its own tenant.
        message = state.session.get(Message, message_id)
    except Exception as exc:  # noqa: BLE001
        raise DatabaseUnavailable() from exc
    if message is None:
        abort(404)
    return state, message


@blueprint.route("/t/u/<token>", methods=["GET", "POST"])
def unsubscribe(token: str) -> Response | str:
    """GET (and the HEAD Flask adds to it) shows a confirmation form and changes nothing
    (mail scanners follow GETs); only POST, RFC 8058 one-click, unsubscribes: no cookie,
    no CSRF token, idempotent."""
    state, message = _message_for(token)
    if request.method != "POST":
        try:
            subscribed = dnc_service.can_contact(state, message.contact_id, "email", tenant_id=message.tenant_id)
        except Exception as exc:  # noqa: BLE001
            raise DatabaseUnavailable() from exc
        return _page("mailtrack/unsubscribe.html", message=message, done=not subscribed,
                     action=request.path)
    now = utcnow()
    facts = _facts(state)
    unsubscribe_event = ContactEvent(
        tenant_id=message.tenant_id, type=EventType.UNSUBSCRIBE.value, contact_id=message.contact_id,
        email=message.email, message_id=message.id, campaign_id=message.campaign_id, occurred_at=now,
        ip=facts["ip"], user_agent=facts["user_agent"], is_machine=False,
        details={"method": "one-click" if _is_one_click() else "form"},
    )
    dnc_service.add_dnc(
        state, message.contact_id, "email", DNCReason.UNSUBSCRIBED, message.id, None,
        tenant_id=message.tenant_id, update_existing=False, extra_events=[unsubscribe_event],
        safe_signals=True,
    )
    return _page("mailtrack/unsubscribe.html", message=message, done=True, action=request.path)


def _is_one_click() -> bool:
    return request.form.get("List-Unsubscribe") == "One-Click"


def _page(template: str, **context) -> Response:
    resp = Response(render_template(template, **context), mimetype="text/html")
    resp.headers["Cache-Control"] = NO_STORE
    resp.headers["X-Robots-Tag"] = "noindex"
    return resp


@blueprint.errorhandler(DatabaseUnavailable)
def _unavailable(exc: DatabaseUnavailable) -> Response:
    resp = Response(render_template("mailtrack/unavailable.html"), status=503, mimetype="text/html")
    resp.headers["Retry-After"] = "60"
    resp.headers["Cache-Control"] = NO_STORE
    return resp
