"""Run the Alembic migrations shipped in ``crm_mailtrack/migrations`` (branch ``mailtrack``).

``flask mailtrack init-db`` calls :func:`upgrade`. Our revisions keep their own version
table, ``mailtrack_alembic_version``, and only ever look at ``mailtrack_*`` tables, so a
host's own ``alembic_version`` and tables are never touched.

**A host on Flask-Migrate needs no set-up.** ``init_app`` adds :func:`exclude_mailtrack_name`
and :func:`exclude_mailtrack_object` to the ``include_name`` / ``include_object`` options
Flask-Migrate passes to Alembic (``app.extensions["migrate"].configure_args``, whichever of
``Migrate`` and ``MailTrack`` is initialised first; filters the host set itself still run
for every other table), so ``flask db migrate`` never writes ``DROP TABLE mailtrack_...``.
The ``mailtrack_`` table prefix is reserved for the extension. A host on plain Alembic
passes the same two functions to ``context.configure`` in its ``env.py``.

A host may instead run our revisions in its own Alembic history (then it should not also
use ``init-db``). In its ``alembic.ini``::

    path_separator = space
    version_locations = %(here)s/versions crm_mailtrack:migrations/versions

then ``flask db upgrade heads`` (or ``mailtrack@head``).
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import warnings
from collections.abc import Iterator
from importlib import resources
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

VERSION_TABLE = "mailtrack_alembic_version"
BRANCH = "mailtrack"
TABLE_PREFIX = "mailtrack_"

Bind = sa.Engine | sa.Connection

__all__ = [
    "VERSION_TABLE", "BRANCH", "script_location", "alembic_config", "upgrade", "downgrade",
    "stamp", "current", "adopt", "schema_differences", "schema_problem",
    "only_mailtrack_name", "only_mailtrack_object", "compare_server_default",
    "exclude_mailtrack_name", "exclude_mailtrack_object", "exclude_mailtrack",
    "configure_flask_migrate",
]

_files = contextlib.ExitStack()
atexit.register(_files.close)


@functools.cache
def script_location() -> str:
    """Filesystem path of the shipped Alembic script directory."""
    ref = resources.files("crm_mailtrack") / "migrations"
    return str(_files.enter_context(resources.as_file(ref)))


def alembic_config(connection: sa.Connection | None = None, *, url: str | None = None) -> Config:
    """An Alembic ``Config`` for our scripts: ``env.py`` runs on ``connection`` if given,
    else on a new engine for ``url`` (as the ``alembic`` command line would)."""
    config = Config()
    config.set_main_option("script_location", script_location())
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ini interpolation
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@contextlib.contextmanager
def _connection(bind: Bind) -> Iterator[sa.Connection]:
    """A given connection as is (its owner commits, or Alembic does if no transaction is
    open); an engine's connection in a transaction committed at the end."""
    if isinstance(bind, sa.Connection):
        yield bind
    else:
        with bind.begin() as conn:
            yield conn


def upgrade(bind: Bind, revision: str = f"{BRANCH}@head") -> None:
    """Create or upgrade the extension's tables; a no-op when already at ``revision``.

    Tables made by ``create_all()`` carry no revision: when they are exactly the head's
    schema they are recorded as the head first (:func:`adopt`); otherwise this refuses,
    listing the differences, rather than failing half-way on "table already exists"."""
    with _connection(bind) as conn:
        if current(conn) is None and _our_tables(conn):
            adopt(conn)
        command.upgrade(alembic_config(conn), revision)


def adopt(bind: Bind) -> str:
    """Record the head revision for tables made by ``create_all()``, after checking that
    they are exactly the schema the head revision makes; return that revision.

    Raises ``RuntimeError`` naming the differences when they are not (tables made by an
    older release, or changed by hand): stamping those would skip the migrations they
    still need. Does nothing but return the revision when one is already recorded."""
    with _connection(bind) as conn:
        recorded = current(conn)
        if recorded is not None:
            return recorded
        differences = schema_differences(conn)
        if differences:
            listed = "; ".join(differences[:10]) + ("; ..." if len(differences) > 10 else "")
            raise RuntimeError(
                f"tables {', '.join(_our_tables(conn))} exist but {VERSION_TABLE} records no revision, "
                f"and they differ from the schema of this version ({listed}): they were not made by "
                "this version's create_all(). Record the revision they match with "
                "crm_mailtrack.migrate.stamp(engine, '<revision>'), then run `flask mailtrack init-db`")
        command.stamp(alembic_config(conn), f"{BRANCH}@head")
        head = current(conn)
        assert head is not None
        return head


