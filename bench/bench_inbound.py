"""Benchmark: ingest a file set of received mail (bounces, complaints, auto-replies, replies).

``--messages`` sent messages are stored (SENT, with a Message-ID; the envelope sender is their
VERP address), then one received mail per message is written to a directory, cycling through
the samples of ``tests/data/inbound`` (Postfix, Gmail, Office 365 and Exim bounces, soft
bounces, delay warnings, an ARF complaint, auto-replies, replies in several languages),
filled in with that message's Message-ID and VERP address. Every file is then ingested with
``MailTrack.ingest_mail``, in order, and timed per quarter of the set.

Reported: messages per second overall; the time per message of each quarter, and the last
quarter's over the first (about 1.0 when the cost is linear in the number of messages: each
mail is a few indexed lookups and inserts, whatever the table sizes); the baseline, measured
in the same run on the same files, is reading and classifying alone (``mailparse.read``,
no database), so ``db_share`` is what storing adds.

    .venv/bin/python bench/bench_inbound.py [--db sqlite|postgresql|both] [--messages 10000]
"""
from __future__ import annotations

import argparse
import email.utils
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import database, emit, kinds, make_app, ratio  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "data" / "inbound"
MIX = ["postfix_hard.eml", "reply_en_gmail.eml", "postfix_soft.eml", "gmail_hard.eml", "autoreply_exchange_oof.eml",
       "yahoo_arf.eml", "office365_hard.eml", "reply_de_outlook.eml", "postfix_delayed.eml", "flufl/exim_01.eml",
       "reply_fr_apple.eml", "postfix_delivered.eml", "autoreply_vacation_verp.eml", "reply_nl_outlook.eml"]


def _prepare(app: Any, n: int, folder: Path) -> list[Path]:
    import sqlalchemy as sa

    from crm_mailtrack.models import messages
    from crm_mailtrack.services import verp
    from crm_mailtrack.state import get_state

    mt = app.config["BENCH_MAILTRACK"]
    state = get_state()
    recipients = [{"contact_id": f"c{i}", "email": f"c{i}@example.net"} for i in range(n)]
    ids = mt.track_messages(recipients, subject="Autumn offer", html="<p>Hello</p>", campaign_id="autumn",
                            track_opens=False, track_clicks=False)
    now = email.utils.localtime()
    with state.engine.begin() as conn:
        for start in range(0, n, 500):
            chunk = ids[start:start + 500]
            conn.execute(sa.update(messages).where(messages.c.id == sa.bindparam("mid")).values(
                status="SENT", sent_at=now, internet_message_id=sa.bindparam("imid")),
                [{"mid": mid, "imid": f"<{mid}@shop.test>"} for mid in chunk])
    templates = {name: (SAMPLES / name).read_text(encoding="utf-8") for name in MIX}
    date = email.utils.format_datetime(now)
    files = []
    for i, (mid, name) in enumerate(zip(ids, itertools.cycle(MIX))):
        text = templates[name]
        for key, value in {"MESSAGE_ID": f"<{mid}@shop.test>", "BOUNCE_TO": verp.envelope_sender(state, mid),
                           "SENDER": "crm@shop.test", "RCPT": f"c{i}@example.net", "SUBJECT": "Autumn offer",
                           "MAIL_ID": f"<r{i}.{mid}@mx.example.net>", "DATE": date}.items():
            text = text.replace(f"%%{key}%%", value)
        path = folder / f"{i:06d}.eml"
        path.write_bytes(text.encode("utf-8"))
        files.append(path)
    return files


def run(kind: str, n: int) -> dict[str, Any]:
    from crm_mailtrack.services import mailparse

    with database(kind, "inbound") as url:
        app = make_app(url, MAILTRACK_BOUNCE_ADDRESS="bounces@crm.shop.test")
        folder = Path(tempfile.mkdtemp(prefix="mt-inbound-"))
        try:
            with app.app_context():
                files = _prepare(app, n, folder)
                raws = [p.read_bytes() for p in files]
                t0 = time.perf_counter()
                for raw in raws:
                    mailparse.read(raw)
                parse_s = time.perf_counter() - t0
                mt = app.config["BENCH_MAILTRACK"]
                quarters, recorded = [], 0
                size = max(1, len(raws) // 4)
                t_all = time.perf_counter()
                for q in range(4):
                    part = raws[q * size:(q + 1) * size] if q < 3 else raws[3 * size:]
                    t0 = time.perf_counter()
                    for raw in part:
                        recorded += len(mt.ingest_mail(raw))
                    quarters.append((time.perf_counter() - t0) / max(1, len(part)))
                total_s = time.perf_counter() - t_all
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "messages": n, "recorded_events": recorded,
        "messages_per_s": round(n / total_s, 1), "total_s": round(total_s, 2),
        "ms_per_message_by_quarter": [round(q * 1000, 3) for q in quarters],
        "last_over_first_quarter": ratio(quarters[-1], quarters[0]),
        "baseline_parse_only_ms_per_message": round(parse_s / n * 1000, 3),
        "db_share": ratio(total_s - parse_s, total_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="both")
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    emit({"benchmark": "inbound", "results": {kind: run(kind, args.messages) for kind in kinds(args.db)}})


if __name__ == "__main__":
    main()
