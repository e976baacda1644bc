"""Public tracking routes: click redirect, open pixel, one-click unsubscribe.

They need no login: the signed token is their only authority. They stay thin: verify the
token, hand the request's facts to :mod:`.services.tracking` (one call), answer.
"""
from __future__ import annotations

from flask import Blueprint, Response, abort, render_template, request

from .errors import DatabaseUnavailable
from .instrument import HONEYPOT_TARGET
from .models import ContactEvent, DNCReason, EventType, Message, utcnow
from .requestinfo import anonymize_ip, request_facts, user_agent
from .services import dnc as dnc_service
from .services import tracking as tracking_service
from .state import get_state
from .tokens import Purpose

blueprint = Blueprint("mailtrack", __name__, template_folder="templates")

#: The smallest transparent GIF (43 bytes).
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_STORE = "no-store, no-cache, must-revalidate, private"


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
    tracking_service.record_click(state, message_id, url, request_facts(request, state.anonymize_ip))
    resp = Response(status=302)
    headers = resp.headers
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
        tracking_service.record_open(state, message_id, request_facts(request, state.anonymize_ip))
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
    tracking_service.record_honeypot(state, payload[0], request_facts(request, state.anonymize_ip))
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
    unsubscribe_event = ContactEvent(
        tenant_id=message.tenant_id, type=EventType.UNSUBSCRIBE.value, contact_id=message.contact_id,
        email=message.email, message_id=message.id, campaign_id=message.campaign_id, occurred_at=now,
        ip=anonymize_ip(request.remote_addr, state.anonymize_ip), user_agent=user_agent(request), is_machine=False,
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
