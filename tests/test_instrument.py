"""Outbound HTML instrumentation, as a host sees it through ``track_message``: which links
become signed click links, what every other byte of the HTML looks like afterwards, UTM
defaults, the pixel, the List-Unsubscribe headers and what the tokens carry."""
from __future__ import annotations

import html
import json
import random
import re
from html.parser import HTMLParser
from typing import Any

import pytest
import sqlalchemy as sa
from itsdangerous import URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.timed import TimestampSigner

from crm_mailtrack import InvalidDestination, Message
from crm_mailtrack import instrument as instrument_module
from crm_mailtrack.models import links, messages
from crm_mailtrack.textpart import html_to_text

from conftest import BASE_URL, SECRET, path_of

CLICK_HREF = re.compile(r'"(http://crm\.test/mailtrack/t/c/[^"]+)"')
PIXEL_SRC = re.compile(r'<img src="(http://crm\.test/mailtrack/t/o/[^"]+)"[^>]*>')


#: The hidden honeypot link (bot detection) is an addition of its own; these tests check
#: the rewriting byte for byte, so they run without it.
NO_HONEYPOT = {"MAILTRACK_HONEYPOT": False}


@pytest.fixture
def app(make_app):
    app = make_app(**NO_HONEYPOT)
    with app.app_context():
        yield app


def track(mailtrack: Any, html: str, **kw: Any) -> Message:
    kw.setdefault("contact_id", "c1")
    kw.setdefault("email", "alice@example.com")
    kw.setdefault("subject", "Hello")
    return mailtrack.track_message(html=html, **kw)


def click_urls(html: str) -> list[str]:
    return CLICK_HREF.findall(html)


def destination(client: Any, url: str) -> str:
    resp = client.get(path_of(url))
    assert resp.status_code == 302, resp.status_code
    return resp.headers["Location"]


def without_click_hrefs(html: str) -> str:
    return CLICK_HREF.sub("@", html)


def test_http_and_https_links_redirect_to_exactly_the_original(mailtrack, client):
    dests = ["http://example.com/a?x=1", "https://shop.example.org/p/%C3%A9?q=a%20b#frag"]
    msg = track(mailtrack, "".join(f'<a href="{d}">l</a>' for d in dests), track_opens=False)
    urls = click_urls(msg.html)
    assert len(urls) == 2
    assert [destination(client, u) for u in urls] == dests


def test_amp_entities_give_a_real_ampersand_and_stay_escaped(make_app):
    app = make_app(MAILTRACK_UTM_DEFAULTS={"utm_source": "crm"}, **NO_HONEYPOT)
    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        msg = track(mt, '<a href="https://s.test/p?a=1&amp;b=2">x</a>', track_opens=False)
        (url,) = click_urls(msg.html)
        assert destination(app.test_client(), url) == "https://s.test/p?a=1&b=2&utm_source=crm"
        # Without click tracking the href keeps valid HTML escaping of the UTM'd URL.
        plain = track(mt, '<a href="https://s.test/p?a=1&amp;b=2">x</a>', track_opens=False,
                      track_clicks=False)
        assert plain.html == '<a href="https://s.test/p?a=1&amp;b=2&amp;utm_source=crm">x</a>'


def test_ampersands_that_are_not_references_stay_literal(mailtrack, client):
    """HTML5: in an attribute, ``&region=`` or ``&notify`` (a legacy entity name followed by
    ``=`` or a letter) is *not* a character reference; browsers keep it as typed."""
    href = "https://x.test/?a=1&region=eu&copy=3&amp;lang=en&notify=1&s=&sect;&#38;y=2&para"
    msg = track(mailtrack, f'<a href="{href}">x</a>', track_opens=False)
    (url,) = click_urls(msg.html)
    assert destination(client, url) == \
        "https://x.test/?a=1&region=eu&copy=3&lang=en&notify=1&s=%C2%A7&y=2%C2%B6"


NOT_HTTP = ["mailto:bob@example.com", "tel:+3312345678", "#top", "javascript:alert(1)",
            " javascript:alert(1)", "JavaScript:void(0)", "/relative/path", "page.html",
            "//cdn.example.com/x", "ftp://files.example.com/x", "data:text/html,x", ""]


def test_non_http_links_are_untouched(mailtrack, db):
    for href in NOT_HTTP:
        html = f'<p><a href="{href}">x</a></p>'
        assert track(mailtrack, html, track_opens=False).html == html, href
    assert db.session.execute(sa.select(sa.func.count()).select_from(links)).scalar() == 0


