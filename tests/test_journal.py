"""Database loss, made real: a locked database (another connection holds an exclusive lock)
and an unreachable one (nothing listens). Clicks still redirect, the pixel still answers,
their events go to the journal, and ``flask mailtrack replay-journal`` writes each exactly
once. An unsubscribe that cannot be saved answers 503, never 200."""
from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack.models import dnc, events

from conftest import path_of, tracked_paths
from journalhelpers import DEST, _journaled_open, count, replay, tracked
from journalhelpers import outage_app  # noqa: F401 - fixture


@pytest.fixture
def locked_app(make_app, database_url):
    """``(app, lock)``: an app with a short lock wait, and a context manager that makes
    the given tables unavailable by holding an exclusive lock from another connection."""
    if database_url.startswith("sqlite"):
        app = make_app(SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"timeout": 0.2}})

        @contextlib.contextmanager
        def lock(*tables: str) -> Iterator[None]:
            con = sqlite3.connect(database_url[len("sqlite:///"):], isolation_level=None)
            con.execute("BEGIN EXCLUSIVE")
            try:
                yield
            finally:
                con.execute("ROLLBACK")
                con.close()
    else:
        assert "options=" in database_url and database_url.rsplit("?", 1)[1].startswith("options=")
        app = make_app(SQLALCHEMY_DATABASE_URI=database_url + "%20-clock_timeout%3D200")
        locker = sa.create_engine(database_url, poolclass=sa.pool.NullPool)

        @contextlib.contextmanager
        def lock(*tables: str) -> Iterator[None]:
            with locker.connect() as conn:
                conn.begin()
                for table in tables:
                    conn.execute(sa.text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
                try:
                    yield
                finally:
                    conn.rollback()
    yield app, lock


def test_locked_database_click_and_pixel_are_journaled_then_replayed_once(locked_app, recorded_signals):
    app, lock = locked_app
    p = tracked(app)
    client = app.test_client()
    with lock("mailtrack_events"):
        resp = client.get(p["click"], environ_base={"REMOTE_ADDR": "198.51.100.9"})
        assert resp.status_code == 302 and resp.headers["Location"] == DEST
        head = client.head(p["click"])
        assert head.status_code == 302
        pixel = client.get(p["open"])
        assert pixel.status_code == 200 and pixel.mimetype == "image/gif"
    assert count(app) == 0
    assert recorded_signals.calls == []  # nothing was stored, so nothing is announced yet
    journal = app.extensions["mailtrack"].journal
    assert journal.count() == 3
    saved = open(journal.path, encoding="utf-8").read()

    assert "replayed 3" in replay(app)
    # Stored now: the signals go out once, from the app.
    assert recorded_signals.names().count("link_clicked") == 2
    assert recorded_signals.names().count("email_opened") == 1
    assert all(sender is app for _, sender, _ in recorded_signals.calls)
    assert count(app, type="click") == 2 and count(app, type="open") == 1
    assert count(app, type="click", is_machine=True) == 1
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        human = conn.execute(sa.select(events).where(events.c.type == "click", events.c.is_machine.is_(False))).one()
    assert (human.message_id, human.contact_id, human.campaign_id, human.url) == (p["id"], "c1", "k", DEST)
    assert human.ip == "198.51.100.0" and human.uid

    # Twice adds nothing; the same entries replayed again (a crash before the file was
    # removed) are skipped.
    assert "empty" in replay(app)
    with open(journal.path, "w", encoding="utf-8") as fh:
        fh.write(saved)
    assert "replayed 0" in replay(app)
    assert count(app) == 3
    assert recorded_signals.names().count("link_clicked") == 2
    assert journal.count() == 0


def test_locked_database_unsubscribe_answers_503(locked_app):
    app, lock = locked_app
    p = tracked(app)
    client = app.test_client()
    with lock("mailtrack_dnc", "mailtrack_events"):
        resp = client.post(p["unsub"], data={"List-Unsubscribe": "One-Click"})
        assert resp.status_code == 503
        assert "Location" not in resp.headers
    assert count(app, dnc) == 0 and count(app) == 0
    # Once the database is back, the same POST works.
    assert client.post(p["unsub"], data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert count(app, dnc) == 1


def test_unreachable_database_click_and_pixel_still_answer(make_app, outage_app):
    healthy = make_app()
    p = tracked(healthy)
    down = outage_app(healthy.config["MAILTRACK_JOURNAL_PATH"])
    client = down.test_client()
    resp = client.get(p["click"])
    assert resp.status_code == 302 and resp.headers["Location"] == DEST
    assert "no-store" in resp.headers["Cache-Control"]
    pixel = client.get(p["open"])
    assert pixel.status_code == 200 and pixel.data.startswith(b"GIF89a")
    unsub = client.post(p["unsub"], data={"List-Unsubscribe": "One-Click"})
    assert unsub.status_code == 503
    # A bad token is still refused while the database is down.
    assert client.get(p["click"] + "x").status_code == 404
    assert down.extensions["mailtrack"].journal.count() == 2

    assert count(healthy) == 0
    assert "replayed 2" in replay(healthy)
    assert count(healthy, type="click", message_id=p["id"]) == 1
    assert count(healthy, type="open", message_id=p["id"]) == 1
    assert count(healthy, dnc) == 0
    replay(healthy)
    assert count(healthy) == 2


def test_replay_cli_reports_failure_and_keeps_the_journal(make_app, outage_app, tmp_path):
    healthy = make_app()
    p = tracked(healthy)
    down = outage_app(healthy.config["MAILTRACK_JOURNAL_PATH"])
    assert down.test_client().get(p["click"]).status_code == 302
    result = down.test_cli_runner().invoke(args=["mailtrack", "replay-journal"])
    assert result.exit_code != 0
    assert down.extensions["mailtrack"].journal.count() == 1
    assert "replayed 1" in replay(healthy)
    assert count(healthy, type="click") == 1


def test_claim_waits_for_a_writer_holding_the_journal_lock(tmp_path):
    """A worker that holds the journal's lock (it has checked that its open file is the live
    journal and is about to write) must finish before ``claim()`` moves the file aside:
    otherwise the replay may read and delete the claimed file before the line lands in it."""
    import fcntl
    import json
    import os
    import threading

    from crm_mailtrack.journal import Journal

    def entry(uid: str) -> dict[str, str]:
        return {"uid": uid, "type": "open", "message_id": "m1", "occurred_at": "2024-05-01T12:00:00Z"}

    journal = Journal(str(tmp_path / "j.jsonl"))
    journal.append(entry("first"))
    writer = open(journal.path, "ab")  # a second worker, mid-append
    fcntl.flock(writer.fileno(), fcntl.LOCK_EX)
    claimed: list[list[str]] = []
    claimer = threading.Thread(target=lambda: claimed.append(journal.claim()))
    claimer.start()
    claimer.join(1.0)
    try:
        assert claimer.is_alive() and os.path.exists(journal.path), "claim() did not wait for the lock"
        writer.write(json.dumps(entry("late")).encode() + b"\n")
        writer.flush()
    finally:
        writer.close()  # releases the lock
        claimer.join(10)
    [files] = claimed
    assert [e["uid"] for path in files for e in journal.read(path)] == ["first", "late"]
    assert not os.path.exists(journal.path)


def test_a_writer_that_waited_while_the_journal_was_claimed_writes_to_the_new_one(tmp_path):
    """A worker blocked on the journal's lock while a replay claims (renames) the file must
    not write into the claimed file, which the replay may already have read: it reopens the
    live path and writes there."""
    import fcntl
    import os
    import threading

    from crm_mailtrack.journal import Journal

    entry = {"uid": "waited", "type": "open", "message_id": "m1", "occurred_at": "2024-05-01T12:00:00Z"}
    journal = Journal(str(tmp_path / "j.jsonl"))
    open(journal.path, "wb").close()
    claim = open(journal.path, "ab")  # the replay, holding the lock while it renames
    fcntl.flock(claim.fileno(), fcntl.LOCK_EX)
    writer = threading.Thread(target=journal.append, args=(entry,))
    writer.start()
    writer.join(1.0)
    try:
        assert writer.is_alive(), "append() did not wait for the lock"
        os.rename(journal.path, journal.path + ".replay-1")
    finally:
        claim.close()  # releases the lock
        writer.join(10)
    assert os.path.getsize(journal.path + ".replay-1") == 0
    assert [e["uid"] for e in journal.read(journal.path)] == ["waited"]


def test_journal_holds_no_email_and_replay_respects_erasure(make_app, outage_app):
    healthy = make_app()
    p = tracked(healthy)
    down = outage_app(healthy.config["MAILTRACK_JOURNAL_PATH"])
    assert down.test_client().get(p["click"]).status_code == 302
    with open(healthy.config["MAILTRACK_JOURNAL_PATH"], encoding="utf-8") as fh:
        assert "@" not in fh.read()
    with healthy.app_context():
        healthy.extensions["mailtrack"].extension.erase_contact("c1")
    assert "skipped 1" in replay(healthy)
    assert count(healthy) == 0


def test_journal_files_are_private_to_the_app_user(make_app, outage_app):
    """The journal holds IP addresses and user agents: it, its claimed batches and the
    rejected lines are readable by the app's user only (0600)."""
    import json
    import os
    import stat

    from crm_mailtrack.journal import Journal

    healthy, path, good = _journaled_open(make_app, outage_app)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "ab") as fh:
        fh.write(b"bad\n" + json.dumps({**json.loads(good), "uid": "second"}).encode() + b"\n")
    claimed = Journal(path).claim()
    assert [stat.S_IMODE(os.stat(p).st_mode) for p in claimed] == [0o600]
    assert stat.S_IMODE(os.stat(path + ".rejected").st_mode) == 0o600


def test_the_journal_directory_is_created(make_app, outage_app, tmp_path):
    healthy = make_app(MAILTRACK_JOURNAL_PATH=str(tmp_path / "not" / "yet" / "journal.jsonl"))
    p = tracked(healthy)
    down = outage_app(healthy.config["MAILTRACK_JOURNAL_PATH"])
    assert down.test_client().get(p["click"]).status_code == 302
    assert "replayed 1 events" in replay(healthy)


def test_a_journal_path_with_glob_characters_is_replayed(make_app, outage_app, tmp_path):
    """The claimed batches are found by name next to the journal: a directory named with
    ``[``, ``]``, ``*`` or ``?`` (legal in a path) must not be read as a pattern."""
    healthy = make_app(MAILTRACK_JOURNAL_PATH=str(tmp_path / "app[1]*?" / "journal.jsonl"))
    p = tracked(healthy)
    down = outage_app(healthy.config["MAILTRACK_JOURNAL_PATH"])
    assert down.test_client().get(p["click"]).status_code == 302
    assert down.extensions["mailtrack"].journal.count() == 1
    assert "replayed 1 events" in replay(healthy)
    assert count(healthy, type="click", message_id=p["id"]) == 1
    assert healthy.extensions["mailtrack"].journal.count() == 0


def test_a_journal_named_without_a_directory_is_written_where_it_is_named(make_app, outage_app, tmp_path,
                                                                         monkeypatch):
    """``MAILTRACK_JOURNAL_PATH = "journal.jsonl"`` (no directory) is the working directory's
    file, and nothing else is created there."""
    healthy = make_app()
    p = tracked(healthy)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    assert outage_app("journal.jsonl").test_client().get(p["click"]).status_code == 302
    assert [entry.name for entry in workdir.iterdir()] == ["journal.jsonl"]


def test_replayed_clicks_get_the_verdict_the_live_route_gives(make_app, outage_app):
    """Two links of one message clicked within a second while the database was down: a
    burst, a machine's, after the replay as it would have been live; a replay that finds
    them stored says it skipped both."""
    healthy = make_app()
    mt = healthy.extensions["mailtrack"].extension
    with healthy.app_context():
        msg = mt.track_message(contact_id="c1", email="c1@example.com", subject="s",
                               html='<a href="https://shop.test/a">a</a> <a href="https://shop.test/b">b</a>')
        links = [mt.click_url(msg, f"https://shop.test/{x}") for x in "ab"]
    path = healthy.config["MAILTRACK_JOURNAL_PATH"]
    down = outage_app(path).test_client()
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                             "Chrome/126.0 Safari/537.36"}
    for link in links:
        assert down.get(path_of(link), headers=browser).status_code == 302
    with open(path, "rb") as fh:
        journaled = fh.read()
    assert "replayed 2 events" in replay(healthy)
    with healthy.app_context(), healthy.extensions["mailtrack"].engine.connect() as conn:
        verdicts = conn.execute(sa.select(events.c.is_machine, events.c.machine_reason)
                                .where(events.c.message_id == msg.id)).all()
    assert [tuple(v) for v in verdicts] == [(True, "burst"), (True, "burst")]
    with open(path, "wb") as fh:  # the same batch again (a replay that died before removing it)
        fh.write(journaled)
    assert "replayed 0 events, skipped 2" in replay(healthy)


