"""Analytics against hand-computed numbers on a fixed data set (docs/metrics.md), through
the API and ``flask mailtrack stats``, on SQLite and PostgreSQL.

The data set (tenant "", plus one row of tenant "other" that must never count):

| msg | campaign | template | type    | status    | sent (UTC)       | events (UTC time of the event)                 |
|-----|----------|----------|---------|-----------|------------------|------------------------------------------------|
| m1  | C1       | T1       | OFFERTE | SENT      | 03-01 10:00      | human opens 03-01 11:00 and 03-02 10:00,       |
|     |          |          |         |           |                  | human click (A) 03-02 10:05                    |
| m2  | C1       | T1       | OFFERTE | SENT      | 03-01 23:30      | human click (A) 03-02 07:00, no open;          |
|     |          |          |         |           |                  | unsubscribe 03-02 07:01                        |
| m3  | C1       | T1       | INVOICE | SENT      | 03-02 08:00      | machine open and machine click 03-02 08:00     |
| m4  | C2       | T2       | INVOICE | SENT      | 03-02 09:00      | bounce 03-02 09:05 (flagged machine: counts)   |
| m5  | C2       | T2       | OFFERTE | FAILED    | (created 03-02)  | -                                              |
| m6  | -        | -        | -       | SENT      | 03-03 07:00      | human open 03-04 12:00                         |
| m7  | C1       | T1       | OFFERTE | SCHEDULED | -                | -                                              |
| m9  | -        | T1       | OFFERTE | SENT      | 02-27 12:00      | send event (other types never count)           |
| x1  | C1       | T1       | OFFERTE | SENT      | 03-01 (other)    | human open 03-01, bounce, unsubscribe          |

x1 belongs to tenant "other" and shares campaign id C1: it must never count for tenant "".
"""
from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
import sqlalchemy as sa

from crm_mailtrack import ContactEvent, Link
from crm_mailtrack.instrument import link_id
from crm_mailtrack.models import events, messages
from crm_mailtrack.services.analytics import analytics

from conftest import API_TOKEN

API = "/mailtrack/api/communications/analytics"
HDRS = {"Authorization": f"Bearer {API_TOKEN}", "Accept": "application/json"}


def at(day: int, hour: int, minute: int = 0, month: int = 3) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, tzinfo=dt.timezone.utc)


MESSAGES = [
    # id, tenant, campaign, template, type, status, sent_at, created_at
    ("m1", "", "C1", "T1", "OFFERTE", "SENT", at(1, 10), at(1, 9)),
    ("m2", "", "C1", "T1", "OFFERTE", "SENT", at(1, 23, 30), at(1, 9)),
    ("m3", "", "C1", "T1", "INVOICE", "SENT", at(2, 8), at(1, 9)),
    ("m4", "", "C2", "T2", "INVOICE", "SENT", at(2, 9), at(1, 9)),
    ("m5", "", "C2", "T2", "OFFERTE", "FAILED", None, at(2, 9)),
    ("m6", "", None, None, None, "SENT", at(3, 7), at(3, 6)),
    ("m7", "", "C1", "T1", "OFFERTE", "SCHEDULED", None, at(1, 9)),
    ("m9", "", None, "T1", "OFFERTE", "SENT", at(27, 12, month=2), at(27, 11, month=2)),
    ("x1", "other", "C1", "T1", "OFFERTE", "SENT", at(1, 10), at(1, 9)),
]
EVENTS = [
    # message, type, machine, url, occurred_at
    ("m1", "open", False, None, at(1, 11)), ("m1", "open", False, None, at(2, 10)),
    ("m1", "click", False, "https://a.test/", at(2, 10, 5)),
    ("m2", "click", False, "https://a.test/", at(2, 7)), ("m2", "unsubscribe", False, None, at(2, 7, 1)),
    ("m3", "open", True, None, at(2, 8)), ("m3", "click", True, "https://a.test/", at(2, 8)),
    ("m4", "bounce", True, None, at(2, 9, 5)),
    ("m6", "open", False, None, at(4, 12)),
    ("m9", "send", False, None, at(27, 12, month=2)),
    ("x1", "open", False, None, at(1, 11)), ("x1", "bounce", False, None, at(1, 10, 5)),
    ("x1", "unsubscribe", False, None, at(1, 12)),
]


