"""Human or machine: every open and click gets a verdict and a reason.

A labelled corpus of real user agents and request patterns (tests/data/user_agents.csv) goes
through the real tracking routes; behavioural signals (time since send, bursts, the honeypot
link) are driven with a controlled clock, as a scanner and a person would produce them.
"""
from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack import ConfigurationError
from crm_mailtrack.models import events, messages

from conftest import BASE_URL, path_of

CORPUS_PATH = Path(__file__).parent / "data" / "user_agents.csv"
CORPUS: list[dict[str, str]] = list(csv.DictReader(CORPUS_PATH.open(newline="", encoding="utf-8")))
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.timezone.utc)
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
HREF = re.compile(r'href="(http://crm\.test/mailtrack/t/[cho]/[^"]+)"')


def _headers(row: dict[str, str]) -> dict[str, str]:
    headers = {"User-Agent": row["user_agent"]}  # "" too: the test client would send its own
    if row["header"]:
        name, value = row["header"].split(":", 1)
        headers[name.strip()] = value.strip()
    return headers


def _hit(client: Any, mailtrack: Any, row: dict[str, str]) -> sa.Row[Any]:
    """Send the corpus row's request to a fresh message's click or open URL; the stored event."""
    msg = mailtrack.track_message(contact_id="c1", email="c1@example.com", subject="Hi",
                                  html='<a href="https://shop.test/">shop</a>')
    url = mailtrack.click_url(msg, "https://shop.test/") if row["event"] == "click" else mailtrack.open_url(msg)
    resp = client.open(path_of(url), method=row["method"], headers=_headers(row),
                       environ_base={"REMOTE_ADDR": row["ip"]})
    assert resp.status_code == (302 if row["event"] == "click" else 200)
    with mailtrack_engine(mailtrack).connect() as conn:
        return conn.execute(
            sa.select(events.c.type, events.c.is_machine, events.c.machine_reason, events.c.details)
            .where(events.c.message_id == msg.id)
        ).one()


def mailtrack_engine(mailtrack: Any) -> sa.Engine:
    from crm_mailtrack.state import get_state

    return get_state().engine


def _verdict(event: sa.Row[Any]) -> tuple[bool, str]:
    return bool(event.is_machine), event.machine_reason or ""


def _expected(row: dict[str, str]) -> tuple[bool, str]:
    return row["machine"] == "1", row["reason"]


def _param(row: dict[str, str]) -> Any:
    marks = [pytest.mark.xfail(reason=row["known_miss"], strict=True)] if row["known_miss"] else []
    return pytest.param(row, id=f"{row['event']}:{row['case']}", marks=marks)


@pytest.fixture(scope="module")
def corpus_app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One SQLite app for the per-row corpus tests (the end-to-end test covers both DBs)."""
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from crm_mailtrack import MailTrack

    from conftest import SECRET

    tmp = tmp_path_factory.mktemp("corpus")
    app = Flask("corpus", instance_path=str(tmp))
    app.config.update(TESTING=True, SECRET_KEY=SECRET, SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp}/c.db",
                      MAILTRACK_BASE_URL=BASE_URL, MAILTRACK_JOURNAL_PATH=str(tmp / "j.jsonl"))
    db = SQLAlchemy()
    db.init_app(app)
    mt = MailTrack(app, db=db)
    with app.app_context():
        mt.create_all()
        yield app
        db.session.remove()
        db.engine.dispose()


@pytest.mark.parametrize("row", [_param(r) for r in CORPUS])
def test_corpus_row_verdict_reason_and_device(corpus_app: Any, row: dict[str, str]) -> None:
    mt = corpus_app.extensions["mailtrack"].extension
    event = _hit(corpus_app.test_client(), mt, row)
    assert _verdict(event) == _expected(row)
    device = (event.details or {}).get("device") or {}
    for key in ("type", "os", "client"):
        if row[key]:
            assert device.get(key) == row[key], (key, device)


def test_corpus_share_classified_right(make_app: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """End to end on each database: the share of the corpus whose verdict and reason are right."""
    app = make_app()
    mt = app.extensions["mailtrack"].extension
    client = app.test_client()
    with app.app_context():
        results = [(row, _verdict(_hit(client, mt, row))) for row in CORPUS]
    right = [row for row, got in results if got == _expected(row)]
    wrong = [(row["case"], got) for row, got in results if got != _expected(row)]
    share = len(right) / len(CORPUS)
    machines = [row for row in CORPUS if row["machine"] == "1"]
    humans = [row for row in CORPUS if row["machine"] == "0"]
    human_right = sum(1 for row, got in results if row["machine"] == "0" and got == _expected(row))
    with capsys.disabled():
        print(f"\ncorpus: {len(right)}/{len(CORPUS)} = {share:.1%} classified right "
              f"({len(machines)} machine, {len(humans)} human rows; humans right {human_right}/{len(humans)}); "
              f"misses: {wrong}")
    # Only the rows labelled as known misses may be wrong, and no person may be called a machine.
    assert sorted(case for case, _ in wrong) == sorted(r["case"] for r in CORPUS if r["known_miss"])
    assert human_right == len(humans)
    assert share >= 0.95


# -- behaviour: time since send, bursts, the honeypot ------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[dt.datetime]:
    """The tracking service's clock, set by the test: ``clock[0] = moment``."""
    now = [T0]
    monkeypatch.setattr("crm_mailtrack.services.events.utcnow", lambda: now[0])
    return now


