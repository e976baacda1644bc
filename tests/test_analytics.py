"""Analytics against hand-computed numbers on a fixed data set (docs/metrics.md), through
the API and ``flask mailtrack stats``, on SQLite and PostgreSQL.

The data set (tenant "", plus one row of tenant "other" that must never count):

| msg | template | type    | status    | sent (UTC)       | events                               |
|-----|----------|---------|-----------|------------------|--------------------------------------|
| m1  | T1       | OFFERTE | SENT      | 03-01 10:00      | 2 human opens, 1 human click (A)     |
| m2  | T1       | OFFERTE | SENT      | 03-01 23:30      | 1 human click (A), no open           |
| m3  | T1       | INVOICE | SENT      | 03-02 08:00      | 1 machine open, 1 machine click      |
| m4  | T2       | INVOICE | SENT      | 03-02 09:00      | -                                    |
| m5  | T2       | OFFERTE | FAILED    | (created 03-02)  | -                                    |
| m6  | -        | -       | SENT      | 03-03 07:00      | 1 human open                         |
| m7  | T1       | OFFERTE | SCHEDULED | -                | -                                    |
| m9  | T1       | OFFERTE | SENT      | 02-27 12:00      | -                                    |
| x1  | T1       | OFFERTE | SENT      | 03-01 (other)    | 1 human open                         |
"""
from __future__ import annotations

import datetime as dt
import json
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
    # id, tenant, template, type, status, sent_at, created_at
    ("m1", "", "T1", "OFFERTE", "SENT", at(1, 10), at(1, 9)),
    ("m2", "", "T1", "OFFERTE", "SENT", at(1, 23, 30), at(1, 9)),
    ("m3", "", "T1", "INVOICE", "SENT", at(2, 8), at(1, 9)),
    ("m4", "", "T2", "INVOICE", "SENT", at(2, 9), at(1, 9)),
    ("m5", "", "T2", "OFFERTE", "FAILED", None, at(2, 9)),
    ("m6", "", None, None, "SENT", at(3, 7), at(3, 6)),
    ("m7", "", "T1", "OFFERTE", "SCHEDULED", None, at(1, 9)),
    ("m9", "", "T1", "OFFERTE", "SENT", at(27, 12, month=2), at(27, 11, month=2)),
    ("x1", "other", "T1", "OFFERTE", "SENT", at(1, 10), at(1, 9)),
]
EVENTS = [
    # message, type, machine, url
    ("m1", "open", False, None), ("m1", "open", False, None), ("m1", "click", False, "https://a.test/"),
    ("m2", "click", False, "https://a.test/"),
    ("m3", "open", True, None), ("m3", "click", True, "https://a.test/"),
    ("m6", "open", False, None),
    ("x1", "open", False, None),
    ("m1", "send", False, None), ("m4", "bounce", False, None),  # other types never count
]


@pytest.fixture
def data_app(app):
    session = app.extensions["mailtrack"].session
    session.execute(sa.insert(messages), [
        {"id": mid, "tenant_id": tenant, "contact_id": f"c-{mid}", "email": f"{mid}@example.com",
         "subject": mid, "template_id": tpl, "template_name": tpl and f"Template {tpl}", "type": typ,
         "status": status, "sent_at": sent, "created_at": created, "updated_at": created, "headers": {}}
        for mid, tenant, tpl, typ, status, sent, created in MESSAGES])
    tenant_of = {m[0]: m[1] for m in MESSAGES}
    session.add_all([ContactEvent(tenant_id=tenant_of[mid], type=typ, contact_id=f"c-{mid}", message_id=mid,
                                  url=url, is_machine=machine, occurred_at=at(4, 12)) for mid, typ, machine, url in EVENTS])
    session.commit()
    return app


