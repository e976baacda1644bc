"""Rewriting outbound HTML: signed click links, UTM parameters, the open pixel.

The rewriter finds ``<a href>`` start tags with :class:`html.parser.HTMLParser` (so
comments, scripts and attribute values are understood, not guessed by a regex) and splices
new ``href`` values into the original text: every other byte of the HTML is left as it was.
"""
from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from html.entities import html5 as _HTML5_ENTITIES
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode, urlsplit

from werkzeug.urls import iri_to_uri

from .errors import InvalidDestination

_ATTR = re.compile(r"""\s*([^\s/>"'=]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+))?""")
_TAG_NAME = re.compile(r"<[a-zA-Z][^\s/>]*")
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: WHATWG URL parsing strips leading and trailing C0 controls and spaces from an href.
_HREF_STRIP = "".join(chr(c) for c in range(0x21))
#: ... and removes every tab and newline, wherever it is.
_TAB_NEWLINE = str.maketrans("", "", "\t\n\r")
#: An http(s) scheme followed by two or more slashes, where a browser counts ``\`` as ``/``.
_SPECIAL_START = re.compile(r"(https?):[/\\]{2,}", re.IGNORECASE)
#: The authority, then the path, of what follows (a browser ends the authority at ``\`` too).
_AUTHORITY = re.compile(r"[^/\\?#]*")
_PATH = re.compile(r"[^?#]*")

OPT_OUT_ATTRIBUTE = "data-mailtrack"

_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")


def unescape_attribute(value: str) -> str:
    """Decode character references in an attribute value as a browser does.

    Like :func:`html.unescape`, plus HTML5's rule for attributes: a legacy entity name
    without its ``;`` followed by ``=`` or a letter/digit stays literal, so
    ``?a=1&region=eu`` keeps ``&region`` (``html.unescape`` would give ``®ion``).
    """
    if "&" not in value:
        return value
    return _CHARREF.sub(_decode_reference, value)


def _decode_reference(m: re.Match[str]) -> str:
    ref = m.group(1)
    if ref in _HTML5_ENTITIES:  # a whole name such as "amp;": what html.unescape gives too
        return _HTML5_ENTITIES[ref]
    if ref[0] != "#":
        for end in range(len(ref) - 1, 1, -1):
            if ref[:end] in _HTML5_ENTITIES:
                nxt = ref[end]
                if nxt == "=" or (nxt.isascii() and nxt.isalnum()):
                    return m.group(0)
                break
    if ref[0] == "#":
        try:
            code = int(ref[2:].rstrip(";"), 16) if ref[1] in "xX" else int(ref[1:].rstrip(";"))
        except ValueError:
            code = -1
        if 0 < code < 0x20 or code == 0x7F:
            # a browser keeps a control character (html.unescape drops most of them), so a
            # URL holding one is judged (refused) as the browser would read it
            return chr(code)
    return html.unescape(m.group(0))


