"""Benchmark: ESP webhook events stored per second, against a raw ``executemany`` of the
same rows in the same run.

Two streams, each through the whole route (Flask test client: signature verification,
JSON parsing, matching to the message, exactly-once insert, policy, signals):

* **SendGrid batches**: one signed request of ``--batch`` events (default 1,000), events
  to random messages; ``engagement`` = delivered/open/click only (one multi-row insert),
  ``mixed`` = the same with 5 % soft bounces and 1 % spam reports (those go one by one
  through the outcome policy: Do-Not-Contact, the soft-bounce run).
* **SES stream**: ``--notifications`` single SNS notifications (SignatureVersion 2,
  RSA-2048, certificate cached after the first), each one SES Delivery event.

Baselines (same database, same table and indexes, same column values with other uids):
``executemany`` of the batch's rows in one transaction, and for the stream also one
``INSERT`` + ``COMMIT`` per row (what a minimal per-request handler does).

    .venv/bin/python bench/bench_esp.py [--db both] [--batch 1000] [--rounds 5] [--notifications 300]
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import database, emit, kinds, make_app, ratio, raw_connect  # noqa: E402

TOPIC = "arn:aws:sns:us-east-1:123456789012:bench"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-bench.pem"
COLUMNS = ("uid", "tenant_id", "type", "contact_id", "email", "message_id", "campaign_id", "link_id", "url",
           "occurred_at", "ip", "user_agent", "is_machine", "machine_reason", "details")
UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"


class Keys:
    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import NameOID

        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.sendgrid_public = base64.b64encode(self.ec.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = dt.datetime.now(dt.timezone.utc)
        self.pem = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                    .public_key(self.rsa.public_key()).serial_number(1)
                    .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
                    .sign(self.rsa, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))

    def fetch(self, url: str) -> bytes:
        return self.pem

    def sendgrid_headers(self, body: bytes) -> dict[str, str]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        stamp = str(int(time.time()))
        sig = self.ec.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(sig).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": stamp, "Content-Type": "application/json"}

    def sns(self, record: dict[str, Any]) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        from crm_mailtrack.services.esp.sns import string_to_sign

        msg = {"Type": "Notification", "MessageId": str(uuid.uuid4()), "TopicArn": TOPIC,
               "Message": json.dumps(record), "Timestamp": "2026-11-30T12:00:00.000Z",
               "SignatureVersion": "2", "SigningCertURL": CERT_URL}
        sig = self.rsa.sign(string_to_sign(msg), padding.PKCS1v15(), hashes.SHA256())
        msg["Signature"] = base64.b64encode(sig).decode()
        return json.dumps(msg).encode()


def _sendgrid_batch(messages: list[tuple[str, str]], n: int, mixed: bool, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        mid, email = rng.choice(messages)
        roll = rng.random()
        item: dict[str, Any] = {"email": email, "timestamp": int(time.time()) - rng.randint(0, 3600),
                                "sg_event_id": uuid.uuid4().hex, "mailtrack_id": mid,
                                "smtp-id": f"<{mid}@bench>"}
        if mixed and roll < 0.05:
            item.update(event="bounce", type="blocked", status="4.2.2", reason="452 mailbox full")
        elif mixed and roll < 0.06:
            item.update(event="spamreport")
        elif roll < 0.45:
            item.update(event="delivered", response="250 OK")
        elif roll < 0.8:
            item.update(event="open", useragent=UA, ip="203.0.113.9", sg_machine_open=False)
        else:
            item.update(event="click", useragent=UA, ip="203.0.113.9", url="https://shop.example/a")
        out.append(item)
    return out


def _baseline_rows(state: Any, event_ids: list[int]) -> list[tuple[Any, ...]]:
    """The stored rows of ``event_ids`` as raw values, with new uids."""
    import sqlalchemy as sa

    from crm_mailtrack.models import events

    with state.engine.connect() as conn:
        rows = conn.execute(sa.select(*[events.c[c] for c in COLUMNS]).where(events.c.id.in_(event_ids))).all()
    out = []
    for row in rows:
        values = dict(row._mapping)
        values["uid"] = str(uuid.uuid4())
        values["details"] = json.dumps(values["details"]) if values["details"] is not None else None
        values["occurred_at"] = values["occurred_at"].replace(tzinfo=None).isoformat(sep=" ")
        out.append(tuple(values[c] for c in COLUMNS))
    return out


def _raw_insert(url: str, rows: list[tuple[Any, ...]], *, per_row: bool) -> float:
    conn = raw_connect(url)
    mark = "?" if url.startswith("sqlite") else "%s"
    sql = f"INSERT INTO mailtrack_events ({', '.join(COLUMNS)}) VALUES ({', '.join([mark] * len(COLUMNS))})"
    try:
        t0 = time.perf_counter()
        if per_row:
            for row in rows:
                cur = conn.cursor()
                cur.execute(sql, row)
                conn.commit()
        else:
            cur = conn.cursor()
            cur.executemany(sql, rows)
            conn.commit()
        return time.perf_counter() - t0
    finally:
        conn.close()


def run_kind(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    from crm_mailtrack.services.bulk import track_messages
    from crm_mailtrack.state import get_state

    keys = Keys()
    rng = random.Random(15)
    with database(kind, "esp") as url:
        app = make_app(url, MAILTRACK_WEBHOOKS={"sendgrid": {"public_key": keys.sendgrid_public},
                                                "ses": {"topic_arns": [TOPIC], "fetch": keys.fetch}},
                       MAILTRACK_WEBHOOK_MAX_BODY_BYTES=8 * 1024 * 1024, MAILTRACK_SOFT_BOUNCE_LIMIT=0)
        client = app.test_client()
        with app.app_context():
            state = get_state()
            ids = track_messages(state, [{"contact_id": f"c{i}", "email": f"c{i}@example.com"}
                                         for i in range(args.messages)], subject="Hi", campaign_id="bench",
                                 html="<p>hi</p>")
            messages = [(mid, f"c{i}@example.com") for i, mid in enumerate(ids)]
            out: dict[str, Any] = {}
            for scenario in ("engagement", "mixed"):
                ours, base, stored = [], [], 0
                for _ in range(args.rounds):
                    body = json.dumps(_sendgrid_batch(messages, args.batch, scenario == "mixed", rng)).encode()
                    headers = keys.sendgrid_headers(body)
                    t0 = time.perf_counter()
                    resp = client.post("/mailtrack/hooks/sendgrid", data=body, headers=headers)
                    ours.append(time.perf_counter() - t0)
                    assert resp.status_code == 200, resp.get_data(as_text=True)
                    assert resp.json["stored"] == args.batch, resp.json
                    stored += resp.json["stored"]
                    event_ids = _stored_ids(state, args.batch)
                    base.append(_raw_insert(url, _baseline_rows(state, event_ids), per_row=False))
                ours_eps = args.batch / min(ours)
                base_eps = args.batch / min(base)
                out[f"sendgrid_batch_{scenario}"] = {
                    "events_per_request": args.batch, "rounds": args.rounds, "stored": stored,
                    "ours_events_per_s": round(ours_eps), "executemany_events_per_s": round(base_eps),
                    "ratio_vs_executemany": ratio(ours_eps, base_eps),
                    "ours_request_s_median": round(sorted(ours)[len(ours) // 2], 4),
                }
            ours_t, n = 0.0, args.notifications
            for i in range(n):
                mid, email = messages[i % len(messages)]
                record = {"eventType": "Delivery", "mail": {"messageId": uuid.uuid4().hex, "destination": [email],
                                                            "tags": {"mailtrack_id": [mid]}},
                          "delivery": {"timestamp": "2026-11-30T12:00:00.000Z", "recipients": [email],
                                       "smtpResponse": "250 2.6.0 Message received"}}
                body = keys.sns(record)
                t0 = time.perf_counter()
                resp = client.post("/mailtrack/hooks/ses", data=body)
                ours_t += time.perf_counter() - t0
                assert resp.status_code == 200 and resp.json["stored"] == 1, resp.get_data(as_text=True)
            rows = _baseline_rows(state, _stored_ids(state, n))
            many = _raw_insert(url, rows, per_row=False)
            rows = _baseline_rows(state, _stored_ids(state, n))
            single = _raw_insert(url, rows, per_row=True)
            out["ses_stream"] = {
                "notifications": n, "ours_events_per_s": round(n / ours_t),
                "executemany_events_per_s": round(n / many), "insert_commit_per_row_events_per_s": round(n / single),
                "ratio_vs_executemany": ratio(n / ours_t, n / many),
                "ratio_vs_insert_commit_per_row": ratio(n / ours_t, n / single),
            }
            return out


def _stored_ids(state: Any, n: int) -> list[int]:
    """The ids of the last ``n`` webhook events stored (those with a provider in details)."""
    import sqlalchemy as sa

    from crm_mailtrack.models import events

    with state.engine.connect() as conn:
        return [r[0] for r in conn.execute(
            sa.select(events.c.id).where(events.c.type.in_(("delivered", "open", "click", "bounce", "complaint")))
            .order_by(events.c.id.desc()).limit(n))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default="both", choices=["sqlite", "postgresql", "both"])
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--notifications", type=int, default=300)
    ap.add_argument("--messages", type=int, default=2000)
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "esp_webhooks", "unit": "events stored per second (best round)",
                              "databases": {}}
    for kind in kinds(args.db):
        result["databases"][kind] = run_kind(kind, args)
    emit(result)


if __name__ == "__main__":
    main()
