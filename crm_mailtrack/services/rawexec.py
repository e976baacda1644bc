"""Run a prebuilt Core statement straight on the DBAPI cursor: the click path's fast lane.

SQLAlchemy's per-execution work (cache-key lookup, building the parameter dict from the
compiled form, result metadata) cost the click route more than its INSERT itself
(bench/profile_click.py: about 0.45 ms of 0.85 ms per click on SQLite). For a statement that
is the same on every request it is done once here: the statement is compiled once per
dialect; each call only runs the type processors and ``cursor.execute``, inside the
caller's SQLAlchemy transaction, so commit, rollback and pooling stay SQLAlchemy's.

Statements with expanding or literal-execute parameters are refused (they need
per-execution compilation). Engine events such as ``before_cursor_execute`` do not fire
for these statements.
"""
from __future__ import annotations

import collections
import contextlib
import datetime as dt
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import sqlalchemy as sa


class CompiledStatement:
    """One statement compiled for one dialect, with its bind and result processors."""

    def __init__(self, stmt: sa.Executable, dialect: sa.Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)  # type: ignore[attr-defined]
        if compiled.post_compile_params or compiled.literal_execute_params:
            raise ValueError("statements with expanding / literal-execute parameters need SQLAlchemy")
        self.sql: str = compiled.string
        self.positional: list[str] | None = list(compiled.positiontup) if compiled.positiontup else None
        escaped = getattr(compiled, "escaped_bind_names", None) or {}
        names = sorted(set(compiled.bind_names.values()))
        self.named: list[tuple[str, str]] = [(n, escaped.get(n, n)) for n in names]
        #: literal values bound by the statement itself (``sa.case`` results, constants)
        self.defaults: dict[str, Any] = {
            name: bind.effective_value for bind, name in compiled.bind_names.items() if not bind.required
        }
        self.processors: dict[str, Any] = {
            name: _fast_processor(compiled.binds[name].type, dialect, proc)
            for name, proc in compiled._bind_processors.items()
        }
        for name in stmt.get_execution_options().get(SHARED_BINDS, ()):  # type: ignore[attr-defined]
            if name in compiled.binds:
                self.processors[name] = _shared_processor(self.processors.get(name), dialect)
        self._template, self._slots = self._plan()
        columns = list(getattr(stmt, "exported_columns", ()) or ())
        self.row_type: Any = None
        self.result_processors: list[Any] = []
        if columns:
            self.row_type = _row_type(tuple(c.key for c in columns))
            self.result_processors = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]

    def _plan(self) -> tuple[Any, list[tuple[Any, str, Any]]]:
        """The DBAPI parameters with the statement's own literals already processed (a list
        for positional paramstyles, a dict for named ones), and the slots each call fills:
        ``(index or key, bind name, processor)``. Literals are the same on every call, so
        their processing (and the merge with the caller's values) is done once here."""
        procs = self.processors

        def literal(name: str) -> Any:
            value = self.defaults[name]
            return procs[name](value) if name in procs else value

        template: Any
        if self.positional is not None:
            template = [literal(n) if n in self.defaults else None for n in self.positional]
            slots = [(i, n, procs.get(n)) for i, n in enumerate(self.positional) if n not in self.defaults]
        else:
            template = {key: literal(n) for n, key in self.named if n in self.defaults}
            slots = [(key, n, procs.get(n)) for n, key in self.named if n not in self.defaults]
        return template, slots

    def parameters(self, params: dict[str, Any]) -> Any:
        if self.defaults and not self.defaults.keys().isdisjoint(params.keys()):
            return self._parameters_merged(params)  # a caller overriding a literal: rare
        out = self._template.copy()
        for slot, name, proc in self._slots:
            out[slot] = params[name] if proc is None else proc(params[name])
        return tuple(out) if self.positional is not None else out

    def _parameters_merged(self, params: dict[str, Any]) -> Any:
        values = {**self.defaults, **params}
        procs = self.processors
        if self.positional is not None:
            return tuple(procs[n](values[n]) if n in procs else values[n] for n in self.positional)
        return {key: (procs[n](values[n]) if n in procs else values[n]) for n, key in self.named}

    def first(self, conn: sa.Connection, params: dict[str, Any]) -> Any:
        """Execute on ``conn``'s DBAPI connection (in its transaction); the first returned row
        (a named tuple with ``_mapping``, like a Row) or ``None``."""
        dbapi_conn = conn.connection.dbapi_connection
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(self.sql, self.parameters(params))
            raw = cursor.fetchone() if self.row_type is not None else None
        except conn.dialect.loaded_dbapi.Error as exc:
            # as SQLAlchemy would: a connection the server dropped leaves the pool
            if conn.dialect.is_disconnect(exc, dbapi_conn, cursor):
                conn.invalidate(exc)
            raise
        finally:
            with contextlib.suppress(Exception):
                cursor.close()
        if raw is None:
            return None
        return self.row(raw)

    def row(self, raw: Any) -> Any:
        """A row the driver returned, through the result processors, as a named tuple."""
        return self.row_type(*(p(v) if p is not None else v for p, v in zip(self.result_processors, raw)))