@pytest.fixture
def data_app(app):
    session = app.extensions["mailtrack"].session
    session.execute(sa.insert(messages), [
        {"id": mid, "tenant_id": tenant, "contact_id": f"c-{mid}", "email": f"{mid}@example.com",
         "subject": mid, "campaign_id": campaign, "template_id": tpl, "template_name": tpl and f"Template {tpl}",
         "type": typ, "status": status, "sent_at": sent, "created_at": created, "updated_at": created,
         "headers": {}}
        for mid, tenant, campaign, tpl, typ, status, sent, created in MESSAGES])
    tenant_of = {m[0]: m[1] for m in MESSAGES}
    campaign_of = {m[0]: m[2] for m in MESSAGES}
    session.add_all([ContactEvent(tenant_id=tenant_of[mid], type=typ, contact_id=f"c-{mid}", message_id=mid,
                                  campaign_id=campaign_of[mid], url=url, is_machine=machine, occurred_at=when)
                     for mid, typ, machine, url, when in EVENTS])
    session.commit()
    return app


def test_totals_humans_by_default(data_app):
    got = analytics(data_app.extensions["mailtrack"], "")
    # SENT: m1 m2 m3 m4 m6 m9 = 6; opened (open or click, humans): m1 m2 m6 = 3; clicked: m1 m2 = 2
    assert (got["totalSent"], got["totalOpened"], got["totalClicked"]) == (6, 3, 2)
    # rates over delivered (m4 bounced: 5), click-to-open over opened
    assert (got["openRate"], got["clickRate"], got["clickToOpenRate"]) == (0.6, 0.4, 0.6667)
    assert got["failureRate"] == 0.1429  # 1 FAILED / (6 SENT + 1 FAILED)
    assert got["byTemplate"] == [
        {"templateId": "T1", "templateName": "Template T1", "totalSent": 4, "totalOpened": 2, "totalClicked": 2,
         "openRate": 0.5, "clickRate": 0.5, "clickToOpenRate": 1.0},
        {"templateId": "T2", "templateName": "Template T2", "totalSent": 1, "totalOpened": 0, "totalClicked": 0,
         "openRate": 0.0, "clickRate": 0.0, "clickToOpenRate": 0.0},
        {"templateId": None, "templateName": None, "totalSent": 1, "totalOpened": 1, "totalClicked": 0,
         "openRate": 1.0, "clickRate": 0.0, "clickToOpenRate": 0.0},
    ]
    assert got["byType"] == [
        {"type": "INVOICE", "totalSent": 2, "totalOpened": 0, "totalClicked": 0, "openRate": 0.0, "clickRate": 0.0,
         "clickToOpenRate": 0.0},
        {"type": "OFFERTE", "totalSent": 3, "totalOpened": 2, "totalClicked": 2, "openRate": 0.6667,
         "clickRate": 0.6667, "clickToOpenRate": 1.0},
        {"type": None, "totalSent": 1, "totalOpened": 1, "totalClicked": 0, "openRate": 1.0, "clickRate": 0.0,
         "clickToOpenRate": 0.0},
    ]
    assert got["sendVolumeByDay"] == [
        {"date": "2026-02-27", "count": 1}, {"date": "2026-03-01", "count": 2},
        {"date": "2026-03-02", "count": 2}, {"date": "2026-03-03", "count": 1},
    ]


def test_include_bots_counts_machine_events(data_app):
    got = analytics(data_app.extensions["mailtrack"], "", include_bots=True)
    assert (got["totalSent"], got["totalOpened"], got["totalClicked"]) == (6, 4, 3)
    assert got["openRate"] == 0.8 and got["clickRate"] == 0.6  # over 5 delivered