def test_a_replayed_click_near_a_honeypot_hit_marks_no_other_click(make_app, outage_app):
    """Only the honeypot hit marks the message's clicks around it (within the honeypot
    window); a link click the hit reveals as a machine's does not mark more. Here a
    person's click (journaled, 200 s before the hit: outside its 60 s window) stays a
    person's when a click 180 s before the hit is replayed after the hit."""
    import datetime as dt
    import json
    import re

    healthy = make_app(MAILTRACK_HONEYPOT_WINDOW_SECONDS=60)
    mt = healthy.extensions["mailtrack"].extension
    with healthy.app_context():
        msg = mt.track_message(contact_id="c1", email="c1@example.com", subject="s",
                               html='<a href="https://shop.test/a">a</a> <a href="https://shop.test/b">b</a>')
        message_id, hrefs = msg.id, re.findall(r'href="([^"]+)"', msg.html)
    links = [path_of(u) for u in hrefs if "/t/c/" in u]
    (honeypot,) = [path_of(u) for u in hrefs if "/t/h/" in u]
    path = healthy.config["MAILTRACK_JOURNAL_PATH"]
    down = outage_app(path).test_client()
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                             "Chrome/126.0 Safari/537.36"}
    now = dt.datetime.now(dt.timezone.utc)

    def click_journaled_at(link: str, seconds_before: int) -> None:
        assert down.get(link, headers=browser).status_code == 302
        with open(path, "rb") as fh:
            [line] = fh.read().splitlines()
        at = (now - dt.timedelta(seconds=seconds_before)).isoformat()
        with open(path, "wb") as fh:
            fh.write(json.dumps({**json.loads(line), "occurred_at": at}).encode() + b"\n")
        assert "replayed 1 events" in replay(healthy)

    click_journaled_at(links[0], 200)
    assert healthy.test_client().get(honeypot, headers=browser).status_code == 200
    click_journaled_at(links[1], 180)
    with healthy.app_context(), healthy.extensions["mailtrack"].engine.connect() as conn:
        verdicts = dict(conn.execute(sa.select(events.c.url, events.c.is_machine)
                                     .where(events.c.message_id == message_id, events.c.url.is_not(None))).all())
    assert verdicts["https://shop.test/a"] is False


