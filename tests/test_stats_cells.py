"""The analytics cells (services/stats.py) against a full scan, after random histories.

Each history drives the extension as a host does: messages tracked with ``track_message``,
their status moved as the sender moves it (SENT with a send time, or FAILED), opened and
clicked through the public routes by people and by machines (fast repeated clicks are a
burst, which re-marks the earlier clicks as machine; honeypot hits too), events recorded
from outside (bounces, unsubscribes, opens and clicks on other days), and rows removed
through every delete path (communications delete, erase-contact, erase-clicks, purge into
rollups). After each step, analytics read from the cells must equal analytics scanned from
the raw rows, for all time, whole days, partial days, one campaign, with and without bots.
"""
from __future__ import annotations

import datetime as dt
import random
import re
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack.models import (
    events,
    messages,
    stats_days,
    stats_messages,
    stats_tenant_days,
    stats_tenant_messages,
)
from crm_mailtrack.services import communications, contactclicks, privacy, stats
from crm_mailtrack.services.analytics import analytics

from conftest import path_of
from esp_signing import SendGrid

HUMAN_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
DAY0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
CONTACTS = [f"c{i}" for i in range(6)]
#: The ESP whose signed webhooks one step posts (a key made once per test run).
ESP = SendGrid()


@pytest.fixture
def app(make_app):
    app = make_app(MAILTRACK_WEBHOOKS={"sendgrid": {"public_key": ESP.public_key}})
    with app.app_context():
        yield app


def _ranges() -> list[dict[str, Any]]:
    d = lambda days, hours=0: DAY0 + dt.timedelta(days=days, hours=hours)  # noqa: E731
    return [
        {},
        {"include_bots": True},
        {"date_from": d(1), "date_to": d(3)},                      # whole days
        {"date_from": d(0, 6), "date_to": d(2, 18)},               # partial days at both ends
        {"date_from": d(1, 3), "date_to": d(1, 20)},               # inside one day
        {"date_from": d(2)},                                       # open-ended
        {"date_to": d(1, 12), "include_bots": True},
        {"campaign_id": "A"},
        {"campaign_id": "B", "date_from": d(0, 12), "include_bots": True},
    ]