def test_date_range_through_the_api(data_app):
    client = data_app.test_client()
    resp = client.get(f"{API}?dateFrom=2026-03-01&dateTo=2026-03-02", headers=HDRS)
    assert resp.status_code == 200
    got = resp.json
    # in range [03-01, 03-03): m1 m2 m3 m4 SENT, m5 FAILED (created 03-02)
    assert (got["totalSent"], got["totalOpened"], got["totalClicked"]) == (4, 2, 2)
    assert got["failureRate"] == 0.2 and got["openRate"] == 0.6667  # 2 of 3 delivered (m4 bounced)
    assert got["sendVolumeByDay"] == [{"date": "2026-03-01", "count": 2}, {"date": "2026-03-02", "count": 2}]
    exact = client.get(f"{API}?dateFrom=2026-03-01T23:00:00Z&dateTo=2026-03-02T08:00:00Z", headers=HDRS).json
    assert exact["totalSent"] == 1 and exact["totalOpened"] == 1  # only m2: dateTo is exclusive
    assert client.get(f"{API}?dateFrom=yesterday", headers=HDRS).status_code == 422


def test_empty_range_has_zero_rates(data_app):
    got = data_app.test_client().get(f"{API}?dateFrom=2030-01-01", headers=HDRS).json
    assert got == {"totalSent": 0, "totalOpened": 0, "totalClicked": 0, "openRate": 0.0, "clickRate": 0.0,
                   "clickToOpenRate": 0.0, "failureRate": 0.0, "byTemplate": [], "byType": [], "sendVolumeByDay": [],
                   "totalFailed": 0, "totalBounced": 0, "totalDelivered": 0, "totalUnsubscribed": 0,
                   "totalComplained": 0, "bounceRate": 0.0, "complaintRate": 0.0, "engagementByDay": []}


def test_other_tenant_sees_only_its_own(data_app):
    got = analytics(data_app.extensions["mailtrack"], "other")
    assert (got["totalSent"], got["totalOpened"], got["totalClicked"]) == (1, 1, 0)


def test_cli_stats(data_app):
    runner = data_app.test_cli_runner()
    result = runner.invoke(args=["mailtrack", "stats", "--from", "2026-03-01", "--to", "2026-03-02"])
    assert result.exit_code == 0, result.output
    assert "sent 4  opened 2 (66.7%)  clicked 2 (66.7%)  failure rate 20.0%" in result.output
    assert "T1: sent 3" in result.output and "2026-03-02  2" in result.output
    as_json = runner.invoke(args=["mailtrack", "stats", "--include-bots", "--json"])
    assert json.loads(as_json.output)["totalOpened"] == 4
    bad = runner.invoke(args=["mailtrack", "stats", "--from", "soon"])
    assert bad.exit_code != 0


def test_cli_stats_rebuild_repairs_rows_changed_behind_the_extensions_back(data_app):
    """Rows deleted with raw SQL bypass the cells' bookkeeping; ``stats --rebuild`` recounts."""
    state = data_app.extensions["mailtrack"]
    assert analytics(state, "")["totalClicked"] == 2  # builds the cells
    state.session.execute(sa.delete(events).where(events.c.message_id == "m1", events.c.type == "click"))
    state.session.commit()
    assert analytics(state, "")["totalClicked"] == 2  # stale: nothing told the cells
    result = data_app.test_cli_runner().invoke(args=["mailtrack", "stats", "--rebuild", "--json"])
    assert result.exit_code == 0, result.output
    assert "rebuilt" in result.stderr
    assert json.loads(result.stdout)["totalClicked"] == 1
    assert analytics(state, "") == analytics(state, "", use_cells=False)


