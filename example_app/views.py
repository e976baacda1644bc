"""The CRM's pages. Views only parse the request and render: numbers and message records
come from ``metrics`` (the extension's JSON API), actions from ``MailTrack``'s public methods."""
from __future__ import annotations

import csv
import datetime as dt
import io
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import (Blueprint, Flask, abort, current_app, flash, g, redirect, render_template, request,
                   session, url_for)

from crm_mailtrack import DNCReason

from . import charts, insights, mailtrack, metrics
from .listing import page_of, paginate
from .models import Campaign, Contact, InboxMail, db

blueprint = Blueprint("crm", __name__)

DNC_LABELS = {int(DNCReason.UNSUBSCRIBED): "Unsubscribed", int(DNCReason.BOUNCED): "Bounced",
              int(DNCReason.MANUAL): "Manual"}
CHART_DAYS = 42
LANDING = {
    "getting-started": "Get started in 5 minutes", "import-contacts": "Import your contacts",
    "webinar": "Spring webinar: pipelines that close", "agenda": "Webinar agenda",
    "release-notes": "Release notes", "reports": "The new reports", "calendar-sync": "Calendar sync",
    "pricing": "Annual plan pricing", "book-a-demo": "Book a demo",
}
#: Stands in for the open pixel in previews, so that viewing a message is not an open.
BLANK_GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


# -- helpers ---------------------------------------------------------------------------------


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return str(session["csrf"])


def check_csrf() -> None:
    sent = request.form.get("csrf", "")
    if not sent or not secrets.compare_digest(sent.encode(), str(session.get("csrf", "")).encode()):
        abort(400, "The form expired: reload the page and try again.")


def as_datetime(value: Any) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def fmt_datetime(value: Any) -> str:
    when = as_datetime(value)
    return when.strftime("%Y-%m-%d %H:%M UTC") if when else "—"


def iso(value: Any) -> str:
    when = as_datetime(value)
    return when.isoformat().replace("+00:00", "Z") if when else ""


def short_url(url: str | None) -> str:
    """A destination for display: host and path, without the query (UTM parameters);
    pages put the full URL in the link or its title."""
    if not url:
        return ""
    parts = urlsplit(url)
    base = urlsplit(current_app.config["MAILTRACK_BASE_URL"])
    host = "" if parts.netloc == base.netloc else parts.netloc
    return host + parts.path + ("?…" if parts.query else "")


def pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def srcdoc(html: str, *, target: str, preview: bool) -> str:
    """The message HTML for a sandboxed ``<iframe>`` (served by a ``.../body`` route with its
    own policy, as a srcdoc frame would inherit the page's strict one): a ``<base>`` so links
    leave the frame, and (in previews) the open pixel swapped for a blank image."""
    if preview:
        html = re.sub(r'src="https?://[^"]*/t/o/[^"]*"', f'src="{BLANK_GIF}"', html)
    head = (f'<base target="{target}"><meta name="color-scheme" content="light">'
            '<style>body{font:15px/1.5 system-ui,sans-serif;margin:1rem;color:#1d2330}'
            'a{color:#0b57d0}</style>')
    return head + html


_WEB_URL = re.compile(r"^https?://[^\x00-\x20\x7f]+$", re.IGNORECASE)


def is_web_url(value: Any) -> bool:
    """Only absolute http(s) URLs become links (``{% if url is web_url %}``): a stored URL
    comes from outside (an API client, an import), and ``javascript:`` or ``data:`` in an
    ``href`` would run in the CRM's origin. Anything else is shown as text."""
    return isinstance(value, str) and _WEB_URL.match(value) is not None


def register_filters(app: Flask) -> None:
    app.jinja_env.filters.update(dt=fmt_datetime, iso=iso, pct=pct, short_url=short_url)
    app.jinja_env.globals.update(csrf_token=csrf_token, DNC_LABELS=DNC_LABELS)
    app.jinja_env.tests["web_url"] = is_web_url


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


#: The pages' policy: no inline script or style at all (the pages have none: styles are in
#: static/style.css, charts are SVG with classes), nothing from other origins, no plugins, no
#: <base>, not framed. Forms post to the CRM and to the extension's unsubscribe URL.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
            "object-src 'none'; base-uri 'none'; form-action 'self' {tracking}; frame-ancestors 'none'")
