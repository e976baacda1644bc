"""``flask mailtrack ...`` commands. They read state from ``current_app``; errors go to
stderr with a non-zero exit; long work shows a progress bar."""
from __future__ import annotations

import sys
from typing import Any

import click
from flask.cli import AppGroup

from .state import get_state

cli = AppGroup("mailtrack", help="Email tracking: database, journal, sending, privacy.")


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def _fail_on(exc: Exception, doing: str) -> None:
    """Report a failed command: "run init-db" when the tables are missing or behind,
    else ``doing`` and the error."""
    import sqlalchemy as sa

    from .errors import DatabaseUnavailable

    if isinstance(exc, (sa.exc.DBAPIError, DatabaseUnavailable)):
        from .migrate import schema_problem

        try:
            advice = schema_problem(get_state().engine)
        except Exception:  # noqa: BLE001 - the database itself is unreachable
            advice = None
        if advice is not None:
            _fail(advice)
    _fail(f"{doing}: {exc}")


@cli.command("init-db")
@click.option("--create-all", is_flag=True, help="Create tables directly instead of running the migrations.")
def init_db(create_all: bool) -> None:
    """Create or upgrade the extension's tables (Alembic migrations, branch 'mailtrack').

    Tables made earlier by create_all() (a quick start) are taken over when they are exactly
    this version's schema: their revision is recorded and later upgrades migrate them."""
    from . import migrate

    state = get_state()
    try:
        with state.engine.begin() as conn:
            if create_all:
                from .models import metadata

                metadata.create_all(conn)
            if migrate.current(conn) is None and _has_our_tables(conn):
                revision = migrate.adopt(conn)
                click.echo(f"mailtrack: tables made by create_all() match this version: recorded revision "
                           f"{revision}")
            if not create_all:
                migrate.upgrade(conn)
    except Exception as exc:  # noqa: BLE001 - reported, not traced
        _fail(f"could not initialise the database: {exc}")
    click.echo("mailtrack: database ready")


def _has_our_tables(conn: Any) -> bool:
    import sqlalchemy as sa

    from .models import metadata

    return bool(set(sa.inspect(conn).get_table_names()) & set(metadata.tables))


@cli.command("replay-journal")
def replay_journal() -> None:
    """Write events journaled while the database was unavailable (each exactly once).
    Lines that are not journaled events are set aside in <journal>.rejected and counted."""
    from .services.tracking import replay_journal as replay

    state = get_state()
    journal = state.journal
    try:
        _, rejected = journal.claim_with_rejects()
        total = journal.count()
    except Exception as exc:  # noqa: BLE001 - a file or Redis error, reported
        _fail(f"could not read the journal: {exc}")
    aside = (f"; set aside {rejected} bad {'line' if rejected == 1 else 'lines'} in {journal.rejected_path}"
             if rejected else "")
    if total == 0:
        click.echo(f"mailtrack: journal is empty{aside}")
        return
    try:
        with click.progressbar(length=total, label="Replaying journal", file=sys.stderr) as bar:
            inserted, skipped = replay(state, progress=bar.update)
    except Exception as exc:  # noqa: BLE001
        _fail_on(exc, "replay stopped, nothing lost (run it again)")
    click.echo(f"mailtrack: replayed {inserted} events, skipped {skipped} (already stored or message erased){aside}")


@cli.command("erase-contact")
@click.argument("contact_id")
@click.option("--tenant", default=None, help="Tenant of the contact.")
@click.confirmation_option(prompt="Delete every tracked row of this contact?")
def erase_contact(contact_id: str, tenant: str | None) -> None:
    """Delete every tracked row of a contact (right to erasure)."""
    from .services import privacy

    state = get_state()
    try:
        deleted = privacy.erase_contact(state, contact_id, tenant_id=tenant)
    except Exception as exc:  # noqa: BLE001
        _fail_on(exc, "erase-contact stopped")
    click.echo(f"mailtrack: erased {deleted} rows of contact {contact_id}")


#: sysexits.h EX_TEMPFAIL: a mail server's pipe transport keeps the mail and tries again later.
EX_TEMPFAIL = 75


@cli.command("ingest-mail")
@click.argument("file", type=click.File("rb"), default="-", required=False)
@click.option("--tenant", default=None, help="Match only this tenant's messages (default: any tenant's).")
@click.option("--recipient", default=None, help="The envelope recipient, as a pipe transport passes it "
              "(Postfix ${recipient}), for the VERP tag.")