def schema_differences(bind: Bind) -> list[str]:
    """What Alembic's autogenerate would change to make the extension's tables match this
    version's models, one readable line per change (empty: they match)."""
    from alembic.autogenerate import compare_metadata

    from .models import metadata

    with _connection(bind) as conn:
        context = MigrationContext.configure(conn, opts={
            "version_table": VERSION_TABLE, "compare_type": True,
            "compare_server_default": compare_server_default,
            "include_name": only_mailtrack_name, "include_object": only_mailtrack_object,
        })
        with quiet_expression_index_warnings():
            return [_describe(diff) for diff in compare_metadata(context, metadata)]


@contextlib.contextmanager
def quiet_expression_index_warnings() -> Iterator[None]:
    """SQLAlchemy cannot reflect SQLite's expression indexes (our ``lower(email)`` lookup
    index), so autogenerate warns that it skips them on every comparison. That is known and
    harmless for our tables (the PostgreSQL comparison covers the index): an operator
    running ``init-db`` should not be told about it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*expression-based index")
        yield


def _describe(diff: Any) -> str:
    """One autogenerate diff entry (a tuple, or a list of column changes) as text."""
    if isinstance(diff, list):
        return ", ".join(_describe(d) for d in diff)
    op, *rest = diff
    names = []
    for item in rest:
        if isinstance(item, (sa.Table, sa.Index, sa.Column, sa.Constraint)) and getattr(item, "name", None):
            names.append(str(item.name))
        elif isinstance(item, str):
            names.append(item)
    return f"{op} {'.'.join(names[:2])}".strip()


def schema_problem(bind: Bind) -> str | None:
    """Why the extension's tables cannot be used as they are, as advice for the operator
    (``None`` when they can): some are missing, or the recorded revision is not this
    version's head. Used to turn a failed query into "run flask mailtrack init-db"."""
    from .models import metadata

    with _connection(bind) as conn:
        present = set(sa.inspect(conn).get_table_names())
        missing = sorted(set(metadata.tables) - present)
        if missing:
            return (f"the crm_mailtrack tables are missing ({', '.join(missing)}): "
                    "run `flask mailtrack init-db`")
        recorded = current(conn) if VERSION_TABLE in present else None
    if recorded is not None:
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        if recorded != head:
            return (f"the crm_mailtrack tables are at revision {recorded}, this version needs {head}: "
                    "run `flask mailtrack init-db`")
    return None


def _our_tables(conn: sa.Connection) -> list[str]:
    return sorted(t for t in sa.inspect(conn).get_table_names()
                  if t.startswith(TABLE_PREFIX) and t != VERSION_TABLE)


def downgrade(bind: Bind, revision: str) -> None:
    """Downgrade to ``revision`` (``"base"`` drops every table of the extension)."""
    with _connection(bind) as conn:
        command.downgrade(alembic_config(conn), revision)


def stamp(bind: Bind, revision: str = f"{BRANCH}@head") -> None:
    """Record ``revision`` without running it, e.g. for tables made by ``create_all()``."""
    with _connection(bind) as conn:
        command.stamp(alembic_config(conn), revision)


def current(bind: Bind) -> str | None:
    """The revision recorded in ``mailtrack_alembic_version``, ``None`` before any upgrade."""
    with _connection(bind) as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def _ours(name: str | None, type_: str) -> bool:
    return type_ == "table" and bool(name and name.startswith(TABLE_PREFIX))


def _partition(name: str | None) -> bool:
    from .models import EVENTS_PARTITION_NAME

    return bool(name and EVENTS_PARTITION_NAME.match(name))


