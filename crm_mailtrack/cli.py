"""``flask mailtrack ...`` commands. They read state from ``current_app``; errors go to
stderr with a non-zero exit; long work shows a progress bar."""
from __future__ import annotations

import sys

import click
from flask.cli import AppGroup

from .state import get_state

cli = AppGroup("mailtrack", help="Email tracking: database, journal, sending, privacy.")


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


@cli.command("init-db")
@click.option("--create-all", is_flag=True, help="Create tables directly instead of running the migrations.")
def init_db(create_all: bool) -> None:
    """Create or upgrade the extension's tables (Alembic migrations, branch 'mailtrack')."""
    state = get_state()
    try:
        if create_all:
            state.extension.create_all()
        else:
            from .migrate import upgrade

            upgrade(state.engine)
    except Exception as exc:  # noqa: BLE001 - reported, not traced
        _fail(f"could not initialise the database: {exc}")
    click.echo("mailtrack: database ready")


@cli.command("replay-journal")
def replay_journal() -> None:
    """Write events journaled while the database was unavailable (each exactly once)."""
    from .services.events import replay_journal as replay

    state = get_state()
    total = state.journal.count()
    if total == 0:
        click.echo("mailtrack: journal is empty")
        return
    try:
        with click.progressbar(length=total, label="Replaying journal", file=sys.stderr) as bar:
            inserted, skipped = replay(state, progress=bar.update)
    except Exception as exc:  # noqa: BLE001
        _fail(f"replay stopped, nothing lost (run it again): {exc}")
    click.echo(f"mailtrack: replayed {inserted} events, skipped {skipped} (already stored or message erased)")


@cli.command("erase-contact")
@click.argument("contact_id")
@click.option("--tenant", default=None, help="Tenant of the contact.")
@click.confirmation_option(prompt="Delete every tracked row of this contact?")
def erase_contact(contact_id: str, tenant: str | None) -> None:
    """Delete every tracked row of a contact (right to erasure)."""
    state = get_state()
    try:
        deleted = state.extension.erase_contact(contact_id, tenant_id=tenant)
    except Exception as exc:  # noqa: BLE001
        _fail(str(exc))
    click.echo(f"mailtrack: erased {deleted} rows of contact {contact_id}")