def test_opt_out_attribute(mailtrack):
    html = ('<a data-mailtrack="off" href="https://a.test/">x</a>'
            '<a href="https://b.test/" DATA-MAILTRACK=off>y</a><a href="https://c.test/">z</a>')
    msg = track(mailtrack, html, track_opens=False)
    assert msg.html.startswith('<a data-mailtrack="off" href="https://a.test/">x</a>'
                               '<a href="https://b.test/" DATA-MAILTRACK=off>y</a><a href=')
    assert len(click_urls(msg.html)) == 1


def test_every_byte_outside_rewritten_hrefs_is_unchanged(mailtrack, client):
    template = (
        "<!DOCTYPE html>\n<html><head><style>a{{color:red}}</style></head>\r\n"
        "<BODY>\n  <A HREF={0} class='btn'  >Upper &amp; co</A>\n"
        "  <a title=\"it's\" href={1}>single</a>\t<a href={2}>unquoted</a>\n"
        "  <!-- <a href=\"https://comment.test/\">hidden</a> -->\n"
        "  <script>var s = '<a href=\"https://script.test/\">';</script>\n"
        "  <a href=\"mailto:x@y.test\">mail</a> caf\u00e9 &nbsp; <img src=\"https://img.test/i.png\">\n"
        "  <a\nhref={3}\n>multi-line</a>\n</BODY></html>"
    )
    originals = ['"https://upper.test/U"', "'https://single.test/s?a=1&amp;b=2'",
                 "http://unquoted.test/u", '"https://multi.test/m"']
    html = template.format(*originals)
    msg = track(mailtrack, html, track_opens=False)
    assert without_click_hrefs(msg.html) == template.format("@", "@", "@", "@")
    got = [destination(client, u) for u in click_urls(msg.html)]
    assert got == ["https://upper.test/U", "https://single.test/s?a=1&b=2",
                   "http://unquoted.test/u", "https://multi.test/m"]
    assert "comment.test" not in "".join(got) and "script.test" not in "".join(got)


#: (href, where a browser goes): a browser removes tabs and newlines from a URL, so these
#: are signed as it reads them, and no CR/LF ever reaches the Location header.
HOSTILE = [
    ("https://evil.test/a&#10;Set-Cookie: x=1", "https://evil.test/aSet-Cookie:%20x=1"),
    ("https://evil.test/a&#13;&#10;X: y", "https://evil.test/aX:%20y"),
    ("https://evil.test/a\r\nLocation: https://other.test/", "https://evil.test/aLocation:%20https://other.test/"),
    ("https://evil.test/a%0d%0a&#x0A;b", "https://evil.test/a%0d%0ab"),
]


def test_newlines_in_hrefs_never_reach_the_redirect(mailtrack, client):
    for href, expected in HOSTILE:
        msg = track(mailtrack, f'<a href="https://fine.test/">ok</a><a href="{href}">x</a>')
        resp = client.get(path_of(click_urls(msg.html)[1]))
        assert resp.status_code == 302
        assert resp.headers["Location"] == expected
        assert "Set-Cookie" not in resp.headers and "X" not in resp.headers


def test_hrefs_with_other_control_characters_are_refused_and_nothing_is_stored(mailtrack, db):
    for href in ("https://evil.test/a&#11;b", "https://evil.test/a\x00b", "https://evil.test/&#127;"):
        html = f'<a href="https://fine.test/">ok</a><a href="{href}">x</a>'
        with pytest.raises(InvalidDestination, match="control character"):
            track(mailtrack, html)
        db.session.rollback()
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(links)).scalar() == 0


def test_click_url_refuses_bad_destinations(mailtrack):
    for bad in ("javascript:alert(1)", "https://x.test/\x0bX: y", "http://", 42):
        with pytest.raises(InvalidDestination):
            mailtrack.click_url("m1", bad)


def test_utm_defaults_never_override_and_keep_the_fragment(make_app):
    app = make_app(MAILTRACK_UTM_DEFAULTS={"utm_source": "crm", "utm_medium": "email"}, **NO_HONEYPOT)
    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        msg = track(mt, '<a href="https://x.test/p?utm_source=mine&k=v#sec">a</a>'
                        '<a href="https://y.test/">b</a>', track_opens=False)
        got = [destination(app.test_client(), u) for u in click_urls(msg.html)]
    assert got == ["https://x.test/p?utm_source=mine&k=v&utm_medium=email#sec",
                   "https://y.test/?utm_source=crm&utm_medium=email"]


