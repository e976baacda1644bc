"""The text/plain part of a message: a readable rendering of its HTML.

Built on the standard library's :class:`html.parser.HTMLParser` on purpose. The well-known
converter, html2text, is GPL-licensed (this package is MIT, and a required dependency
would bind every host that ships it) and writes Markdown (``[text](url)``, ``**bold**``,
backslash escapes), which a plain-text reader sees literally. What a mail's text part
needs is small: paragraphs and line breaks, list items, link URLs, and nothing a person
cannot see in the HTML.
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


class _TextExtractor(HTMLParser):
    """Paragraphs are separated by a blank line, list items and line breaks start a line,
    links show their URL after their text, and scripts, styles, images (the open pixel)
    and hidden links (the honeypot) disappear."""

    _PARAGRAPH = frozenset({"p", "table", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol",
                            "blockquote", "section", "article", "header", "footer", "hr", "pre"})
    _LINE = frozenset({"br", "div", "tr", "li"})
    _SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self, link: Callable[[str], str | None]) -> None:
        super().__init__(convert_charrefs=True)
        self.link = link
        self.parts: list[str] = []
        self._skip = 0
        self._newlines = 0  # at the end of the text so far (spaces aside)
        #: Open links: (href, index of their first text part, hidden).
        self._anchors: list[tuple[str | None, int, bool]] = []

    def _break(self, lines: int) -> None:
        """End the current line so that ``lines`` newlines (at most) separate the text."""
        if self.parts and self._newlines < lines:
            self.parts.append("\n" * (lines - self._newlines))
            self._newlines = lines

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._PARAGRAPH:
            self._break(2)
        elif tag in self._LINE:
            self._break(1)
            if tag == "li":
                self._add("- ")
        elif tag == "a":
            if self._anchors:  # an <a> inside an <a> closes the first, as browsers do
                self.handle_endtag("a")
            found = dict(attrs)
            hidden = _hidden(found)
            self._skip += hidden
            self._anchors.append((found.get("href"), len(self.parts), hidden))

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self._PARAGRAPH:
            self._break(2)
        elif tag in self._LINE:
            self._break(1)
        elif tag == "a" and self._anchors:
            href, start, hidden = self._anchors.pop()
            if hidden:
                self._skip = max(0, self._skip - 1)
                return
            url = self.link(href.strip()) if href else None
            text = "".join(self.parts[start:]).strip()
            if url and url.lower().startswith(_SHOWN_SCHEMES) and url != text:
                self._add(f" ({url})" if text else url)

    def _add(self, text: str) -> None:
        self.parts.append(text)
        if text and not text.isspace():
            self._newlines = 0

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._add(_SPACES.sub(" ", data))

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