_SQLITE_DATETIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"

#: Execution option of a statement: names of binds whose values callers share and never
#: change (the tracking insert's ``details``: one dict per user agent, see
#: :func:`..devices.event_details`). Their bind form is computed once per value object.
SHARED_BINDS = "mailtrack_shared_binds"
_SHARED_MAX = 512


def _shared_processor(slow: Any, dialect: sa.Dialect) -> Any:
    """``slow`` (or no processing), memoized per value object for a :data:`SHARED_BINDS`
    bind: a JSON value is serialized once, not on every hit (about 8 µs per click on
    PostgreSQL, 4 µs on SQLite). The memo holds each value, so an id it knows is that
    value's; it is emptied when full (the honeypot route's one-off dicts)."""
    memo: dict[int, tuple[Any, Any]] = {}
    # Only psycopg's wrappers are pre-dumped, so only its dialect looks at psycopg at all, and
    # here, once per compiled statement: the dialect has imported the driver completely
    # already. Importing it lazily per request raced under threads (a partially initialized
    # module) and journaled clicks, on SQLite too, where psycopg has nothing to do.
    predump = _predumper(dialect) if dialect.driver == "psycopg" else None

    def process(value: Any) -> Any:
        hit = memo.get(id(value))
        if hit is not None:
            return hit[1]
        out = slow(value) if slow is not None else value
        if predump is not None:
            out = predump(out)
        if len(memo) >= _SHARED_MAX:
            memo.clear()
        memo[id(value)] = (value, out)
        return out

    return process


def _predumper(dialect: sa.Dialect) -> Any:
    """A function giving psycopg's ``Json``/``Jsonb`` wrapper (what SQLAlchemy's JSON
    processor gives there) with its text already made by the dumper the dialect's
    connections use (the engine's ``json_serializer`` or psycopg's), so the driver does not
    serialize it again. Other values pass unchanged."""
    import psycopg
    from psycopg.adapt import PyFormat
    from psycopg.types.json import Json, Jsonb

    adapters = getattr(dialect, "_psycopg_adapters_map", None) or psycopg.adapters

    def predump(value: Any) -> Any:
        if value.__class__ not in (Json, Jsonb) or value.dumps is not None:
            return value
        cls = value.__class__
        text = bytes(adapters.get_dumper(cls, PyFormat.TEXT)(cls).dump(value))
        return cls(value.obj, dumps=lambda _obj: text)

    return predump


def _fast_processor(type_: Any, dialect: sa.Dialect, slow: Any) -> Any:
    """A faster equivalent of the bind processor ``slow`` of a :class:`UTCDateTime` bind, for
    values that are already UTC (what the tracking path passes): the type's own processor
    goes through ``TypeDecorator``, ``astimezone`` and SQLite's dict-based formatting,
    about 5 µs per value, four values per click. Used only if it gives exactly what ``slow``
    gives on sample values; any other value (naive, other zone, ``None``) goes to ``slow``."""
    from ..models import UTCDateTime

    if slow is None or not isinstance(type_, UTCDateTime):
        return slow
    utc = dt.timezone.utc
    if dialect.name == "sqlite":
        fmt = _SQLITE_DATETIME

        def fast(value: Any) -> Any:
            if value.__class__ is dt.datetime and value.tzinfo is utc:
                return fmt % (value.year, value.month, value.day, value.hour, value.minute,
                              value.second, value.microsecond)
            return slow(value)
    else:
        def fast(value: Any) -> Any:
            if value.__class__ is dt.datetime and value.tzinfo is utc:
                return value
            return slow(value)
    samples = (dt.datetime(2025, 1, 2, 3, 4, 5, 60708, tzinfo=utc), dt.datetime(1999, 12, 31, tzinfo=utc),
               dt.datetime.now(utc))
    try:
        agrees = all(fast(v) == slow(v) and type(fast(v)) is type(slow(v)) for v in samples)
    except Exception:  # noqa: BLE001 - an unexpected processor: keep it as it is
        agrees = False
    return fast if agrees else slow