def test_utm_defaults_see_encoded_names_and_odd_queries(make_app):
    app = make_app(MAILTRACK_UTM_DEFAULTS={"utm_source": "crm"}, **NO_HONEYPOT)
    mt = app.extensions["mailtrack"].extension
    hrefs = ["https://x.test/?utm%5Fsource=mine", "https://y.test/p?a=1&&b#f", "https://z.test/?",
             "https://w.test/?utm_source+=v&k=a+b"]
    with app.app_context():
        msg = track(mt, "".join(f'<a href="{h}">l</a>' for h in hrefs), track_opens=False)
        got = [destination(app.test_client(), u) for u in click_urls(msg.html)]
    assert got == ["https://x.test/?utm%5Fsource=mine", "https://y.test/p?a=1&&b&utm_source=crm#f",
                   "https://z.test/?utm_source=crm", "https://w.test/?utm_source+=v&k=a+b&utm_source=crm"]


def test_pixel_goes_before_body_end_or_at_the_end(mailtrack, client):
    msg = track(mailtrack, "<html><body><p>hi</p></body></html>")
    m = PIXEL_SRC.search(msg.html)
    assert m and msg.html.endswith(m.group(0) + "</body></html>")
    resp = client.get(path_of(m.group(1)))
    assert resp.status_code == 200 and resp.mimetype == "image/gif"
    bare = track(mailtrack, "<p>no body tag</p>")
    m = PIXEL_SRC.search(bare.html)
    assert m and bare.html == "<p>no body tag</p>" + m.group(0)


def test_track_opens_and_clicks_off_per_call(mailtrack):
    html = '<body><a href="https://a.test/">a</a></body>'
    msg = track(mailtrack, html, track_opens=False, track_clicks=False)
    assert msg.html == html


def test_track_opens_and_clicks_off_by_config(make_app):
    app = make_app(MAILTRACK_TRACK_OPENS=False, MAILTRACK_TRACK_CLICKS=False, **NO_HONEYPOT)
    mt = app.extensions["mailtrack"].extension
    html = '<body><a href="https://a.test/">a</a></body>'
    with app.app_context():
        assert track(mt, html).html == html
        forced = track(mt, html, track_opens=True, track_clicks=True)
        assert len(click_urls(forced.html)) == 1 and PIXEL_SRC.search(forced.html)


def test_list_unsubscribe_headers(mailtrack, client):
    msg = track(mailtrack, "<p>x</p>")
    assert msg.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    value = msg.headers["List-Unsubscribe"]
    assert value.startswith(f"<{BASE_URL}/mailtrack/t/u/") and value.endswith(">")
    assert "\r" not in value and "\n" not in value
    assert client.get(path_of(value[1:-1])).status_code == 200


def _payload(token: str) -> Any:
    """Decode a token's payload without checking its signature."""
    payload = token.rsplit(".", 2)[0]
    return URLSafeSerializer("unused").load_payload(payload.encode())


def test_message_ids_are_random_and_tokens_hold_no_email(mailtrack):
    msgs = [track(mailtrack, '<a href="https://a.test/x">x</a>', email=f"person{i}@example.com")
            for i in range(5)]
    ids = [m.id for m in msgs]
    assert len(set(ids)) == 5
    assert all(len(i) >= 16 and not i.isdigit() for i in ids)
    assert len({i[:6] for i in ids}) == 5  # not a shared prefix + counter
    for m in msgs:
        tokens = [u.rsplit("/", 1)[1] for u in click_urls(m.html)]
        tokens.append(PIXEL_SRC.search(m.html).group(1).rsplit("/", 1)[1])
        tokens.append(m.headers["List-Unsubscribe"][1:-1].rsplit("/", 1)[1])
        assert len(tokens) == 3
        for token in tokens:
            payload = json.dumps(_payload(token))
            assert m.id in payload
            assert "@" not in payload and m.email not in payload


def test_links_are_remembered_by_stable_id(mailtrack, db):
    track(mailtrack, '<a href="https://a.test/x">x</a><a href="https://a.test/x">again</a>')
    track(mailtrack, '<a href="https://a.test/x">x</a>')
    rows = db.session.execute(sa.select(links.c.url)).scalars().all()
    assert rows == ["https://a.test/x"]


# -- awkward HTML; the fast path of URL validation agrees with the plain one -------------------------------


