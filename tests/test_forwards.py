"""Inferred forwards: a message's human opens/clicks from another network *and* another
mail client become one ``forward`` event flagged as inferred; nothing else does."""
from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack.models import events
from crm_mailtrack.services.forwards import infer_forwards
from crm_mailtrack.state import get_state

from conftest import path_of

OUTLOOK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17126; Pro)"
ANDROID = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/120.0.6099.144 Mobile Safari/537.36")
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
OFFICE, HOME = "203.0.113.9", "198.51.100.20"


def _message(mt: Any) -> Any:
    return mt.track_message(contact_id="c1", email="c1@example.com", subject="Hi", campaign_id="cmp",
                            html='<a href="https://shop.test/">x</a>')


def _open(client: Any, mt: Any, msg: Any, ua: str, ip: str) -> None:
    client.get(path_of(mt.open_url(msg)), headers={"User-Agent": ua}, environ_base={"REMOTE_ADDR": ip})


def _click(client: Any, mt: Any, msg: Any, ua: str, ip: str) -> None:
    client.get(path_of(mt.click_url(msg, "https://shop.test/")), headers={"User-Agent": ua},
               environ_base={"REMOTE_ADDR": ip})


def _forwards(db: Any) -> list[Any]:
    return db.session.execute(sa.select(events).where(events.c.type == "forward")).all()


def test_other_network_and_other_client_is_an_inferred_forward(mailtrack, db, client, recorded_signals):
    msg = _message(mailtrack)
    _open(client, mailtrack, msg, OUTLOOK, OFFICE)
    _click(client, mailtrack, msg, CHROME, "203.0.113.50")  # same /24: the reader's own browser
    _click(client, mailtrack, msg, ANDROID, HOME)           # someone else, elsewhere
    assert infer_forwards(get_state()) == 1
    (fwd,) = _forwards(db)
    assert (fwd.contact_id, fwd.message_id, fwd.campaign_id, fwd.is_machine) == ("c1", msg.id, "cmp", False)
    assert fwd.details == {"inferred": True, "reason": "different-network-and-client",
                           "clients": ["Outlook", "Chrome Mobile"]}
    assert [kw["message_id"] for kw in recorded_signals.of("email_forwarded")] == [msg.id]
    assert infer_forwards(get_state()) == 0  # one per message, however often it runs
    assert len(_forwards(db)) == 1


@pytest.mark.parametrize(("second_ua", "second_ip"), [
    (ANDROID, "203.0.113.77"),   # another client on the same network: the reader's phone on office Wi-Fi
    (OUTLOOK, HOME),             # the same client elsewhere: the reader at home
])
def test_one_difference_alone_is_no_forward(mailtrack, db, client, second_ua, second_ip):
    msg = _message(mailtrack)
    _open(client, mailtrack, msg, OUTLOOK, OFFICE)
    _open(client, mailtrack, msg, second_ua, second_ip)
    assert infer_forwards(get_state()) == 0 and _forwards(db) == []


def test_machine_hits_never_make_a_forward(mailtrack, db, client):
    msg = _message(mailtrack)
    _open(client, mailtrack, msg, OUTLOOK, OFFICE)
    _click(client, mailtrack, msg, ANDROID, "40.107.22.5")  # a scanner's network
    _open(client, mailtrack, msg, "Mozilla/5.0", "17.58.63.2")  # Apple's proxy
    assert infer_forwards(get_state()) == 0 and _forwards(db) == []


def test_infer_forwards_command(mailtrack, db, client, runner):
    msg = _message(mailtrack)
    _open(client, mailtrack, msg, OUTLOOK, OFFICE)
    _open(client, mailtrack, msg, ANDROID, HOME)
    result = runner.invoke(args=["mailtrack", "infer-forwards", "--days", "7"])
    assert result.exit_code == 0, result.output
    assert "1 inferred forwards recorded" in result.output
    assert len(_forwards(db)) == 1
