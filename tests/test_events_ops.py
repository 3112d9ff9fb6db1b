"""The event streams' limits and faults: pings, the stream cap, slow clients, polling
behind a pooler, a lost LISTEN connection, retention and reset, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import ROOMY_LIMITS, asyncpg_dsn, make_settings
from ops_support import running_server
from stream_support import (
    SERVICE_HEADERS,
    create_session,
    live_server,
    open_stream,
    own_events,
    say,
    served,
    until,
)

from app.events import LISTEN_RECONNECTS, STREAMS_CUT, EventHub, purge_expired
from app.settings import ConfigError, Settings, load_settings

API = "/api/v1"


def _settings(database_url: str, migration_url: str, **overrides: Any) -> Settings:
    """The test database's settings for a live server (direct URL for LISTEN)."""
    return make_settings(
        database_url, **ROOMY_LIMITS, database_migration_url=migration_url, **overrides
    )


async def test_an_idle_stream_sends_ping_comments_and_still_delivers_afterwards(
    database_url: str, migration_url: str
) -> None:
    settings = _settings(database_url, migration_url, sse_ping_s=0.2)
    async with served(settings) as (_, http):
        sid = (await create_session(http))["session_id"]
        async with open_stream(http, f"{API}/sessions/{sid}/events") as reader:
            blocks = [await reader.next(2) for _ in range(3)]
            sent = await say(http, sid, "after the pings")
            received = await reader.next_event(5)
    assert all(block.comments == ["ping"] and block.event is None for block in blocks)
    assert received.json() == sent


async def test_streams_over_the_cap_get_503_with_retry_after_and_the_gauge_counts_them(
    database_url: str, migration_url: str
) -> None:
    settings = _settings(database_url, migration_url, sse_max_streams=1)
    async with served(settings) as (live, http):
        sid = (await create_session(http))["session_id"]
        async with open_stream(http, f"{API}/sessions/{sid}/events"):
            refused = await http.get(f"{API}/events", headers=SERVICE_HEADERS)
            metrics = (await http.get("/metrics")).text
        assert refused.status_code == 503
        assert refused.headers["retry-after"].isdigit()
        assert refused.json()["detail"]
        assert 'sse_streams_open{kind="member"} 1.0' in metrics
        hub: EventHub = live.app.state.event_hub
        await until(lambda: hub.open_streams == 0)


async def test_a_stream_that_falls_behind_is_cut_without_holding_back_the_others(
    database_url: str, migration_url: str
) -> None:
    settings = _settings(database_url, migration_url, sse_buffer_events=3)
    async with served(settings) as (live, http):
        hub: EventHub = live.app.state.event_hub
        sid = (await create_session(http))["session_id"]
        busy = (await create_session(http))["session_id"]
        cut_before = STREAMS_CUT.labels("service")._value.get()
        stalled = hub.open("service")  # a subscriber that never reads
        async with open_stream(http, f"{API}/sessions/{sid}/events") as reader:
            for number in range(5):
                await say(http, busy, f"message {number}")
            await until(lambda: stalled.cut)
            sent = await say(http, sid, "still served")
            received = await reader.next_event()
        assert received.json() == sent
        assert stalled.ended and await stalled.next(1) is None
        assert STREAMS_CUT.labels("service")._value.get() == cut_before + 1


async def test_a_cut_stream_ends_its_http_response_at_once(
    database_url: str, migration_url: str
) -> None:
    settings = _settings(database_url, migration_url)
    async with served(settings) as (live, http):
        hub: EventHub = live.app.state.event_hub
        async with open_stream(http, f"{API}/events", SERVICE_HEADERS) as reader:
            await until(lambda: hub.open_streams == 1)
            (stream,) = list(hub._service)
            stream.cut = True
            hub._end(stream)
            started = time.monotonic()
            with pytest.raises((EOFError, httpx.HTTPError)):
                await reader.next_event(3)
            assert time.monotonic() - started < 1


