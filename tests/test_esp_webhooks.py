"""ESP event webhooks (DESIGN 8.4), driven as the providers drive them: a real message sent
through a real SMTP server, then the provider's documented payload, signed with keys the
test makes, POSTed to ``/mailtrack/hooks/<provider>``; asserting the answer, the stored
rows, Do-Not-Contact and the signals."""
from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack.inbound_models import webhook_receipts
from crm_mailtrack.models import DNCReason, events
from crm_mailtrack.services.esp.store import unmatched_count
from esp_signing import MAILGUN_KEY, POSTMARK, RESEND_SECRET, TOPIC, SendGrid, Sns, basic, mailgun, resend_headers, sample

HOOKS = "/mailtrack/hooks"
SENDER = "crm@example.com"


@pytest.fixture
def sns() -> Sns:
    return Sns()


@pytest.fixture
def sg() -> SendGrid:
    return SendGrid()


def webhooks(sns: Sns, sg: SendGrid) -> dict[str, Any]:
    return {
        "ses": {"topic_arns": [TOPIC], "fetch": sns.fetch},
        "sendgrid": {"public_key": sg.public_key},
        "mailgun": {"signing_key": MAILGUN_KEY},
        "postmark": {"username": POSTMARK[0], "password": POSTMARK[1]},
        "resend": {"secret": RESEND_SECRET},
    }


@pytest.fixture
def happ_config() -> dict[str, Any]:
    """More config for :func:`happ` (test_esp_security, which imports ``happ``, overrides it)."""
    return {}


@pytest.fixture
def happ(make_app, _server, sns, sg, happ_config):
    app = make_app(MAILTRACK_WEBHOOKS=webhooks(sns, sg), MAILTRACK_SMTP_URL=_server.url(),
                   MAILTRACK_DEFAULT_SENDER=SENDER, **happ_config)
    with app.app_context():
        yield app


@pytest.fixture
def client(happ):
    return happ.test_client()


def send(app, contact_id: str = "c1", email: str = "ann@example.com", **kw: Any) -> Any:
    """A message sent through the module's SMTP server: SENT, with its Message-ID."""
    mt = app.extensions["mailtrack"].extension
    msg = mt.track_message(contact_id=contact_id, email=email, subject="Hello", campaign_id="camp",
                           html='<p><a href="https://shop.example/a">go</a></p>', **kw)
    msg = mt.send(msg)
    assert msg.status == "SENT"
    return msg


def stored(app, *types: str) -> list[Any]:
    with app.extensions["mailtrack"].engine.connect() as conn:
        query = sa.select(events).order_by(events.c.id)
        if types:
            query = query.where(events.c.type.in_(types))
        return list(conn.execute(query))


def receipts(app) -> list[Any]:
    with app.extensions["mailtrack"].engine.connect() as conn:
        return list(conn.execute(sa.select(webhook_receipts)))