#: A mail's HTML (its own document in a sandboxed frame): never any script, its own inline
#: styles, images from anywhere (the open pixel of a received mail among them).
MAIL_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src http: https: data:; form-action 'none'; "
            "base-uri 'none'; frame-ancestors 'self'; "
            "sandbox allow-popups allow-popups-to-escape-sandbox allow-top-navigation-by-user-activation")


def _extension_route() -> bool:
    """Whether the request is for one of the extension's own routes (API, tracking)."""
    return request.path.startswith(current_app.config["MAILTRACK_URL_PREFIX"].rstrip("/") + "/")


@blueprint.after_app_request
def _security_headers(response: Any) -> Any:
    """Content-Security-Policy on every CRM page, its error pages included; the extension's
    own routes (API, tracking, unsubscribe page) are left as the extension answers them."""
    if _extension_route():
        return response
    if "Content-Security-Policy" not in response.headers:
        tracking = _origin(current_app.config["MAILTRACK_BASE_URL"])
        response.headers["Content-Security-Policy"] = PAGE_CSP.format(tracking=tracking)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def mail_document(html: str) -> Any:
    """A mail's HTML as its own document, with :data:`MAIL_CSP`."""
    response = current_app.response_class(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = MAIL_CSP
    return response


@blueprint.app_context_processor
def _sources() -> dict[str, Any]:
    return {"metric_sources": g.get("metric_sources", [])}


def chart_window(campaign_id: str | None = None, since: dt.datetime | None = None) -> tuple[dt.date, dt.date]:
    """The days a chart shows, never after today (UTC): the dashboard's six weeks up to the
    latest activity (so an old demo database still shows its story); a campaign's from the
    day before it was sent to its latest send, open or click (at least a week, when that
    has passed)."""
    today = dt.datetime.now(dt.timezone.utc).date()
    last = min(metrics.last_day(campaign_id) or today, today)
    if since is None:
        return last - dt.timedelta(days=CHART_DAYS - 1), last
    start = min(since.date() - dt.timedelta(days=1), last)
    return start, min(max(last, start + dt.timedelta(days=6)), today)


def _charts(campaign_id: str | None = None, since: dt.datetime | None = None) -> dict[str, Any]:
    """The daily charts (sends; opens and clicks of people and machines) over :func:`chart_window`."""
    start, end = chart_window(campaign_id, since)
    days = metrics.daily(start, end, campaign_id)
    dates = [d.day for d in days]
    return {
        "days": days, "chart_start": start, "chart_end": end,
        "volume_chart": charts.bar_chart(
            dates, [d.sent for d in days], title="Messages sent per day",
            desc=f"Daily send volume from {start} to {end}, UTC days.", unit="sent"),
        "engagement_chart": charts.line_chart(
            dates, [("Opens (people)", "s-open", [d.opens_h for d in days]),
                    ("Clicks (people)", "s-click", [d.clicks_h for d in days]),
                    ("Machine opens and clicks", "s-machine", [d.opens_m + d.clicks_m for d in days])],
            title="Opens and clicks per day",
            desc="Human opens, human clicks and machine events (scanners, image proxies) per UTC day."),
    }


# -- pages ------------------------------------------------------------------------------------


@blueprint.route("/")
def dashboard() -> str:
    totals = metrics.analytics()
    return render_template("dashboard.html", totals=totals, campaigns=metrics.campaigns_overview()[:5],
                           links=metrics.top_links(limit=8), **_charts())


CONTACT_SORTS = {
    "name": lambda r: (r.contact.last_name.lower(), r.contact.first_name.lower()),
    "company": lambda r: (r.contact.company.lower(), r.contact.last_name.lower()),
    "status": lambda r: r.dnc_reason or 0,
    "opens": lambda r: r.opens, "clicks": lambda r: r.clicks, "score": lambda r: r.score,
    "last": lambda r: as_datetime(r.last_activity),
}


@blueprint.route("/contacts")
def contacts() -> str:
    q = request.args.get("q", "")[:100]
    listing = paginate(metrics.contacts(q), CONTACT_SORTS, default="name")
    return render_template("contacts.html", listing=listing, rows=listing.rows, q=q)


@blueprint.route("/contacts.csv")
def contacts_csv() -> Any:
    """The contact list (the same search and order as the page, every page) as CSV; the
    engagement figures are the engagement API's."""
    q = request.args.get("q", "")[:100]
    listing = paginate(metrics.contacts(q), CONTACT_SORTS, default="name", per_page=10**9)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["contactId", "name", "email", "company", "dncReason", "opens", "clicks", "score",
                     "lastHumanActivity"])
    for r in listing.rows:
        writer.writerow([r.contact.id, *(csv_cell(v) for v in (r.contact.display_name, r.contact.email,
                                                                r.contact.company)),
                         r.dnc_reason or "", r.opens, r.clicks, r.score, iso(r.last_activity)])
    return current_app.response_class(out.getvalue(), mimetype="text/csv", headers={
        "Content-Disposition": 'attachment; filename="contacts.csv"', "Cache-Control": "no-store"})