@lru_cache(maxsize=64)
def compiled(stmt: sa.Executable, dialect: sa.Dialect) -> CompiledStatement:
    """The :class:`CompiledStatement` of ``stmt`` (cached: pass statements built once)."""
    return CompiledStatement(stmt, dialect)


@lru_cache(maxsize=32)
def _row_type(names: tuple[str, ...]) -> type:
    base = collections.namedtuple("Row", names)  # type: ignore[misc]

    class Row(base):  # type: ignore[valid-type, misc]
        __slots__ = ()

        @property
        def _mapping(self) -> dict[str, Any]:
            return self._asdict()

    return Row


class RawResult:
    """The rows a statement run by :class:`RawConnection` returned (``first()``, ``all()``)."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def all(self) -> list[Any]:
        return list(self._rows)


class RawConnection:
    """What an ``after`` hook of :func:`first_committed` gets: ``execute(stmt, params)`` of a
    Core statement in the same transaction, on the DBAPI connection, like a SQLAlchemy
    ``Connection`` (``.first()``/``.all()`` of the result). Statements are compiled once and
    cached by identity: pass statements built once, with bind parameters."""

    def __init__(self, dbapi_conn: Any, dialect: sa.Dialect) -> None:
        self.dbapi_connection = dbapi_conn
        self.dialect = dialect

    def execute(self, stmt: sa.Executable, params: dict[str, Any] | None = None) -> RawResult:
        prepared = compiled(stmt, self.dialect)
        cursor = self.dbapi_connection.cursor()
        try:
            cursor.execute(prepared.sql, prepared.parameters(dict(params or {})))
            rows = [prepared.row(raw) for raw in cursor.fetchall()] if prepared.row_type is not None else []
        finally:
            cursor.close()
        return RawResult(rows)


def first_committed(engine: sa.Engine, stmt: sa.Executable, params: dict[str, Any],
                    after: Callable[[RawConnection, Any], None] | None = None) -> Any:
    """Run ``stmt`` in its own transaction on a pooled DBAPI connection, then ``after(conn,
    row)`` (when a row came back) in the same transaction, and commit. No SQLAlchemy
    ``Connection``/``Transaction`` objects at all: the open and click paths."""
    compiled_stmt = compiled(stmt, engine.dialect)
    values = compiled_stmt.parameters(params)  # before checkout: a bad value holds no connection
    raw = engine.raw_connection()
    try:
        dbapi_conn = raw.dbapi_connection  # straight to the driver: no proxy per call
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(compiled_stmt.sql, values)
            fetched = cursor.fetchone() if compiled_stmt.row_type is not None else None
            row = None if fetched is None else compiled_stmt.row(fetched)
            if row is not None and after is not None:
                after(RawConnection(dbapi_conn, engine.dialect), row)
        except engine.dialect.loaded_dbapi.Error as exc:
            if engine.dialect.is_disconnect(exc, dbapi_conn, cursor):
                raw.invalidate(exc)
            raise
        finally:
            with contextlib.suppress(Exception):
                cursor.close()
        dbapi_conn.commit()
    finally:
        raw.close()  # back to the pool, which rolls back anything left uncommitted
    return row


def first(conn: sa.Connection, stmt: sa.Executable, params: dict[str, Any]) -> Any:
    """``conn.execute(stmt, params).first()`` without SQLAlchemy's per-execution overhead."""
    return compiled(stmt, conn.dialect).first(conn, params)