def ingest_mail(file: Any, tenant: str | None, recipient: str | None) -> None:
    """Record one received mail (a bounce, complaint, auto-reply or reply) from FILE, or from
    standard input (a mail server's pipe transport). Mail that is ignored or matches nothing
    exits 0 too (a pipe must not bounce a bounce); exit 75 (EX_TEMPFAIL) when the database
    cannot store it, so the mail server retries."""
    from .errors import DatabaseUnavailable
    from .services import inbound

    state = get_state()
    try:
        raw = file.read(state.settings.inbound_max_bytes + 1)
    except OSError as exc:
        _fail(f"could not read the mail: {exc}")
    try:
        result = inbound.ingest(state, raw, recipient=recipient, **({} if tenant is None else {"tenant_id": tenant}))
    except DatabaseUnavailable:
        from .migrate import schema_problem

        try:
            advice = schema_problem(state.engine)
        except Exception:  # noqa: BLE001 - the database itself is unreachable
            advice = None
        click.echo(f"Error: the database cannot store the mail now; it stays with the mail server for a "
                   f"retry{': ' + advice if advice else ''}", err=True)
        sys.exit(EX_TEMPFAIL)
    except Exception as exc:  # noqa: BLE001
        _fail_on(exc, "ingest-mail stopped")
    click.echo(f"mailtrack: {result}")


@cli.command("send-due")
def send_due() -> None:
    """Send the scheduled messages whose time has come (each exactly once, even with
    several send-due processes running). First, messages left SENDING for longer than
    MAILTRACK_SENDING_TIMEOUT_SECONDS by a process that died are marked FAILED (never re-sent)."""
    from .services import sending

    state = get_state()
    try:
        interrupted = sending.fail_interrupted(state)
        if interrupted:
            noun = "message" if interrupted == 1 else "messages"
            click.echo(f"mailtrack: marked {interrupted} interrupted {noun} FAILED (left SENDING by a process "
                       "that stopped; not retried, to avoid a duplicate: resend to send a copy)")
        total = sending.count_due(state)
        if total == 0:
            click.echo("mailtrack: no scheduled messages are due")
            return
        with click.progressbar(length=total, label="Sending due messages", file=sys.stderr) as bar:
            handled = sending.send_due(state, progress=bar.update, reclaim=False)
    except Exception as exc:  # noqa: BLE001
        _fail_on(exc, "send-due stopped")
    click.echo(f"mailtrack: handled {handled} due messages (others were claimed by another process)"
               if handled < total else f"mailtrack: handled {handled} due messages")


@cli.command("deliver-webhooks")
def deliver_webhooks() -> None:
    """POST recorded events to the subscribed webhook endpoints (Standard Webhooks signatures):
    new events become deliveries, then every delivery that is due is sent or retried later.
    Run it from cron (every minute), or schedule the Celery task crm_mailtrack.deliver_webhooks."""
    from .services import webhooks

    try:
        totals = webhooks.run(get_state())
    except Exception as exc:  # noqa: BLE001
        _fail_on(exc, "deliver-webhooks stopped (run it again: nothing is sent twice at once)")
    click.echo(f"mailtrack: {totals['collected']} new deliveries; delivered {totals['delivered']}, "
               f"failed {totals['failed']} (retried later)")


def _cli_moment(value: str | None, *, end_of_day: bool = False) -> Any:
    """``YYYY-MM-DD`` (midnight UTC; with ``end_of_day`` the next midnight) or ISO 8601."""
    import datetime as dt

    if value is None:
        return None
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
            return start + dt.timedelta(days=1) if end_of_day else start
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD) or ISO 8601 date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


@cli.command("stats")
@click.option("--from", "date_from", default=None, help="Messages sent on or after (YYYY-MM-DD or ISO 8601).")
@click.option("--to", "date_to", default=None, help="Messages sent up to (a plain date includes that day).")
@click.option("--include-bots", is_flag=True, help="Count machine opens and clicks too.")
@click.option("--tenant", default=None, help="Tenant to report on (default: no tenant).")
@click.option("--json", "as_json", is_flag=True, help="Print the analytics object as JSON.")
@click.option("--rebuild", is_flag=True,
              help="First rebuild the analytics cells from the stored rows (after a bulk import or "
                   "rows changed outside the extension); they are otherwise kept up to date by themselves.")
