"""The client follows both event streams over real HTTP, as the service's own models."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from conftest import ROOMY_LIMITS, SERVICE_KEY, make_settings
from stream_support import LiveServer, live_server

from app.client import NotFound, ServiceClient, StreamEvent, Unauthorized
from app.event_schemas import MessageCreatedData
from app.schemas import Message


@pytest.fixture
async def live(database_url: str, migration_url: str) -> AsyncIterator[LiveServer]:
    settings = make_settings(
        database_url, database_migration_url=migration_url, sse_ping_s=30, **ROOMY_LIMITS
    )
    async with live_server(settings) as server:
        yield server


async def _next(stream: AsyncIterator[StreamEvent]) -> StreamEvent:
    return await asyncio.wait_for(anext(stream), timeout=10)


async def test_the_member_stream_and_the_service_stream_as_models(live: LiveServer) -> None:
    async with ServiceClient(live.base_url, api_key=SERVICE_KEY) as client:
        session = await client.open_session()
        sent = await client.send_member_message(session.session_id, "hello")
        member = client.events(session_id=session.session_id, after=0)
        got = await _next(member)
        assert (got.event, got.id) == ("message", str(sent.seq))
        assert isinstance(got.data, Message) and got.data == sent
        await member.aclose()

        # From the start of the log: the oldest retained event, or a `reset` when other
        # tests' purges removed older ones. Either way the stream is open after it.
        service = client.events(types=["message.created"], after=0)
        first = await _next(service)
        assert first.event in ("reset", "message.created")
        again = await client.send_member_message(session.session_id, "again")
        while True:
            event = await _next(service)
            assert event.event == "message.created" and isinstance(event.data, MessageCreatedData)
            if event.data.message.id == again.id:
                break
        assert event.data.message == again
        assert event.data.conversation_id == session.conversation_id
        assert event.id is not None and int(event.id) > 0
        await service.aclose()


async def test_stream_errors_are_the_clients_error_classes(live: LiveServer) -> None:
    async with ServiceClient(live.base_url, api_key="not-the-key") as client:
        with pytest.raises(Unauthorized):
            await _next(client.events())
        with pytest.raises(NotFound):
            await _next(client.events(session_id="no-such-session-0123456789"))
