"""A Core statement compiled once per dialect and run with ``Connection.exec_driver_sql``.

For the statements of the open and click path, which are the same on every request:
SQLAlchemy compiles them once (``Compiled.string``; ``Compiled.positiontup`` gives the
order of a positional paramstyle) and each hit only runs the bind processors of the types
the caller declares (``TypeEngine.dialect_impl(dialect).bind_processor(dialect)``) and
``exec_driver_sql``, in the caller's transaction. The rows come back as the driver gives
them (no result processing): return only columns whose driver value is the Python value
(strings, integers).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa


class Prepared:
    """``stmt`` compiled for ``dialect``; ``binds`` names every bind parameter of the
    statement with its type (a statement with any other bind is refused: literals belong
    in its text)."""

    def __init__(self, stmt: sa.Executable, dialect: sa.Dialect, binds: Mapping[str, sa.types.TypeEngine[Any]]) -> None:
        compiled = stmt.compile(dialect=dialect)  # type: ignore[attr-defined]
        names = set(compiled.params)
        if not names <= set(binds):
            raise ValueError(f"undeclared bind parameters: {sorted(names - set(binds))}")
        self.sql: str = compiled.string
        self.order: tuple[str, ...] | None = tuple(compiled.positiontup) if compiled.positiontup else None
        self.names = names
        processors = ((name, binds[name].dialect_impl(dialect).bind_processor(dialect)) for name in sorted(names))
        self.processors = tuple((name, proc) for name, proc in processors if proc is not None)

    def parameters(self, values: Mapping[str, Any]) -> Any:
        """The driver's parameters for ``values`` (a mapping with every bind name)."""
        out = {name: values[name] for name in self.names}
        for name, proc in self.processors:
            out[name] = proc(out[name])
        return out if self.order is None else tuple(out[name] for name in self.order)

    def execute(self, conn: sa.Connection, values: Mapping[str, Any]) -> sa.CursorResult[Any]:
        return conn.exec_driver_sql(self.sql, self.parameters(values))
