"""The event streams across a PostgreSQL restart, on a server the test owns: open streams
stay open, the LISTEN connection comes back, and what is written after the restart
reaches every stream exactly once."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import ROOMY_LIMITS, make_settings
from stream_support import (
    API,
    SERVICE_HEADERS,
    SseReader,
    create_session,
    open_stream,
    own_events,
    say,
    served,
    until,
)

from app.events import LISTEN_RECONNECTS, EventHub

pytestmark = [pytest.mark.faults, pytest.mark.slow]

AFTER_RESTART = 3


async def _say_until_stored(http: httpx.AsyncClient, session_id: str, content: str) -> Any:
    """Post with one Idempotency-Key until the service takes it (503 while it recovers)."""
    key = uuid.uuid4().hex
    deadline = time.monotonic() + 30
    while True:
        response = await http.post(
            f"{API}/sessions/{session_id}/messages",
            json={"content": content},
            headers={"Idempotency-Key": key},
        )
        if response.status_code in (200, 201):
            return response.json()
        assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, "the service did not recover"
        await asyncio.sleep(0.1)


async def test_a_database_restart_under_open_streams_loses_and_doubles_nothing(
    own_postgres: Any,
) -> None:
    connection = await asyncpg.connect(own_postgres.url)
    try:
        await connection.execute("TRUNCATE users, conversations, messages, escalations CASCADE")
    finally:
        await connection.close()
    settings = make_settings(
        own_postgres.url,
        **ROOMY_LIMITS,
        db_pooler="direct",
        db_pool_timeout_s=2.0,
        db_statement_timeout_ms=2000,
        sse_ping_s=60,
    )
    async with served(settings) as (live, http):
        hub: EventHub = live.app.state.event_hub
        await until(lambda: hub.listening)
        session = await create_session(http)
        sid, conversation_id = session["session_id"], session["conversation_id"]
        async with (
            open_stream(http, f"{API}/sessions/{sid}/events") as member,
            open_stream(http, f"{API}/events?types=message.created", SERVICE_HEADERS) as staff,
        ):
            first = await say(http, sid, "before the restart")
            assert (await member.next_event()).json() == first
            (first_event,) = await own_events(staff, conversation_id, 1)
            assert first_event.json()["message"] == first
            reconnects = LISTEN_RECONNECTS._value.get()

            await own_postgres.stop_async("immediate")
            refused = await http.post(
                f"{API}/sessions/{sid}/messages", json={"content": "while it is down"}
            )
            assert refused.status_code == 503
            # A stream that must read the database to resume ends cleanly (a complete
            # response: the client retries from its last id), not with a broken one.
            async with http.stream(
                "GET", f"{API}/events?after={first_event.id}", headers=SERVICE_HEADERS
            ) as response:
                assert response.status_code == 200
                resuming = SseReader(response)
                assert (await resuming.next()).retry == 3000
                with pytest.raises(EOFError):
                    await resuming.next(15)
            await own_postgres.start_async()

            written = [
                await _say_until_stored(http, sid, f"after the restart {number}")
                for number in range(AFTER_RESTART)
            ]
            # The same two streams, still open: every message once, in order, no more.
            received = await member.events(AFTER_RESTART)
            assert [event.json() for event in received] == written
            assert [event.id for event in received] == [str(m["seq"]) for m in written]
            service = await own_events(staff, conversation_id, AFTER_RESTART)
            assert [event.json()["message"] for event in service] == written
            positions = [int(event.id) for event in service]
            assert positions == sorted(set(positions))
            assert await member.nothing_within(1.0)
            assert await staff.nothing_within(1.0)
            await until(lambda: hub.listening)
            assert LISTEN_RECONNECTS._value.get() > reconnects
