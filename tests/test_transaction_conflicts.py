"""Deadlocks and serialization failures: retried once, then 503, never 500, never twice.

The failures are raised by the real database: a trigger that fails with the SQLSTATE
PostgreSQL uses for them (counting its calls in a sequence, which no rollback undoes),
and a genuine deadlock between a request and a second connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from api_support import API, conversation, open_session, send_message, user_of
from conftest import asyncpg_dsn, execute
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

PROBE_FUNCTION = """
CREATE FUNCTION conflict_probe() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('conflict_probe_calls') <= {failures} THEN
        RAISE EXCEPTION 'conflict probe' USING ERRCODE = '{sqlstate}';
    END IF;
    RETURN NEW;
END $$
"""
DROP_PROBE = (
    "DROP TRIGGER IF EXISTS conflict_probe ON {table}",
    "DROP FUNCTION IF EXISTS conflict_probe()",
    "DROP SEQUENCE IF EXISTS conflict_probe_calls",
)


def _probe(table: str, event: str, sqlstate: str, failures: int) -> list[str]:
    return [
        "CREATE SEQUENCE conflict_probe_calls",
        PROBE_FUNCTION.format(failures=failures, sqlstate=sqlstate),
        f"CREATE TRIGGER conflict_probe AFTER {event} ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION conflict_probe()",
    ]


async def _install(connection: AsyncConnection, statements: list[str]) -> None:
    for statement in statements:
        await connection.execute(text(statement))


async def _calls(connection: AsyncConnection) -> int:
    value = await connection.scalar(text("SELECT last_value FROM conflict_probe_calls"))
    return int(value)


async def test_a_conflict_on_every_attempt_is_503_after_exactly_one_retry(
    client: httpx.AsyncClient, connection: AsyncConnection, service_headers: dict[str, str]
) -> None:
    session = await open_session(client, name="Before")
    await _install(connection, _probe("users", "UPDATE", "40001", failures=99))

    response = await client.patch(
        f"{API}/sessions/{session['session_id']}/contact", json={"name": "After"}
    )

    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert "try again" in response.json()["detail"]
    assert await _calls(connection) == 2  # the first attempt and one retry
    user = await user_of(client, service_headers, session["conversation_id"])
    assert user["name"] == "Before"


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
async def test_a_conflict_once_is_retried_and_succeeds(
    client: httpx.AsyncClient,
    connection: AsyncConnection,
    service_headers: dict[str, str],
    sqlstate: str,
) -> None:
    session = await open_session(client)
    await _install(connection, _probe("users", "UPDATE", sqlstate, failures=1))

    response = await client.patch(
        f"{API}/sessions/{session['session_id']}/contact", json={"name": "After"}
    )

    assert response.status_code == 204
    assert await _calls(connection) == 2
    user = await user_of(client, service_headers, session["conversation_id"])
    assert user["name"] == "After"


async def test_a_retried_write_is_applied_once(
    client: httpx.AsyncClient, connection: AsyncConnection
) -> None:
    session = await open_session(client)
    # Fails after the row is written: the retry must not leave two messages behind.
    await _install(connection, _probe("messages", "INSERT", "40001", failures=1))

    response = await send_message(client, session["session_id"], "hello once")

    assert response.status_code == 201
    history = await client.get(f"{API}/sessions/{session['session_id']}/messages")
    assert [item["content"] for item in history.json()["items"]] == ["hello once"]


@pytest.fixture
async def committed_probe(committed_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    try:
        yield committed_engine
    finally:
        async with committed_engine.begin() as connection:
            for statement in DROP_PROBE:
                await connection.execute(text(statement.format(table="messages")))


async def test_the_hot_path_hands_a_conflict_to_the_retrying_path(
    committed_client: httpx.AsyncClient, committed_probe: AsyncEngine, database_url: str
) -> None:
    session = await open_session(committed_client)
    await execute(database_url, *_probe("messages", "INSERT", "40P01", failures=1))

    response = await send_message(committed_client, session["session_id"], "via the hot path")

    assert response.status_code == 201
    history = await committed_client.get(f"{API}/sessions/{session['session_id']}/messages")
    assert [item["content"] for item in history.json()["items"]] == ["via the hot path"]


async def test_a_real_deadlock_with_another_connection_is_retried_not_500(
    committed_client: httpx.AsyncClient,
    service_headers: dict[str, str],
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = await open_session(committed_client)
    found = await conversation(committed_client, service_headers, session["conversation_id"])
    other = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        transaction = other.transaction()
        await transaction.start()
        # The other connection holds the user; the request takes the conversation (KEY
        # SHARE) and then waits for the user ...
        await other.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", found["user_id"])
        with caplog.at_level(logging.WARNING, logger="app.errors"):
            request = asyncio.create_task(
                committed_client.patch(
                    f"{API}/sessions/{session['session_id']}/contact", json={"name": "After"}
                )
            )
            for _ in range(200):
                # Activity statistics are a snapshot per transaction unless cleared.
                await other.execute("SELECT pg_stat_clear_snapshot()")
                waiting = await other.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() AND pid <> pg_backend_pid()"
                )
                if waiting:
                    break
                await asyncio.sleep(0.02)
            # ... while the other connection now wants the conversation: a cycle. The
            # request waited first, so its deadlock check fires first and it is the one
            # PostgreSQL aborts; its retry then waits for this transaction to end.
            await other.execute(
                "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE",
                session["conversation_id"],
            )
            await transaction.rollback()
            response = await request
    finally:
        await other.close()
    assert response.status_code == 204
    user = await user_of(committed_client, service_headers, session["conversation_id"])
    assert user["name"] == "After"
    conflicts = [r for r in caplog.records if r.getMessage().startswith("transaction_conflict")]
    assert [getattr(r, "sqlstate", None) for r in conflicts] == ["40P01"]
