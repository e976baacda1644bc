"""Deterministic demo data: contacts, four campaigns over six weeks, and their engagement.

Everything goes through crm_mailtrack's public surface, the way production traffic would:
messages are stored with ``track_message`` and delivered with ``send`` (to a private local
SMTP server, so the demo mail also shows in the Inbox), opens and clicks are real requests
to the public tracking routes (a browser's user agent for people; HEAD and prefetch
requests for mail scanners and image proxies, which the extension flags as machine
events), the unsubscribe is a real RFC 8058 POST, a bounce and the forwards come in
through ``record_event`` as an ESP webhook would deliver them, and the mail that comes back
after the newest campaign (replies quoting it, a hard bounce, a spam complaint, an
out-of-office answer: :mod:`.received`) through ``ingest_mail``, as ``flask mailtrack
fetch-inbox`` hands it over.

Only the clock is simulated, for the whole process, with ``time-machine``: each step runs
at its story time, so the extension stamps its rows (messages, events, Do-Not-Contact and
UTM entries) with that time itself. Nothing is written to the extension's tables behind its
back.

The random generator has a fixed seed and every time is an offset from ``anchor`` (the
first run's UTC midnight unless configured), so the same anchor gives the same data.
"""
from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
import time_machine
from flask import Flask

from crm_mailtrack import Message

from .models import Campaign, Contact, db

SEED = 20240611
FIRST = ["Ada", "Grace", "Alan", "Katherine", "Linus", "Margaret", "Dennis", "Barbara", "Ken",
         "Frances", "Edsger", "Radia", "Donald", "Hedy", "John", "Sophie", "Tim", "Mary",
         "Guido", "Annie", "Bjarne", "Shafi", "Niklaus", "Lynn"]
LAST = ["Lovelace", "Hopper", "Turing", "Johnson", "Torvalds", "Hamilton", "Ritchie", "Liskov",
        "Thompson", "Allen", "Dijkstra", "Perlman", "Knuth", "Lamarr", "McCarthy", "Wilson",
        "Berners", "Keller", "Rossum", "Easley", "Stroustrup", "Goldwasser", "Wirth", "Conway"]
#: (company, mail domain, title pool). Contoso's mail gateway pre-clicks every link and its
#: clients proxy images; Stark's iPhones use Apple Mail Privacy Protection: their people
#: produce machine events.
COMPANIES = [
    ("Acme Analytics", "acme.example", ["Head of Marketing", "Data Analyst", "CTO"]),
    ("Contoso Ltd", "contoso.example", ["Procurement Lead", "IT Manager", "Sales Director"]),
    ("Globex", "globex.example", ["Operations Manager", "CEO", "Account Executive"]),
    ("Initech", "initech.example", ["Product Owner", "Developer", "Office Manager"]),
    ("Umbrella Health", "umbrella.example", ["Clinical Lead", "Buyer", "Marketing Manager"]),
    ("Stark Logistics", "stark.example", ["Fleet Planner", "COO", "Customer Success"]),
]
N_CONTACTS = 36
BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Microsoft Outlook 16.0.17328; Pro",
]
SCANNER_UA = "Mozilla/5.0 (compatible; SafeLinks-Scanner/2.1; +https://contoso.example/security)"
APPLE_PROXY_IP = "17.58.63.12"
PROXY_UA = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"


@dataclass(frozen=True)
class CampaignSpec:
    slug: str
    name: str
    subject: str
    days_before: int  # sent this many days before the anchor, at 09:00 UTC
    pages: tuple[tuple[str, str], ...]  # (landing page slug, link text)
    appeal: float  # how likely a reader clicks


CAMPAIGNS = [
    CampaignSpec("welcome-2024", "Welcome to Northwind CRM", "Welcome aboard, {first_name}!", 40,
                 (("getting-started", "Get started in 5 minutes"), ("import-contacts", "Import your contacts")), 0.45),
    CampaignSpec("spring-webinar", "Spring webinar invitation", "Live webinar: pipelines that close",
                 26, (("webinar", "Save your seat"), ("agenda", "See the agenda")), 0.35),
    CampaignSpec("q2-product-update", "Q2 product update", "What's new in Q2: reports and calendar sync",
                 12, (("release-notes", "Read the release notes"), ("reports", "Try the new reports"),
                      ("calendar-sync", "Connect your calendar")), 0.3),
    CampaignSpec("pricing-offer", "Annual plan offer", "{first_name}, 20% off the annual plan",
                 4, (("pricing", "See the annual plan"), ("book-a-demo", "Book a demo")), 0.25),
]