class _Hrefs(HTMLParser):
    """An independent reference: the http(s) hrefs of ``<a>`` start tags (the first of each), as
    html.parser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = next((v for k, v in attrs if k == "href"), None) if tag == "a" else None
        if (dict(attrs).get("data-mailtrack") or "").lower() == "off":  # opted out
            return
        if href and href.strip().startswith(("http://", "https://")):
            self.hrefs.append(href.strip())

    handle_startendtag = handle_starttag


AWKWARD_HTML = (
    "<!DOCTYPE html><HTML><head><title>T</title><style>td{color:red}</style><script>"
    'var s = "<a href=https://script.test/></td>";</script></head>\n<BODY><!-- <a href="https://c.test/"> -->'
    '<table><tr><td title="a>b" class=x><A HREF="https://e.test/1?a=1&amp;b=2">x</A></td ></TD>\n'
    "<td/><a href=https://e.test/2 />< a href=https://not.test/><p<a href='https://glued.test/3'></ p></p >"
    "<img src=x alt='<a href=https://alt.test/>'><div\n class='<'><a\nhref=\"https://e.test/4\"\n>y</a></div>"
    "<span>{{name}}</span><a class=btn href='https://e.test/5#top'>z</a></BODY></HTML>"
)


def test_links_are_found_where_html_parser_finds_them(mailtrack, client):
    reference = _Hrefs()
    reference.feed(AWKWARD_HTML)
    reference.close()
    msg = track(mailtrack, AWKWARD_HTML, track_opens=False)
    assert [destination(client, u) for u in click_urls(msg.html)] == reference.hrefs
    assert reference.hrefs == ["https://e.test/1?a=1&b=2", "https://e.test/2", "https://e.test/4",
                               "https://e.test/5#top"]


#: Pieces of awkward HTML. Every http(s) href value is written double-quoted with nothing to
#: escape, so the input can be rebuilt from the output exactly (see the test below).
_FRAGMENTS = [
    "<a href=\"https://x.test/1\">", "<A HREF=\"https://y.test/\">", "</a>", "<td>", "</td>", "</td >", "</ td>",
    "<td class='a>b'>", "<script>", "</script>", "<style>", "</style>", "<!--", "-->", "<![CDATA[", "]]>",
    "<title>", "</title>", "<textarea>", "</textarea>", "<p", ">", "<", "/>", "&amp;", "&", "\n", "text ",
    "<br/>", "<img src=x>", "<div\nid=1>", "</div>", "<!DOCTYPE html>", "<?php ?>", "<tr", " a='", "'", '"',
    "</", "<b>", "</b >", "<a", " href=", '"https://z.test/?q=1"', "<span/>", "</span\n>", "<table<a href=q>",
    "</>", "<! x>", "<a data-mailtrack=off href=\"https://o.test/\">", "<li>", "<ul>", "<h1>", "</p>",
    "<a style='display:none' href=\"https://h.test/\">", "<a href=mailto:m@x.test>", "https://x.test/1",
    "<a href=\"https://x.test/1\" />", "\r\n", "  \t", "<head>", "</head>", "&#10;", "\u00e9",
]
_UTM_ADDED = re.compile(r'(?:\?|&amp;)utm_source=t"')


def test_instrumenting_changes_only_link_values_on_awkward_html(make_app):
    """On thousands of awkward documents, one parse gives the links html.parser finds and
    the text part: without click tracking, UTM defaults show each link's new href in the
    HTML itself, so taking them out again must give back the input byte for byte, and the
    text part must be what :func:`html_to_text` makes of the resulting HTML."""
    app = make_app(MAILTRACK_UTM_DEFAULTS={"utm_source": "t"}, **NO_HONEYPOT)
    mt = app.extensions["mailtrack"].extension
    rng = random.Random(20240501)
    rewritten = 0
    with app.app_context():
        for i in range(1500):
            doc = "".join(rng.choice(_FRAGMENTS) for _ in range(rng.randint(1, 30)))
            reference = _Hrefs()
            reference.feed(doc)
            reference.close()
            msg = track(mt, doc, track_opens=False, track_clicks=False, contact_id=f"c{i}")
            found = [m.group(1) for m in re.finditer(r'"([^"]*)(?:\?|&amp;)utm_source=t"', msg.html)]
            assert [html.unescape(u) for u in found] == reference.hrefs, doc
            assert _UTM_ADDED.sub('"', msg.html) == doc
            assert msg.text == html_to_text(msg.html), doc
            rewritten += bool(found)
    assert rewritten > 500  # the documents do hold links


def test_the_text_part_shows_where_each_tracked_link_goes(make_app):
    """With click tracking, the text part made in the same pass shows each link's
    destination (UTM included), never its click link; hidden links, scripts, comments
    and opted-out links' tracking play no part."""
    app = make_app(MAILTRACK_UTM_DEFAULTS={"utm_source": "crm"})
    mt = app.extensions["mailtrack"].extension
    with app.app_context():
        text = track(mt, AWKWARD_HTML).text
    assert "/t/" not in text
    assert text == (
        "x (https://e.test/1?a=1&b=2&utm_source=crm) https://e.test/2?utm_source=crm< a href=https://not.test/>\n\n"
        "y (https://e.test/4?utm_source=crm)\n{{name}}z (https://e.test/5?utm_source=crm#top)\n"
    )