def link_id(url: str) -> str:
    """The stable id of a destination: the same URL has the same id in every message, so
    the click path never needs a lookup to know which link was clicked."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def is_trackable(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def browser_form(url: str) -> str:
    """``url`` as a browser reads it (the WHATWG URL standard), in the form Python's
    ``urllib`` reads the same way, so the host we sign is the host a browser would open.

    Leading and trailing C0 controls and spaces are stripped, tabs and newlines removed
    wherever they are; in an ``http(s)`` URL any run of two or more ``/`` or ``\\`` after
    the scheme becomes ``//``, and ``\\`` in the authority and path becomes ``/`` (a browser
    reads ``https://trusted.example\\@evil.example/`` as host ``trusted.example``, urllib as
    ``evil.example``). ``https:`` with fewer than two slashes is left alone: what it means
    depends on the page's base URL, so it is never trackable.
    """
    url = url.strip(_HREF_STRIP)
    if "\t" in url or "\n" in url or "\r" in url:
        url = url.translate(_TAB_NEWLINE)
    m = _SPECIAL_START.match(url)
    if m is None:
        return url
    authority = _AUTHORITY.match(url, m.end())
    assert authority is not None  # the pattern matches the empty string
    path = _PATH.match(url, authority.end())
    assert path is not None
    return (f"{m.group(1).lower()}://{authority.group()}{path.group().replace(chr(92), '/')}"
            f"{url[path.end():]}")


#: URLs that :func:`werkzeug.urls.iri_to_uri` returns unchanged, so validation can skip
#: splitting and re-joining them (most links in mail): a lower-case http(s) scheme; a
#: lower-case ASCII host whose labels IDNA takes as they are (1 to 63 characters), with no
#: user info or port; a path, query and fragment of only the characters it leaves unquoted,
#: and no empty query or fragment (it would drop the bare ``?`` or ``#``).
#: tests/test_instrument.py checks it against the full path on many generated URLs.
_PLAIN_URL = re.compile(
    r"https?://[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})*\.?"
    r"(?:/[A-Za-z0-9_.~%!$&'()*+,/:;=@-]*)?"
    r"(?:\?[A-Za-z0-9_.~%!$&'()*+,/:;=?@-]+)?"
    r"(?:#[A-Za-z0-9_.~%!#$&'()*+,/:;=?@-]+)?"
)


def validate_destination(url: object) -> str:
    """Return ``url`` as an ASCII URI fit to sign, or raise :class:`InvalidDestination`.

    The URL is first read as a browser reads it (:func:`browser_form`: tabs and newlines
    removed, ``\\`` as ``/`` before the query). Refused: non-strings, anything still holding
    a control character, a scheme other than http(s), a missing host.
    """
    if isinstance(url, str) and _PLAIN_URL.fullmatch(url):
        return url
    return _validate_destination_fully(url)


def _validate_destination_fully(url: object) -> str:
    """:func:`validate_destination` for any input, by splitting and re-joining the URL."""
    if not isinstance(url, str):
        raise InvalidDestination(f"destination must be a string, not {type(url).__name__}")
    url = browser_form(url)
    if _CONTROL.search(url):
        raise InvalidDestination(f"destination contains a control character (CR/LF?): {url!r}")
    if not is_trackable(url):
        raise InvalidDestination(f"destination must be an http(s) URL: {url!r}")
    try:
        parts = urlsplit(url)
        uri = iri_to_uri(url)
    except ValueError as exc:
        raise InvalidDestination(f"destination is not a valid URL: {url!r} ({exc})") from None
    if not parts.hostname:
        raise InvalidDestination(f"destination has no host: {url!r}")
    return uri


@lru_cache(maxsize=256)
def _urlencoded(params: tuple[tuple[str, str], ...]) -> str:
    """``urlencode(params)``, remembered: every link of a message gets the same UTM defaults."""
    return urlencode(params)


def apply_utm(url: str, defaults: Mapping[str, str]) -> str:
    """Append each default UTM parameter the URL does not already carry; the existing
    query string and fragment are kept byte for byte."""
    if not defaults:
        return url
    base, hash_, fragment = url.partition("#")
    path, q, query = base.partition("?")
    if "%" in query or "+" in query:
        present = {k for k, _ in parse_qsl(query, keep_blank_values=True)}
    else:  # nothing to decode: parse_qsl's names are the text before each "="
        present = {part.partition("=")[0] for part in query.split("&")}
    missing = [(k, str(v)) for k, v in defaults.items() if k not in present and v is not None]
    if not missing:
        return url
    extra = _urlencoded(tuple(missing))
    query = f"{query}&{extra}" if query and not query.endswith("&") else f"{query}{extra}"
    return f"{path}?{query}{hash_}{fragment}"


class _AnchorFinder(HTMLParser):
    """Collects the offset and raw text of every ``<a>`` start tag, through html.parser's
    documented interface only (the reference for :class:`_FastAnchorFinder`)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._found: list[tuple[int, int, str]] = []  # (line, column, raw tag)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            raw = self.get_starttag_text()
            if raw is not None:
                line, col = self.getpos()
                self._found.append((line, col, raw))

    handle_startendtag = handle_starttag

    def anchors(self, source: str) -> list[tuple[int, str]]:
        lines = _line_offsets(source)
        return [(lines[line - 1] + col, raw) for line, col, raw in self._found]