def _sent_message(mailtrack: Any, db: Any, links: int = 3, sent_at: dt.datetime | None = T0) -> tuple[Any, list[str], str]:
    html = "<html><body>" + "".join(f'<a href="https://shop.test/{i}">p{i}</a>' for i in range(links)) + "</body></html>"
    msg = mailtrack.track_message(contact_id="c1", email="c1@example.com", subject="Hi", html=html)
    db.session.execute(sa.update(messages).where(messages.c.id == msg.id).values(sent_at=sent_at))
    db.session.commit()
    urls = HREF.findall(msg.html)
    clicks = [path_of(u) for u in urls if "/t/c/" in u]
    (honeypot,) = [path_of(u) for u in urls if "/t/h/" in u]
    return msg, clicks, honeypot


def _get(client: Any, path: str, clock: list[dt.datetime], at: float, ua: str = CHROME, ip: str = "198.51.100.7") -> Any:
    clock[0] = T0 + dt.timedelta(seconds=at)
    return client.get(path, headers={"User-Agent": ua}, environ_base={"REMOTE_ADDR": ip})


def _verdicts(db: Any, message_id: str) -> list[tuple[str | None, bool, str | None]]:
    rows = db.session.execute(
        sa.select(events.c.link_id, events.c.is_machine, events.c.machine_reason)
        .where(events.c.message_id == message_id).order_by(events.c.occurred_at, events.c.id)
    ).all()
    return [(r.link_id, bool(r.is_machine), r.machine_reason) for r in rows]


def test_too_fast_after_send_is_machine_later_is_human(mailtrack, db, client, clock):
    msg, clicks, _ = _sent_message(mailtrack, db)
    pixel = path_of(mailtrack.open_url(msg))
    assert _get(client, pixel, clock, 2).status_code == 200
    assert _get(client, clicks[0], clock, 4).status_code == 302
    assert _get(client, clicks[0], clock, 600).status_code == 302
    assert [(m, r) for _, m, r in _verdicts(db, msg.id)] == [
        (True, "too-fast-after-send"), (True, "too-fast-after-send"), (False, None)]


def test_unsent_message_and_disabled_rule_are_not_too_fast(make_app, clock):
    app = make_app(MAILTRACK_BOT_AFTER_SEND_SECONDS=0)
    with app.app_context():
        mt, db = app.extensions["mailtrack"].extension, app.extensions["sqlalchemy"]
        msg, clicks, _ = _sent_message(mt, db)
        _get(app.test_client(), clicks[0], clock, 1)
        unsent, clicks2, _ = _sent_message(mt, db, sent_at=None)
        _get(app.test_client(), clicks2[0], clock, 1)
        assert _verdicts(db, msg.id)[0][1:] == (False, None)
        assert _verdicts(db, unsent.id)[0][1:] == (False, None)


def test_burst_marks_every_click_of_the_burst(mailtrack, db, client, clock):
    msg, clicks, _ = _sent_message(mailtrack, db)
    _get(client, clicks[0], clock, 300.0)
    _get(client, clicks[1], clock, 300.4)
    _get(client, clicks[2], clock, 300.8)
    assert [(m, r) for _, m, r in _verdicts(db, msg.id)] == [(True, "burst")] * 3


def test_person_clicking_links_seconds_apart_or_twice_is_human(mailtrack, db, client, clock):
    msg, clicks, _ = _sent_message(mailtrack, db)
    _get(client, clicks[0], clock, 300.0)
    _get(client, clicks[0], clock, 300.3)  # a double click on one link is no burst
    _get(client, clicks[1], clock, 310.0)
    _get(client, clicks[2], clock, 325.0)
    assert [(m, r) for _, m, r in _verdicts(db, msg.id)] == [(False, None)] * 4