def post(client, provider: str, body: bytes | dict[str, Any] | list[Any], headers: dict[str, str] | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(f"{HOOKS}/{provider}", data=raw, headers=headers or {"Content-Type": "application/json"})


def ses_record(name: str, msg: Any, *, tag: bool = True) -> dict[str, Any]:
    record = sample(name)
    mail = record["mail"]
    mail["destination"] = [msg.email]
    mail["commonHeaders"]["messageId"] = msg.internet_message_id
    if tag:
        mail["tags"]["mailtrack_id"] = [msg.id]
    for key, part in (("bounce", "bouncedRecipients"), ("complaint", "complainedRecipients")):
        if key in record:
            record[key][part][0]["emailAddress"] = msg.email
    if "delivery" in record:
        record["delivery"]["recipients"] = [msg.email]
    return record


# -- configuration and the route ------------------------------------------------------------

def test_a_provider_without_configuration_is_404(make_app):
    app = make_app(MAILTRACK_WEBHOOKS={"postmark": {"username": "u", "password": "p"}})
    client = app.test_client()
    for provider in ("sendgrid", "ses", "nosuch"):
        resp = post(client, provider, [])
        assert resp.status_code == 404
        assert resp.mimetype == "application/problem+json" and resp.json["status"] == 404
    assert client.get(f"{HOOKS}/postmark").status_code == 405


# -- Amazon SES through SNS -----------------------------------------------------------------

@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_hard_bounce_is_stored_once_with_dnc(happ, client, sns, version, recorded_signals):
    msg = send(happ)
    notification = sns.notification(ses_record("ses_bounce.json", msg), version=version)
    first = post(client, "ses", notification, {"Content-Type": "text/plain; charset=UTF-8"})
    assert first.status_code == 200, first.json
    assert first.json == {"received": 1, "stored": 1, "duplicates": 0, "unmatched": 0, "ignored": 0,
                          "reclassified": 0}
    again = post(client, "ses", notification)
    assert again.json["stored"] == 0 and again.json["duplicates"] == 1
    [bounce] = stored(happ, "bounce")
    assert (bounce.message_id, bounce.contact_id, bounce.tenant_id, bounce.campaign_id) == (msg.id, "c1", "", "camp")
    assert bounce.details == {"bounceType": "hard", "status": "5.1.1", "diagnostic": "smtp; 550 5.1.1 user unknown",
                              "sesBounceType": "Permanent", "sesBounceSubType": "General", "provider": "ses"}
    assert bounce.occurred_at.isoformat() == "2017-08-05T00:41:02.669000+00:00"
    mt = happ.extensions["mailtrack"].extension
    assert mt.can_contact("c1") is False
    [entry] = client.get("/mailtrack/api/contacts/c1/dnc", headers={"Authorization": "Bearer test-api-token"}
                         ).json["doNotContact"]
    assert (entry["reason"], entry["channelId"]) == (int(DNCReason.BOUNCED), msg.id)
    assert [kw["event"].type for kw in recorded_signals.of("email_bounced")] == ["bounce"]
    assert sns.fetched.count("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-"
                             "0000000000000000000000.pem") == 1  # cached


def test_ses_delivery_matches_by_message_id_and_recipient_without_tags(happ, client, sns):
    msg = send(happ)
    resp = post(client, "ses", sns.notification(ses_record("ses_delivery.json", msg, tag=False)))
    assert resp.json["stored"] == 1
    [row] = stored(happ, "delivered")
    assert row.message_id == msg.id and row.details["smtpResponse"] == "250 2.6.0 Message received"
    other = ses_record("ses_delivery.json", msg, tag=False)
    other["delivery"]["recipients"] = ["someone.else@example.com"]  # same Message-ID, another recipient
    resp = post(client, "ses", sns.notification(other))
    assert resp.json == {"received": 1, "stored": 0, "duplicates": 0, "unmatched": 1, "ignored": 0,
                         "reclassified": 0}
    assert len(stored(happ, "delivered")) == 1 and unmatched_count(happ.extensions["mailtrack"]) == 1


def test_ses_complaint_adds_dnc_unsubscribed_with_comment(happ, client, sns, recorded_signals):
    msg = send(happ)
    assert post(client, "ses", sns.notification(ses_record("ses_complaint.json", msg))).json["stored"] == 1
    [row] = stored(happ, "complaint")
    assert row.details == {"feedbackType": "abuse", "provider": "ses"}
    with happ.extensions["mailtrack"].engine.connect() as conn:
        entry = conn.execute(sa.text("SELECT reason, comments, channel_id FROM mailtrack_dnc")).one()
    assert tuple(entry) == (int(DNCReason.UNSUBSCRIBED), "complaint", msg.id)
    assert [kw["message_id"] for kw in recorded_signals.of("email_complained")] == [msg.id]
    assert recorded_signals.names().index("dnc_added") < recorded_signals.names().index("email_complained")


def test_soft_bounces_in_a_row_reach_the_limit_and_a_delivery_resets_the_run(happ, client):
    msg = send(happ)
    mt = happ.extensions["mailtrack"].extension

    def soft(n: int, when: float) -> None:
        body = mailgun_event("mailgun_failed.json", msg, severity="temporary", id=f"soft-{n}", timestamp=when)
        assert post(client, "mailgun", mailgun(body)).json["stored"] == 1

    soft(1, 1_700_000_000)
    soft(2, 1_700_000_100)
    delivered = mailgun_event("mailgun_delivered.json", msg, timestamp=1_700_000_200)
    assert post(client, "mailgun", mailgun(delivered)).json["stored"] == 1
    soft(3, 1_700_000_300)
    soft(4, 1_700_000_400)
    assert mt.can_contact("c1") is True  # two in a row since the delivery
    soft(5, 1_700_000_500)
    assert mt.can_contact("c1") is False  # MAILTRACK_SOFT_BOUNCE_LIMIT (3) in a row


def test_ses_open_and_click_keep_the_verdict(happ, client, sns):
    msg = send(happ)
    opened = ses_record("ses_open.json", msg)
    opened["open"]["userAgent"] = "Mozilla/5.0"  # Apple Mail Privacy Protection's proxy
    clicked = ses_record("ses_click.json", msg)
    assert post(client, "ses", sns.notification(opened)).json["stored"] == 1
    assert post(client, "ses", sns.notification(clicked)).json["stored"] == 1
    [open_row] = stored(happ, "open")
    [click_row] = stored(happ, "click")
    assert (open_row.is_machine, open_row.machine_reason, open_row.ip) == (True, "apple-mpp", "192.0.2.0")
    assert (click_row.is_machine, click_row.url) == (False, "http://docs.aws.amazon.com/ses/latest/DeveloperGuide/"
                                                     "send-email-smtp.html")
    assert click_row.link_id is not None


def test_ses_subscription_is_confirmed_through_the_fetch(happ, client, sns):
    resp = post(client, "ses", sns.confirmation())
    assert resp.status_code == 200
    assert resp.json == {"subscription": "confirmed", "topicArn": TOPIC}
    assert any("Action=ConfirmSubscription" in url for url in sns.fetched)
    assert stored(happ) == [] and receipts(happ) == []


def test_ses_confirmation_that_fails_is_502(happ, client, sns):
    sns.fail_confirm = True
    resp = post(client, "ses", sns.confirmation())
    assert resp.status_code == 502 and resp.mimetype == "application/problem+json"


# -- SendGrid -------------------------------------------------------------------------------

def sendgrid_batch(msg: Any) -> list[dict[str, Any]]:
    batch = sample("sendgrid_events.json")
    for item in batch:
        item["email"], item["mailtrack_id"] = msg.email, msg.id
    return batch


def test_sendgrid_batch_is_mapped_and_stored_once(happ, client, sg, recorded_signals):
    """One request: processed, deferred, delivered, open, click, bounce, dropped, spamreport,
    unsubscribe, group_resubscribe (SendGrid's documented example)."""
    msg = send(happ)
    body = json.dumps(sendgrid_batch(msg)).encode()
    resp = post(client, "sendgrid", body, sg.headers(body))
    assert resp.status_code == 200, resp.json
    # processed, deferred, dropped and group_resubscribe are deliberately ignored
    assert resp.json == {"received": 10, "stored": 6, "duplicates": 0, "unmatched": 0, "ignored": 4,
                         "reclassified": 0}
    types = [row.type for row in stored(happ) if row.type not in ("send", "dnc_added")]
    assert types == ["delivered", "open", "click", "bounce", "complaint", "unsubscribe"]
    bounce = stored(happ, "bounce")[0]
    assert bounce.details["bounceType"] == "hard" and bounce.details["diagnostic"] == "500 unknown recipient"
    assert stored(happ, "click")[0].url == "http://www.sendgrid.com/"
    resend = post(client, "sendgrid", body, sg.headers(body))
    assert resend.json["stored"] == 0 and resend.json["duplicates"] == 6
    recorded = [kw["event"].type for kw in recorded_signals.of("event_recorded")]
    assert sorted(t for t in recorded if t not in ("send", "dnc_added")) == sorted(types)
    assert [kw["message_id"] for kw in recorded_signals.of("email_delivered")] == [msg.id]


def test_sendgrid_machine_open_reclassifies_our_own_open(make_app, _server, sns, sg, recorded_signals):
    happ = make_app(MAILTRACK_WEBHOOKS=webhooks(sns, sg), MAILTRACK_SMTP_URL=_server.url(),
                    MAILTRACK_DEFAULT_SENDER=SENDER, MAILTRACK_BOT_AFTER_SEND_SECONDS=0)
    client = happ.test_client()
    with happ.app_context():
        _machine_open_reclassifies(happ, client, sg, recorded_signals)


def _machine_open_reclassifies(happ, client, sg, recorded_signals):
    msg = send(happ)
    mt = happ.extensions["mailtrack"].extension
    pixel = mt.open_url(msg)[len("http://crm.test"):]
    ua = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    assert client.get(pixel, headers={"User-Agent": ua}, environ_base={"REMOTE_ADDR": "198.51.100.7"}
                      ).status_code == 200
    [ours] = stored(happ, "open")
    assert ours.is_machine is False
    human = {"email": msg.email, "timestamp": int(ours.occurred_at.timestamp()) - 10, "event": "open",
             "sg_machine_open": False, "sg_event_id": "human-open-1", "mailtrack_id": msg.id, "useragent": ua}
    item = {"email": msg.email, "timestamp": int(ours.occurred_at.timestamp()), "event": "open",
            "sg_machine_open": True, "sg_event_id": "machine-open-1", "mailtrack_id": msg.id,
            "useragent": "Mozilla/5.0", "ip": "17.58.0.1"}
    body = json.dumps([human]).encode()
    assert post(client, "sendgrid", body, sg.headers(body)).json["reclassified"] == 0
    body = json.dumps([item]).encode()
    resp = post(client, "sendgrid", body, sg.headers(body))
    assert resp.json["stored"] == 1 and resp.json["reclassified"] == 1
    rows = {row.uid: row for row in stored(happ, "open")}
    assert rows[ours.uid].is_machine is True and rows[ours.uid].machine_reason == "esp-flag"
    # SendGrid's own human verdict of another open stays: the flag re-marks our own hits only
    assert [row.is_machine for row in rows.values() if row.details.get("provider")] == [False, True]
    [change] = recorded_signals.of("events_reclassified")
    assert change["event_ids"] == [ours.id] and change["is_machine"] is True
    assert change["message_id"] == msg.id and change["machine_reason"] == "esp-flag"


# -- Mailgun ----------------------------------------------------------------------------------

def mailgun_event(name: str, msg: Any, **changes: Any) -> dict[str, Any]:
    body = sample(name)
    body.pop("signature")
    data = body["event-data"]
    data["recipient"] = msg.email
    data["user-variables"] = {"mailtrack_id": msg.id}
    data.update(changes)
    return body


def test_mailgun_permanent_failure_is_a_hard_bounce_temporary_a_soft_one(happ, client):
    msg = send(happ)
    hard = post(client, "mailgun", mailgun(mailgun_event("mailgun_failed.json", msg)))
    assert hard.status_code == 200 and hard.json["stored"] == 1
    other = send(happ, "c2", "bob@example.com")
    soft = mailgun_event("mailgun_failed.json", other, severity="temporary", id="temp-1")
    assert post(client, "mailgun", mailgun(soft)).json["stored"] == 1
    by_contact = {row.contact_id: row.details for row in stored(happ, "bounce")}
    assert by_contact["c1"]["bounceType"] == "hard" and by_contact["c1"]["status"] == "605"
    assert by_contact["c2"]["bounceType"] == "soft"
    mt = happ.extensions["mailtrack"].extension
    assert mt.can_contact("c1") is False and mt.can_contact("c2") is True


def test_mailgun_open_flagged_as_a_bot_is_a_machine_open(happ, client):
    msg = send(happ)
    assert post(client, "mailgun", mailgun(mailgun_event("mailgun_opened.json", msg))).json["stored"] == 1
    delivered = mailgun_event("mailgun_delivered.json", msg)
    assert post(client, "mailgun", mailgun(delivered)).json["stored"] == 1
    [row] = stored(happ, "open")
    assert (row.is_machine, row.machine_reason, row.details["machineFlag"]) == (True, "apple-mpp",
                                                                                "client-info.bot=apple")


# -- Postmark ---------------------------------------------------------------------------------

def postmark_event(name: str, msg: Any) -> dict[str, Any]:
    body = sample(name)
    body["Metadata"] = {"mailtrack_id": msg.id}
    body["Recipient" if "Recipient" in body else "Email"] = msg.email
    return body


def test_postmark_events_with_basic_auth(happ, client):
    msg = send(happ)
    auth = basic(*POSTMARK)
    for name in ("postmark_delivery.json", "postmark_open.json", "postmark_click.json", "postmark_spam.json"):
        resp = post(client, "postmark", postmark_event(name, msg), auth)
        assert resp.status_code == 200 and resp.json["stored"] == 1, (name, resp.json)
    bounce = postmark_event("postmark_bounce.json", msg)
    assert post(client, "postmark", bounce, auth).json["stored"] == 1
    assert post(client, "postmark", bounce, auth).json["duplicates"] == 1
    types = sorted(row.type for row in stored(happ, "delivered", "open", "click", "complaint", "bounce"))
    assert types == ["bounce", "click", "complaint", "delivered", "open"]
    assert stored(happ, "bounce")[0].details["bounceType"] == "hard"
    assert stored(happ, "click")[0].url == "https://example.com"


# -- Resend -----------------------------------------------------------------------------------

def test_resend_events_signed_by_svix(happ, client):
    msg = send(happ)
    for name in ("resend_delivered.json", "resend_bounced.json", "resend_clicked.json"):
        body = sample(name)
        body["data"]["to"] = [msg.email]
        body["data"]["tags"] = [{"name": "mailtrack_id", "value": msg.id}]
        raw = json.dumps(body).encode()
        headers = resend_headers(raw)
        resp = post(client, "resend", raw, headers)
        assert resp.status_code == 200 and resp.json["stored"] == 1, resp.json
        assert post(client, "resend", raw, headers).json["duplicates"] == 1  # a Svix retry
    [bounce] = stored(happ, "bounce")
    assert bounce.details["bounceType"] == "hard" and bounce.details["resendBounceSubType"] == "Suppressed"
    assert stored(happ, "click")[0].url == "https://resend.com"


# -- matching, tenancy, hosts -----------------------------------------------------------------

def test_unmatched_events_are_counted_once_and_store_nothing(happ, client, sg):
    item = {"email": "stranger@example.com", "timestamp": 1513299569, "event": "delivered",
            "sg_event_id": "unknown-1", "smtp-id": "<nothing@here>"}
    body = json.dumps([item, dict(item, sg_event_id="unknown-2", mailtrack_id="0" * 24)]).encode()
    resp = post(client, "sendgrid", body, sg.headers(body))
    assert resp.json["unmatched"] == 2 and resp.json["stored"] == 0
    again = post(client, "sendgrid", body, sg.headers(body))
    assert again.json["unmatched"] == 2 and again.json["duplicates"] == 2
    assert stored(happ) == []
    assert unmatched_count(happ.extensions["mailtrack"], "sendgrid") == 2
    result = happ.test_cli_runner().invoke(args=["mailtrack", "stats"])
    assert "ESP webhook events matching no message: 2 " in result.output


def test_events_go_into_the_messages_tenant(make_app, _server, sns, sg):
    def hooks(mt):
        mt.tenant_loader(lambda: "tenant-b")

    app = make_app(setup=hooks, MAILTRACK_WEBHOOKS=webhooks(sns, sg), MAILTRACK_SMTP_URL=_server.url(),
                   MAILTRACK_DEFAULT_SENDER=SENDER)
    with app.app_context():
        msg = send(app, tenant_id="tenant-a")
        resp = post(app.test_client(), "postmark", postmark_event("postmark_bounce.json", msg), basic(*POSTMARK))
        assert resp.json["stored"] == 1
        [row] = stored(app, "bounce")
        assert row.tenant_id == "tenant-a"
        mt = app.extensions["mailtrack"].extension
        assert mt.can_contact("c1", tenant_id="tenant-a") is False
        assert mt.can_contact("c1", tenant_id="tenant-b") is True


def test_webhooks_work_in_a_host_with_csrf_protection(make_app, sns, sg):
    from flask_wtf.csrf import CSRFProtect

    app = make_app(MAILTRACK_WEBHOOKS=webhooks(sns, sg), WTF_CSRF_ENABLED=True)
    CSRFProtect(app)
    resp = post(app.test_client(), "postmark", {"RecordType": "Delivery", "Recipient": "x@example.com",
                                                "MessageID": "m", "DeliveredAt": "2021-02-21T16:34:52Z"},
                basic(*POSTMARK))
    assert resp.status_code == 200 and resp.json["unmatched"] == 1