#: html.parser's tag name (``tagfind_tolerant``) and a plain end tag (``endtagfind`` without spaces).
_TAG_NAME_AT = re.compile(r"[a-zA-Z][^\t\n\r\f />\x00]*")
_PLAIN_END_TAG = re.compile(r"</[a-zA-Z][-.a-zA-Z0-9:_]*>")
#: Start tags whose attributes cannot matter here: never ``<a>``, never an element that changes
#: how the parser reads what follows (``script``, ``style``; ``title``, ``textarea`` and others
#: in newer Pythons). Should a parser end tag names sooner than :data:`_TAG_NAME_AT`, it would
#: see a prefix of one of these names, and no prefix of them is ``a`` or such an element.
_PLAIN_TAGS = frozenset({
    "html", "head", "body", "meta", "link", "table", "tbody", "thead", "tfoot", "tr", "td", "th",
    "col", "colgroup", "caption", "div", "span", "p", "br", "hr", "img", "b", "i", "u", "em",
    "strong", "font", "center", "small", "big", "sup", "sub", "h1", "h2", "h3", "h4", "h5", "h6",
    "ul", "ol", "li", "blockquote", "pre", "code", "section", "header", "footer", "main", "nav",
    "figure", "picture", "source", "label", "button", "input",
})


class _FastAnchorFinder(HTMLParser):
    """:class:`_AnchorFinder`'s result with less of html.parser's per-tag work.

    Parsing is most of the time of instrumenting a message, yet only ``<a>`` start tags
    matter: for other common start tags the attributes are not parsed (only the tag's end is
    found, by the parser's own method, so parsing goes on from the same place); simple end
    tags outside ``<script>``/``<style>`` are stepped over; and line/column bookkeeping is
    skipped, since a tag's offset is known directly. This leans on html.parser internals
    (``parse_starttag``, ``check_for_whole_start_tag``, ``parse_endtag``, ``updatepos``,
    ``cdata_elem``), so it is used only while it finds exactly what :class:`_AnchorFinder`
    finds on a sample of awkward HTML (:func:`_fast_finder_agrees`), and
    tests/test_instrument.py compares the two on many documents.
    """

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self._size = len(source)
        self._at = 0
        self._found: list[tuple[int, str]] = []

    def updatepos(self, i: int, j: int) -> int:
        return j

    def parse_starttag(self, i: int) -> int:
        m = _TAG_NAME_AT.match(self.rawdata, i + 1)
        if m is not None and m.group().lower() in _PLAIN_TAGS:
            return self.check_for_whole_start_tag(i)  # type: ignore[attr-defined, no-any-return]
        self._at = i
        return super().parse_starttag(i)  # type: ignore[misc, no-any-return]

    def parse_endtag(self, i: int) -> int:
        if self.cdata_elem is None:  # type: ignore[attr-defined]
            m = _PLAIN_END_TAG.match(self.rawdata, i)
            if m is not None:
                return m.end()
        return super().parse_endtag(i)  # type: ignore[misc, no-any-return]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            raw = self.get_starttag_text()
            if raw is not None:
                # rawdata is what is left of the source: close() parses only the rest
                self._found.append((self._size - len(self.rawdata) + self._at, raw))

    handle_startendtag = handle_starttag

    def anchors(self, source: str) -> list[tuple[int, str]]:
        return self._found


#: HTML that tests the fast finder's shortcuts: comments, raw-text elements, CDATA, upper
#: case, ``>`` inside values, odd end tags, a tag cut off at the end.
_FINDER_SAMPLE = (
    "<!DOCTYPE html><HTML><head><title><a href='t'></title><style>p{}</style><script>"
    'var s = "<a href=x></td>";</script></head>\n<BODY><!-- <a href="c"> --><table><tr>'
    '<td title="a>b" class=x><A HREF="https://e.test/1?a=1&amp;b=2">x</A></td ></TD>\n'
    "<td/><a href=https://e.test/2 />< a href=z><p<a href='https://e.test/3'></ p></p >"
    "<![CDATA[<a href=cd>]]><textarea><a href=ta></textarea><img src=x alt='<a href=i>'>"
    "<div\n class='<'><a\nhref=\"https://e.test/4\"\n>y</a></div><span><a href=q"
)
_fast_finder_ok: bool | None = None


