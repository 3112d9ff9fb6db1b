"""The `member-support` command: serve, migrate, stats, archive, purge, redact, notify, staff."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from app.settings import ConfigError, Settings, load_settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
BATCH_SIZE = 1000
REDACT_BATCH_SIZE = 500


MAX_WORKERS = 256


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2) instead of the usage block."""

    def __init__(self, *arguments: Any, **options: Any) -> None:
        # No abbreviations: `--password SECRET` must not pass for `--password-stdin`.
        options.setdefault("allow_abbrev", False)
        super().__init__(*arguments, **options)

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments"):
            # Never echoed: a password typed on the command line would land in logs.
            message = "unrecognized arguments (not shown; a password is never an argument)"
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _port(text: str) -> int:
    value = _positive(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port")
    return value


def _workers(text: str) -> int:
    value = _positive(text)
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 1 and {MAX_WORKERS}")
    return value


def _at_least_one(text: str) -> int:
    value = _positive(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 timestamp") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    """The command line, with a --help for every command."""
    parser = _Parser(
        prog="member-support", description="Member Support Service: API server and ops tools."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    serve = commands.add_parser(
        "serve",
        help="run the API (embedded PostgreSQL when DATABASE_URL is unset)",
        description="Run the API with uvicorn. Without DATABASE_URL an embedded PostgreSQL is "
        "started under .member-support/ and migrated; with it, nothing is migrated "
        "(run `member-support migrate` or `alembic upgrade head`).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes (default 1); more than one puts /metrics in multiprocess mode",
    )
    serve.add_argument(
        "--notify",
        action="store_true",
        help="also run the escalation webhook delivery worker in each API process",
    )

    commands.add_parser(
        "migrate",
        help="upgrade the schema to Alembic head",
        description="Upgrade the database (DATABASE_MIGRATION_URL, else DATABASE_URL) to head.",
    )
    stats = commands.add_parser(
        "stats", help="print the key metrics", description="Print the /stats numbers as a table."
    )
    stats.add_argument("--since", type=_timestamp, help="count records created at or after this")

    archive = commands.add_parser(
        "archive",
        help="archive conversations with no recent activity",
        description="Set conversations with no activity for N days to `archived`, in batches.",
    )
    archive.add_argument(
        "--inactive-days",
        type=_positive,
        required=True,
        metavar="N",
        help="days since the last message or change; conversations with an unresolved "
        "escalation are left alone",
    )

    purge = commands.add_parser(
        "purge",
        help="delete archived conversations",
        description="Delete archived conversations idle for N days, with their messages and "
        "escalations, in batches.",
    )
    purge.add_argument(
        "--archived-days",
        type=_positive,
        required=True,
        metavar="N",
        help="days since the conversation was archived (or last changed)",
    )
    purge.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    for command in (archive, purge):
        command.add_argument(
            "--batch-size",
            type=_at_least_one,
            default=BATCH_SIZE,
            metavar="N",
            help=f"conversations per transaction (default {BATCH_SIZE}); each batch "
            "commits on its own, so no lock is held for long",
        )

    redact = commands.add_parser(
        "redact",
        help="redact card numbers and SSNs in rows stored before redaction",
        description="Rewrite stored message content and escalation text as the service "
        "writes it now (REDACT): card numbers and SSNs replaced. Keyset batches by id, "
        "each committed on its own, so it can be stopped at any time and run again; "
        "rows without a match are never touched.",
    )
    redact.add_argument("--dry-run", action="store_true", help="count, change nothing")
    redact.add_argument(
        "--batch",
        "--batch-size",
        dest="batch_size",
        type=_at_least_one,
        default=REDACT_BATCH_SIZE,
        metavar="N",
        help=f"rows per transaction (default {REDACT_BATCH_SIZE})",
    )

    notify = commands.add_parser(
        "notify",
        help="deliver escalation notifications to NOTIFY_WEBHOOK_URL (long-running)",
        description="Deliver queued escalation events to NOTIFY_WEBHOOK_URL, signed per "
        "Standard Webhooks, until SIGTERM or Ctrl-C. Several may run at once.",
    )
    notify.add_argument(
        "--metrics-port", type=_port, help="serve Prometheus metrics on 127.0.0.1:PORT"
    )

    staff = commands.add_parser(
        "staff",
        help="manage staff accounts (add, list, disable, set-password)",
        description="Staff accounts for the escalation workflow. A password is asked for at "
        "the terminal (twice) or read from the first line of standard input with "
        "--password-stdin; it is never accepted as an argument.",
    )
    staff_commands = staff.add_subparsers(dest="staff_command", required=True, metavar="action")
    staff_add = staff_commands.add_parser(
        "add", help="create an account", description="Create a staff account (role agent)."
    )
    staff_add.add_argument("email", type=_staff_email, help="the staff member's email")
    staff_add.add_argument(
        "--name", type=_display_name, required=True, help="display name members see"
    )
    staff_add.add_argument("--admin", action="store_true", help="role admin instead of agent")
    staff_password = staff_commands.add_parser(
        "set-password",
        help="change an account's password",
        description="Replace a staff account's password.",
    )
    staff_password.add_argument("email", type=_staff_email, help="the account's email")
    for command in (staff_add, staff_password):
        command.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from the first line of standard input",
        )
    staff_commands.add_parser(
        "list", help="list accounts", description="List staff accounts, active first."
    )
    staff_disable = staff_commands.add_parser(
        "disable",
        help="disable an account",
        description="Disable a staff account (kept for the audit trail; it can no longer "
        "log in or be assigned).",
    )
    staff_disable.add_argument("email", type=_staff_email, help="the account's email")
    return parser


def _staff_email(text: str) -> str:
    from app.staff import InvalidStaffInput, normalise_email

    try:
        return normalise_email(text)
    except InvalidStaffInput as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _display_name(text: str) -> str:
    name = text.strip()
    if not 1 <= len(name) <= 255:
        raise argparse.ArgumentTypeError("the name must be 1 to 255 characters")
    return name


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `member-support` console script."""
    arguments = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as error:
        _fail(str(error))
    handlers: dict[str, Callable[[Settings, argparse.Namespace], None]] = {
        "serve": _serve,
        "migrate": _migrate,
        "stats": _stats_command,
        "archive": lambda s, a: _run_database_command(_archive, s, a),
        "purge": lambda s, a: _run_database_command(_purge, s, a),
        "redact": lambda s, a: _run_database_command(
            lambda maker, args: _redact(maker, args, s.redact), s, a
        ),
        "notify": _notify,
        "staff": _staff,
    }
    handlers[arguments.command](settings, arguments)


def _serve(settings: Settings, arguments: argparse.Namespace) -> None:
    import uvicorn

    from app import embedded
    from app.log import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    server = None
    if settings.database_url is None:
        server, url = embedded.start()
        os.environ["DATABASE_URL"] = url
        _migrate(load_settings(), arguments)
    os.environ["WORKERS"] = str(arguments.workers)
    metrics_directory = _prepare_metrics_directory(arguments.workers)
    if arguments.notify:
        os.environ["NOTIFY_WORKER"] = "true"
    host = f"[{arguments.host}]" if ":" in arguments.host else arguments.host
    print(f"Member Support Service on http://{host}:{arguments.port} (API docs at /docs)")
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler that was
    # there before; exiting cleanly from it lets the embedded database stop too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(
            "app.asgi:create",
            factory=True,
            host=arguments.host,
            port=arguments.port,
            workers=arguments.workers,
            **uvicorn_options(settings),
        )
    finally:
        if metrics_directory is not None:
            shutil.rmtree(metrics_directory, ignore_errors=True)
        if server is not None:
            server.cleanup()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How `serve` runs uvicorn: logging, shutdown and what one client may hold."""
    from functools import partial

    from app.http_server import BoundedHttpToolsProtocol, HttpLimits

    limits = HttpLimits(
        max_header_bytes=settings.http_max_header_bytes,
        header_timeout_s=settings.http_header_timeout_s,
    )
    return {
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 30,
        "server_header": False,
        # httptools with the request-head size and time bounds (app/http_server.py); a
        # partial pickles, so each worker process gets the same limits.
        "http": partial(BoundedHttpToolsProtocol, limits=limits),
        # The same head size for the h11 parser, should anyone select it instead.
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
        "timeout_keep_alive": settings.http_keep_alive_s,
        # Connections plus requests in progress per worker before new requests get 503.
        "limit_concurrency": settings.http_limit_concurrency,
    }


def _prepare_metrics_directory(workers: int) -> Path | None:
    """Give Prometheus a clean multiprocess directory; returns one we made (to remove).

    Workers each write their metrics to files there and /metrics merges them. Files
    left by an earlier run would be merged too, so an existing directory is emptied.
    """
    # Not imported from app.metrics: importing prometheus_client here, before the
    # directory exists, would already open files in it.
    variable = "PROMETHEUS_MULTIPROC_DIR"
    configured = os.environ.get(variable)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
        return None
    if workers == 1:
        return None
    created = Path(tempfile.mkdtemp(prefix="member-support-metrics-"))
    os.environ[variable] = str(created)
    return created


def _notify(settings: Settings, arguments: argparse.Namespace) -> None:
    from app.log import configure_logging
    from app.notify import run_worker

    if settings.database_url is None:
        _fail("DATABASE_URL is not set")
    configure_logging(settings.log_level, settings.log_format)
    if arguments.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(arguments.metrics_port, addr="127.0.0.1")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stop.set)
        await run_worker(settings, stop)

    asyncio.run(run())


def _migrate(settings: Settings, arguments: argparse.Namespace) -> None:
    from app.migrations import head_revision, revisions_between, upgrade_to_head

    if settings.database_url is None and settings.database_migration_url is None:
        _fail("DATABASE_URL is not set")
    try:
        before = asyncio.run(_current_revision(settings))
        upgrade_to_head()
    except SystemExit:
        raise
    except Exception as error:
        _fail_for_database(error, "migration failed")
    head = head_revision()
    applied = revisions_between(before, head)
    print(f"applied {applied} revision(s): schema at {head} (head), was {before or 'empty'}")


async def _current_revision(settings: Settings) -> str | None:
    """The revision in alembic_version, None for a database never migrated."""
    from sqlalchemy import text

    from app.db import create_engine

    engine = create_engine(settings, settings.migration_database, pooled=False)
    try:
        async with engine.connect() as connection:
            exists = await connection.scalar(text("SELECT to_regclass('alembic_version')"))
            if exists is None:
                return None
            version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
            return str(version) if version is not None else None
    finally:
        await engine.dispose()


def _fail_for_database(error: BaseException, what: str) -> NoReturn:
    """One line for a database failure; never the URL, the query or its parameters."""
    from app.errors import is_unavailable

    if is_unavailable(error):
        _fail("database unreachable")
    cause = getattr(error, "orig", None) or error
    cause = getattr(cause, "__cause__", None) or cause
    name = type(cause).__name__
    if name in {"InvalidPasswordError", "InvalidAuthorizationSpecificationError"}:
        _fail(f"the database refused the login ({name})")
    if name == "InvalidCatalogNameError":
        _fail("the database named in the URL does not exist")
    _fail(f"{what}: {name}")


def _run_database_command(
    command: Callable[[Any, argparse.Namespace], Awaitable[None]],
    settings: Settings,
    arguments: argparse.Namespace,
) -> None:
    from app.db import create_engine, create_sessionmaker

    if settings.database_url is None:
        _fail("DATABASE_URL is not set")

    async def run() -> None:
        engine = create_engine(settings, pooled=False)
        try:
            await command(create_sessionmaker(engine, settings), arguments)
        finally:
            await engine.dispose()

    try:
        asyncio.run(run())
    except Exception as error:
        _fail_for_database(error, f"{arguments.command} failed")


def _stats_command(settings: Settings, arguments: argparse.Namespace) -> None:
    arguments.sla_minutes = settings.sla_first_response_minutes
    _run_database_command(_stats, settings, arguments)


async def _stats(sessionmaker: Any, arguments: argparse.Namespace) -> None:
    from app.repositories import notifications, stats

    async with sessionmaker() as session, session.begin():
        figures = await stats.collect(
            session, since=arguments.since, sla_minutes=arguments.sla_minutes
        )
        collected = figures.as_dict()
        collected["notifications"] = await notifications.summary(session)
    since = arguments.since.isoformat() if arguments.since else "all time"
    print(f"since: {since}")
    for line in _table(collected):
        print(line)


def _table(numbers: dict[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for key, value in numbers.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            lines.extend(_table(value, f"{name}."))
        elif isinstance(value, float):
            lines.append(f"{name:<40} {value:.4f}")
        else:
            lines.append(f"{name:<40} {'-' if value is None else value}")
    return lines


async def _archive(sessionmaker: Any, arguments: argparse.Namespace) -> None:
    from app.repositories import conversations

    total = 0
    while True:
        # One short transaction per batch: no long lock on a big table.
        async with sessionmaker() as session, session.begin():
            done = await conversations.archive_inactive(
                session, inactive_days=arguments.inactive_days, batch_size=arguments.batch_size
            )
        total += done
        if done < arguments.batch_size:
            break
    print(f"archived {total} conversation(s)")


async def _purge(sessionmaker: Any, arguments: argparse.Namespace) -> None:
    from app.repositories import conversations

    total = 0
    while True:
        async with sessionmaker() as session, session.begin():
            done = await conversations.purge_archived(
                session,
                archived_days=arguments.archived_days,
                batch_size=arguments.batch_size,
                dry_run=arguments.dry_run,
            )
        total += done
        if arguments.dry_run or done < arguments.batch_size:
            break
    verb = "would delete" if arguments.dry_run else "deleted"
    print(f"{verb} {total} archived conversation(s)")


async def _redact(sessionmaker: Any, arguments: argparse.Namespace, kinds: frozenset[str]) -> None:
    from app.redact import KINDS
    from app.repositories import redaction

    if not kinds:
        print("REDACT=none: nothing to redact")
        return
    verb = "would change" if arguments.dry_run else "changed"
    for table in redaction.TEXT_COLUMNS:
        scanned = changed = 0
        counts: dict[str, int] = {}
        after = None
        while True:
            # One short transaction per batch: a killed run keeps what it committed, and
            # running again finds nothing left in those rows.
            async with sessionmaker() as session, session.begin():
                batch = await redaction.redact_batch(
                    session,
                    table=table,
                    after=after,
                    batch_size=arguments.batch_size,
                    kinds=kinds,
                    dry_run=arguments.dry_run,
                )
            scanned += batch.scanned
            changed += batch.changed
            for kind, count in batch.counts.items():
                counts[kind] = counts.get(kind, 0) + count
            if batch.last_id is None or batch.scanned < arguments.batch_size:
                break
            after = batch.last_id
        found = ", ".join(f"{kind} {counts.get(kind, 0)}" for kind in KINDS if kind in kinds)
        print(f"{table}: {scanned} row(s) scanned, {verb} {changed}; {found}")


def _read_password(from_stdin: bool) -> str:
    """The new password, from stdin's first line or asked twice at the terminal."""
    import getpass

    from app.staff import InvalidStaffInput, check_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not sys.stdin.isatty():
        _fail("no terminal to ask for the password; pipe it in with --password-stdin", EXIT_USAGE)
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            _fail("the two passwords differ", EXIT_USAGE)
    try:
        return check_password(password)
    except InvalidStaffInput as error:
        _fail(str(error), EXIT_USAGE)


def _staff(settings: Settings, arguments: argparse.Namespace) -> None:
    if arguments.staff_command in {"add", "set-password"}:
        # Asked before any connection is made, so a typo costs no database round trip.
        arguments.password = _read_password(arguments.password_stdin)
    server = None
    if settings.database_url is None:
        # The embedded database `serve` uses (started, or joined if `serve` runs), so that
        # `staff add` then `serve` is all a first try of the staff console takes.
        from app import embedded

        server, url = embedded.start()
        os.environ["DATABASE_URL"] = url
        settings = load_settings()
        _migrate(settings, arguments)
    try:
        _run_database_command(_staff_action, settings, arguments)
    finally:
        if server is not None:
            server.cleanup()


async def _staff_action(sessionmaker: Any, arguments: argparse.Namespace) -> None:
    from app.errors import DomainError
    from app.repositories import staff
    from app.staff import hash_password

    action = arguments.staff_command
    try:
        async with sessionmaker() as session, session.begin():
            if action == "add":
                account = await staff.add(
                    session,
                    email=arguments.email,
                    display_name=arguments.name,
                    password_hash=hash_password(arguments.password),
                    role="admin" if arguments.admin else "agent",
                )
                print(f"added {account.role} {account.email} ({account.id})")
            elif action == "set-password":
                await staff.set_password_hash(
                    session, email=arguments.email, password_hash=hash_password(arguments.password)
                )
                print(f"password changed for {arguments.email}")
            elif action == "disable":
                changed = await staff.disable(session, email=arguments.email)
                print(f"{'disabled' if changed else 'already disabled:'} {arguments.email}")
            else:
                accounts = await staff.list_all(session)
                print(f"{'email':<40} {'name':<30} {'role':<6} active  id")
                for account in accounts:
                    print(
                        f"{account.email:<40} {account.display_name:<30} {account.role:<6} "
                        f"{'yes' if account.active else 'no ':<7} {account.id}"
                    )
    except DomainError as error:
        _fail(error.detail)


if __name__ == "__main__":
    main()