def test_the_operator_is_told_what_was_journaled_or_lost(make_app, outage_app, tmp_path, caplog):
    """The log says which event went to the journal (with the database error), and which
    was lost because the journal could not be written either."""
    import logging

    healthy = make_app()
    p = tracked(healthy)
    down = outage_app(healthy.config["MAILTRACK_JOURNAL_PATH"])
    with caplog.at_level(logging.WARNING):
        assert down.test_client().get(p["click"]).status_code == 302
    [journaled] = [r for r in caplog.records if "journaled" in r.getMessage()]
    assert journaled.levelno == logging.WARNING
    assert journaled.exc_info and isinstance(journaled.exc_info[1], Exception)  # the database error itself
    assert journaled.getMessage() == "mailtrack: database unavailable, click event journaled"

    caplog.clear()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    lost = outage_app(str(blocked / "journal.jsonl"))  # its directory is a file: no journal
    with caplog.at_level(logging.WARNING):
        assert lost.test_client().get(p["open"]).status_code == 200
    [failed] = [r for r in caplog.records if "lost" in r.getMessage()]
    assert failed.levelno == logging.ERROR and failed.getMessage() == "mailtrack: journal write failed; open event lost"


def test_a_replayed_click_and_open_are_stored_and_announced_as_live_ones(make_app, outage_app, recorded_signals):
    """The same person's click (on a destination with ``utm_*`` parameters) and open of two
    messages, one while the database is up and one while it is unreachable: after the
    replay both messages hold the same rows (device details, address, verdict, the UTM tag
    included) and the signals say the same."""
    healthy = make_app()
    dest = "https://dest.test/sale?utm_source=news&utm_campaign=spring"
    browser = {"User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                             "Chrome/126.0 Safari/537.36"}
    live, later = (tracked_paths(healthy, dest, campaign_id="k", contact_id=c) for c in ("c1", "c2"))
    for name in ("click", "open"):
        assert healthy.test_client().get(live[name], headers=browser).status_code in (200, 302)
    down = outage_app(healthy.config["MAILTRACK_JOURNAL_PATH"]).test_client()
    for name in ("click", "open"):
        assert down.get(later[name], headers=browser).status_code in (200, 302)
    assert "replayed 2" in replay(healthy)

    def rows(message_id: str) -> list[tuple[Any, ...]]:
        with healthy.app_context(), healthy.extensions["mailtrack"].engine.connect() as conn:
            found = conn.execute(sa.select(events.c.type, events.c.contact_id, events.c.email, events.c.campaign_id,
                                           events.c.link_id, events.c.url, events.c.ip, events.c.user_agent,
                                           events.c.is_machine, events.c.machine_reason, events.c.details)
                                 .where(events.c.message_id == message_id).order_by(events.c.type)).all()
        return [(t, c.replace("c2", "c1"), e.replace("c2", "c1"), *rest) for t, c, e, *rest in found]

    stored = rows(later["id"])
    assert stored == rows(live["id"])
    click = next(r for r in stored if r[0] == "click")
    assert click[5:10] == (dest, "127.0.0.0", browser["User-Agent"], False, None)
    assert click[10] == {"device": {"type": "desktop", "os": "Windows", "client": "Chrome"}}
    assert {r[0] for r in stored} >= {"click", "open"}

    def norm(value: Any) -> Any:  # the two messages' contacts are c1 and c2
        return value.replace("c2", "c1") if isinstance(value, str) else value

    def said(message_id: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for name, _, kw in recorded_signals.calls:
            if kw.get("message_id") == message_id or getattr(kw.get("event"), "message_id", None) == message_id:
                event = kw.get("event")
                kw = {k: v for k, v in kw.items() if k not in ("event", "message_id")}
                if event is not None:
                    kw["event"] = tuple(norm(getattr(event, c)) for c in (
                        "type", "contact_id", "email", "campaign_id", "link_id", "url", "ip", "user_agent",
                        "is_machine", "machine_reason", "details", "tenant_id"))
                out.append((name, {k: norm(v) for k, v in kw.items()}))
        return out

    assert said(later["id"]) == said(live["id"])
    with healthy.app_context(), healthy.extensions["mailtrack"].engine.connect() as conn:
        stored_ids = sorted(conn.execute(sa.select(events.c.id, events.c.uid, events.c.tenant_id)
                                         .where(events.c.type.in_(["click", "open"]))).all())
    assert sorted((kw["event"].id, kw["event"].uid, kw["event"].tenant_id)
                  for name, _, kw in recorded_signals.calls if name in ("link_clicked", "email_opened")) == stored_ids
    announced = {name: kw["event"] for name, kw in said(live["id"]) if name in ("link_clicked", "email_opened")}
    assert [announced["link_clicked"][:11], announced["email_opened"][:11]] == rows(live["id"])
    assert all(kw["event"].message_id == kw["message_id"] for name, _, kw in recorded_signals.calls
               if name in ("link_clicked", "email_opened"))
    assert said(live["id"])[0][1]["event"][10] == {"device": {"type": "desktop", "os": "Windows", "client": "Chrome"}}
    assert [name for name, _ in said(later["id"])] == ["link_clicked", "event_recorded", "email_opened",
                                                       "event_recorded"]
    assert sorted(kw["contact_id"] for kw in recorded_signals.of("utm_tag_added")) == ["c1", "c2"]


def test_an_event_without_details_is_replayed_with_none_as_a_live_one_is_stored(make_app, outage_app):
    """A client without a User-Agent leaves an event without device details: the column is
    SQL NULL, live or replayed (not a JSON ``null``, which a host's ``details IS NULL``
    query would not find)."""
    healthy = make_app()
    live, later = tracked(healthy), tracked(healthy)
    assert healthy.test_client().get(live["open"], headers={"User-Agent": ""}).status_code == 200
    down = outage_app(healthy.config["MAILTRACK_JOURNAL_PATH"]).test_client()
    assert down.get(later["open"], headers={"User-Agent": ""}).status_code == 200
    assert "replayed 1 events" in replay(healthy)
    with healthy.app_context(), healthy.extensions["mailtrack"].engine.connect() as conn:
        found = conn.execute(sa.select(events.c.message_id).where(events.c.type == "open",
                                                                  events.c.details.is_(None))).scalars().all()
    assert sorted(found) == sorted([live["id"], later["id"]])



def test_a_replayed_click_is_judged_by_the_history_around_its_own_time(make_app, outage_app):
    """A click journaled during an outage and replayed later is judged by the honeypot hits
    and clicks within the windows either side of when it happened: hours before a honeypot
    hit and a click on another link it is a person's; seconds before the hit, a machine's."""
    import datetime as dt
    import json
    import re

    healthy = make_app(MAILTRACK_HONEYPOT_WINDOW_SECONDS=60, MAILTRACK_BOT_BURST_SECONDS=10)
    mt = healthy.extensions["mailtrack"].extension
    with healthy.app_context():
        msg = mt.track_message(contact_id="c1", email="c1@example.com", subject="s",
                               html='<a href="https://shop.test/a">a</a> <a href="https://shop.test/b">b</a>')
        message_id, hrefs = msg.id, re.findall(r'href="([^"]+)"', msg.html)
    link_a, link_b = [path_of(u) for u in hrefs if "/t/c/" in u]
    (honeypot,) = [path_of(u) for u in hrefs if "/t/h/" in u]
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                             "Chrome/126.0 Safari/537.36"}
    live = healthy.test_client()
    assert live.get(honeypot, headers=browser).status_code == 200
    assert live.get(link_b, headers=browser).status_code == 302  # the message's latest click: another link
    now = dt.datetime.now(dt.timezone.utc)

    path = healthy.config["MAILTRACK_JOURNAL_PATH"]
    down = outage_app(path).test_client()
    for seconds_before in (7200, 30):
        assert down.get(link_a, headers=browser).status_code == 302
    with open(path, "rb") as fh:
        lines = fh.read().splitlines()
    assert len(lines) == 2
    with open(path, "wb") as fh:
        for line, seconds_before in zip(lines, (7200, 30)):
            at = (now - dt.timedelta(seconds=seconds_before)).isoformat()
            fh.write(json.dumps({**json.loads(line), "occurred_at": at}).encode() + b"\n")
    assert "replayed 2 events" in replay(healthy)
    with healthy.app_context(), healthy.extensions["mailtrack"].engine.connect() as conn:
        replayed = conn.execute(
            sa.select(events.c.occurred_at, events.c.is_machine, events.c.machine_reason)
            .where(events.c.message_id == message_id, events.c.url == "https://shop.test/a")
            .order_by(events.c.occurred_at)).all()
    assert [(r.is_machine, r.machine_reason) for r in replayed] == [(False, None), (True, "honeypot")]