def stats(date_from: str | None, date_to: str | None, include_bots: bool, tenant: str | None, as_json: bool,
          rebuild: bool) -> None:
    """Print communications analytics (definitions in docs/metrics.md)."""
    import json
    import time

    from .services.analytics import analytics
    from .services.common import tenant_key

    state = get_state()
    start, end = _cli_moment(date_from), _cli_moment(date_to, end_of_day=True)
    if rebuild:
        from .services import stats as stats_service

        t0 = time.perf_counter()
        try:
            stats_service.rebuild_now(state)
        except Exception as exc:  # noqa: BLE001
            _fail(str(exc))
        click.echo(f"Analytics cells rebuilt in {time.perf_counter() - t0:.1f}s", err=True)
    try:
        data = analytics(state, tenant_key(state, tenant), date_from=start, date_to=end, include_bots=include_bots)
    except Exception as exc:  # noqa: BLE001
        _fail_on(exc, "stats failed")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    who = "all events" if include_bots else "human events"
    click.echo(f"Communications {date_from or '...'} to {date_to or '...'} ({who})")
    click.echo(f"  sent {data['totalSent']}  opened {data['totalOpened']} ({data['openRate']:.1%})  "
               f"clicked {data['totalClicked']} ({data['clickRate']:.1%})  failure rate {data['failureRate']:.1%}")
    for title, key, rows in (("By template", "templateId", data["byTemplate"]), ("By type", "type", data["byType"])):
        if rows:
            click.echo(title)
        for row in rows:
            click.echo(f"  {row[key] or '(none)'}: sent {row['totalSent']}  opened {row['totalOpened']} "
                       f"({row['openRate']:.1%})  clicked {row['totalClicked']} ({row['clickRate']:.1%})")
    if data["sendVolumeByDay"]:
        click.echo("Sent per day (UTC)")
    for row in data["sendVolumeByDay"]:
        click.echo(f"  {row['date']}  {row['count']}")
    if state.settings.webhooks.providers:
        from .services.esp.store import unmatched_count

        click.echo(f"ESP webhook events matching no message: {unmatched_count(state)} (all tenants; see docs/esp.md)")


@cli.command("purge")
@click.option("--older-than", "days", type=click.IntRange(min=0), required=True, metavar="DAYS",
              help="Purge raw events that occurred, and webhook logs finished, more than DAYS days ago.")
@click.confirmation_option(prompt="Delete old raw events (their totals are kept as daily rollups) and webhook logs?")
def purge(days: int) -> None:
    """Delete old raw events, keeping their totals as daily rollups (docs/metrics-bots.md),
    then finished outbound webhook deliveries and unmatched ESP webhook receipts as old
    (docs/webhooks-outbound.md, docs/esp.md)."""
    from .services import privacy, retention

    state = get_state()
    try:
        slices = privacy.purge_days(state, days)
        deleted = None
        if slices:
            with click.progressbar(length=len(slices), label="Purging (days, whole months)", file=sys.stderr) as bar:
                deleted = privacy.purge(state, days, progress=bar.update)
        logs = retention.purge_logs(state, days)
    except Exception as exc:  # noqa: BLE001
        _fail_on(exc, "purge stopped (what was done is consistent; run it again)")
    if deleted is None:
        click.echo(f"mailtrack: no events older than {days} days")
    else:
        click.echo(f"mailtrack: purged {deleted} events older than {days} days (totals kept as rollups)")
    click.echo(f"mailtrack: purged {logs['webhook_deliveries']} finished outbound webhook deliveries and "
               f"{logs['unmatched_receipts']} unmatched ESP webhook receipts older than {days} days, "
               f"{logs['expired_nonces']} expired ESP replay nonces")


@cli.command("partitions")
@click.option("--ahead", type=click.IntRange(min=0, max=120), default=3, show_default=True, metavar="MONTHS",
              help="Make the partitions of this month and of MONTHS months after it.")
def partitions(ahead: int) -> None:
    """Make the event log's monthly partitions ahead (PostgreSQL; run it monthly from cron).
    Rows that landed in the default partition for a month made now move into it."""
    from .db import dialect_name
    from .services import partitions as service

    state = get_state()
    if dialect_name(state.engine) != "postgresql":
        click.echo("mailtrack: the event log is partitioned on PostgreSQL only; nothing to do")
        return
    try:
        made = service.ensure(state, ahead=ahead)
        with state.engine.connect() as conn:
            existing = service.partitions(conn)
    except RuntimeError as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001
        _fail_on(exc, "partitions stopped")
    months = [p for p in existing if not p.is_default]
    span = f" ({months[0].name} .. {months[-1].name})" if months else ""
    click.echo(f"mailtrack: made {len(made)} partitions{': ' + ', '.join(made) if made else ''}; "
               f"{len(months)} monthly partitions{span}")