def _fast_finder_agrees() -> bool:
    global _fast_finder_ok
    if _fast_finder_ok is None:
        try:
            _fast_finder_ok = _find_anchors(_FINDER_SAMPLE, fast=True) == _find_anchors(_FINDER_SAMPLE, fast=False)
        except Exception:  # noqa: BLE001 - an html.parser this was not written for
            _fast_finder_ok = False
    return _fast_finder_ok


def _find_anchors(source: str, *, fast: bool) -> list[tuple[int, str]]:
    """(offset, raw start tag) of every ``<a>`` start tag of ``source``."""
    finder: _AnchorFinder | _FastAnchorFinder = _FastAnchorFinder(source) if fast else _AnchorFinder()
    finder.feed(source)
    finder.close()
    return finder.anchors(source)


def _line_offsets(text: str) -> list[int]:
    offsets = [0]
    find = text.find
    pos = find("\n")
    while pos != -1:
        offsets.append(pos + 1)
        pos = find("\n", pos + 1)
    return offsets


def _href_span(raw: str) -> tuple[int, int, str] | None:
    """(start, end, unescaped value) of the href value token (quotes included) in a raw start tag,
    or ``None`` when the tag has no href or opts out with ``data-mailtrack="off"``."""
    m = _TAG_NAME.match(raw)
    if not m:
        return None
    pos, found, opted_out = m.end(), None, False
    while True:
        am = _ATTR.match(raw, pos)
        if not am or am.end() == pos:
            break
        pos = am.end()
        name, value = am.group(1).lower(), am.group(2)
        if value is None:
            continue
        if value[:1] in "\"'":
            value = value[1:-1]
        if name == "href" and found is None:
            # The span covers the quotes too: the whole value token is replaced.
            found = (am.start(2), am.end(2), unescape_attribute(value))
        elif name == OPT_OUT_ATTRIBUTE and value.strip().lower() in ("off", "false", "0", "no"):
            opted_out = True
    return None if opted_out else found


def rewrite_links(source: str, rewrite: Callable[[str], str]) -> tuple[str, list[str]]:
    """Replace each trackable ``<a href>`` of ``source`` by ``rewrite(destination)``.

    Returns the new HTML and the destinations, in order of appearance. Links that are not
    http(s) (``mailto:``, ``tel:``, ``#top``, ``javascript:``, relative) are left alone;
    an http(s) href that is unsafe to sign raises :class:`InvalidDestination`.
    """
    anchors = _find_anchors(source, fast=_fast_finder_agrees())
    if not anchors:
        return source, []
    out: list[str] = []
    destinations: list[str] = []
    cursor = 0
    for start, raw in anchors:
        span = _href_span(raw)
        if span is None:
            continue
        vstart, vend, value = span
        dest = browser_form(value)
        if not is_trackable(dest):
            continue
        new = rewrite(dest)
        destinations.append(dest)
        # Always write a double-quoted, escaped value: the original quoting may not hold it.
        quoted = '"' + html.escape(new, quote=True) + '"'
        out.append(source[cursor : start + vstart])
        out.append(quoted)
        cursor = start + vend
    out.append(source[cursor:])
    return "".join(out), destinations


def pixel_tag(src: str) -> str:
    return (
        f'<img src="{html.escape(src, quote=True)}" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0;margin:0;padding:0" />'
    )


#: What a honeypot link's token carries instead of a destination (never an http URL, so the
#: click route refuses it and only the honeypot route accepts it).
HONEYPOT_TARGET = "honeypot"


def honeypot_tag(href: str) -> str:
    """A link no person meets: no text, ``display:none`` (and Outlook's ``mso-hide``), out of
    the tab order and hidden from screen readers. Mail scanners follow it like any link."""
    return (
        f'<a href="{html.escape(href, quote=True)}" tabindex="-1" aria-hidden="true" '
        'style="display:none!important;mso-hide:all;font-size:0;line-height:0"></a>'
    )


def append_pixel(source: str, src: str, *, tag: str | None = None) -> str:
    """Insert the open pixel (or another ``tag``) just before the last ``</body>``, else at
    the end."""
    tag = pixel_tag(src) if tag is None else tag
    last = None
    for last in _BODY_END.finditer(source):
        pass
    if last is None:
        return source + tag
    return source[: last.start()] + tag + source[last.start() :]