async def test_a_client_that_goes_away_frees_its_stream_at_once(
    database_url: str, migration_url: str
) -> None:
    settings = _settings(database_url, migration_url, sse_ping_s=600)
    async with served(settings) as (live, http):
        hub: EventHub = live.app.state.event_hub
        sid = (await create_session(http))["session_id"]
        async with open_stream(http, f"{API}/sessions/{sid}/events"):
            assert hub.open_streams == 1
        # Noticed from the closed connection, not at the next ping (ten minutes away).
        await until(lambda: hub.open_streams == 0, wait_s=2)


async def test_behind_a_pooler_without_a_direct_url_streams_poll_and_say_so(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(database_url, **ROOMY_LIMITS, db_pooler="transaction", sse_poll_ms=50)
    assert settings.listen_database is None
    with caplog.at_level(logging.WARNING, logger="app.events"):
        async with served(settings) as (live, http):
            assert any("events_polling" in record.message for record in caplog.records)
            hub: EventHub = live.app.state.event_hub
            assert hub.listen_target is None
            sid = (await create_session(http))["session_id"]
            async with (
                open_stream(http, f"{API}/sessions/{sid}/events") as member,
                open_stream(http, f"{API}/events?types=message.created", SERVICE_HEADERS) as staff,
            ):
                message = await say(http, sid, "polled")
                assert (await member.next_event()).json() == message
                while (event := (await staff.next_event()).json())["conversation_id"] != (
                    message["conversation_id"]
                ):
                    pass  # events of earlier tests numbered after this stream opened
                assert event["message"] == message


async def _terminate(url: str, pid: int) -> bool:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return bool(
            await connection.fetchval(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid = $1 AND application_name = 'member-support-listen'",
                pid,
            )
        )
    finally:
        await connection.close()


async def test_a_killed_listen_connection_reconnects_and_streams_lose_nothing(
    database_url: str, migration_url: str
) -> None:
    settings = _settings(database_url, migration_url, sse_poll_ms=5000)
    async with served(settings) as (live, http):
        hub: EventHub = live.app.state.event_hub
        await until(lambda: hub.listening)
        sid = (await create_session(http))["session_id"]
        reconnects = LISTEN_RECONNECTS._value.get()
        async with open_stream(http, f"{API}/sessions/{sid}/events") as reader:
            before = await say(http, sid, "before")
            assert (await reader.next_event()).json() == before
            assert hub._listen_connection is not None
            assert await _terminate(migration_url, hub._listen_connection.get_server_pid())
            during = [await say(http, sid, f"during {number}") for number in range(3)]
            await until(lambda: LISTEN_RECONNECTS._value.get() == reconnects + 1)
            after = await say(http, sid, "after")
            received = await reader.events(4)
            assert await reader.nothing_within(0.3)
        assert [event.json() for event in received] == [*during, after]
        metrics = (await http.get("/metrics")).text
        assert "events_listen_reconnects_total" in metrics


async def test_a_resume_point_older_than_retention_starts_with_reset(
    database_url: str, migration_url: str
) -> None:
    settings = _settings(database_url, migration_url)
    async with served(settings) as (live, http):
        sid = (await create_session(http))["session_id"]
        async with open_stream(http, f"{API}/events?types=message.created", SERVICE_HEADERS) as r:
            await say(http, sid, "old news")
            old = await r.next_event()
        connection = await asyncpg.connect(asyncpg_dsn(migration_url))
        try:
            await connection.execute(
                "UPDATE event_log SET created_at = now() - interval '100 hours' "
                "WHERE position <= $1",
                int(old.id or 0),
            )
        finally:
            await connection.close()
        assert await purge_expired(live.app.state.sessionmaker, settings, batch=2) >= 1
        await say(http, sid, "after the purge")
        headers = {**SERVICE_HEADERS, "Last-Event-ID": "0"}
        async with open_stream(http, f"{API}/events?types=message.created", headers) as reader:
            reset = await reader.next_event()
            fresh = await say(http, sid, "fresh")
            following = [await reader.next_event()]
            while following[-1].json()["message"] != fresh:
                following.append(await reader.next_event())
    assert reset.event == "reset" and reset.json() == {"type": "reset"}
    assert int(reset.id or 0) >= int(old.id or 0)
    # Only what was not yet numbered when the stream reset may precede the fresh event.
    assert [event.json()["message"]["content"] for event in following] in (
        ["fresh"],
        ["after the purge", "fresh"],
    )


def test_event_settings_are_validated_and_listen_follows_the_direct_url() -> None:
    with pytest.raises(ConfigError, match="SSE_PING_S"):
        load_settings(_env_file=None, sse_ping_s="0")
    with pytest.raises(ConfigError, match="SSE_BUFFER_EVENTS"):
        load_settings(_env_file=None, sse_buffer_events="many")
    with pytest.raises(ConfigError, match="DATABASE_LISTEN_URL"):
        load_settings(_env_file=None, database_listen_url="mysql://x@h/db")
    pooled = "postgresql://u:p@aws-0.pooler.supabase.com:6543/postgres"
    direct = "postgresql://u:p@db.example.supabase.co:5432/postgres"
    assert load_settings(_env_file=None, database_url=pooled).listen_database is None
    chosen = load_settings(_env_file=None, database_url=pooled, database_migration_url=direct)
    assert chosen.listen_database is not None and chosen.listen_database.url.port == 5432
    explicit = load_settings(
        _env_file=None,
        database_url=pooled,
        database_migration_url=direct,
        database_listen_url="postgresql://u:p@listen.example:5433/postgres",
    )
    assert explicit.listen_database is not None and explicit.listen_database.url.port == 5433
    own = load_settings(_env_file=None, database_url=direct).listen_database
    assert own is not None and own.url.host == "db.example.supabase.co"


async def _first_stream_end(base_url: str, ready: asyncio.Event) -> float:
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=10) as http,
        http.stream("GET", f"{API}/events", headers=SERVICE_HEADERS) as response,
    ):
        assert response.status_code == 200
        async for _ in response.aiter_lines():
            ready.set()
    return time.monotonic()