class History:
    def __init__(self, app: Any, client: Any, seed: int) -> None:
        self.app, self.client, self.rng = app, client, random.Random(seed)
        self.mt = app.extensions["mailtrack"].extension
        self.state = app.extensions["mailtrack"]
        self.msgs: dict[str, dict[str, str]] = {}

    # -- steps ------------------------------------------------------------------------------
    def new_message(self) -> None:
        rng = self.rng
        contact = rng.choice(CONTACTS)
        msg = self.mt.track_message(
            contact_id=contact, email=f"{contact}@example.com", subject="s",
            campaign_id=rng.choice([None, "A", "B"]), template_id=rng.choice([None, "T1", "T2"]),
            template_name=rng.choice([None, "Welcome"]), type=rng.choice([None, "OFFERTE", "INVOICE"]),
            html='<p><a href="https://shop.example.com/x">x</a> <a href="https://shop.example.com/y">y</a></p>')
        clicks = re.findall(r'href="([^"]+/t/c/[^"]+)"', msg.html)
        honeypot = re.findall(r'href="([^"]+/t/h/[^"]+)"', msg.html)
        self.msgs[msg.id] = {"contact": contact, "clicks": [path_of(u) for u in clicks],
                             "open": path_of(re.search(r'src="([^"]+/t/o/[^"]+)"', msg.html).group(1)),
                             "honeypot": [path_of(u) for u in honeypot]}

    def _some(self) -> str | None:
        return self.rng.choice(sorted(self.msgs)) if self.msgs else None

    def send(self) -> None:
        mid = self._some()
        if mid is None:
            return
        session = self.state.session
        if self.rng.random() < 0.8:
            at = DAY0 + dt.timedelta(days=self.rng.randrange(4), hours=self.rng.randrange(24))
            values: dict[str, Any] = {"status": "SENT", "sent_at": at}
        else:
            values = {"status": "FAILED", "error_message": "550 no such user"}
        session.execute(sa.update(messages).where(messages.c.id == mid, messages.c.status == "PENDING")
                        .values(**values))
        session.commit()

    def click(self) -> None:
        mid = self._some()
        if mid is None:
            return
        m, rng = self.msgs[mid], self.rng
        ua = BOT_UA if rng.random() < 0.25 else HUMAN_UA
        for _ in range(rng.choice([1, 1, 1, 3])):  # three at once: a burst
            self.client.get(rng.choice(m["clicks"]), headers={"User-Agent": ua})
        if rng.random() < 0.3:
            self.client.get(m["open"], headers={"User-Agent": ua})

    def honeypot(self) -> None:
        mid = self._some()
        if mid is not None and self.msgs[mid]["honeypot"]:
            self.client.get(self.msgs[mid]["honeypot"][0], headers={"User-Agent": HUMAN_UA})

    def record(self) -> None:
        mid = self._some()
        if mid is None:
            return
        kind = self.rng.choice(["open", "click", "bounce", "unsubscribe", "forward"])
        at = DAY0 + dt.timedelta(days=self.rng.randrange(6), hours=self.rng.randrange(24))
        self.mt.record_event(self.msgs[mid]["contact"], kind, message_id=mid, occurred_at=at,
                             url="https://shop.example.com/x" if kind == "click" else None,
                             details={"bounceType": "soft"} if kind == "bounce" else None)

    def webhook(self) -> None:
        """An ESP's signed batch: opens (some flagged as machine, which re-marks our own opens
        around them), clicks, deliveries, soft bounces, unsubscribes, spam reports."""
        import json
        import uuid

        mid = self._some()
        if mid is None:
            return
        rng = self.rng
        at = DAY0 + dt.timedelta(days=rng.randrange(6), hours=rng.randrange(24))
        batch = []
        for _ in range(rng.randrange(1, 4)):
            kind = rng.choice(["open", "open", "click", "delivered", "bounce", "unsubscribe", "spamreport"])
            item = {"email": f"{self.msgs[mid]['contact']}@example.com", "event": kind, "mailtrack_id": mid,
                    "timestamp": int((at + dt.timedelta(seconds=rng.randrange(300))).timestamp()),
                    "sg_event_id": uuid.UUID(int=rng.getrandbits(128)).hex}
            if kind == "open":
                item.update(sg_machine_open=rng.random() < 0.4, useragent=HUMAN_UA)
            elif kind == "click":
                item.update(url="https://shop.example.com/y", useragent=rng.choice([HUMAN_UA, BOT_UA]))
            elif kind == "bounce":
                item.update(type="blocked", status="4.2.2")
            batch.append(item)
        body = json.dumps(batch).encode()
        resp = self.client.post("/mailtrack/hooks/sendgrid", data=body, headers=ESP.headers(body))
        assert resp.status_code == 200 and resp.json["stored"] == len(batch), resp.json

    def outcome(self) -> None:
        """Received mail or an ESP event: external_events.record_outcome, sometimes twice."""
        from crm_mailtrack.models import Message
        from crm_mailtrack.services import external_events

        mid = self._some()
        if mid is None:
            return
        kind = self.rng.choice(["complaint", "delivered", "bounce", "complaint"])
        at = DAY0 + dt.timedelta(days=self.rng.randrange(6), hours=self.rng.randrange(24))
        msg = self.state.session.get(Message, mid)
        for _ in range(self.rng.choice([1, 2])):
            external_events.record_outcome(self.state, msg, kind, occurred_at=at, dedup=("test", f"{mid}-{kind}"),
                                           details={"bounceType": "hard"} if kind == "bounce" else None)

    def remark(self) -> None:
        """What a burst or honeypot does after the fact: an earlier human event becomes a machine's."""
        session = self.state.session
        row = session.execute(sa.select(events.c.id).where(events.c.is_machine.is_(False),
                                                           events.c.type.in_(("open", "click")))
                              .order_by(events.c.id.desc()).limit(1)).first()
        if row is not None:
            session.execute(sa.update(events).where(events.c.id == row.id)
                            .values(is_machine=True, machine_reason="burst"))
            session.commit()

    def delete(self) -> None:
        mid = self._some()
        if mid is not None:
            communications.delete(self.state, "", [mid])
            self.msgs.pop(mid)

    def erase_contact(self) -> None:
        contact = self.rng.choice(CONTACTS)
        self.mt.erase_contact(contact)
        self.msgs = {k: v for k, v in self.msgs.items() if v["contact"] != contact}

    def erase_clicks(self) -> None:
        contactclicks.erase_clicks(self.state, "", self.rng.choice(CONTACTS))

    def purge(self) -> None:
        privacy.purge(self.state, 0, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1))

    def fold(self) -> None:
        stats.fold(self.state, batch=3)  # small batches: many transactions

    # -- the property ------------------------------------------------------------------------
    def check(self) -> None:
        for query in _ranges():
            scanned = analytics(self.state, "", use_cells=False, **query)
            cells = analytics(self.state, "", **query)
            assert cells == scanned, query
        # the tenant-wide sums are the per-campaign cells summed
        session = self.state.session
        for fine, coarse, values in ((stats_messages, stats_tenant_messages, stats.CELL_VALUES),
                                     (stats_days, stats_tenant_days, ("count",))):
            key = [fine.c[k] for k in coarse.primary_key.columns.keys()]
            summed = {tuple(r[:len(key)]): tuple(r[len(key):]) for r in session.execute(
                sa.select(*key, *(sa.func.sum(fine.c[v]) for v in values)).group_by(*key))}
            stored = {tuple(r[:len(key)]): tuple(r[len(key):]) for r in session.execute(
                sa.select(*(coarse.c[k] for k in coarse.primary_key.columns.keys()), *(coarse.c[v] for v in values)))}
            assert {k: v for k, v in stored.items() if any(v)} == {k: v for k, v in summed.items() if any(v)}
        session.commit()


