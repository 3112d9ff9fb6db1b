"""The async engine, the session factory and the per-request session dependency."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import TRANSACTION_CONFLICT_SCOPE_KEY
from app.settings import DatabaseTarget, Settings


def _unique_statement_name() -> str:
    # Transaction poolers hand one backend to many clients: names must never collide.
    return f"__asyncpg_{uuid.uuid4().hex}__"


def connect_args(settings: Settings, target: DatabaseTarget, *, pooled: bool) -> dict[str, Any]:
    """asyncpg connect() arguments for a target, pooler-safe when the settings say so."""
    args: dict[str, Any] = {
        "server_settings": {"application_name": "member-support"},
        # asyncpg waits 60 s for a silent server by default; a request must get its 503
        # within the pool timeout instead.
        "timeout": settings.db_pool_timeout_s,
    }
    if target.ssl is not None:
        args["ssl"] = target.ssl
    if pooled and settings.db_statement_timeout_ms:
        # A client-side backstop: a transaction pooler whose database is gone keeps the
        # client waiting for a server connection (PgBouncer: query_wait_timeout, 120 s),
        # where no server-side statement_timeout can fire.
        args["command_timeout"] = (
            settings.db_statement_timeout_ms / 1000 + settings.db_pool_timeout_s
        )
    if settings.transaction_pooler:
        args["statement_cache_size"] = 0
        args["prepared_statement_cache_size"] = 0
        args["prepared_statement_name_func"] = _unique_statement_name
    elif pooled and settings.db_statement_timeout_ms:
        # A start-up parameter costs nothing per request; poolers refuse it, so there
        # the timeout is applied per transaction instead (see create_engine).
        args["server_settings"]["statement_timeout"] = str(settings.db_statement_timeout_ms)
    return args


# A connection used this recently is not pinged before reuse: the ping is three round
# trips (BEGIN; ";"; ROLLBACK) and cost ~30% of a one-statement request. Idle ones still
# are, since poolers and NAT reap idle sockets silently; a connection killed while in
# use (a database restart) fails its request once and SQLAlchemy then invalidates the
# whole pool, so the next checkout reconnects.
PING_AFTER_IDLE_S = 5.0


def _install_idle_ping(engine: AsyncEngine) -> None:
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    @event.listens_for(pool, "checkin")
    def _remember_checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is None or time.monotonic() - checked_in_at < PING_AFTER_IDLE_S:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            # Like pool_pre_ping: drop every connection older than now and retry.
            raise exc.InvalidatePoolError() from error


def create_engine(
    settings: Settings, target: DatabaseTarget | None = None, *, pooled: bool = True
) -> AsyncEngine:
    """Build the service's engine; `pooled=False` gives a NullPool engine for one-off tools."""
    target = target or settings.database
    options: dict[str, Any] = {"connect_args": connect_args(settings, target, pooled=pooled)}
    if pooled:
        options.update(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_s,
            pool_recycle=settings.db_pool_recycle_s,
        )
    else:
        options["poolclass"] = NullPool
    engine = create_async_engine(target.url, **options)
    if pooled and settings.db_pool_pre_ping:
        _install_idle_ping(engine)
    return engine


class _TimedSession(Session):
    """A Session that applies the statement timeout inside every transaction it begins."""

    statement_timeout_ms = 0


@event.listens_for(_TimedSession, "after_begin")
def _set_local_statement_timeout(session: Session, transaction: Any, connection: Any) -> None:
    timeout = getattr(type(session), "statement_timeout_ms", 0)
    connection.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout)}")


def create_sessionmaker(
    engine: AsyncEngine, settings: Settings | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (no implicit I/O).

    Behind a transaction pooler the statement timeout cannot be a start-up parameter,
    so each transaction sets it with SET LOCAL (never SET: it would leak to other clients).
    """
    options: dict[str, Any] = {"expire_on_commit": False, "autoflush": False}
    if settings is not None and settings.transaction_pooler and settings.db_statement_timeout_ms:
        options["sync_session_class"] = type(
            "PoolerSession",
            (_TimedSession,),
            {"statement_timeout_ms": settings.db_statement_timeout_ms},
        )
    return async_sessionmaker(engine, **options)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session and transaction per request, committed before the response is sent."""
    factory: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with factory() as session, session.begin():
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for a route that reads with one statement: on a direct connection it runs
    in autocommit (no BEGIN and COMMIT round trips around the one statement); behind a
    transaction pooler, where each statement needs its transaction, as get_session."""
    factory: async_sessionmaker[AsyncSession] = request.app.state.read_sessionmaker
    async with factory() as session:
        yield session


ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]


def create_read_sessionmaker(
    engine: AsyncEngine, settings: Settings
) -> async_sessionmaker[AsyncSession]:
    """The sessions of get_read_session."""
    if settings.transaction_pooler:
        return create_sessionmaker(engine, settings)  # begins (and SETs LOCAL) on first use
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    return create_sessionmaker(autocommit, settings)


class RetryTransactionConflicts:
    """ASGI layer: a request whose transaction hit a deadlock or serialization failure
    runs once more, from the start, before the client sees anything.

    The failed attempt's transaction was rolled back by the database and by the session
    dependency before its error response was built, so the repeat cannot apply a write
    twice. The error mapping (app.errors) marks such a response in the request scope; this
    layer then discards it unsent and replays the request body it recorded. A second
    conflict goes out as the 503 the mapping built.
    """

    def __init__(self, app: ASGIApp, attempts: int = 2) -> None:
        self.app = app
        self.attempts = attempts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received: list[Message] = []

        async def recording_receive() -> Message:
            message = await receive()
            received.append(message)
            return message

        for attempt in range(1, self.attempts + 1):
            scope.pop(TRANSACTION_CONFLICT_SCOPE_KEY, None)
            last = attempt == self.attempts
            if attempt == 1:
                attempt_receive: Receive = recording_receive
            else:
                attempt_receive = _replay(list(received), recording_receive)
            discarded = False

            async def guarded_send(message: Message, last: bool = last) -> None:
                nonlocal discarded
                if message["type"] == "http.response.start" and not last:
                    discarded = bool(scope.get(TRANSACTION_CONFLICT_SCOPE_KEY))
                if not discarded:
                    await send(message)

            await self.app(scope, attempt_receive, guarded_send)
            if not discarded:
                return


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive() that hands back what an earlier attempt read, then reads on."""

    async def replay() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replay


__all__ = [
    "RetryTransactionConflicts",
    "Session",
    "SessionDep",
    "create_engine",
    "create_sessionmaker",
    "get_session",
]
