"""Test database choice, the migrated schema, and per-test isolation.

Database, in order: TEST_DATABASE_URL; a testcontainers PostgreSQL when a Docker
engine answers; an embedded PostgreSQL (pgserver). On that server each run makes a
fresh database, builds it with `alembic upgrade head`, and drops it at the end.

TEST_POOLER_URL (e.g. a PgBouncer in transaction mode in front of that server): the
fresh database is still created and migrated directly, but the app and the test
engine reach it through the pooler, as the service runs behind Supavisor (6543).
Set TEST_DB_POOLER=transaction with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app.db import create_engine, get_read_session, get_session
from app.main import create_app
from app.migrations import upgrade_to_head
from app.settings import Settings

SERVICE_KEY = "test-service-key-0123456789"
# The key the tests sign member identities with (the credit union's app holds it).
IDENTITY_SECRET = "test-identity-secret-0123456789abcdef"
TABLES = "users, conversations, messages, escalations, staff, console_login_failures"


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _server_url() -> Iterator[str]:
    """A URL of a PostgreSQL server we may create databases on."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        directory = Path(tempfile.mkdtemp(prefix="member-support-test-"))
        server = pgserver.get_server(directory / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def asyncpg_dsn(url: str) -> str:
    """A URL asyncpg (and libpq's pg_dump) accepts."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def execute(url: str, *statements: str) -> None:
    """Run SQL statements on their own committed connection."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """Create an empty database on the server, drop it afterwards."""
    name = f"member_support_test_{secrets.token_hex(4)}"
    asyncio.run(execute(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(server_url, name)
    finally:
        asyncio.run(execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """The PostgreSQL server the tests use."""
    with _server_url() as url:
        yield url


@pytest.fixture(scope="session")
def migration_url(server_url: str) -> Iterator[str]:
    """A fresh database migrated to head by Alembic over a direct connection (sync:
    env.py runs its own loop)."""
    with fresh_database(server_url) as url:
        upgrade_to_head(url)
        yield url


def through_pooler(direct_url: str) -> str:
    """The URL the app uses for a database: through TEST_POOLER_URL when it is set."""
    pooler = os.environ.get("TEST_POOLER_URL")
    if not pooler:
        return direct_url
    return with_database(pooler, make_url(direct_url).database or "postgres")


@pytest.fixture(scope="session")
def database_url(migration_url: str) -> str:
    """The migrated test database as the app reaches it (through the pooler, if any)."""
    return through_pooler(migration_url)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for tests: the test database, one service key, nothing from the machine."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "api_keys": SERVICE_KEY,
        "identity_secret": IDENTITY_SECRET,
        "db_pooler": os.environ.get("TEST_DB_POOLER", "auto"),
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)


# The shared app's member limits are raised: many tests post a conversation's worth of
# messages or escalations at once. tests/test_abuse_limits.py checks the shipped defaults
# on apps of its own.
ROOMY_LIMITS: dict[str, Any] = {"member_messages_per_minute": 10_000, "escalations_open_max": 100}


@pytest.fixture(scope="session")
def settings(database_url: str, migration_url: str) -> Settings:
    return make_settings(database_url, database_migration_url=migration_url, **ROOMY_LIMITS)


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings)
    yield engine
    await engine.dispose()


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection inside an outer transaction that is rolled back after the test."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            yield connection
        finally:
            if transaction.is_active:
                await transaction.rollback()


def _joined_session(connection: AsyncConnection) -> AsyncSession:
    return AsyncSession(
        bind=connection,
        join_transaction_mode="create_savepoint",
        expire_on_commit=False,
        autoflush=False,
    )


@pytest.fixture
async def db(connection: AsyncConnection) -> AsyncIterator[AsyncSession]:
    """A session joined to the test's outer transaction (its commits are savepoints)."""
    session = _joined_session(connection)
    try:
        yield session
    finally:
        await session.close()


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application):
        yield application


def _client(app: FastAPI, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://test",
        headers=headers,
    )


@contextlib.asynccontextmanager
async def started_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An app of its own on these settings, its lifespan run, and a client on it."""
    application = create_app(settings)
    async with LifespanManager(application), _client(application) as http:
        yield http


@pytest.fixture
def hot_paths(request: pytest.FixtureRequest) -> bool:
    """Whether the `client` fixture's app serves the hot member requests in the hot-path
    layer (as production does in direct mode) or hands everything to FastAPI. Member
    modules mark themselves `both_paths` and run once each way."""
    return bool(getattr(request, "param", True))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_paths") and "client" in metafunc.fixturenames:
        if os.environ.get("TEST_DB_POOLER") == "transaction":
            # Behind a transaction pooler the layer stands aside: one path, run once.
            metafunc.parametrize("hot_paths", [False], ids=["fastapi"], indirect=True)
        else:
            metafunc.parametrize("hot_paths", [True, False], ids=["hot", "fastapi"], indirect=True)


async def joined_driver(connection: AsyncConnection) -> Callable[[], Any]:
    """A connection source for the hot-path layer: the test's own connection, each
    request in a savepoint (as the joined sessions of the FastAPI path)."""
    await connection.exec_driver_sql("SELECT 1")  # the outer transaction has begun
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None

    @contextlib.asynccontextmanager
    async def source() -> AsyncIterator[Any]:
        async with driver.transaction():
            yield driver

    return source


@pytest.fixture
async def client(
    app: FastAPI, connection: AsyncConnection, hot_paths: bool
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the real app whose requests run inside the test's transaction,
    the hot-path layer included (on the same connection) unless `hot_paths` is False."""

    async def joined_session() -> AsyncIterator[AsyncSession]:
        session = _joined_session(connection)
        try:
            async with session.begin():
                yield session
        finally:
            await session.close()

    app.dependency_overrides[get_session] = joined_session
    app.dependency_overrides[get_read_session] = joined_session
    production_source = app.state.hot_connection
    if production_source is not None:  # direct mode, HOT_PATHS on: as production serves
        app.state.hot_connection = await joined_driver(connection) if hot_paths else None
    try:
        async with _client(app) as http:
            yield http
    finally:
        app.dependency_overrides.pop(get_session, None)
        app.dependency_overrides.pop(get_read_session, None)
        app.state.hot_connection = production_source


@pytest.fixture
def service_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {SERVICE_KEY}"}


async def truncate(engine: AsyncEngine) -> None:
    """Empty every table (for tests that commit for real)."""
    async with engine.begin() as connection:
        await connection.execute(text(f"TRUNCATE {TABLES} CASCADE"))


@pytest.fixture
async def committed_engine(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """The real engine for tests that need many connections; tables are emptied after."""
    await truncate(engine)
    try:
        yield engine
    finally:
        await truncate(engine)


@pytest.fixture
async def committed_client(
    app: FastAPI, committed_engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose requests commit for real (for concurrency tests)."""
    async with _client(app) as http:
        yield http


@pytest.fixture(scope="session")
def own_postgres() -> Iterator[Any]:
    """A PostgreSQL of the tests' own (never the shared one), migrated to head, which
    fault tests may stop and start; skipped where initdb/pg_ctl are missing."""
    import own_postgres as own

    if not own.available():
        pytest.skip("initdb/pg_ctl not installed: no PostgreSQL of our own to stop")
    server = own.OwnPostgres()
    try:
        server.init()
        server.start()
        upgrade_to_head(server.url)
        yield server
    finally:
        server.destroy()