@cli.command("infer-forwards")
@click.option("--days", type=click.IntRange(min=1), default=None,
              help="Only look at events of the last DAYS days (default: all).")
def infer_forwards(days: int | None) -> None:
    """Record inferred forwards: a message's human opens/clicks from another network and
    another mail client (rule in docs/metrics-bots.md). Safe to run repeatedly."""
    import datetime as dt

    from .services import forwards

    state = get_state()
    since = None if days is None else dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    try:
        ids = forwards.candidates(state, since)
        with click.progressbar(length=len(ids), label="Checking messages", file=sys.stderr) as bar:
            found = forwards.infer_forwards(state, message_ids=ids, progress=bar.update)
    except Exception as exc:  # noqa: BLE001
        _fail_on(exc, "infer-forwards stopped")
    click.echo(f"mailtrack: {found} inferred forwards recorded ({len(ids)} messages checked)")


@cli.command("fetch-inbox")
@click.option("--delete", is_flag=True,
              help="Delete stored mail from the server instead of marking it \\Seen and $MailtrackStored "
                   "(POP3, which has no flags, always deletes stored mail).")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=100, show_default=True,
              help="Messages listed per server round trip (POP3: deletions are committed after each batch).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Handle at most this many messages; the rest wait for the next run.")
@click.option("--max-size", "max_bytes", type=click.IntRange(min=1), default=None, metavar="BYTES",
              help="Larger messages are not downloaded: counted malformed and skipped "
                   "(default: MAILTRACK_INBOUND_MAX_BYTES, the most ingest-mail takes).")
@click.option("--tenant", default=None, help="Match only this tenant's messages (default: any tenant's).")
def fetch_inbox(delete: bool, batch_size: int, limit: int | None, max_bytes: int | None,
                tenant: str | None) -> None:
    """Read MAILTRACK_INBOX_URL: ingest each new message (bounces, complaints, replies), then
    mark or delete what was stored. Unmatched and malformed mail is marked so that no later run
    reads it again, and stays unread; mail that failed is left for the next run. Safe to run
    from cron on several hosts at once. Exit status 1 when a message failed or the run stopped."""
    from .errors import ConfigurationError
    from .services import inbound, mailparse
    from .services.inbox import InboxError, InboxFetcher

    try:
        mailparse.require_libraries()  # before any mail is read: not one "failed" per message
    except ConfigurationError as exc:
        _fail(str(exc))
    state = get_state()
    inbox = state.settings.inbox
    if inbox is None:
        _fail("MAILTRACK_INBOX_URL is not set: it names the mailbox to read, such as "
              "imaps://user:password@imap.example.com:993/INBOX")
    options = {} if tenant is None else {"tenant_id": tenant}

    def ingest(raw: bytes) -> inbound.IngestResult:
        # the service's result, not ingest_mail's list: its status tells a duplicate (stored
        # before, e.g. by another host: marked or deleted) from mail that matches nothing
        return inbound.ingest(state, raw, **options)

    if inbox.protocol == "pop3":
        delete = True
    with InboxFetcher(inbox, ingest, delete=delete, batch_size=batch_size, limit=limit,
                      max_bytes=max_bytes or state.settings.inbound_max_bytes) as fetcher:
        try:
            total = fetcher.count()
        except InboxError as exc:
            _fail(str(exc))
        if total:
            with click.progressbar(length=total, label=f"Fetching {inbox}", file=sys.stderr) as bar:
                report = fetcher.run(progress=lambda outcome: bar.update(1))
        else:
            report = fetcher.run()
    for key, reason in report.problems:
        click.echo(f"mailtrack: message {key}: {reason}", err=True)
    click.echo(f"mailtrack: {inbox}: {report.summary()}")
    if report.stopped:
        _fail(f"fetch-inbox stopped: {report.stopped}")
    if report.failed:
        one = report.failed == 1
        _fail(f"{report.failed} {'message' if one else 'messages'} failed and {'stays' if one else 'stay'} on the "
              "server for the next run")