def csv_cell(value: str) -> str:
    """A text cell a spreadsheet will not run as a formula (a leading ``'``, as the API's CSV does)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


@blueprint.route("/contacts/<int:contact_id>")
def contact(contact_id: int) -> str:
    person = db.get_or_404(Contact, contact_id)
    cid = str(person.id)
    events = metrics.timeline(cid)
    for event in events:
        event["when"] = as_datetime(event["timestamp"])
    slugs = {e["campaignId"] for e in events if e.get("campaignId")}
    names = dict(db.session.execute(db.select(Campaign.slug, Campaign.name).where(Campaign.slug.in_(slugs))).all()) \
        if slugs else {}
    return render_template("contact.html", person=person, events=events, campaign_names=names,
                           dnc=metrics.contact_dnc(cid),
                           utm=metrics.contact_utm(cid), engagement=metrics.engagement(cid))


@blueprint.route("/contacts/<int:contact_id>/dnc", methods=["POST"])
def contact_dnc(contact_id: int) -> Any:
    check_csrf()
    person = db.get_or_404(Contact, contact_id)
    if request.form.get("action") == "remove":
        mailtrack.remove_dnc(str(person.id), "email")
        flash(f"{person.display_name} may be emailed again.")
    else:
        mailtrack.add_dnc(str(person.id), "email", DNCReason.MANUAL, comments="Added in the CRM")
        flash(f"{person.display_name} is now on Do-Not-Contact for email.")
    return redirect(url_for("crm.contact", contact_id=person.id))


def _message_or_404(message_id: str) -> dict[str, Any]:
    """The message record from the communications API, in the template's terms."""
    rec = metrics.message(message_id)
    if rec is None:
        abort(404)
    return {"id": rec["id"], "email": (rec.get("recipients") or [""])[0], "subject": rec.get("subject") or "",
            "status": rec.get("status") or "", "error_message": rec.get("errorMessage"),
            "sent_at": rec.get("sentAt"), "campaign_id": rec.get("campaignId"), "contact_id": rec.get("contactId") or "",
            "html": rec.get("body") or "",
            # the headers the extension adds, from its public URL helper
            "headers": {"List-Unsubscribe": f"<{mailtrack.unsubscribe_url(rec['id'])}>",
                        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}}


@blueprint.route("/messages/<message_id>")
def message(message_id: str) -> str:
    msg = _message_or_404(message_id)
    person = db.session.get(Contact, int(msg["contact_id"])) if msg["contact_id"].isdigit() else None
    links = metrics.message_links(msg["id"], contact_id=msg["contact_id"])
    campaign = db.session.execute(db.select(Campaign).filter_by(slug=msg["campaign_id"])).scalar_one_or_none() \
        if msg["campaign_id"] else None
    return render_template("message.html", msg=msg, person=person, links=links, campaign=campaign,
                           thread=insights.thread(msg["id"]))


@blueprint.route("/messages/<message_id>/body")
def message_body(message_id: str) -> Any:
    """The tracked HTML of a message for the preview frame (the open pixel blanked)."""
    return mail_document(srcdoc(_message_or_404(message_id)["html"], target="_blank", preview=True))


