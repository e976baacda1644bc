"""Public tracking routes: click redirect, open pixel, one-click unsubscribe.

They need no login: the signed token is their only authority. They stay thin: verify the
token, hand the request's facts to a service, answer.
"""
from __future__ import annotations

from flask import Blueprint, Response, abort, render_template, request

from .errors import DatabaseUnavailable
from .instrument import link_id
from .models import ContactEvent, DNCReason, EventType, Message, utcnow
from .requestinfo import anonymize_ip, machine_reason, user_agent
from .services import dnc as dnc_service
from .services import events as event_service
from .state import get_state
from .tokens import Purpose

blueprint = Blueprint("mailtrack", __name__, template_folder="templates")

#: The smallest transparent GIF (43 bytes).
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_STORE = "no-store, no-cache, must-revalidate, private"


def _facts(state) -> dict:
    return {
        "ip": anonymize_ip(request.remote_addr, state.anonymize_ip),
        "user_agent": user_agent(request),
        "machine_reason": machine_reason(request),
    }


@blueprint.route("/t/c/<token>", methods=["GET", "HEAD"])
def click(token: str) -> Response:
    """302 to exactly the signed destination; the click is recorded (or journaled)."""
    state = get_state()
    payload = state.signer.loads(Purpose.CLICK, token)
    if not (isinstance(payload, list) and len(payload) == 2 and all(isinstance(p, str) for p in payload)):
        abort(404)
    message_id, url = payload
    if "\r" in url or "\n" in url or not url.startswith(("http://", "https://")):
        abort(404)  # never produced by us; refuse rather than redirect anywhere odd
    event_service.record_tracking_event(
        state, EventType.CLICK.value, message_id, url=url, link_id=link_id(url), **_facts(state)
    )
    return Response(status=302, headers={"Location": url, "Cache-Control": NO_STORE,
                                         "Referrer-Policy": "no-referrer"})


@blueprint.route("/t/o/<token>")
def open_pixel(token: str) -> Response:
    """Always the 1x1 GIF; an open is recorded for a valid token."""
    state = get_state()
    message_id = state.signer.loads(Purpose.OPEN, token)
    if isinstance(message_id, str):
        event_service.record_tracking_event(
            state, EventType.OPEN.value, message_id, url=None, link_id=None, **_facts(state)
        )
    return Response(PIXEL, mimetype="image/gif", headers={"Cache-Control": NO_STORE})


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
    """GET shows a confirmation form and changes nothing (mail scanners follow GETs);
    POST is RFC 8058 one-click: no cookie, no CSRF token, idempotent."""
    state, message = _message_for(token)
    if request.method == "GET":
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
