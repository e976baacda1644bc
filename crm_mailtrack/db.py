"""The database helpers every service shares: the unit of work and the SQL pieces that differ
between SQLite and PostgreSQL.

:func:`transaction` is how a service writes: the block's changes are committed together, or
rolled back together; a lost or refused connection becomes
:class:`~crm_mailtrack.errors.DatabaseUnavailable` (a 503 on the API, a journal entry on the
tracking routes), any other error is re-raised as it is (a constraint violation is the
caller's to translate; a bug stays a bug).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .errors import DatabaseUnavailable

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .state import MailTrackState

T = TypeVar("T")

#: Failures that say "the database cannot serve us now" (down, restarting, locked, the pool
#: exhausted, our tables missing), not "this row is wrong": they are answered with 503 (the
#: API adds "run init-db" when the tables are missing) or journaled on the tracking routes.
#: A missing table is an OperationalError on SQLite but a ProgrammingError on PostgreSQL,
#: so both count. Constraint violations (IntegrityError) and bad values (DataError) do not.
UNAVAILABLE: tuple[type[Exception], ...] = (
    sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.InterfaceError, sa.exc.InternalError,
    sa.exc.TimeoutError, sa.exc.DisconnectionError,
)


@contextmanager
def transaction(state: MailTrackState, *, commit: bool = True) -> Iterator[Session]:
    """The app's session for one unit of work: committed when the block ends; rolled back
    when it raises, with :data:`UNAVAILABLE` failures (of the block or of the commit) raised
    as :class:`~crm_mailtrack.errors.DatabaseUnavailable` and everything else as it is.

    ``commit=False`` joins a caller's larger unit of work: the block's changes stay pending
    for the caller to commit, and a failure still rolls everything back."""
    session = state.session
    try:
        yield session
        if commit:
            session.commit()
    except BaseException as exc:
        session.rollback()
        if isinstance(exc, UNAVAILABLE):
            raise DatabaseUnavailable() from exc
        raise


@contextmanager
def unavailable_as_503() -> Iterator[None]:
    """For work outside the session (``engine.begin()``, a fold): :data:`UNAVAILABLE`
    failures raised as :class:`~crm_mailtrack.errors.DatabaseUnavailable`."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise DatabaseUnavailable() from exc


def dialect_name(bind: Any) -> str:
    """``"postgresql"`` or ``"sqlite"`` for a state, engine, connection or session
    (``NotImplementedError`` for any other database)."""
    engine = getattr(bind, "engine", None)
    dialect = (engine if engine is not None else bind.get_bind()).dialect
    if dialect.name not in ("postgresql", "sqlite"):
        raise NotImplementedError(f"crm_mailtrack supports SQLite and PostgreSQL, not {dialect.name}")
    return str(dialect.name)


def insert(dialect: str, table: sa.Table) -> Any:
    """An INSERT with ``on_conflict_do_nothing`` / ``on_conflict_do_update`` for ``dialect``."""
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


def utc_day(dialect: str, col: Any) -> Any:
    """The UTC calendar day of a timestamp column, typed as a Date: a DATE on PostgreSQL, the
    ``YYYY-MM-DD`` prefix of the stored text on SQLite (timestamps are stored naive UTC)."""
    if dialect == "postgresql":
        return sa.cast(sa.func.timezone(sa.literal_column("'UTC'"), col), sa.Date)
    return sa.type_coerce(sa.func.substr(col, 1, 10), sa.Date)


def like_escape(term: str) -> str:
    """``term`` as a literal for ``LIKE ... ESCAPE '\\'``."""
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


#: The most values one ``IN (...)`` list carries: SQLite refuses statements with over 32766
#: parameters (999 before 3.32), PostgreSQL plans long lists slowly.
CHUNK = 500


def chunks(values: Sequence[T], size: int = CHUNK) -> Iterable[Sequence[T]]:
    """``values`` in slices of at most ``size``, for ``IN (...)`` lists."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


__all__ = ["UNAVAILABLE", "transaction", "unavailable_as_503", "dialect_name", "insert", "utc_day",
           "like_escape", "chunks", "CHUNK"]
