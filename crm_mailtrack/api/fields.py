"""Field types shared by the API's schemas: text that a database can store (no NUL, a
length limit), strict timestamps, JSON objects checked for values no database stores (NUL,
NaN, integers out of range) and the UTM query field. Bad input is a 422, never a 500.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any
from urllib.parse import parse_qsl

import marshmallow as ma
from marshmallow import fields, validate

from .core import iso

MAX_INT32 = 2**31 - 1
_STRICT_ISO = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?$"
)
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# -- fields ------------------------------------------------------------------------------------

class Pattern(validate.Regexp):
    """A regular expression the whole string must match (not only its start, and ``$`` does
    not accept a trailing newline), written so that it means the same as an OpenAPI
    ``pattern`` (ECMA 262): apispec copies it into the document. Non-strings pass (the field
    type rejects them)."""

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str) and self.regex.fullmatch(value) is None:
            raise ma.ValidationError(self._format_error(value))
        return value


#: Every text field: no NUL character (PostgreSQL cannot store one).
no_nul = Pattern(r"^[^\x00]*$", error="Must not contain NUL characters.")

#: A text that becomes a mail header: no NUL, no CR or LF.
single_line = Pattern(r"^[^\x00\r\n]*$", error="Must be a single line without NUL characters (it becomes a mail header).")

#: An absolute http(s) URL: scheme, ``://``, a non-empty authority, then an optional path,
#: query or fragment; no space or control character anywhere. Anything else (``javascript:``,
#: ``data:``, relative or scheme-relative URLs) is refused: hosts render these URLs as links.
http_url = Pattern(r"^[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7f/?#]+([/?#][^\x00-\x20\x7f]*)?$",
                   error="Must be an absolute http:// or https:// URL.")


class Text(fields.String):
    """A string without NUL characters and with an optional maximum length. ``pattern``
    replaces the NUL rule with a stricter :class:`Pattern` (the document shows one pattern)."""

    def __init__(self, *, max_length: int | None = None, pattern: Pattern | None = None, **kwargs: Any) -> None:
        validators = list(kwargs.pop("validate", None) or [])
        validators.insert(0, pattern or no_nul)
        if max_length is not None:
            validators.append(validate.Length(max=max_length))
        super().__init__(validate=validators, **kwargs)


class Timestamp(fields.DateTime):
    """ISO 8601 in and out: dumped in UTC with a ``Z``; naive input is read as UTC.

    Loading accepts ``2024-05-01T10:00:00Z``, ``2024-05-01 10:00:00`` (the activity API's
    ``Y-m-d H:i:s``) and a bare date. With ``strict`` only a full date-time is accepted;
    with ``end_of_day`` a bare date means the last microsecond of that day (inclusive
    ``dateTo``).
    """

    def __init__(self, *, strict: bool = False, end_of_day: bool = False, **kwargs: Any) -> None:
        self.strict = strict
        self.end_of_day = end_of_day
        super().__init__(**kwargs)

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        return iso(value)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> dt.datetime:
        if not isinstance(value, str) or "\x00" in value or len(value) > 40:
            raise self.make_error("invalid", input=value, obj_type="datetime")
        text = value.strip()
        if self.strict and not _STRICT_ISO.match(text):
            raise ma.ValidationError("Must be an ISO 8601 date-time such as 2017-01-17T00:30:08+00:00.")
        try:
            parsed = dt.datetime.fromisoformat(text)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.timezone.utc)
            if self.end_of_day and _DATE_ONLY.match(text):
                parsed = parsed + dt.timedelta(days=1, microseconds=-1)
            return parsed.astimezone(dt.timezone.utc)
        except (ValueError, OverflowError):
            raise ma.ValidationError("Not a valid ISO 8601 date-time.") from None


#: Numbers in free-form JSON stay within the signed 64-bit range (integers or not).
JSON_INT_RANGE = 2**63 - 1


def check_json(value: Any, depth: int = 0) -> None:
    """Refuse what a JSON column cannot store: NUL in strings and keys, NaN/Infinity, numbers
    beyond the 64-bit range, nesting deeper than 20 levels (the document's ``JsonValue``)."""
    if depth > 20:
        raise ma.ValidationError("Nested too deeply.")
    if isinstance(value, str):
        no_nul(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ma.ValidationError("NaN and Infinity are not valid JSON numbers.")
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > JSON_INT_RANGE:
        raise ma.ValidationError("Number out of range.")
    elif isinstance(value, dict):
        for key, item in value.items():
            no_nul(key)
            check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json(item, depth + 1)


class JsonObject(fields.Dict):
    """A free-form JSON object that the database can store."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> dict[str, Any]:
        result = super()._deserialize(value, attr, data, **kwargs)
        check_json(result)
        return result


class QueryField(fields.Raw):
    """The UTM ``query``: an object, or an HTTP query string parsed into one."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        if isinstance(value, str):
            if len(value) > 8192:
                raise ma.ValidationError("Longer than maximum length 8192.")
            parsed: dict[str, Any] = {}
            for key, item in parse_qsl(value.lstrip("?"), keep_blank_values=True):
                if key in parsed:
                    prev = parsed[key]
                    parsed[key] = [*prev, item] if isinstance(prev, list) else [prev, item]
                else:
                    parsed[key] = item
            check_json(parsed)
            return parsed
        if isinstance(value, dict):
            check_json(value)
            return value
        raise ma.ValidationError("Must be an object or a query string.")