def test_funnel_totals_and_engagement_by_day(data_app):
    state = data_app.extensions["mailtrack"]
    got = analytics(state, "")
    # failed: m5; bounced: m4 (its bounce event is flagged machine and still counts);
    # delivered: 6 sent - 1 bounced; unsubscribed: m2 (x1's is another tenant's)
    assert (got["totalFailed"], got["totalBounced"], got["totalDelivered"], got["totalUnsubscribed"]) == (1, 1, 5, 1)
    # human open/click events of sent messages per UTC day of the event (m3's are machine's)
    assert got["engagementByDay"] == [
        {"date": "2026-03-01", "opens": 1, "clicks": 0},  # m1 open
        {"date": "2026-03-02", "opens": 1, "clicks": 2},  # m1 open, m1 click, m2 click
        {"date": "2026-03-04", "opens": 1, "clicks": 0},  # m6 open
    ]
    everyone = analytics(state, "", include_bots=True)
    assert everyone["engagementByDay"][1] == {"date": "2026-03-02", "opens": 2, "clicks": 3}
    assert (everyone["totalBounced"], everyone["totalDelivered"], everyone["totalUnsubscribed"]) == (1, 5, 1)


def test_date_range_selects_messages_not_events(data_app):
    # m1 and m2 were sent on 03-01; their events of 03-02 still count
    got = analytics(data_app.extensions["mailtrack"], "", date_from=at(1, 0), date_to=at(2, 0))
    assert got["engagementByDay"] == [{"date": "2026-03-01", "opens": 1, "clicks": 0},
                                      {"date": "2026-03-02", "opens": 1, "clicks": 2}]
    assert (got["totalFailed"], got["totalBounced"], got["totalDelivered"], got["totalUnsubscribed"]) == (0, 0, 2, 1)


def test_campaign_filter_through_the_api(data_app):
    client = data_app.test_client()
    c1 = client.get(f"{API}?campaignId=C1", headers=HDRS).json
    # C1 of tenant "": m1 m2 m3 SENT (m7 is only scheduled, x1 is another tenant's)
    assert (c1["totalSent"], c1["totalOpened"], c1["totalClicked"]) == (3, 2, 2)
    assert (c1["totalFailed"], c1["totalBounced"], c1["totalDelivered"], c1["totalUnsubscribed"]) == (0, 0, 3, 1)
    assert c1["failureRate"] == 0.0 and c1["openRate"] == 0.6667
    assert [(t["templateId"], t["totalSent"]) for t in c1["byTemplate"]] == [("T1", 3)]
    assert [(t["type"], t["totalSent"]) for t in c1["byType"]] == [("INVOICE", 1), ("OFFERTE", 2)]
    assert c1["sendVolumeByDay"] == [{"date": "2026-03-01", "count": 2}, {"date": "2026-03-02", "count": 1}]
    assert c1["engagementByDay"] == [{"date": "2026-03-01", "opens": 1, "clicks": 0},
                                     {"date": "2026-03-02", "opens": 1, "clicks": 2}]
    c1_all = client.get(f"{API}?campaignId=C1&include_bots=true", headers=HDRS).json
    assert (c1_all["totalOpened"], c1_all["totalClicked"]) == (3, 3)
    assert c1_all["engagementByDay"][1] == {"date": "2026-03-02", "opens": 2, "clicks": 3}

    c2 = client.get(f"{API}?campaignId=C2", headers=HDRS).json
    # m4 SENT and bounced, m5 FAILED
    assert (c2["totalSent"], c2["totalFailed"], c2["totalBounced"], c2["totalDelivered"]) == (1, 1, 1, 0)
    assert c2["failureRate"] == 0.5 and c2["engagementByDay"] == [] and c2["totalUnsubscribed"] == 0

    ranged = client.get(f"{API}?campaignId=C1&dateFrom=2026-03-02&include_bots=true", headers=HDRS).json
    assert (ranged["totalSent"], ranged["totalOpened"], ranged["totalUnsubscribed"]) == (1, 1, 0)  # m3 only
    assert ranged["engagementByDay"] == [{"date": "2026-03-02", "opens": 1, "clicks": 1}]

    unknown = client.get(f"{API}?campaignId=nope", headers=HDRS).json
    assert unknown["totalSent"] == 0 and unknown["engagementByDay"] == [] and unknown["sendVolumeByDay"] == []
    assert client.get(f"{API}?campaignId=", headers=HDRS).status_code == 422
    assert client.get(f"{API}?campaignId={'x' * 65}", headers=HDRS).status_code == 422