def only_mailtrack_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic ``include_name`` hook of the extension's own migrations: reflect only its
    tables (``mailtrack_*``), not the event log's partitions (PostgreSQL), which are made
    by ``flask mailtrack partitions`` rather than by models. Not for a host: see
    :func:`exclude_mailtrack_name`."""
    return type_ != "table" or (_ours(name, type_) and not _partition(name))


def only_mailtrack_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic ``include_object`` hook of the extension's own migrations: compare only its
    tables (and what they hold), not the event log's partitions. Not for a host: see
    :func:`exclude_mailtrack_object`."""
    return type_ != "table" or (_ours(name, type_) and not _partition(name))


def exclude_mailtrack_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic ``include_name`` hook for a host's own migrations: skip the extension's
    tables (``mailtrack_*``, its version table included), keep everything else."""
    return not _ours(name, type_)


def exclude_mailtrack_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic ``include_object`` hook for a host's own migrations: skip the extension's
    tables, keep everything else."""
    return not _ours(name, type_)


#: The name this function had first; kept so existing ``env.py`` files go on working.
exclude_mailtrack = exclude_mailtrack_name


def compare_server_default(context: MigrationContext, inspected_column: Any, metadata_column: Any,
                           inspected_default: str | None, metadata_default: Any,
                           rendered_metadata_default: str | None) -> bool | None:
    """Alembic ``compare_server_default`` hook. Alembic (1.20 at least) reflects SQLite's
    ``DEFAULT ''`` as ``('')`` and reports a change where there is none."""
    if (context.dialect.name == "sqlite" and rendered_metadata_default == ""
            and inspected_default in ("''", "('')")):
        return False
    return None  # Alembic's own comparison decides


def _chain(ours: Any, theirs: Any) -> Any:
    """``ours`` first, then the host's own filter (if any) for what ours keeps."""
    if theirs is None or getattr(theirs, "_mailtrack_chained", False):
        return theirs if theirs is not None else ours

    def chained(*args: Any) -> bool:
        return ours(*args) and bool(theirs(*args))

    chained._mailtrack_chained = True  # type: ignore[attr-defined]
    chained.__doc__ = f"{ours.__name__}, then the host's {getattr(theirs, '__name__', 'filter')}."
    return chained


def configure_flask_migrate(app: Any) -> bool:
    """Make the host's Flask-Migrate autogenerate leave the extension's tables alone.

    Adds :func:`exclude_mailtrack_name` / :func:`exclude_mailtrack_object` to the
    ``include_name`` / ``include_object`` options that Flask-Migrate hands to Alembic's
    ``context.configure`` (``app.extensions["migrate"].configure_args``), in front of
    any filter the host set. Idempotent; ``False`` when Flask-Migrate is not set up (yet).
    ``init_app`` calls it, and again whenever an app context is pushed (``flask db`` pushes
    one), so the order in which the two extensions are initialised does not matter."""
    migrate = app.extensions.get("migrate")
    args = getattr(migrate, "configure_args", None)
    if not isinstance(args, dict):
        return False
    for key, ours in (("include_name", exclude_mailtrack_name), ("include_object", exclude_mailtrack_object)):
        current_filter = args.get(key)
        if current_filter is not ours:
            args[key] = _chain(ours, current_filter)
    return True


_RENAMED = {"include_name": "only_mailtrack_name", "include_object": "only_mailtrack_object"}


def __getattr__(name: str) -> Any:
    """``include_name`` / ``include_object`` were the extension's *own* filters (only its
    tables), a trap for a host who took them for its ``env.py``: they now warn and point
    to the right function."""
    if name in _RENAMED:
        import warnings

        warnings.warn(
            f"crm_mailtrack.migrate.{name} keeps only the extension's tables (the filter of its "
            f"own migrations) and is renamed {_RENAMED[name]}; a host's env.py wants "
            f"exclude_mailtrack_{name.split('_')[1]} (Flask-Migrate hosts need neither)",
            DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
