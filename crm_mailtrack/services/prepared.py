"""Core statements compiled once per dialect, run on a pooled DB-API connection.

For the statements of the open and click path, which are the same on every request:
SQLAlchemy compiles them once (``Compiled.string``; ``Compiled.positiontup`` gives the
order of a positional paramstyle) and each hit only runs the bind processors of the types
the caller declares (``TypeEngine.dialect_impl(dialect).bind_processor(dialect)``) and the
driver's ``cursor.execute``. Rows come back as the driver gives them (no result
processing), as named tuples of the statement's ``RETURNING`` columns: return only columns
whose driver value is the Python value (strings, integers).

Two places run them (:class:`Runner`):

* :class:`PooledTransaction`, the tracking routes' own transaction: one DB-API connection
  checked out of the engine's pool with ``Engine.raw_connection()`` (SQLAlchemy's
  documented access to the pool's driver connections), one cursor, the driver's own
  transaction (PEP 249: the driver begins it with the first statement, ``commit()`` ends
  it), ``commit()`` at the end or ``rollback()`` on any error, and the connection back to
  the pool. A connection whose rollback fails is invalidated (discarded from the pool);
  the pool's reset-on-return rolls back anything left. Pool events (``connect``,
  ``checkout``, ``checkin``) and ``pool_pre_ping`` apply; ``Connection``-level engine
  events (``before_cursor_execute``, ``begin``, ``commit``) do not fire for these
  statements, and driver exceptions arrive unwrapped.
* :class:`ConnectionRunner`: a SQLAlchemy ``Connection``'s transaction (for a statement
  that also runs inside a host's session), with ``Connection.exec_driver_sql``.

Per execution this skips SQLAlchemy's ``Connection``/``Transaction`` objects and the
result metadata ``exec_driver_sql`` builds from the cursor description on every call: a
click's own CPU went from about 320 to 185 us on SQLite and from 580 to 350 us on
PostgreSQL (``record_click`` alone, against 50 / 150 us for a bare driver insert).
"""
from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol

import sqlalchemy as sa

from ..models import UTCDateTime


class Prepared:
    """``stmt`` compiled for ``dialect``; ``binds`` names every bind parameter of the
    statement with its type (a statement with any other bind is refused: literals belong
    in its text). A type whose processor is ``None`` on the dialect costs nothing per
    execution: its values go to the driver as they are."""

    def __init__(self, stmt: sa.Executable, dialect: sa.Dialect, binds: Mapping[str, sa.types.TypeEngine[Any]]) -> None:
        compiled = stmt.compile(dialect=dialect)  # type: ignore[attr-defined]
        names = set(compiled.params)
        if not names <= set(binds):
            raise ValueError(f"undeclared bind parameters: {sorted(names - set(binds))}")
        self.sql: str = compiled.string
        self.order: tuple[str, ...] | None = tuple(compiled.positiontup) if compiled.positiontup else None
        self.names = tuple(sorted(names))
        processors = ((name, binds[name].dialect_impl(dialect).bind_processor(dialect)) for name in self.names)
        self.processors = tuple((name, proc) for name, proc in processors if proc is not None)
        returning = [d["name"] for d in getattr(stmt, "returning_column_descriptions", ())]
        #: the named tuple of a returned row (``None``: the statement returns no rows)
        self.row = namedtuple("Row", returning) if returning else None  # type: ignore[misc]

    def parameters(self, values: Mapping[str, Any]) -> Any:
        """The driver's parameters for ``values`` (a mapping with every bind name)."""
        out = {name: values[name] for name in self.names}
        for name, proc in self.processors:
            out[name] = proc(out[name])
        return out if self.order is None else tuple(out[name] for name in self.order)


#: The timestamp type under :class:`.UTCDateTime`.
_TIMESTAMP = sa.DateTime(timezone=True)


def aware_binds(dialect: sa.Dialect, binds: Mapping[str, sa.types.TypeEngine[Any]]) -> dict[str, sa.types.TypeEngine[Any]]:
    """``binds`` for values whose datetimes are all timezone-aware: where the dialect's
    ``DateTime(timezone=True)`` has no bind processor (psycopg adapts aware datetimes to
    ``timestamptz`` itself), the :class:`.UTCDateTime` binds become that type, so their
    values go to the driver untouched, as the same instant ``UTCDateTime`` would have
    sent. Decided once per dialect with ``TypeEngine.bind_processor``; elsewhere (SQLite
    stores a text format) the binds keep ``UTCDateTime`` and its processor."""
    if _TIMESTAMP.dialect_impl(dialect).bind_processor(dialect) is not None:
        return dict(binds)
    return {name: _TIMESTAMP if isinstance(type_, UTCDateTime) else type_ for name, type_ in binds.items()}


class Runner(Protocol):
    """Where prepared statements run: one transaction on one connection."""

    dialect: sa.Dialect

    def run(self, prepared: Prepared, values: Mapping[str, Any]) -> None: ...

    def all(self, prepared: Prepared, values: Mapping[str, Any]) -> list[Any]: ...

    def first(self, prepared: Prepared, values: Mapping[str, Any]) -> Any | None: ...


class PooledTransaction:
    """One transaction on a DB-API connection of ``engine``'s pool (a context manager:
    commit on success, rollback on an exception, the connection back to the pool)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect

    def __enter__(self) -> PooledTransaction:
        self.connection = self.engine.raw_connection()
        try:
            self.cursor = self.connection.cursor()
        except BaseException:
            self.connection.invalidate()
            self.connection.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        connection = self.connection
        try:
            if exc_type is None:
                try:
                    self.cursor.close()
                    connection.commit()
                    return
                except BaseException:
                    self._rollback()
                    raise
            self._rollback()
        finally:
            connection.close()  # back to the pool

    def _rollback(self) -> None:
        try:
            self.cursor.close()
            self.connection.rollback()
        except Exception:  # noqa: BLE001 - a connection that cannot roll back is gone
            self.connection.invalidate()

    def run(self, prepared: Prepared, values: Mapping[str, Any]) -> None:
        self.cursor.execute(prepared.sql, prepared.parameters(values))
        if prepared.row is not None:
            self.cursor.fetchall()  # a statement is done only when its rows are read

    def all(self, prepared: Prepared, values: Mapping[str, Any]) -> list[Any]:
        self.cursor.execute(prepared.sql, prepared.parameters(values))
        make = prepared.row
        assert make is not None, "the statement returns no rows"
        return [make(*row) for row in self.cursor.fetchall()]

    def first(self, prepared: Prepared, values: Mapping[str, Any]) -> Any | None:
        rows = self.all(prepared, values)
        return rows[0] if rows else None


class ConnectionRunner:
    """Prepared statements on a SQLAlchemy ``Connection``, in its transaction."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.dialect = conn.dialect

    def run(self, prepared: Prepared, values: Mapping[str, Any]) -> None:
        self.conn.exec_driver_sql(prepared.sql, prepared.parameters(values)).close()

    def all(self, prepared: Prepared, values: Mapping[str, Any]) -> list[Any]:
        return list(self.conn.exec_driver_sql(prepared.sql, prepared.parameters(values)).all())

    def first(self, prepared: Prepared, values: Mapping[str, Any]) -> Any | None:
        return self.conn.exec_driver_sql(prepared.sql, prepared.parameters(values)).first()
