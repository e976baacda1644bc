"""The example CRM's marketer pages through Flask's test client: the demo mail is in the
Inbox from the first run, bad query input gets a 404 or the default (never a 500), and the
CRM-made contacts CSV cannot run as a spreadsheet formula. The figures themselves are
checked against the API in a real browser (``test_browser_insights.py``)."""
from __future__ import annotations

import csv
import io
import re

import pytest
from flask import Flask

from test_example_app import demo_db, example  # noqa: F401  (fixtures)

from example_app import API_TOKEN
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

