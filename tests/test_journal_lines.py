"""The journal's lines as ``flask mailtrack replay-journal`` reads them: a torn line (a
crash mid-write, perhaps with the next entry glued to it), invalid UTF-8, JSON of the wrong
shape and blank lines are set aside byte for byte in ``<journal>.rejected`` while every good
event is replayed once; times are read in each ISO 8601 form the journal accepts."""
from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack.models import events

from journalhelpers import _journaled_open, replay, tracked
from journalhelpers import outage_app  # noqa: F401 - fixture


def _uids(app: Any) -> list[str]:
    with app.app_context(), app.extensions["mailtrack"].engine.connect() as conn:
        return sorted(conn.execute(sa.select(events.c.uid)).scalars())


def test_bad_lines_are_set_aside_and_the_rest_is_replayed_once(make_app, outage_app):
    """A journal with good lines, a torn line the next entry was appended to, invalid
    UTF-8, JSON that is not an event and a bad date: the events are stored exactly once,
    the bad lines land byte for byte in <journal>.rejected, and the replay is not stuck."""
    import json

    healthy = make_app()
    p = tracked(healthy)
    path = healthy.config["MAILTRACK_JOURNAL_PATH"]
    down = outage_app(path)
    client = down.test_client()
    for _ in range(4):  # four real journaled events (the database is down)
        assert client.get(p["open"]).status_code == 200
    with open(path, "rb") as fh:
        good = fh.read().splitlines()
    assert len(good) == 4
    uids = [json.loads(line)["uid"] for line in good]
    bad_date = json.loads(good[0])
    bad_date.update(uid="bad-date", occurred_at="2024-13-45T99:00:00Z")
    bad_date_line = json.dumps(bad_date).encode()
    torn = good[1][: len(good[1]) // 2]
    bad_lines = [
        torn,                                                    # a crash cut it; good[2] follows it
        b'{"uid": "not-utf8-\xff\xfe", "type": "open"}',         # invalid UTF-8
        b'["an", "array"]',                                      # JSON, not an event
        b'{"uid": "u", "type": "unsubscribe", "message_id": "m"}',  # an object, not a journaled event
        bad_date_line,
        b'{"uid": "x", "type": "click", "message_id": "m", "occurred_at": 20240101}',
    ]
    with open(path, "wb") as fh:
        fh.write(good[0] + b"\n" + torn + good[2] + b"\n" + b"\n".join(bad_lines[1:]) + b"\n" + good[3] + b"\n")
        fh.write(torn)  # a torn last line: the next journaled event must not be glued to it
    assert client.get(p["click"]).status_code == 302  # journaled after the torn line
    # what waits for a replay: the events, the one glued to the torn line among them; no bad line
    assert down.extensions["mailtrack"].journal.count() == 4

    output = replay(healthy)
    assert "replayed 4 events" in output and "set aside 7 bad lines" in output
    stored = _uids(healthy)
    assert len(stored) == 4 and set(uids[0:1] + uids[2:4]) <= set(stored)  # good[1] was torn: lost
    with open(path + ".rejected", "rb") as fh:
        assert fh.read().splitlines() == [torn, *bad_lines[1:], torn]
    # nothing is stuck: a second run finds nothing, stores nothing, rejects nothing more
    assert "journal is empty" in replay(healthy) and "set aside" not in replay(healthy)
    assert _uids(healthy) == stored
    with open(path + ".rejected", "rb") as fh:
        assert len(fh.read().splitlines()) == 7


@pytest.mark.parametrize("change", [
    {"uid": ""}, {"uid": 7}, {"message_id": ""}, {"message_id": None}, {"type": "unsubscribe"},
    {"url": 5}, {"ip": ["203.0.113.0"]}, {"user_agent": {"x": 1}}, {"machine_reason": True},
    {"details": "not an object"}, {"details": [1, 2]}, {"occurred_at": None}, {"occurred_at": "yesterday"},
], ids=lambda change: "-".join(f"{k}={v!r}" for k, v in change.items()))
def test_a_line_of_the_wrong_shape_is_set_aside_and_the_rest_replayed(make_app, outage_app, change):
    """A line that parses as JSON but is not a journaled event of the right shape is moved,
    byte for byte, to <journal>.rejected: it is neither stored nor a reason to stop."""
    import json

    healthy, path, good = _journaled_open(make_app, outage_app)
    bad = json.dumps({**json.loads(good), "uid": "bad-one", **change}).encode()
    with open(path, "ab") as fh:
        fh.write(bad + b"\n")
    output = replay(healthy)
    assert "replayed 1 events" in output and "set aside 1 bad line" in output, output
    assert _uids(healthy) == [json.loads(good)["uid"]]
    with open(path + ".rejected", "rb") as fh:
        assert fh.read() == bad + b"\n"


def test_a_torn_line_holding_nested_objects_gives_back_the_entry_glued_to_it(make_app, outage_app):
    """A crash cut a line inside its ``details`` (which hold objects of their own), and the
    next entry was appended to it: that entry is still replayed, the torn part set aside."""
    import json

    healthy, path, good = _journaled_open(make_app, outage_app)
    whole = json.dumps({**json.loads(good), "uid": "torn"}, separators=(",", ":")).encode()
    torn = whole[:whole.index(b'"device":{"') + len(b'"device":{"')]  # cut past two nested '{"'
    assert torn.count(b'{"') == 3
    second = json.dumps({**json.loads(good), "uid": "second"}, separators=(",", ":")).encode()
    with open(path, "ab") as fh:
        fh.write(torn + second + b"\n")
    output = replay(healthy)
    assert "replayed 2 events" in output and "set aside 1 bad line" in output, output
    assert _uids(healthy) == sorted([json.loads(good)["uid"], "second"])
    with open(path + ".rejected", "rb") as fh:
        assert fh.read() == torn + b"\n"


@pytest.mark.parametrize("with_bad_line", [False, True], ids=["clean", "with-a-bad-line"])
def test_blank_lines_in_the_journal_lose_nothing(make_app, outage_app, with_bad_line):
    """Blank lines (an editor, a half-written line's newline) between events: every event
    is replayed, and the report names only what was really set aside."""
    import json

    healthy, path, good = _journaled_open(make_app, outage_app)
    second = json.dumps({**json.loads(good), "uid": "second"}).encode()
    bad = b"not an event \t "
    with open(path, "ab") as fh:
        fh.write(b"\n\n" + second + b"\n" + (bad + b"\n" if with_bad_line else b"") + b"\n")
    output = replay(healthy)
    assert "replayed 2 events" in output, output
    assert _uids(healthy) == sorted([json.loads(good)["uid"], "second"])
    if with_bad_line:
        assert "set aside 1 bad line" in output
        with open(path + ".rejected", "rb") as fh:
            assert fh.read() == bad + b"\n"  # byte for byte, trailing blanks included
    else:
        assert "set aside" not in output


def test_bad_lines_are_set_aside_byte_for_byte_whatever_they_end_with(make_app, outage_app):
    healthy, path, good = _journaled_open(make_app, outage_app)
    bad = [b"not json XX", b"crlf line\r", b"  spaced  "]
    with open(path, "wb") as fh:
        fh.write(b"\n".join([bad[0], good, *bad[1:]]) + b"\n")
    output = replay(healthy)
    assert "replayed 1 events" in output and "set aside 3 bad lines" in output, output
    with open(path + ".rejected", "rb") as fh:
        assert fh.read() == b"not json XX\ncrlf line\n  spaced  \n"


def test_an_event_after_a_one_byte_torn_line_starts_a_line_of_its_own(make_app, outage_app):
    """A writer died after one byte: the next event goes on a new line (the journal stays
    one JSON object per line), and the replay stores it and sets the byte aside."""
    import json

    healthy = make_app()
    p = tracked(healthy)
    path = healthy.config["MAILTRACK_JOURNAL_PATH"]
    with open(path, "wb") as fh:
        fh.write(b"{")
    assert outage_app(path).test_client().get(p["open"]).status_code == 200
    with open(path, "rb") as fh:
        first, line, rest = fh.read().split(b"\n", 2)
    assert (first, rest) == (b"{", b"") and json.loads(line)["type"] == "open"
    output = replay(healthy)
    assert "replayed 1 events" in output and "set aside 1 bad line" in output, output


def test_a_one_byte_torn_line_glued_to_the_next_entry_gives_it_back(make_app, outage_app):
    healthy, path, good = _journaled_open(make_app, outage_app)
    with open(path, "wb") as fh:
        fh.write(b"{" + good + b"\n")
    output = replay(healthy)
    assert "replayed 1 events" in output and "set aside 1 bad line" in output, output
    with open(path + ".rejected", "rb") as fh:
        assert fh.read() == b"{\n"


@pytest.mark.parametrize("written", ["2026-03-01T10:15:00Z", "2026-03-01T10:15:00", "2026-03-01T11:15:00+01:00",
                                     "2026-03-01T10:15:00+00:00"])
def test_a_journaled_time_is_stored_as_that_moment_in_utc(make_app, outage_app, recorded_signals, written):
    """The journal accepts ISO 8601 times with ``Z``, an offset, or none (read as UTC): the
    replayed event is stored, and signalled, at that moment (an aware time)."""
    import datetime as dt
    import json

    healthy, path, good = _journaled_open(make_app, outage_app)
    with open(path, "wb") as fh:
        fh.write(json.dumps({**json.loads(good), "occurred_at": written}).encode() + b"\n")
    assert "replayed 1 events" in replay(healthy)
    with healthy.app_context(), healthy.extensions["mailtrack"].engine.connect() as conn:
        [at] = conn.execute(sa.select(events.c.occurred_at)).scalars()
    moment = dt.datetime(2026, 3, 1, 10, 15, tzinfo=dt.timezone.utc)
    assert at == moment
    [signalled] = recorded_signals.of("event_recorded")
    assert signalled["event"].occurred_at == moment and signalled["event"].occurred_at.tzinfo is not None
