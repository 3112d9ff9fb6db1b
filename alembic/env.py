"""Alembic environment: async, configured from the service's own settings.

The URL comes from DATABASE_MIGRATION_URL (else DATABASE_URL), never from
alembic.ini, so a percent-encoded password is never run through configparser.
A caller may also hand over an open connection in `config.attributes["connection"]`
or a URL in `config.attributes["database_url"]` (the CLI and the tests do).
"""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from app.db import create_engine
from app.models import Base
from app.settings import ConfigError, load_settings, parse_database_url

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    url = config.attributes.get("database_url")
    settings = load_settings(**({"database_url": url} if url else {}))
    target = parse_database_url(url) if url else settings.migration_database
    engine = create_engine(settings, target, pooled=False)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    try:
        asyncio.run(_run_async())
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None


if context.is_offline_mode():
    raise SystemExit("error: offline (--sql) mode is not supported; run against a database")
run_migrations_online()