def test_new_fields_are_tenant_scoped(data_app):
    got = analytics(data_app.extensions["mailtrack"], "other", campaign_id="C1")
    assert (got["totalSent"], got["totalOpened"], got["totalBounced"], got["totalDelivered"],
            got["totalUnsubscribed"]) == (1, 1, 1, 0, 1)
    assert got["engagementByDay"] == [{"date": "2026-03-01", "opens": 1, "clicks": 0}]
    assert analytics(data_app.extensions["mailtrack"], "other", campaign_id="C2")["totalFailed"] == 0
    nobody = analytics(data_app.extensions["mailtrack"], "nobody", campaign_id="C1")
    assert nobody["totalSent"] == 0 and nobody["engagementByDay"] == [] and nobody["totalUnsubscribed"] == 0


def test_analytics_on_up_to_date_cells_reads_only_the_cells(data_app):
    """Once the cells are up to date, a call reads the message and day cells (none of those
    reads touches the events table) and writes and locks nothing."""
    state = data_app.extensions["mailtrack"]
    engine = state.engine
    analytics(state, "")  # builds the cells
    seen: list[Any] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        analytics(state, "")
        analytics(state, "", campaign_id="C1", include_bots=True)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    queries = [sql for sql in seen if not sql.lstrip().upper().startswith("SET ")]
    reads = [sql for sql in queries if re.search(r"FROM mailtrack_stats_(tenant_)?(messages|days)\b", sql)]
    assert reads and not any("FROM mailtrack_events" in sql for sql in reads)
    # a call on up-to-date cells writes and locks nothing (bench/bench_queries.py counts the statements)
    assert not any(re.match(r"\s*(INSERT|UPDATE|DELETE|LOCK)\b", sql, re.I) or "FOR UPDATE" in sql for sql in queries)


def test_numbers_survive_a_purge_of_the_raw_events(data_app):
    """After ``purge`` moves the events into daily rollups, analytics, records and the CSV
    export still show the same numbers."""
    from crm_mailtrack.api.communications_responses import CommunicationSchema
    from crm_mailtrack.services import communications as comms
    from crm_mailtrack.services import csv_export
    from crm_mailtrack.services.privacy import purge

    state = data_app.extensions["mailtrack"]

    def snapshot() -> Any:
        # The records as the API answers them.
        records = CommunicationSchema(many=True).dump(comms.records(state, comms.find_all(state, "")))
        per_message = {r["id"]: (r["openCount"], r["opened"], [(lk["originalUrl"], lk["clickCount"])
                                                               for lk in r["clickedLinks"]]) for r in records}
        rows = list(csv_export.stream_csv(state, csv_export.export_query("", include_bots=True)))
        return (analytics(state, ""), analytics(state, "", include_bots=True), per_message, sorted(rows))

    session = state.session
    session.add(Link(id=link_id("https://a.test/"), url="https://a.test/"))  # as track_message stores it
    session.execute(sa.update(events).values(link_id=link_id("https://a.test/")).where(events.c.type == "click"))
    session.commit()
    before = snapshot()
    assert before[2]["m1"] == (2, True, [("https://a.test/", 1)])
    assert purge(state, 0, now=at(5, 0)) == len(EVENTS)
    assert session.execute(sa.select(sa.func.count()).select_from(ContactEvent)).scalar() == 0
    assert snapshot() == before
