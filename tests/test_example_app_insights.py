"""The example CRM's marketer pages through Flask's test client: the demo mail is in the
Inbox from the first run, bad query input gets a 404 or the default (never a 500), and the
CRM-made contacts CSV cannot run as a spreadsheet formula. The figures themselves are
checked against the API in a real browser (``test_browser_insights.py``)."""
from __future__ import annotations

import csv
import io
import os
import re
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from test_example_app import _config, demo_db, example  # noqa: F401  (fixtures)

from example_app import API_TOKEN, create_app
from example_app.models import Contact, InboxMail, db

HDRS = {"Authorization": f"Bearer {API_TOKEN}", "Accept": "application/json"}


def test_the_demo_mail_is_in_the_inbox_from_the_first_run(example: Flask) -> None:  # noqa: F811
    """Every demo message the extension sent (analytics ``totalSent``) arrived at the local
    SMTP server and is listed on the Inbox page, newest first."""
    client = example.test_client()
    sent = client.get("/mailtrack/api/communications/analytics", headers=HDRS).get_json()["totalSent"]
    with example.app_context():
        mails = db.session.execute(db.select(InboxMail).order_by(InboxMail.id.desc())).scalars().all()
    assert len(mails) == sent > 100
    listed: list[str] = []
    for number in range(1, -(-sent // 50) + 1):  # 50 a page
        page = client.get(f"/inbox?page={number}").get_data(as_text=True)
        listed += re.findall(r'href="/inbox/(\d+)"', page)
    assert listed == [str(m.id) for m in mails]
    assert f"1–50 of {sent} mails" in client.get("/inbox").get_data(as_text=True)


@pytest.mark.parametrize("path", [
    "/campaigns/pricing-offer/audience?action=everyone",
    "/campaigns/pricing-offer/audience?action=opened&link_id=abc",  # a link only with clicked
    "/campaigns/pricing-offer/audience?action=clicked&link_id=0000000000000000",  # not its link
    "/campaigns/pricing-offer/audience.csv?action=everyone",
    "/campaigns/pricing-offer/audience.csv?action=clicked&link_id=%00",
    "/campaigns/nope/audience?action=clicked",
    "/campaigns/nope/audience.csv?action=clicked",
    "/campaigns/nope/messages.csv",
])
def test_bad_audience_requests_are_not_found(example: Flask, path: str) -> None:  # noqa: F811
    assert example.test_client().get(path).status_code == 404


def test_bad_sort_and_page_fall_back(example: Flask) -> None:  # noqa: F811
    client = example.test_client()
    default = client.get("/contacts").get_data(as_text=True)
    odd = client.get("/contacts?sort=nope&dir=sideways&page=abc").get_data(as_text=True)
    rows = re.compile(r'<tr data-contact="(\d+)">')
    assert rows.findall(odd) == rows.findall(default) and len(rows.findall(default)) == 25
    last = client.get("/contacts?page=999").get_data(as_text=True)
    assert rows.findall(last) == rows.findall(client.get("/contacts?page=2").get_data(as_text=True))
    assert "26–36 of 36 contacts" in last
    messages = client.get("/campaigns/pricing-offer?sort=clicks&dir=desc&page=-3")
    assert messages.status_code == 200 and 'aria-sort="descending"' in messages.get_data(as_text=True)


def test_contacts_csv_is_text_not_formulas(example: Flask) -> None:  # noqa: F811
    with example.app_context():
        db.session.add(Contact(first_name="=HYPERLINK(\"http://evil.example\")", last_name="", company="@SUM(A1)",
                               email="formula@example.com"))
        db.session.commit()
    resp = example.test_client().get("/contacts.csv?q=formula")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    (row,) = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))
    assert row["name"] == "'=HYPERLINK(\"http://evil.example\")" and row["company"] == "'@SUM(A1)"
    assert (row["opens"], row["clicks"], row["score"], row["lastHumanActivity"]) == ("0", "0", "0.0", "")



def test_the_crm_on_postgresql(tmp_path: Path) -> None:
    """The CRM on PostgreSQL (``EXAMPLE_DATABASE_URL`` may name one): the demo story is made
    in a private schema, the pages answer, and their figures are the API's there too."""
    server = os.environ.get("MAILTRACK_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("PostgreSQL not configured: set MAILTRACK_TEST_POSTGRES_URL (.ci/run does)")
    schema = f"crm_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(server)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = f"{server}{'&' if '?' in server else '?'}options=-csearch_path%3D{schema}"
    app = None
    try:
        app = create_app(_config(tmp_path / "unused.db", SQLALCHEMY_DATABASE_URI=url))
        client = app.test_client()
        for path in ("/", "/contacts?sort=score&dir=desc&page=2", "/campaigns/pricing-offer?sort=opens&dir=desc",
                     "/campaigns/welcome-2024/audience?action=opened_not_clicked", "/inbox?page=2", "/contacts/9"):
            assert client.get(path).status_code == 200, path
        analytics = client.get("/mailtrack/api/communications/analytics?campaignId=welcome-2024", headers=HDRS)
        funnel = {s["key"]: s["human"] for s in client.get("/campaigns/welcome-2024/funnel.json").get_json()["steps"]}
        data = analytics.get_json()
        assert (funnel["sent"], funnel["bounced"], funnel["delivered"], funnel["opened"]) == (
            data["totalSent"], data["totalBounced"], data["totalDelivered"], data["totalOpened"])
        assert funnel["bounced"] == 1 and funnel["opened"] > 0
        csv_hdrs = {**HDRS, "Accept": "text/csv"}
        api_csv = client.get("/mailtrack/api/campaigns/welcome-2024/audience?action=clicked", headers=csv_hdrs)
        mine = client.get("/campaigns/welcome-2024/audience.csv?action=clicked")
        assert mine.status_code == api_csv.status_code == 200 and mine.data == api_csv.data and mine.data.count(b"\n") > 2
    finally:
        if app is not None:
            with app.app_context():
                db.session.remove()
                db.engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
