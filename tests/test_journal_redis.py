"""The journal in a Redis stream (``MAILTRACK_JOURNAL_URL``, issue 17), against the real
Redis on 127.0.0.1:6379: an app server whose database is down journals its clicks and opens
to the shared stream (its own disk may vanish with its container), another app server
replays them, and each event is stored exactly once whatever fails when: a second replay,
entries re-delivered after a crash between commit and acknowledgement, entries a replayer
took and died with, a replay that fails half-way. Redis unreachable: the local file takes
the entry.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from crm_mailtrack import MailTrack
from crm_mailtrack.errors import ConfigurationError
from crm_mailtrack.journal_redis import GROUP
from crm_mailtrack.models import events

from conftest import BASE_URL, SECRET, tracked_paths
from journalhelpers import _unreachable_uri

redis = pytest.importorskip("redis")
REDIS = "redis://127.0.0.1:6379/0"
DEST = "https://dest.test/after-outage?x=1"


@pytest.fixture
def stream() -> Iterator[str]:
    name = f"mailtrack-test:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(REDIS)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at {REDIS} is unreachable: {exc}")
    yield name
    client.delete(name, name + ":rejected")
    client.close()


@pytest.fixture
def hosts(make_app: Any, database_url: str, tmp_path: Any, stream: str) -> Iterator[Any]:
    """``(healthy, down)``: two app servers of one host sharing the stream; ``down``'s
    database cannot be reached and its local journal is a file of its own."""
    url = f"{REDIS}?stream={stream}&claim_idle=0.2"
    healthy = make_app(MAILTRACK_JOURNAL_URL=url)
    down = Flask("down", instance_path=str(tmp_path / "down-instance"))
    down.config.update(TESTING=True, SECRET_KEY=SECRET, MAILTRACK_BASE_URL=BASE_URL,
                       SQLALCHEMY_DATABASE_URI=_unreachable_uri(database_url, tmp_path),
                       MAILTRACK_JOURNAL_PATH=str(tmp_path / "down-local.jsonl"), MAILTRACK_JOURNAL_URL=url)
    MailTrack(down, db=SQLAlchemy(down))
    yield healthy, down
    with down.app_context():
        down.extensions["sqlalchemy"].engine.dispose()


def stored(app: Flask) -> list[tuple[str, str]]:
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(events.c.type, events.c.uid).order_by(events.c.type))]


def replay(app: Flask) -> str:
    result = app.test_cli_runner().invoke(args=["mailtrack", "replay-journal"])
    assert result.exit_code == 0, result.output
    return result.output


def journaled(down: Flask, paths: dict[str, Any]) -> None:
    client = down.test_client()
    assert client.get(paths["click"]).status_code == 302
    assert client.get(paths["open"]).status_code == 200


def test_events_of_a_host_whose_database_is_down_are_replayed_once_by_another(hosts: Any, stream: str) -> None:
    healthy, down = hosts
    journaled(down, tracked_paths(healthy, DEST, campaign_id="k"))
    client = redis.Redis.from_url(REDIS)
    assert client.xlen(stream) == 2
    assert not (down.extensions["mailtrack"].journal.fallback.count())  # nothing on down's own disk
    [entry] = [json.loads(f[b"e"]) for _id, f in client.xrange(stream, count=1)]
    assert entry["type"] == "click" and "email" not in entry  # no personal data in the journal

    assert "replayed 2 events, skipped 0" in replay(healthy)
    rows = stored(healthy)
    assert sorted(t for t, _ in rows) == ["click", "open"]
    assert client.xlen(stream) == 0 and client.xpending(stream, GROUP)["pending"] == 0
    assert "journal is empty" in replay(healthy)
    assert stored(healthy) == rows


def test_entries_delivered_again_after_a_crash_between_commit_and_ack_are_skipped(hosts: Any, stream: str) -> None:
    """The replay committed, then died before XACK/XDEL: the entries come again and the
    event's unique (uid, occurred_at) skips them."""
    healthy, down = hosts
    journaled(down, tracked_paths(healthy, DEST))
    client = redis.Redis.from_url(REDIS)
    copies = [f for _id, f in client.xrange(stream)]
    assert "replayed 2" in replay(healthy)
    for fields in copies:
        client.xadd(stream, fields)
    assert "replayed 0 events, skipped 2" in replay(healthy)
    assert len(stored(healthy)) == 2