STEPS = {"new_message": 6, "send": 6, "click": 8, "honeypot": 1, "record": 4, "outcome": 2, "webhook": 4,
         "remark": 1, "delete": 1, "erase_contact": 1, "erase_clicks": 1, "purge": 1, "fold": 2}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cells_equal_a_full_scan_after_a_random_history(app, client, seed):
    history = History(app, client, seed)
    names = [name for name, weight in STEPS.items() for _ in range(weight)]
    for _ in range(6):
        history.new_message()
        history.send()
    history.check()
    for step in range(30):
        getattr(history, history.rng.choice(names))()
        if step % 8 == 7:
            history.check()
    history.check()


def test_rebuild_gives_the_cells_the_folds_gave(app, client):
    """Folding change by change and rebuilding from scratch reach the same cells."""
    history = History(app, client, 7)
    for _ in range(10):
        history.new_message()
        history.send()
        history.click()
        history.record()
    history.remark()
    analytics(history.state, "")  # folds
    conn = history.state.session

    def cells() -> tuple[list[Any], list[Any]]:
        return (sorted(tuple(r) for r in conn.execute(sa.select(stats_messages)) if r.messages),
                sorted(tuple(r) for r in conn.execute(sa.select(stats_days)) if r.count))

    folded = cells()
    conn.commit()
    with history.state.engine.begin() as c:
        stats.rebuild(c)
    assert cells() == folded
    assert folded[0] and folded[1]


def test_the_click_path_leaves_events_unfolded_and_analytics_folds_them(app, client):
    history = History(app, client, 11)
    history.new_message()
    history.send()
    analytics(history.state, "")
    mid = next(iter(history.msgs))
    history.state.session.execute(sa.update(messages).where(messages.c.id == mid)
                                  .values(status="SENT", sent_at=DAY0))
    history.state.session.commit()
    client.get(history.msgs[mid]["clicks"][0], headers={"User-Agent": HUMAN_UA})
    folded_as = history.state.session.execute(sa.select(events.c.folded_as).where(events.c.type == "click")).scalar()
    assert folded_as is None  # the click path did nothing for the cells
    history.state.session.commit()
    result = analytics(history.state, "")
    assert result["totalClicked"] == 1
    assert history.state.session.execute(sa.select(events.c.folded_as).where(events.c.type == "click")).scalar() is False


def test_bookkeeping_does_not_touch_updated_at(app, client):
    history = History(app, client, 5)
    for _ in range(4):
        history.new_message()
        history.send()
    session = history.state.session
    before = dict(session.execute(sa.select(messages.c.id, messages.c.updated_at)).all())
    session.commit()
    analytics(history.state, "")
    with history.state.engine.begin() as c:
        stats.rebuild(c)
    assert dict(session.execute(sa.select(messages.c.id, messages.c.updated_at)).all()) == before


def test_a_cell_folded_down_to_zero_names_no_template(app):
    """A deleted message's cell stays at zero messages: its template name must not name the
    group (a random history found this: cells said 'Welcome', the scan None)."""
    mt = app.extensions["mailtrack"].extension
    state = app.extensions["mailtrack"]
    named = mt.track_message(contact_id="a", email="a@example.com", subject="s", html="<p>x</p>",
                             template_name="Welcome")
    plain = mt.track_message(contact_id="b", email="b@example.com", subject="s", html="<p>x</p>")
    state.session.execute(sa.update(messages).where(messages.c.id.in_([named.id, plain.id]))
                          .values(status="SENT", sent_at=DAY0))
    state.session.commit()
    assert analytics(state, "")["byTemplate"][0]["templateName"] == "Welcome"  # folds both
    communications.delete(state, "", [named.id])
    for got in (analytics(state, ""), analytics(state, "", use_cells=False)):
        assert [(g["templateId"], g["templateName"], g["totalSent"]) for g in got["byTemplate"]] == [(None, None, 1)]
