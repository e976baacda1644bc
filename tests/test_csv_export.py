"""CSV export: header, RFC 4180 quoting, formula-injection protection, the search
filters, tenancy, and streaming (rows are produced lazily, memory does not grow with N)."""
from __future__ import annotations

import csv
import io
import unicodedata
from typing import Any

import pytest
import sqlalchemy as sa
from flask import has_request_context, request

from crm_mailtrack.models import messages, utcnow
from crm_mailtrack.services import csv_export

from conftest import API_TOKEN

API = "/mailtrack/api/communications/csv-export"


def hdrs(tenant: str | None = None, accept: str = "text/csv") -> dict[str, str]:
    out = {"Authorization": f"Bearer {API_TOKEN}", "Accept": accept}
    if tenant:
        out["X-Tenant"] = tenant
    return out


def _hooks(mt: Any) -> None:
    @mt.tenant_loader
    def _tenant() -> str | None:
        return request.headers.get("X-Tenant") if has_request_context() else None


@pytest.fixture
def capp(make_app):
    app = make_app(setup=_hooks)
    with app.app_context():
        yield app


def _msg(app: Any, subject: str, *, tenant: str | None = None, status: str = "SENT", **kw: Any) -> str:
    mt = app.extensions["mailtrack"].extension
    msg = mt.track_message(contact_id=kw.pop("contact_id", "c1"), email="ann@example.com", subject=subject,
                           html="<p>x</p>", tenant_id=tenant, **kw)
    session = app.extensions["mailtrack"].session
    session.execute(sa.update(messages).where(messages.c.id == msg.id).values(status=status, sent_at=utcnow()))
    session.commit()
    return msg.id


def _rows(resp: Any) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))


def test_header_quoting_and_formula_injection(capp):
    tricky = {
        "comma, and \"quotes\"": "comma, and \"quotes\"",
        "line\nbreak": "line\nbreak",
        "=HYPERLINK(\"http://evil\")": "'=HYPERLINK(\"http://evil\")",
        "+1+1": "'+1+1",
        "-2+3": "'-2+3",
        "@SUM(A1)": "'@SUM(A1)",
        "\tTabbed": "'\tTabbed",
        "\rReturn": "'\rReturn",
        "plain": "plain",
    }
    for subject in tricky:
        _msg(capp, subject)
    resp = capp.test_client().get(API, headers=hdrs())
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert resp.is_streamed
    assert "attachment" in resp.headers["Content-Disposition"]
    body = resp.get_data(as_text=True)
    assert body.splitlines()[0] == ",".join(csv_export.HEADER)
    got = sorted(r["subject"] for r in _rows(resp))
    assert got == sorted(tricky.values())
    assert '"comma, and ""quotes"""' in body


def test_counts_and_filters_match_search(capp):
    from crm_mailtrack import ContactEvent

    a = _msg(capp, "offer A", type="OFFERTE")
    _msg(capp, "invoice", type="INVOICE", status="FAILED")
    session = capp.extensions["mailtrack"].session
    session.add_all([
        ContactEvent(type="open", contact_id="c1", message_id=a, is_machine=False),
        ContactEvent(type="open", contact_id="c1", message_id=a, is_machine=True),
        ContactEvent(type="click", contact_id="c1", message_id=a, url="https://x.test/", is_machine=False),
    ])
    session.commit()
    client = capp.test_client()
    rows = _rows(client.get(f"{API}?type=OFFERTE", headers=hdrs()))
    assert [(r["id"], r["openCount"], r["opened"], r["clickCount"]) for r in rows] == [(a, "1", "true", "1")]
    with_bots = _rows(client.get(f"{API}?type=OFFERTE&include_bots=true", headers=hdrs()))
    assert with_bots[0]["openCount"] == "2"
    assert [r["subject"] for r in _rows(client.get(f"{API}?status=FAILED", headers=hdrs()))] == ["invoice"]
    assert [r["subject"] for r in _rows(client.get(f"{API}?search=OFFER", headers=hdrs()))] == ["offer A"]
    ordered = _rows(client.get(f"{API}?sort=subject,asc", headers=hdrs()))
    assert [r["subject"] for r in ordered] == ["invoice", "offer A"]
    assert client.get(f"{API}?sort=html,asc", headers=hdrs()).status_code == 422