def test_entries_a_dead_replayer_held_are_taken_over(hosts: Any, stream: str) -> None:
    """A replayer read the entries (XREADGROUP) and died before writing them: once they
    have been idle claim_idle seconds, the next replay claims and stores them."""
    import time

    healthy, down = hosts
    journaled(down, tracked_paths(healthy, DEST))
    client = redis.Redis.from_url(REDIS)
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    taken = client.xreadgroup(GROUP, "dead-replayer", {stream: ">"}, count=10)
    assert len(taken[0][1]) == 2 and client.xpending(stream, GROUP)["pending"] == 2
    time.sleep(0.3)
    assert "replayed 2 events" in replay(healthy)
    assert len(stored(healthy)) == 2 and client.xpending(stream, GROUP)["pending"] == 0


def test_a_replay_that_fails_keeps_the_entries_for_the_next(hosts: Any, stream: str) -> None:
    """Replaying into an unreachable database fails; nothing is acknowledged; the healthy
    server's replay right after stores everything once."""
    healthy, down = hosts
    journaled(down, tracked_paths(healthy, DEST))
    result = down.test_cli_runner().invoke(args=["mailtrack", "replay-journal"])
    assert result.exit_code != 0
    assert redis.Redis.from_url(REDIS).xlen(stream) == 2
    assert "replayed 2 events" in replay(healthy)
    assert len(stored(healthy)) == 2


def test_with_redis_unreachable_the_local_file_takes_the_entry(make_app: Any, database_url: str,
                                                               tmp_path: Any, stream: str) -> None:
    """...and a replay through the stream journal writes that file first."""
    local = str(tmp_path / "local.jsonl")
    healthy = make_app(MAILTRACK_JOURNAL_PATH=local, MAILTRACK_JOURNAL_URL=f"{REDIS}?stream={stream}")
    paths = tracked_paths(healthy, DEST)
    down = Flask("down2", instance_path=str(tmp_path / "down2"))
    down.config.update(TESTING=True, SECRET_KEY=SECRET, MAILTRACK_BASE_URL=BASE_URL,
                       SQLALCHEMY_DATABASE_URI=_unreachable_uri(database_url, tmp_path),
                       MAILTRACK_JOURNAL_PATH=local, MAILTRACK_JOURNAL_URL="redis://127.0.0.1:1/0")
    MailTrack(down, db=SQLAlchemy(down))
    assert down.test_client().get(paths["click"]).status_code == 302
    assert down.extensions["mailtrack"].journal.fallback.count() == 1
    assert "replayed 1 events" in replay(healthy)
    assert [t for t, _ in stored(healthy)] == ["click"]
    with down.app_context():
        down.extensions["sqlalchemy"].engine.dispose()


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://127.0.0.1:6379/0?claim_idle=-1",
                                 "redis://127.0.0.1:6379/0?stream=", 42])
def test_a_bad_journal_url_fails_at_init_app_naming_the_key(tmp_path: Any, url: Any) -> None:
    app = Flask("bad", instance_path=str(tmp_path))
    app.config.update(SECRET_KEY=SECRET, MAILTRACK_JOURNAL_URL=url,
                      MAILTRACK_DATABASE_URI=f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(ConfigurationError, match="MAILTRACK_JOURNAL_URL"):
        MailTrack(app)


def test_replay_with_redis_unreachable_fails_with_a_message(make_app: Any, stream: str) -> None:
    app = make_app(MAILTRACK_JOURNAL_URL="redis://127.0.0.1:1/0")
    result = app.test_cli_runner().invoke(args=["mailtrack", "replay-journal"])
    assert result.exit_code == 1
    assert "could not read the journal" in result.output and "Traceback" not in result.output