def default_anchor() -> dt.datetime:
    today = dt.datetime.now(dt.timezone.utc).date()
    return dt.datetime(today.year, today.month, today.day, tzinfo=dt.timezone.utc)


def campaign_html(spec: CampaignSpec, base: str) -> str:
    links = "\n".join(
        f'<li><a href="{base}/go/{page}?utm_campaign={spec.slug}">{text}</a></li>' for page, text in spec.pages
    )
    return (
        "<h1>Hello {first_name},</h1>\n"
        f"<p>{spec.name}: a short note from the Northwind team.</p>\n"
        f"<ul>\n{links}\n</ul>\n"
        '<p>Questions? Just reply, or write to <a href="mailto:hello@northwind.example">hello@northwind.example</a>.</p>\n'
        "<p>The Northwind team</p>\n"
    )


def make_contacts(rng: random.Random) -> list[Contact]:
    people = []
    names = [(f, l) for f in FIRST for l in LAST]
    for i, (first, last) in enumerate(rng.sample(names, N_CONTACTS)):
        company, domain, titles = COMPANIES[i % len(COMPANIES)]
        email = f"{first.lower()}.{last.lower()}@{domain}"
        people.append(Contact(first_name=first, last_name=last, email=email, company=company,
                              title=rng.choice(titles)))
    return people


def generate(app: Flask, anchor: dt.datetime | None = None) -> dict[str, int]:
    """Fill an empty database with the demo story; returns counts of what was made.

    The story is told by a second instance of the CRM on the same database whose
    ``MAILTRACK_SMTP_URL`` is a private local SMTP server (started here, stopped at the
    end), so every demo message is really sent and lands in the Inbox."""
    anchor = anchor or default_anchor()
    if anchor.tzinfo is None:
        anchor = anchor.replace(tzinfo=dt.timezone.utc)
    if anchor > dt.datetime.now(dt.timezone.utc):
        raise ValueError("The demo anchor must not lie in the future.")
    from . import create_app
    from .mailbox import LocalSMTPServer

    smtp = LocalSMTPServer().start()
    try:
        keep = ("MAILTRACK_", "SQLALCHEMY_", "EXAMPLE_")
        config = {k: v for k, v in app.config.items() if k.startswith(keep) or k in ("SECRET_KEY", "TESTING")}
        teller = create_app({**config, "MAILTRACK_SMTP_URL": smtp.url, "EXAMPLE_SEED_DEMO": False})
        smtp.app = teller
        with teller.app_context():
            try:
                return _Story(teller).tell(anchor)
            finally:
                db.session.remove()
                db.engine.dispose()
    finally:
        smtp.stop()


@contextmanager
def at(when: dt.datetime) -> Iterator[None]:
    """Run the block with the process clock stopped at ``when`` (``time-machine``)."""
    with time_machine.travel(when, tick=False):
        yield