def test_tenancy_and_accept(capp):
    _msg(capp, "mine", tenant="t1")
    _msg(capp, "theirs", tenant="t2")
    client = capp.test_client()
    assert [r["subject"] for r in _rows(client.get(API, headers=hdrs("t1")))] == ["mine"]
    assert client.get(API, headers=hdrs("t1", accept="application/json")).status_code == 200
    assert client.get(API, headers=hdrs("t1", accept="image/png")).status_code == 406


def test_an_export_longer_than_a_fetch_batch_is_streamed_whole(capp):
    """More rows than one batch of the server-side cursor: the answer is streamed and holds
    every row once, in order (bench/bench_csv.py measures its memory on 1,000,000 rows)."""
    session = capp.extensions["mailtrack"].session
    now = utcnow()
    n = 1234
    session.execute(sa.insert(messages), [
        {"id": f"m{i:08d}", "tenant_id": "", "contact_id": f"c{i}", "email": f"u{i}@example.com",
         "subject": f"S{i}", "status": "SENT", "created_at": now, "updated_at": now, "headers": {}}
        for i in range(n)])
    session.commit()
    resp = capp.test_client().get(API + "?sort=subject,asc", headers=hdrs())
    assert resp.status_code == 200 and resp.is_streamed
    assert [r["subject"] for r in _rows(resp)] == sorted(f"S{i}" for i in range(n))


#: Cells a spreadsheet would still run as a formula past a naive "starts with =" check.
EVASIVE = [
    " =HYPERLINK(\"http://evil/\"&A1)",        # leading space (spreadsheets trim it)
    "\u00a0=1+1",                             # no-break space
    "\u3000\u200b@SUM(A1)",                    # ideographic space, zero-width space
    "\uff1dcmd|' /C calc'!A0",                 # full-width equals sign
    "\uff0b1+1", "\uff0d2+3", "\uff20SUM(A1)",  # full-width plus, minus, at
    "\ufe66HYPERLINK(\"http://evil/\")",       # small equals sign
    "\n=1+1",
]


def _cells_split_on(body: str, delimiter: str) -> list[str]:
    """The cells of a spreadsheet that splits on ``delimiter``: the file's own ``,`` with
    RFC 4180 quotes; ``;`` or tab (a European or TSV import) as plainly as possible, quotes
    ignored (spreadsheets differ in how they treat this file's quotes then)."""
    if delimiter == ",":
        return [cell for row in csv.reader(io.StringIO(body, newline="")) for cell in row]
    return [chunk.strip(' "\u00a0\u3000\u200b\r\n') for line in body.split("\r\n") for chunk in line.split(delimiter)]


def test_formula_guard_sees_through_whitespace_full_width_signs_and_separators(capp):
    for subject in [*EVASIVE, "x;=HYPERLINK(\"http://evil/\")", "y\t=1+1", "z; \"\uff0b1", "Price - 20% off",
                    "ok@example.com", "a, @b"]:
        _msg(capp, subject, campaign_id="camp;=1+1")
    resp = capp.test_client().get(API, headers=hdrs())
    assert resp.status_code == 200 and resp.is_streamed
    body = resp.get_data(as_text=True)
    rows = _rows(resp)
    subjects = {r["subject"] for r in rows}
    assert {"'" + s for s in EVASIVE} <= subjects
    assert {"x;'=HYPERLINK(\"http://evil/\")", "y\t'=1+1", "z; \"'\uff0b1", "Price - 20% off", "ok@example.com",
            "a, @b"} <= subjects
    assert {r["campaignId"] for r in rows} == {"camp;'=1+1"}
    # whatever separator the spreadsheet splits on, no cell it sees starts (after trimming)
    # with a formula sign
    for delimiter in (",", ";", "\t"):
        for cell in _cells_split_on(body, delimiter):
            trimmed = cell.lstrip(" \u00a0\u3000\u200b\n")
            assert not trimmed[:1] or unicodedata.normalize("NFKC", trimmed[0]) not in "=+-@", (delimiter, cell)
