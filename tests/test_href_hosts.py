"""The host a signed click link redirects to is the host a browser would open for the href
as written: where the WHATWG URL standard (browsers) and Python's urllib disagree
(backslashes, tabs and newlines, leading and trailing controls, the number of slashes,
``@`` in the user info), the href is read as a browser reads it."""
from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

import pytest
from conftest import path_of

from crm_mailtrack import InvalidDestination

CLICK_HREF = re.compile(r'href="(http://crm\.test/mailtrack/t/c/[^"]+)"')


@pytest.fixture
def app(make_app):
    app = make_app(MAILTRACK_HONEYPOT=False)
    with app.app_context():
        yield app


#: (href as written in the HTML attribute, the host a browser opens: WHATWG URL parsing)
CASES = [
    # a backslash ends the authority of an http(s) URL and is a path separator
    (r"https://trusted.example\@evil.example/", "trusted.example"),
    (r"https://trusted.example\\evil.example/x", "trusted.example"),
    (r"https://trusted.example\evil.example@other.example/", "trusted.example"),
    (r"HTTPS:\\trusted.example\path", "trusted.example"),
    (r"https:/\trusted.example/", "trusted.example"),
    # any run of two or more slashes after the scheme
    ("https:///trusted.example/a", "trusted.example"),
    ("https:////trusted.example", "trusted.example"),
    # tabs and newlines are removed wherever they are (raw, or as character references)
    ("https://trusted.exa\tmple/p", "trusted.example"),
    ("https://trusted.example&#10;@evil.example/", "evil.example"),
    ("https://trus&#9;ted.example/\n", "trusted.example"),
    ("https://trusted.example\r\n/path", "trusted.example"),
    # leading and trailing C0 controls and spaces are stripped
    (" \t&#1;https://trusted.example/  &#31;", "trusted.example"),
    # the last @ ends the user info, in both readings
    ("https://user@trusted.example@evil.example/", "evil.example"),
    ("https://trusted.example@evil.example/", "evil.example"),
    # a backslash in the query or fragment is data, not a separator
    (r"https://trusted.example/p?next=\\evil.example#\\x", "trusted.example"),
]


@pytest.mark.parametrize("href, browser_host", CASES)
def test_the_signed_link_redirects_to_the_host_a_browser_opens(mailtrack, client, href, browser_host):
    msg = mailtrack.track_message(contact_id="c1", email="a@example.com", subject="s",
                                  html=f'<p><a href="{href}">go</a></p>')
    (link,) = CLICK_HREF.findall(msg.html)
    resp = client.get(path_of(html.unescape(link)))
    assert resp.status_code == 302
    location = resp.headers["Location"]
    assert "\\" not in location.split("?")[0] and not re.search(r"[\x00-\x20]", location)
    assert urlsplit(location).hostname == browser_host, location


@pytest.mark.parametrize("href", ["https:/evil.example/", "https:evil.example", r"https:\evil.example"])
def test_fewer_than_two_slashes_are_left_untracked(mailtrack, href):
    """What these mean depends on the page's base URL (a webmail's own host, or the one
    written): the href is left exactly as it was, never signed."""
    source = f'<p><a href="{href}">go</a></p>'
    msg = mailtrack.track_message(contact_id="c1", email="a@example.com", subject="s", html=source)
    assert CLICK_HREF.findall(msg.html) == [] and source in msg.html


@pytest.mark.parametrize("href", ["https://trusted.example&#1;@evil.example/", "https://a.example/\x0bx"])
def test_a_control_character_inside_is_refused_not_dropped(mailtrack, href):
    """A browser keeps ``&#1;`` (its URL parser then fails on the host); dropping it would
    sign host evil.example."""
    with pytest.raises(InvalidDestination):
        mailtrack.track_message(contact_id="c1", email="a@example.com", subject="s",
                                html=f'<a href="{href}">go</a>')


def test_click_url_reads_the_destination_as_a_browser_does(mailtrack, client):
    msg = mailtrack.track_message(contact_id="c1", email="a@example.com", subject="s", html="<p>x</p>")
    url = mailtrack.click_url(msg, "https://trusted.example\\@evil.example/")
    resp = client.get(path_of(url))
    assert urlsplit(resp.headers["Location"]).hostname == "trusted.example"
