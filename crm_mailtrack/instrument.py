"""Rewriting outbound HTML: signed click links, UTM parameters, the open pixel.

The rewriter finds ``<a href>`` start tags with :class:`html.parser.HTMLParser` (so
comments, scripts and attribute values are understood, not guessed by a regex) and splices
new ``href`` values into the original text: every other byte of the HTML is left as it was.
When the text part is to be derived too, the same parse writes it
(:func:`rewrite_links_and_text`): a message's HTML is read once.
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
from .textpart import _TextExtractor

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


class _Splicer:
    """The new ``href`` values of one document, found while an :class:`html.parser.HTMLParser`
    subclass reads it, and the document with them spliced in.

    Only the parser's documented interface is used: at an ``<a>`` start tag, ``getpos()``
    gives the tag's line and column (turned into an offset with the document's line starts,
    computed once) and ``get_starttag_text()`` the tag as written, whose href value token is
    what gets replaced.
    """

    __slots__ = ("source", "rewrite", "destinations", "_edits", "_lines")

    def __init__(self, source: str, rewrite: Callable[[str], str | None]) -> None:
        self.source = source
        self.rewrite = rewrite
        self.destinations: list[str] = []
        self._edits: list[tuple[int, int, str]] = []  # (start, end, new value token)
        self._lines: list[int] | None = None

    def anchor(self, parser: HTMLParser) -> str | None:
        """Rewrite the ``<a>`` start tag ``parser`` is at; return its new href, or ``None``
        when it keeps its own (no href, not http(s), opted out, or ``rewrite`` gives ``None``:
        the link is left as written)."""
        raw = parser.get_starttag_text()
        span = None if raw is None else _href_span(raw)
        if span is None:
            return None
        vstart, vend, value = span
        dest = browser_form(value)
        if not is_trackable(dest):
            return None
        new = self.rewrite(dest)
        if new is None:
            return None
        self.destinations.append(dest)
        if self._lines is None:
            self._lines = _line_starts(self.source)
        line, column = parser.getpos()
        start = self._lines[line - 1] + column
        if not self.source.startswith(raw, start):  # type: ignore[arg-type]
            raise RuntimeError(f"html.parser reported <a> at line {line}, column {column}, "
                               "where the document holds no such tag")
        # Always write a double-quoted, escaped value: the original quoting may not hold it.
        self._edits.append((start + vstart, start + vend, '"' + html.escape(new, quote=True) + '"'))
        return new

    def result(self) -> str:
        if not self._edits:
            return self.source
        source, out, cursor = self.source, [], 0
        for start, end, token in self._edits:
            out.append(source[cursor:start])
            out.append(token)
            cursor = end
        out.append(source[cursor:])
        return "".join(out)


class _LinkFinder(HTMLParser):
    """Rewrites ``<a href>`` through a :class:`_Splicer`, and nothing else."""

    def __init__(self, splicer: _Splicer) -> None:
        super().__init__(convert_charrefs=True)
        self._splicer = splicer

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._splicer.anchor(self)


class _LinksAndText(_TextExtractor):
    """Rewrites ``<a href>`` through a :class:`_Splicer` and writes the text part in the same
    pass: a rewritten link's text shows what ``link`` gives for its new href, as if the text
    were made from the rewritten HTML."""

    def __init__(self, splicer: _Splicer, link: Callable[[str], str | None]) -> None:
        super().__init__(link)
        self._splicer = splicer

    def link_href(self, attrs: list[tuple[str, str | None]]) -> str | None:
        new = self._splicer.anchor(self)
        return super().link_href(attrs) if new is None else new


def _line_starts(text: str) -> list[int]:
    """The offset at which each line of ``text`` starts (lines end at ``\\n``, as
    ``getpos()`` counts them)."""
    starts = [0]
    find = text.find
    pos = find("\n")
    while pos != -1:
        starts.append(pos + 1)
        pos = find("\n", pos + 1)
    return starts


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


def rewrite_links(source: str, rewrite: Callable[[str], str | None]) -> tuple[str, list[str]]:
    """Replace each trackable ``<a href>`` of ``source`` by ``rewrite(destination)``.

    Returns the new HTML and the destinations rewritten, in order of appearance. A link for
    which ``rewrite`` gives ``None`` keeps its href byte for byte. Links that are not
    http(s) (``mailto:``, ``tel:``, ``#top``, ``javascript:``, relative) are left alone;
    an http(s) href that is unsafe to sign raises :class:`InvalidDestination`.
    """
    splicer = _Splicer(source, rewrite)
    parser = _LinkFinder(splicer)
    parser.feed(source)
    parser.close()
    return splicer.result(), splicer.destinations


def rewrite_links_and_text(
    source: str, rewrite: Callable[[str], str | None], *, link: Callable[[str], str | None] | None = None
) -> tuple[str, list[str], str]:
    """:func:`rewrite_links` and the text part in one parse of ``source``: the new HTML,
    the destinations and what :func:`~crm_mailtrack.textpart.html_to_text` gives for the
    new HTML with the same ``link`` (which sees each rewritten link's new href)."""
    splicer = _Splicer(source, rewrite)
    parser = _LinksAndText(splicer, link or (lambda href: href))
    parser.feed(source)
    parser.close()
    return splicer.result(), splicer.destinations, parser.text()


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