@pytest.mark.slow
def test_sigterm_ends_open_streams_within_two_seconds(migration_url: str, tmp_path: Path) -> None:
    with running_server(migration_url, tmp_path) as (process, base_url):

        async def scenario() -> float:
            ready = asyncio.Event()
            ending = asyncio.create_task(_first_stream_end(base_url, ready))
            await asyncio.wait_for(ready.wait(), 10)
            process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            return await asyncio.wait_for(ending, 10) - sent

        elapsed = asyncio.run(scenario())
        assert elapsed < 2
        assert process.wait(timeout=10) == 0


async def _a_write_through_one_reaches_the_others_streams(writer_url: str, reader_url: str) -> None:
    async with (
        httpx.AsyncClient(base_url=writer_url, timeout=30) as writer,
        httpx.AsyncClient(base_url=reader_url, timeout=30) as reader_http,
    ):
        session = await create_session(writer)
        sid = session["session_id"]
        async with (
            open_stream(reader_http, f"{API}/sessions/{sid}/events") as member,
            open_stream(
                reader_http, f"{API}/events?types=message.created", SERVICE_HEADERS
            ) as staff,
        ):
            message = await say(writer, sid, "across servers")
            assert (await member.next_event(10)).json() == message
            (event,) = await own_events(staff, session["conversation_id"], 1)
            assert event.json()["message"] == message


async def test_a_write_through_one_server_reaches_streams_on_another(
    database_url: str, migration_url: str
) -> None:
    settings = _settings(database_url, migration_url)
    async with live_server(settings) as first, live_server(settings) as second:
        await _a_write_through_one_reaches_the_others_streams(first.base_url, second.base_url)


@pytest.mark.slow
def test_two_serve_processes_on_one_database_carry_a_write_to_the_others_streams(
    migration_url: str, tmp_path: Path
) -> None:
    # Direct URLs, as the other serve tests: each process holds its own LISTEN connection.
    with (
        running_server(migration_url, tmp_path) as (_, first_url),
        running_server(migration_url, tmp_path) as (_, second_url),
    ):
        asyncio.run(_a_write_through_one_reaches_the_others_streams(first_url, second_url))