class _Story:
    """One run of the generator: its random source and HTTP client."""

    def __init__(self, app: Flask) -> None:
        from . import mailtrack

        self.rng = random.Random(SEED)
        self.mailtrack = mailtrack
        self.base = app.config["MAILTRACK_BASE_URL"].rstrip("/")
        self.client = app.test_client()
        self.counts = {"contacts": 0, "campaigns": 0, "messages": 0, "requests": 0, "received": 0}
        #: The newest campaign's delivered messages: ``(contact, message, sent at)``.
        self.newest: list[tuple[Contact, Message, dt.datetime]] = []

    def tell(self, anchor: dt.datetime) -> dict[str, int]:
        from .outbox import personalise

        rng, mailtrack = self.rng, self.mailtrack
        contacts = make_contacts(rng)
        db.session.add_all(contacts)
        db.session.commit()
        self.counts["contacts"] = len(contacts)
        # How each person engages: a steady opener, an occasional one, or someone who never reads.
        habit = {c.id: rng.choice([0.9, 0.9, 0.7, 0.5, 0.3, 0.05]) for c in contacts}
        bouncer = contacts[5]  # their mailbox is gone: hard bounce on the first mail
        unsubscriber = contacts[8]  # unsubscribes from the webinar invitation
        forwarders = {contacts[2].id, contacts[13].id}
        for spec in CAMPAIGNS:
            sent_at = anchor - dt.timedelta(days=spec.days_before) + dt.timedelta(hours=9)
            html = campaign_html(spec, self.base)
            naive = sent_at.replace(tzinfo=None)
            db.session.add(Campaign(slug=spec.slug, name=spec.name, subject=spec.subject, html=html,
                                    sent_at=naive, created_at=naive))
            db.session.commit()
            self.counts["campaigns"] += 1
            for contact in contacts:
                cid = str(contact.id)
                when = sent_at + dt.timedelta(seconds=rng.randint(0, 3600))
                with at(when):  # stored and sent at its story time; DNC contacts are SUPPRESSED
                    message = mailtrack.send(mailtrack.track_message(
                        contact_id=cid, email=contact.email, subject=personalise(spec.subject, contact),
                        html=personalise(html, contact), campaign_id=spec.slug, template_id=spec.slug,
                        template_name=spec.name, type="CAMPAIGN",
                    ))
                self.counts["messages"] += 1
                if str(message.status) != "SENT":
                    continue
                if spec is CAMPAIGNS[-1] and contact.id != bouncer.id:
                    self.newest.append((contact, message, when))
                if contact.id == bouncer.id:
                    self.bounce(contact, message, spec.slug, when + dt.timedelta(minutes=2))
                    continue
                self.engage(contact, message, spec, when, habit[contact.id],
                            unsubscribe=contact.id == unsubscriber.id and spec.slug == "spring-webinar",
                            forward=contact.id in forwarders and spec.slug == "q2-product-update")
        self.mail_back()
        return self.counts

    def mail_back(self) -> None:
        """What comes back after the newest campaign, received at its story time and handed to
        ``ingest_mail`` (after the whole story, so it changes nothing that came before): two
        replies quoting it, a hard bounce, a spam complaint and an out-of-office answer."""
        from . import received

        people = [(c, m, sent) for c, m, sent in self.newest if not c.email.endswith("@contoso.example")]
        (ann, m1, s1), (bob, m2, s2), (_, m3, s3), (_, m4, s4), (eve, m5, s5) = people[:5]
        mails = [
            (s1 + dt.timedelta(hours=3), received.reply(
                m1, ann.display_name, f"Hi Northwind team,\n\nThanks, the annual plan looks good. Could you send "
                f"me a quote for 12 seats for {ann.company}?\n\nBest regards,\n{ann.first_name}",
                s1 + dt.timedelta(hours=3), s1, 1)),
            (s2 + dt.timedelta(days=1, hours=2), received.reply(
                m2, bob.display_name, f"Hello,\n\nDoes the 20% also apply if we upgrade mid-year?\n\n{bob.first_name}",
                s2 + dt.timedelta(days=1, hours=2), s2, 2)),
            (s3 + dt.timedelta(minutes=1), received.hard_bounce(m3, s3 + dt.timedelta(minutes=1), s3)),
            (s4 + dt.timedelta(hours=20), received.complaint(m4, s4 + dt.timedelta(hours=20), s4)),
            (s5 + dt.timedelta(minutes=4), received.out_of_office(
                m5, eve.display_name, s5 + dt.timedelta(minutes=4), (s5 + dt.timedelta(days=7)).date())),
        ]
        for when, raw in mails:
            with at(when):
                self.counts["received"] += len(self.mailtrack.ingest_mail(raw))

    def hit(self, method: str, url: str, ua: str, when: dt.datetime, ip: str | None = None, **headers: str) -> None:
        """A real request to a tracking route, at ``when``."""
        data = {"List-Unsubscribe": "One-Click"} if method == "POST" else None
        address = ip or f"198.51.100.{self.rng.randint(2, 250)}"
        with at(when):
            resp = self.client.open(url[len(self.base):], method=method, headers={"User-Agent": ua, **headers},
                                    data=data, environ_base={"REMOTE_ADDR": address})
        assert resp.status_code in (200, 302), (method, url, resp.status_code)
        self.counts["requests"] += 1

    def bounce(self, contact: Contact, message: Message, campaign: str, when: dt.datetime) -> None:
        """A hard bounce as an ESP webhook reports it: ``record_event`` also puts the contact
        on Do-Not-Contact (reason BOUNCED, the message as channel id, the reason as comment)."""
        with at(when):
            self.mailtrack.record_event(str(contact.id), "bounce", email=contact.email, message_id=message.id,
                                        campaign_id=campaign, occurred_at=when,
                                        details={"bounceType": "hard", "reason": "550 5.1.1 mailbox unavailable"})

    def engage(self, contact: Contact, message: Message, spec: CampaignSpec, sent: dt.datetime, habit: float, *,
               unsubscribe: bool, forward: bool) -> None:
        """Opens, clicks, scanner hits, a forward or an unsubscribe for one delivered message.
        A person's click on a link with ``utm_*`` parameters also tags the contact (the
        extension does that on the click)."""
        rng = self.rng
        links = _tracked_links(message.html or "")
        pixel = _pixel(message.html or "")
        if contact.email.endswith("@contoso.example"):
            # The mail gateway fetches every link seconds after delivery, and the image proxy the pixel.
            for url in links + _honeypots(message.html or ""):
                self.hit("HEAD", url, SCANNER_UA, sent + dt.timedelta(seconds=rng.randint(3, 40)))
            self.hit("GET", pixel, PROXY_UA, sent + dt.timedelta(seconds=rng.randint(5, 60)),
                     **{"X-Purpose": "preview"})
        if contact.email.endswith("@stark.example"):
            # iPhones with Mail Privacy Protection: Apple's proxy loads the pixel on delivery.
            self.hit("GET", pixel, "Mozilla/5.0", sent + dt.timedelta(seconds=rng.randint(30, 300)), ip=APPLE_PROXY_IP)
        if rng.random() >= habit and not (unsubscribe or forward):
            return
        ua = rng.choice(BROWSERS)
        opened = sent + dt.timedelta(minutes=rng.randint(10, 60 * 50))
        self.hit("GET", pixel, ua, opened)
        if rng.random() < 0.25:  # read it again later
            self.hit("GET", pixel, ua, opened + dt.timedelta(hours=rng.randint(2, 30)))
        if unsubscribe:
            self.hit("POST", message.headers["List-Unsubscribe"].strip("<>"), ua, opened + dt.timedelta(minutes=3))
            return
        for url in links:
            if rng.random() < spec.appeal * (1.4 if habit > 0.6 else 0.8):
                when = opened + dt.timedelta(minutes=rng.randint(1, 20))
                browser = BROWSERS[0] if ua.startswith("Microsoft Outlook") else ua  # links open in a browser
                self.hit("GET", url, browser, when)
        if forward:
            when = opened + dt.timedelta(hours=1)
            with at(when):
                self.mailtrack.record_event(str(contact.id), "forward", email=contact.email, message_id=message.id,
                                            campaign_id=spec.slug, occurred_at=when,
                                            details={"to_domain": contact.email.split("@")[1]})


def _tracked_links(html: str) -> list[str]:
    return [m.replace("&amp;", "&") for m in re.findall(r'href="(https?://[^"]*/t/c/[^"]+)"', html)]


def _honeypots(html: str) -> list[str]:
    """The hidden honeypot link the extension adds for scanners (none when it is off)."""
    return [m.replace("&amp;", "&") for m in re.findall(r'href="(https?://[^"]*/t/h/[^"]+)"', html)]


def _pixel(html: str) -> str:
    match = re.search(r'src="(https?://[^"]*/t/o/[^"]+)"', html)
    assert match, "tracked HTML carries the open pixel"
    return match.group(1).replace("&amp;", "&")


def seed_if_empty(app: Flask, anchor: dt.datetime | None = None) -> dict[str, int] | None:
    """Generate the demo data when the CRM has no contacts yet (the first run)."""
    with app.app_context():
        if db.session.execute(sa.select(Contact.id).limit(1)).first() is not None:
            return None
        return generate(app, anchor)
