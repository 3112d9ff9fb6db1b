"""The console's live feed (/console/events): the staff cookie, one-word events, the
conversation filter, and early delivery while an older transaction is still open."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from api_support import API, escalate, open_session, send_message
from conftest import ROOMY_LIMITS, asyncpg_dsn, make_settings
from console_support import PASSWORD, sign_in
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from stream_support import LiveServer, live_server, open_stream

from app.repositories import staff as staff_repository
from app.staff import hash_password


@pytest.fixture
async def live(
    database_url: str, migration_url: str, committed_engine: AsyncEngine
) -> AsyncIterator[tuple[LiveServer, httpx.AsyncClient]]:
    """A live server and a client signed in to its console (tables emptied after)."""
    settings = make_settings(
        database_url,
        database_migration_url=migration_url,
        console_insecure_cookie=True,
        **ROOMY_LIMITS,
    )
    email = f"{uuid.uuid4().hex[:8]}@example.org"
    async with AsyncSession(committed_engine) as session, session.begin():
        await staff_repository.add(
            session,
            email=email,
            display_name="Ann Lee",
            password_hash=hash_password(PASSWORD),
            role="agent",
        )
    async with (
        live_server(settings) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=20) as http,
    ):
        assert (await sign_in(http, email)).status_code == 303
        yield server, http


async def test_the_feed_announces_a_new_case_while_an_older_transaction_is_still_open(
    live: tuple[LiveServer, httpx.AsyncClient], migration_url: str
) -> None:
    _, http = live
    # An unrelated transaction that holds an xid: the gap-free service stream waits for
    # it before numbering anything newer; the console's feed must not.
    blocker = await asyncpg.connect(asyncpg_dsn(migration_url))
    try:
        await blocker.execute("BEGIN")
        await blocker.fetchval("SELECT pg_current_xact_id()")
        async with open_stream(http, "/console/events") as feed:
            session = await open_session(http)
            response = await escalate(http, session["session_id"], "card")
            assert response.status_code == 201
            event = await feed.next_event(wait_s=5)
            assert event.event == "escalation"
            assert event.id is None  # a "refetch" signal, not a resumable position
            data = event.json()
            assert data["type"] == "escalation.created"
            assert data["escalation"]["id"] == response.json()["id"]
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()


async def test_a_case_feed_carries_its_own_messages_and_every_escalation_once(
    live: tuple[LiveServer, httpx.AsyncClient],
) -> None:
    _, http = live
    mine = await open_session(http)
    other = await open_session(http)
    path = f"/console/events?conversation={mine['conversation_id']}"
    async with open_stream(http, path) as feed:
        assert (await send_message(http, other["session_id"], "not this one")).status_code == 201
        assert (await send_message(http, mine["session_id"], "this one")).status_code == 201
        event = await feed.next_event()
        assert event.event == "message"
        assert event.json()["message"]["content"] == "this one"
        assert (await escalate(http, other["session_id"], "loan")).status_code == 201
        assert (await feed.next_event()).event == "escalation"
        # The numbered copy of an event sent early is not sent again.
        assert await feed.nothing_within(1.5)


async def test_the_feed_needs_a_console_session(live: tuple[LiveServer, httpx.AsyncClient]) -> None:
    server, _ = live
    async with httpx.AsyncClient(base_url=server.base_url) as stranger:
        response = await stranger.get("/console/events")
        assert response.status_code == 401
        assert f"{API}" not in response.text
