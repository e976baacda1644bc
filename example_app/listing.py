"""Sorting and paging of the CRM's long lists (contacts, a campaign's messages).

The query string says ``sort=<column>``, ``dir=asc|desc`` and ``page=<n>`` (from 1); an
unknown column or direction falls back to the default, a page past the end shows the last
one. The lists are the API's answers, sorted here because some columns (score, opens) are
the engagement figures, not columns the CRM could sort by in SQL.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flask import request, url_for


@dataclass
class Listing:
    rows: list[Any]
    total: int
    page: int
    pages: int
    per_page: int
    sort: str
    desc: bool

    @property
    def first(self) -> int:
        return (self.page - 1) * self.per_page + 1 if self.total else 0

    @property
    def last(self) -> int:
        return min(self.page * self.per_page, self.total)

    def url(self, **changes: Any) -> str:
        """The current page's URL with ``changes`` to its query string."""
        args = {**request.args.to_dict(), **request.view_args, **{k: v for k, v in changes.items()}}  # type: ignore[dict-item]
        return url_for(request.endpoint or "", **{k: v for k, v in args.items() if v not in (None, "")})

    def sort_url(self, column: str) -> str:
        """Sorting by ``column``: ascending first, the other way round when it is already sorted so."""
        desc = not self.desc if column == self.sort else False
        return self.url(sort=column, dir="desc" if desc else "asc", page=None)

    def aria_sort(self, column: str) -> str:
        if column != self.sort:
            return "none"
        return "descending" if self.desc else "ascending"


def paginate(rows: Sequence[Any], keys: Mapping[str, Callable[[Any], Any]], *, default: str,
             default_desc: bool = False, per_page: int = 25) -> Listing:
    """``rows`` sorted by the requested column (ties in the original order) and cut to the
    requested page."""
    sort = request.args.get("sort", default)
    if sort not in keys:
        sort = default
    direction = request.args.get("dir", "desc" if default_desc and sort == default else "asc")
    desc = direction == "desc"
    key = keys[sort]
    ordered = sorted(rows, key=lambda r: _none_last(key(r), desc), reverse=desc)
    listing = page_of(len(ordered), per_page=per_page, sort=sort, desc=desc)
    start = (listing.page - 1) * per_page
    listing.rows = ordered[start:start + per_page]
    return listing


def page_of(total: int, *, per_page: int = 25, sort: str = "", desc: bool = False) -> Listing:
    """The requested page of ``total`` rows that the caller fetches itself (SQL ``LIMIT`` /
    ``OFFSET``); ``rows`` is left empty for it."""
    pages = max(1, math.ceil(total / per_page))
    try:
        page = min(max(1, int(request.args.get("page", "1"))), pages)
    except ValueError:
        page = 1
    return Listing([], total, page, pages, per_page, sort, desc)


def _none_last(value: Any, desc: bool) -> tuple[int, Any]:
    """Empty values (no activity yet) after the others in either direction."""
    if value is None:
        return (0, 0) if desc else (1, 0)
    return (1, value) if desc else (0, value)
