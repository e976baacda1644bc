"""The text/plain part of a message: a readable rendering of its HTML.

Built on the standard library's :class:`html.parser.HTMLParser` on purpose. The well-known
converter, html2text, is GPL-licensed (this package is MIT, and a required dependency
would bind every host that ships it) and writes Markdown (``[text](url)``, ``**bold**``,
backslash escapes), which a plain-text reader sees literally. What a mail's text part
needs is small: paragraphs and line breaks, list items, link URLs, and nothing a person
cannot see in the HTML.

:func:`crm_mailtrack.instrument.rewrite_links_and_text` uses the same converter while it
rewrites a message's links, so instrumenting and deriving the text part are one parse.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser

_SPACES = re.compile(r"\s+")
_DISPLAY_NONE = re.compile(r"display\s*:\s*none", re.IGNORECASE)
_SHOWN_SCHEMES = ("http://", "https://", "mailto:")


def _hidden(attrs: dict[str, str | None]) -> bool:
    """An element no person perceives: ``aria-hidden="true"``, ``hidden``, or
    ``display:none`` (the honeypot link is all three but ``hidden``)."""
    return ((attrs.get("aria-hidden") or "").strip().lower() == "true" or "hidden" in attrs
            or bool(_DISPLAY_NONE.search(attrs.get("style") or "")))


#: How a tag breaks the text: 2 newlines (a paragraph), 1 (a line), or -1: its content is skipped.
_BREAKS: dict[str, int] = {
    **dict.fromkeys(("p", "table", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "blockquote",
                     "section", "article", "header", "footer", "hr", "pre"), 2),
    **dict.fromkeys(("br", "div", "tr", "li"), 1),
    **dict.fromkeys(("script", "style", "head", "title"), -1),
}


class _TextExtractor(HTMLParser):
    """Paragraphs are separated by a blank line, list items and line breaks start a line,
    links show their URL after their text, and scripts, styles, images (the open pixel)
    and hidden links (the honeypot) disappear.

    Text is kept as it comes (only a newline becomes a space: newlines in :attr:`parts` are
    the breaks this writes) and its spaces are collapsed once, in :meth:`text`.
    """

    def __init__(self, link: Callable[[str], str | None]) -> None:
        super().__init__(convert_charrefs=True)
        self.link = link
        self.parts: list[str] = []
        self._skip = 0
        self._newlines = 0  # at the end of the text so far (spaces aside)
        #: The open link, if any: (href, index of its first text part, hidden).
        self._anchor: tuple[str | None, int, bool] | None = None

    def _break(self, lines: int) -> None:
        """End the current line so that ``lines`` newlines (at most) separate the text."""
        if self.parts and self._newlines < lines:
            self.parts.append("\n" * (lines - self._newlines))
            self._newlines = lines

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        lines = _BREAKS.get(tag)
        if lines is None:
            if tag == "a":
                if self._anchor is not None:  # an <a> inside an <a> closes the first, as browsers do
                    self.handle_endtag("a")
                hidden = _hidden(dict(attrs))
                self._skip += hidden
                self._anchor = (self.link_href(attrs), len(self.parts), hidden)
        elif lines < 0:
            self._skip += 1
        else:
            self._break(lines)
            if tag == "li":
                self._add("- ")

    def link_href(self, attrs: list[tuple[str, str | None]]) -> str | None:
        """The href of an ``<a>`` start tag: its first one, as a browser reads it."""
        for name, value in attrs:
            if name == "href":
                return value
        return None

    def handle_endtag(self, tag: str) -> None:
        lines = _BREAKS.get(tag)
        if lines is None:
            if tag == "a" and self._anchor is not None:
                self._end_link(*self._anchor)
        elif lines < 0:
            self._skip = max(0, self._skip - 1)
        else:
            self._break(lines)

    def _end_link(self, href: str | None, start: int, hidden: bool) -> None:
        self._anchor = None
        if hidden:
            self._skip = max(0, self._skip - 1)
            return
        url = self.link(href.strip()) if href else None
        if url and url.lower().startswith(_SHOWN_SCHEMES):
            # the link's text with each run of spaces in a text part made one space
            text = "".join(p if p[:1] == "\n" else _SPACES.sub(" ", p) for p in self.parts[start:]).strip()
            if url != text:
                self._add(f" ({url})" if text else url)

    def _add(self, text: str) -> None:
        self.parts.append(text)
        if text and not text.isspace():
            self._newlines = 0

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data.replace("\n", " "))
            if data and not data.isspace():
                self._newlines = 0

    def text(self) -> str:
        lines = [" ".join(line.split()) for line in "".join(self.parts).split("\n")]
        out: list[str] = []
        for line in lines:
            if line or (out and out[-1]):
                out.append(line)
        return "\n".join(out).strip() + "\n"


def html_to_text(html: str, *, link: Callable[[str], str | None] | None = None) -> str:
    """Plain-text version of ``html``. A link's URL is written after its text as
    ``text (url)`` (once, if the text is the URL); ``link(href)`` may give the URL to show
    instead (``None``: none). Only http(s) and mailto URLs are shown."""
    parser = _TextExtractor(link or (lambda href: href))
    parser.feed(html)
    parser.close()
    return parser.text()


__all__ = ["html_to_text"]