def test_totals_humans_by_default(data_app):
    got = analytics(data_app.extensions["mailtrack"], "")
    # SENT: m1 m2 m3 m4 m6 m9 = 6; opened (open or click, humans): m1 m2 m6 = 3; clicked: m1 m2 = 2
    assert (got["totalSent"], got["totalOpened"], got["totalClicked"]) == (6, 3, 2)
    assert got["openRate"] == 0.5 and got["clickRate"] == 0.3333
    assert got["failureRate"] == 0.1429  # 1 FAILED / (6 SENT + 1 FAILED)
    assert got["byTemplate"] == [
        {"templateId": "T1", "templateName": "Template T1", "totalSent": 4, "totalOpened": 2, "totalClicked": 2,
         "openRate": 0.5, "clickRate": 0.5},
        {"templateId": "T2", "templateName": "Template T2", "totalSent": 1, "totalOpened": 0, "totalClicked": 0,
         "openRate": 0.0, "clickRate": 0.0},
        {"templateId": None, "templateName": None, "totalSent": 1, "totalOpened": 1, "totalClicked": 0,
         "openRate": 1.0, "clickRate": 0.0},
    ]
    assert got["byType"] == [
        {"type": "INVOICE", "totalSent": 2, "totalOpened": 0, "totalClicked": 0, "openRate": 0.0, "clickRate": 0.0},
        {"type": "OFFERTE", "totalSent": 3, "totalOpened": 2, "totalClicked": 2, "openRate": 0.6667,
         "clickRate": 0.6667},
        {"type": None, "totalSent": 1, "totalOpened": 1, "totalClicked": 0, "openRate": 1.0, "clickRate": 0.0},
    ]
    assert got["sendVolumeByDay"] == [
        {"date": "2026-02-27", "count": 1}, {"date": "2026-03-01", "count": 2},
        {"date": "2026-03-02", "count": 2}, {"date": "2026-03-03", "count": 1},
    ]


def test_include_bots_counts_machine_events(data_app):
    got = analytics(data_app.extensions["mailtrack"], "", include_bots=True)
    assert (got["totalSent"], got["totalOpened"], got["totalClicked"]) == (6, 4, 3)
    assert got["openRate"] == 0.6667 and got["clickRate"] == 0.5


def test_date_range_through_the_api(data_app):
    client = data_app.test_client()
    resp = client.get(f"{API}?dateFrom=2026-03-01&dateTo=2026-03-02", headers=HDRS)
    assert resp.status_code == 200
    got = resp.json
    # in range [03-01, 03-03): m1 m2 m3 m4 SENT, m5 FAILED (created 03-02)
    assert (got["totalSent"], got["totalOpened"], got["totalClicked"]) == (4, 2, 2)
    assert got["failureRate"] == 0.2 and got["openRate"] == 0.5
    assert got["sendVolumeByDay"] == [{"date": "2026-03-01", "count": 2}, {"date": "2026-03-02", "count": 2}]
    exact = client.get(f"{API}?dateFrom=2026-03-01T23:00:00Z&dateTo=2026-03-02T08:00:00Z", headers=HDRS).json
    assert exact["totalSent"] == 1 and exact["totalOpened"] == 1  # only m2: dateTo is exclusive
    assert client.get(f"{API}?dateFrom=yesterday", headers=HDRS).status_code == 422


def test_empty_range_has_zero_rates(data_app):
    got = data_app.test_client().get(f"{API}?dateFrom=2030-01-01", headers=HDRS).json
    assert got == {"totalSent": 0, "totalOpened": 0, "totalClicked": 0, "openRate": 0.0, "clickRate": 0.0,
                   "failureRate": 0.0, "byTemplate": [], "byType": [], "sendVolumeByDay": []}


def test_other_tenant_sees_only_its_own(data_app):
    got = analytics(data_app.extensions["mailtrack"], "other")
    assert (got["totalSent"], got["totalOpened"], got["totalClicked"]) == (1, 1, 0)


def test_cli_stats(data_app):
    runner = data_app.test_cli_runner()
    result = runner.invoke(args=["mailtrack", "stats", "--from", "2026-03-01", "--to", "2026-03-02"])
    assert result.exit_code == 0, result.output
    assert "sent 4  opened 2 (50.0%)  clicked 2 (50.0%)  failure rate 20.0%" in result.output
    assert "T1: sent 3" in result.output and "2026-03-02  2" in result.output
    as_json = runner.invoke(args=["mailtrack", "stats", "--include-bots", "--json"])
    assert json.loads(as_json.output)["totalOpened"] == 4
    bad = runner.invoke(args=["mailtrack", "stats", "--from", "soon"])
    assert bad.exit_code != 0


def test_analytics_is_a_fixed_number_of_queries(data_app):
    engine = data_app.extensions["mailtrack"].engine
    seen: list[Any] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        analytics(data_app.extensions["mailtrack"], "")
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(seen) == 4


def test_numbers_survive_a_purge_of_the_raw_events(data_app):
    """After ``purge`` moves the events into daily rollups, analytics, records and the CSV
    export still show the same numbers."""
    from crm_mailtrack.services import communications as comms
    from crm_mailtrack.services import csv_export
    from crm_mailtrack.services.privacy import purge

    state = data_app.extensions["mailtrack"]

    def snapshot() -> Any:
        records = comms.records(state, comms.find_all(state, ""))
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