@blueprint.route("/compose", methods=["GET", "POST"])
def compose() -> Any:
    from .outbox import DEFAULT_HTML, send_campaign

    companies = [c for (c,) in db.session.execute(db.select(Contact.company).distinct().order_by(Contact.company))]
    form = {"name": "Autumn release", "subject": "{first_name}, our autumn release is here",
            "html": DEFAULT_HTML.replace("{base}", current_app.config["MAILTRACK_BASE_URL"].rstrip("/")),
            "audience": "all"}
    errors: dict[str, str] = {}
    if request.method == "POST":
        check_csrf()
        form = {k: request.form.get(k, "").strip() for k in form}
        if not form["name"]:
            errors["name"] = "Give the campaign a name."
        if not form["subject"]:
            errors["subject"] = "Write a subject line."
        if not form["html"]:
            errors["html"] = "Write the message."
        if form["audience"] != "all" and form["audience"] not in companies:
            errors["audience"] = "Choose who receives it."
        if not errors:
            q = db.select(Contact).order_by(Contact.id)
            if form["audience"] != "all":
                q = q.filter_by(company=form["audience"])
            result = send_campaign(form["name"], form["subject"], form["html"], db.session.execute(q).scalars().all())
            msg = f"Sent {result.sent} messages"
            if result.suppressed:
                msg += f"; {result.suppressed} suppressed (Do-Not-Contact)"
            if result.failed:
                msg += f"; {result.failed} failed ({'; '.join(result.errors)[:200]})"
            flash(msg + ".", "error" if result.failed else "ok")
            return redirect(url_for("crm.campaign", slug=result.campaign.slug))
    return render_template("compose.html", form=form, errors=errors, companies=companies,
                           smtp_url=current_app.config["MAILTRACK_SMTP_URL"]), (422 if errors else 200)


@blueprint.route("/inbox")
def inbox() -> str:
    """Received mail, newest first, 50 a page (paged in SQL: the CRM's own table)."""
    total = db.session.execute(db.select(sa.func.count()).select_from(InboxMail)).scalar_one()
    listing = page_of(total, per_page=50)
    listing.rows = list(db.session.execute(
        db.select(InboxMail).order_by(InboxMail.id.desc()).limit(listing.per_page)
        .offset((listing.page - 1) * listing.per_page)).scalars())
    return render_template("inbox.html", mails=listing.rows, listing=listing,
                           smtp_url=current_app.config["MAILTRACK_SMTP_URL"])


@blueprint.route("/inbox/<int:mail_id>")
def inbox_mail(mail_id: int) -> str:
    mail = db.get_or_404(InboxMail, mail_id)
    unsubscribe = None
    if mail.list_unsubscribe:
        match = re.search(r"<(https?://[^>]+)>", mail.list_unsubscribe)
        unsubscribe = match.group(1) if match else None
    return render_template("inbox_mail.html", mail=mail, unsubscribe=unsubscribe)


@blueprint.route("/inbox/<int:mail_id>/body")
def inbox_mail_body(mail_id: int) -> Any:
    """A received mail's HTML, as the recipient's mail client shows it (its pixel loads)."""
    mail = db.get_or_404(InboxMail, mail_id)
    if not mail.html:
        abort(404)
    return mail_document(srcdoc(mail.html, target="_top", preview=False))


@blueprint.route("/go/<page>")
def landing(page: str) -> str:
    """Where the demo's tracked links lead: Northwind's (pretend) website."""
    title = LANDING.get(page)
    if title is None:
        abort(404)
    utm = {k: v for k, v in request.args.items() if k.startswith("utm_")}
    return render_template("landing.html", title=title, utm=utm)


@blueprint.route("/favicon.ico")
def favicon() -> Any:
    """For pages without a ``<link rel=icon>`` (the extension's unsubscribe page)."""
    return current_app.send_static_file("favicon.svg")


@blueprint.app_errorhandler(404)
def not_found(exc: Exception) -> Any:
    if _extension_route():
        return exc  # the extension's own routes answer for themselves
    return render_template("error.html", code=404, title="Not found",
                           detail="There is no such page in Northwind CRM."), 404