def test_a_link_with_two_hrefs_shows_the_one_it_leads_to(mailtrack, client):
    """A browser follows the first ``href`` of a tag: so does the click link, and so does
    the text part."""
    msg = track(mailtrack, '<p><a href="https://first.test/" href="https://second.test/">Go</a></p>')
    [url] = click_urls(msg.html)
    assert destination(client, url) == "https://first.test/"
    assert msg.text == "Go (https://first.test/)\n"
    assert html_to_text('<a href="https://first.test/" href="https://second.test/">Go</a>') == \
        "Go (https://first.test/)\n"


def _validation(url: str, validate: Any) -> str:
    try:
        return validate(url)
    except InvalidDestination:
        return "refused"


def test_plain_url_shortcut_gives_what_full_validation_gives():
    """URLs taken as they are (no split and re-join) are exactly those the full validation
    returns unchanged; anything else still goes the long way."""
    rng = random.Random(7)
    host = ["a", "b9", "-", ".", "x" * 62, "x", "ex-ample", "com", "A", ":80", "@", "[", "\u00e9"]
    tail = list("/?#%&=@:~'!$*()+,;_.-aZ0 \"<>\\^`{|}") + ["%2F", "//", "??", "##", "x", "\u00e9", "\t"]
    plain_tail = list("/?#%&=@:~'!$*()+,;_.-aZ0") + ["%2F", "//", "x"]
    shortcut = 0
    for i in range(20000):
        chars = tail if i % 2 else plain_tail
        url = (rng.choice(["http://", "https://", "HTTP://"]) + "".join(rng.choice(host) for _ in range(rng.randint(0, 4)))
               + "".join(rng.choice(chars) for _ in range(rng.randint(0, 8))))
        full = _validation(url, instrument_module._validate_destination_fully)
        assert _validation(url, instrument_module.validate_destination) == full, url
        if instrument_module._PLAIN_URL.fullmatch(url):
            shortcut += 1
            assert full == url, url
    assert shortcut > 300  # the shortcut was exercised, not only the long way


def _tokens(msg: Message) -> dict[str, str]:
    return {
        "click": click_urls(msg.html)[0].rsplit("/", 1)[1],
        "open": PIXEL_SRC.search(msg.html).group(1).rsplit("/", 1)[1],
        "unsubscribe": msg.headers["List-Unsubscribe"][1:-1].rsplit("/", 1)[1],
    }


def test_tokens_are_byte_for_byte_what_itsdangerous_makes(mailtrack, monkeypatch):
    """Links are signed without itsdangerous' per-token set-up, but the tokens are the very
    ones it makes (same payload encoding, key derivation, timestamp and HMAC)."""
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: 1_700_000_000)
    msg = track(mailtrack, '<body><a href="https://a.test/x?q=%C3%A9&amp;r=1">x</a></body>')
    expected = {
        "click": ("mailtrack.click", [msg.id, "https://a.test/x?q=%C3%A9&r=1"]),
        "open": ("mailtrack.open", msg.id),
        "unsubscribe": ("mailtrack.unsubscribe", msg.id),
    }
    for kind, token in _tokens(msg).items():
        salt, payload = expected[kind]
        assert token == URLSafeTimedSerializer(SECRET, salt=salt).dumps(payload), kind


def test_tokens_made_by_plain_itsdangerous_still_work(mailtrack, client):
    """Tokens issued before (itsdangerous' own serializer, compressed or not) still verify."""
    msg = track(mailtrack, '<a href="https://a.test/">x</a>')
    plain = URLSafeTimedSerializer(SECRET, salt="mailtrack.click")
    long_dest = "https://a.test/" + "abc/" * 200
    compressed = plain.dumps([msg.id, long_dest])
    assert compressed.startswith(".")  # zlib-compressed by itsdangerous
    for dest, token in (("https://a.test/old", plain.dumps([msg.id, "https://a.test/old"])),
                        (long_dest, compressed)):
        resp = client.get(f"/mailtrack/t/c/{token}")
        assert resp.status_code == 302 and resp.headers["Location"] == dest
    unsub = URLSafeTimedSerializer(SECRET, salt="mailtrack.unsubscribe").dumps(msg.id)
    assert client.get(f"/mailtrack/t/u/{unsub}").status_code == 200
