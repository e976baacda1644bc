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

OPT_OUT_ATTRIBUTE = "data-mailtrack"

_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")


def unescape_attribute(value: str) -> str:
    """Decode character references in an attribute value as a browser does.

    Like :func:`html.unescape`, plus HTML5's rule for attributes: a legacy entity name
    without its ``;`` followed by ``=`` or a letter/digit stays literal, so
    ``?a=1&region=eu`` keeps ``&region`` (``html.unescape`` would give ``®ion``).
    """

    def replace(m: re.Match[str]) -> str:
        ref = m.group(1)
        if ref[0] != "#" and ref not in _HTML5_ENTITIES:
            for end in range(len(ref) - 1, 1, -1):
                if ref[:end] in _HTML5_ENTITIES:
                    nxt = ref[end]
                    if nxt == "=" or (nxt.isascii() and nxt.isalnum()):
                        return m.group(0)
                    break
        return html.unescape(m.group(0))

    return _CHARREF.sub(replace, value)


def link_id(url: str) -> str:
    """The stable id of a destination: the same URL has the same id in every message, so
    the click path never needs a lookup to know which link was clicked."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def is_trackable(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def validate_destination(url: object) -> str:
    """Return ``url`` as an ASCII URI fit to sign, or raise :class:`InvalidDestination`.

    Refused: non-strings, anything with CR, LF or another control character (header
    injection), a scheme other than http(s), a missing host.
    """
    if not isinstance(url, str):
        raise InvalidDestination(f"destination must be a string, not {type(url).__name__}")
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


def apply_utm(url: str, defaults: Mapping[str, str]) -> str:
    """Append each default UTM parameter the URL does not already carry; the existing
    query string and fragment are kept byte for byte."""
    if not defaults:
        return url
    base, hash_, fragment = url.partition("#")
    path, q, query = base.partition("?")
    present = {k for k, _ in parse_qsl(query, keep_blank_values=True)}
    missing = [(k, str(v)) for k, v in defaults.items() if k not in present and v is not None]
    if not missing:
        return url
    extra = urlencode(missing)
    query = f"{query}&{extra}" if query and not query.endswith("&") else f"{query}{extra}"
    return f"{path}?{query}{hash_}{fragment}"


class _AnchorFinder(HTMLParser):
    """Collects (offset, raw start tag) of every ``<a>`` tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[int, int, str]] = []  # (line, column, raw tag)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            raw = self.get_starttag_text()
            if raw is not None:
                line, col = self.getpos()
                self.anchors.append((line, col, raw))

    handle_startendtag = handle_starttag


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
    finder = _AnchorFinder()
    finder.feed(source)
    finder.close()
    if not finder.anchors:
        return source, []
    lines = _line_offsets(source)
    out: list[str] = []
    destinations: list[str] = []
    cursor = 0
    for line, col, raw in finder.anchors:
        start = lines[line - 1] + col
        span = _href_span(raw)
        if span is None:
            continue
        vstart, vend, value = span
        dest = value.strip(_HREF_STRIP)
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