def test_honeypot_link_is_invisible_to_people_and_screen_readers(mailtrack, db):
    _, _, honeypot = _sent_message(mailtrack, db)
    msg = mailtrack.track_message(contact_id="c1", email="c1@example.com", subject="Hi",
                                  html='<body><a href="https://shop.test/">x</a></body>')
    (tag,) = re.findall(r"<a [^>]*/t/h/[^>]*>[^<]*</a>", msg.html)
    assert 'aria-hidden="true"' in tag and 'tabindex="-1"' in tag and "display:none" in tag
    assert tag.endswith("></a>")  # no text at all, nothing to announce
    assert msg.html.index(tag) < msg.html.index("</body>")
    assert "/t/h/" not in mailtrack.track_message(contact_id="c1", email="c1@example.com",
                                                  subject="Hi", html="<p>no links</p>").html


def test_honeypot_hit_marks_nearby_clicks_and_a_later_person_counts(mailtrack, db, client, clock):
    msg, clicks, honeypot = _sent_message(mailtrack, db)
    scanner = "Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko"
    _get(client, clicks[0], clock, 40, ua=scanner, ip="148.163.150.20")
    _get(client, clicks[1], clock, 45, ua=scanner, ip="148.163.150.20")
    resp = _get(client, honeypot, clock, 47, ua=scanner, ip="148.163.150.20")
    assert resp.status_code == 200 and resp.headers["Cache-Control"].startswith("no-store")
    _get(client, clicks[2], clock, 50, ua=scanner, ip="148.163.150.20")  # after the hit, in the window
    _get(client, clicks[2], clock, 3600)  # the person, an hour later
    got = _verdicts(db, msg.id)
    assert [(m, r) for _, m, r in got] == [(True, "honeypot")] * 4 + [(False, None)]
    assert got[2][0] is None  # the honeypot hit itself is a click on no link
    hit = db.session.execute(sa.select(events.c.details).where(events.c.link_id.is_(None),
                                                              events.c.message_id == msg.id)).scalar_one()
    assert hit["honeypot"] is True


def test_honeypot_and_click_tokens_do_not_cross(mailtrack, db, client):
    _, clicks, honeypot = _sent_message(mailtrack, db)
    assert client.get(honeypot.replace("/t/h/", "/t/c/")).status_code == 404
    assert client.get(clicks[0].replace("/t/c/", "/t/h/")).status_code == 404
    assert client.get(honeypot[:-3] + "xyz").status_code == 404
    assert db.session.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 0


def test_honeypot_can_be_turned_off(make_app):
    app = make_app(MAILTRACK_HONEYPOT=False)
    with app.app_context():
        msg = app.extensions["mailtrack"].extension.track_message(
            contact_id="c1", email="c1@example.com", subject="Hi", html='<a href="https://shop.test/">x</a>')
        assert "/t/h/" not in msg.html


def test_device_data_is_stored_on_opens_and_clicks(mailtrack, db, client):
    msg, clicks, _ = _sent_message(mailtrack, db, sent_at=None)
    iphone = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
              "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1")
    client.get(clicks[0], headers={"User-Agent": iphone})
    client.get(path_of(mailtrack.open_url(msg)),
               headers={"User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Thunderbird/115.5.1"})
    rows = db.session.execute(sa.select(events.c.type, events.c.details).order_by(events.c.id)).all()
    assert [(r.type, r.details["device"]) for r in rows] == [
        ("click", {"type": "mobile", "os": "iOS", "client": "Mobile Safari"}),
        ("open", {"type": "desktop", "os": "Windows", "client": "Thunderbird"}),
    ]


def test_signal_carries_the_verdict(mailtrack, db, client, clock, recorded_signals):
    msg, clicks, _ = _sent_message(mailtrack, db)
    _get(client, clicks[0], clock, 1)
    (kw,) = recorded_signals.of("link_clicked")
    assert kw["event"].is_machine is True and kw["event"].machine_reason == "too-fast-after-send"


def test_own_scanner_networks(make_app):
    app = make_app(MAILTRACK_SCANNER_NETWORKS=["205.139.110.0/24"])
    row = next(r for r in CORPUS if r["case"].startswith("Mimecast"))
    with app.app_context():
        event = _hit(app.test_client(), app.extensions["mailtrack"].extension, row)
    assert _verdict(event) == (True, "scanner-network")


@pytest.mark.parametrize("config", [
    {"MAILTRACK_BOT_BURST_SECONDS": -1},
    {"MAILTRACK_BOT_AFTER_SEND_SECONDS": "ten"},
    {"MAILTRACK_SCANNER_NETWORKS": ["40.107.0.0/16", "not-a-network"]},
])
def test_bad_bot_config_fails_at_init_naming_the_key(make_app, config):
    (key,) = config
    with pytest.raises(ConfigurationError, match=key):
        make_app(**config)
