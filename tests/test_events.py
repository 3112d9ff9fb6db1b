"""The realtime event streams over real HTTP: shapes, ids, resume, gap-free positions."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import ROOMY_LIMITS, asyncpg_dsn, make_settings
from stream_support import (
    SERVICE_HEADERS,
    LiveServer,
    create_session,
    live_server,
    open_stream,
    own_events,
    say,
)

from app import events as events_module
from app.settings import Settings

API = "/api/v1"


@pytest.fixture
def stream_settings(database_url: str, migration_url: str) -> Settings:
    return make_settings(
        database_url, **ROOMY_LIMITS, database_migration_url=migration_url, sse_ping_s=30
    )


@pytest.fixture
async def live(stream_settings: Settings) -> AsyncIterator[LiveServer]:
    async with live_server(stream_settings) as server:
        yield server


@pytest.fixture
async def http(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as client:
        yield client


async def _reply(http: httpx.AsyncClient, conversation_id: str, content: str) -> dict[str, Any]:
    response = await http.post(
        f"{API}/conversations/{conversation_id}/messages",
        json={"role": "assistant", "content": content},
        headers=SERVICE_HEADERS,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _escalate(http: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
    response = await http.post(
        f"{API}/sessions/{session_id}/escalations",
        json={
            "issue_type": "loan",
            "original_request": "a person please",
            "contact_info": {"email": "member@example.org", "phone": "+1 555 0100"},
        },
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_member_stream_sends_every_message_once_in_seq_order_with_the_message_shape(
    http: httpx.AsyncClient,
) -> None:
    session = await create_session(http)
    sid = session["session_id"]
    await say(http, sid, "written before the stream opened")
    async with open_stream(http, f"{API}/sessions/{sid}/events") as reader:
        first = await say(http, sid, "hello")
        second = await _reply(http, session["conversation_id"], "hi, how can I help?")
        events = await reader.events(2)
    assert [(event.event, event.id, event.json()) for event in events] == [
        ("message", str(first["seq"]), first),
        ("message", str(second["seq"]), second),
    ]


async def test_member_stream_announces_escalations_and_status_changes_without_ids_or_pii(
    http: httpx.AsyncClient,
) -> None:
    session = await create_session(http)
    sid = session["session_id"]
    async with open_stream(http, f"{API}/sessions/{sid}/events") as reader:
        escalation = await _escalate(http, sid)
        opened = await reader.events(2)
        response = await http.patch(
            f"{API}/escalations/{escalation['id']}",
            json={"status": "resolved"},
            headers=SERVICE_HEADERS,
        )
        assert response.status_code == 200
        resolved = await reader.events(2)
    assert [(event.event, event.id) for event in opened + resolved] == [
        ("escalation", None),
        ("conversation", None),
        ("escalation", None),
        ("conversation", None),
    ]
    assert opened[0].json() == escalation
    assert opened[1].json() == {"status": "escalated"}
    assert resolved[0].json() == {
        **escalation,
        "status": "resolved",
        "updated_at": (resolved[0].json()["updated_at"]),
    }
    assert resolved[1].json() == {"status": "active"}
    for event in opened + resolved:
        # The phone as written (a bare "555" could be part of a random id).
        assert "example.org" not in event.data and "555 0100" not in event.data


@pytest.mark.parametrize("how", ["last-event-id", "after"])
async def test_member_stream_resumes_after_the_given_seq_with_no_gap_and_no_duplicate(
    http: httpx.AsyncClient, how: str
) -> None:
    sid = (await create_session(http))["session_id"]
    written = [await say(http, sid, f"message {number}") for number in range(1, 4)]
    path = f"{API}/sessions/{sid}/events"
    headers = {}
    if how == "after":
        path += "?after=1"
    else:
        headers["Last-Event-ID"] = "1"
    async with open_stream(http, path, headers) as reader:
        caught_up = await reader.events(2)
        later = await say(http, sid, "message 4")
        live = await reader.next_event()
        assert await reader.nothing_within(0.3)
    assert [event.json() for event in caught_up] == written[1:]
    assert live.json() == later


async def test_unknown_session_is_404_and_missing_key_is_401_before_any_stream(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get(f"{API}/sessions/no-such-session-0123456789/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    response = await http.get(f"{API}/events")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    response = await http.get(f"{API}/events", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401


async def test_bad_resume_points_and_unknown_types_are_422(http: httpx.AsyncClient) -> None:
    sid = (await create_session(http))["session_id"]
    for path, headers in (
        (f"{API}/sessions/{sid}/events", {"Last-Event-ID": "abc"}),
        (f"{API}/sessions/{sid}/events?after=-1", {}),
        (f"{API}/events?types=message.deleted", SERVICE_HEADERS),
        (f"{API}/events", {**SERVICE_HEADERS, "Last-Event-ID": "1e3"}),
    ):
        response = await http.get(path, headers=headers)
        assert response.status_code == 422, (path, response.text)


async def test_service_stream_sends_each_event_type_with_increasing_positions(
    http: httpx.AsyncClient,
) -> None:
    session = await create_session(http)
    sid, conversation_id = session["session_id"], session["conversation_id"]
    async with open_stream(http, f"{API}/events", SERVICE_HEADERS) as reader:
        message = await say(http, sid, "hello")
        escalation = await _escalate(http, sid)
        response = await http.patch(
            f"{API}/escalations/{escalation['id']}",
            json={"status": "in_progress"},
            headers=SERVICE_HEADERS,
        )
        assert response.status_code == 200
        events = await own_events(reader, conversation_id, 4)
    assert [event.event for event in events] == [
        "message.created",
        "escalation.created",
        "conversation.updated",
        "escalation.updated",
    ]
    positions = [int(event.id or 0) for event in events]
    assert positions == sorted(positions) and len(set(positions)) == 4
    data = [event.json() for event in events]
    for item, event in zip(data, events, strict=True):
        assert item["type"] == event.event
        assert item["conversation_id"] == conversation_id
        assert "+00:00" in item["at"]
    assert {key: value for key, value in data[0].items() if key != "at"} == {
        "type": "message.created",
        "conversation_id": conversation_id,
        "message": message,
    }
    assert data[1]["escalation"] == escalation and data[1]["assignee_id"] is None
    assert set(data[1]) == {"type", "at", "conversation_id", "escalation", "assignee_id"}
    assert data[2]["status"] == "escalated"
    assert set(data[2]) == {"type", "at", "conversation_id", "status"}
    assert data[3]["escalation"]["status"] == "in_progress"


async def test_service_stream_filters_by_type_and_resumes_from_last_event_id(
    http: httpx.AsyncClient,
) -> None:
    session = await create_session(http)
    sid = session["session_id"]
    path = f"{API}/events?types=message.created"
    async with open_stream(http, path, SERVICE_HEADERS) as reader:
        await _escalate(http, sid)
        first = await say(http, sid, "one")
        (event,) = await own_events(reader, session["conversation_id"], 1)
    assert event.event == "message.created" and event.json()["message"] == first
    # Written while no stream is open; the resumed stream gets them once, in order.
    missed = [await say(http, sid, f"missed {number}") for number in range(3)]
    headers = {**SERVICE_HEADERS, "Last-Event-ID": event.id or ""}
    async with open_stream(http, path, headers) as reader:
        resumed = await own_events(reader, session["conversation_id"], 3)
        live = await say(http, sid, "live")
        (after,) = await own_events(reader, session["conversation_id"], 1)
        assert await reader.nothing_within(0.3)
    assert [item.json()["message"] for item in resumed] == missed
    assert after.json()["message"] == live
    ids = [int(item.id or 0) for item in [event, *resumed, after]]
    assert ids == sorted(ids)


async def _commit_held_message(
    url: str, conversation_id: str, ready: asyncio.Event, release: asyncio.Event
) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        async with connection.transaction():
            await connection.execute(
                "INSERT INTO messages (conversation_id, role, content) "
                "VALUES ($1, 'user', 'held back')",
                conversation_id,
            )
            ready.set()
            await release.wait()
    finally:
        await connection.close()


async def test_an_event_whose_transaction_commits_late_still_reaches_a_resumed_reader_once(
    http: httpx.AsyncClient, migration_url: str
) -> None:
    held = await create_session(http)
    other = await create_session(http)
    async with open_stream(http, f"{API}/events?types=message.created", SERVICE_HEADERS) as reader:
        await say(http, other["session_id"], "before")
        (start,) = await own_events(reader, other["conversation_id"], 1)
    ready, release = asyncio.Event(), asyncio.Event()
    # A takes its event row (and a lower id) first and stays open; B commits after it.
    writer = asyncio.create_task(
        _commit_held_message(migration_url, held["conversation_id"], ready, release)
    )
    await asyncio.wait_for(ready.wait(), 5)
    committed = await say(http, other["session_id"], "committed first")
    headers = {**SERVICE_HEADERS, "Last-Event-ID": start.id or ""}
    async with open_stream(http, f"{API}/events?types=message.created", headers) as reader:
        # B cannot be numbered while A could still take a lower place before it.
        assert await reader.nothing_within(0.5)
    # The reader resumes again from where it was, then A commits.
    async with open_stream(http, f"{API}/events?types=message.created", headers) as reader:
        release.set()
        await writer
        both = {held["conversation_id"], other["conversation_id"]}
        received = await own_events(reader, both, 2)
        final = await say(http, other["session_id"], "after")
        (last,) = await own_events(reader, both, 1)
        assert await reader.nothing_within(0.3)
    contents = {event.json()["message"]["content"] for event in received}
    assert contents == {"held back", "committed first"}
    assert committed["content"] in contents
    assert last.json()["message"] == final
    ids = [int(event.id or 0) for event in [start, *received, last]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def _read_resuming(
    http: httpx.AsyncClient, path: str, total: int, seed: int, headers: dict[str, str]
) -> list[int]:
    """Read `total` message events, disconnecting at random points and resuming."""
    chance = random.Random(seed)
    seen: list[int] = []
    last: str | None = "0"
    while len(seen) < total:
        resume = {**headers, "Last-Event-ID": last} if last is not None else headers
        async with open_stream(http, path, resume) as reader:
            for _ in range(chance.randint(1, 40)):
                if len(seen) >= total:
                    break
                event = await reader.next_event(15)
                seen.append(int(event.id or 0))
                last = event.id
    return seen


async def test_readers_resuming_at_random_points_under_a_concurrent_writer_miss_nothing(
    http: httpx.AsyncClient,
) -> None:
    sid = (await create_session(http))["session_id"]
    total = 100

    async def write() -> None:
        for number in range(total):
            await say(http, sid, f"message {number}")

    readers = [
        _read_resuming(http, f"{API}/sessions/{sid}/events", total, seed, {}) for seed in range(3)
    ]
    results = await asyncio.gather(write(), *readers)
    for seen in results[1:]:
        assert seen == list(range(1, total + 1))


async def test_service_readers_resuming_under_concurrent_writers_see_every_event_once(
    http: httpx.AsyncClient,
) -> None:
    opened = [await create_session(http) for _ in range(3)]
    sessions = [item["session_id"] for item in opened]
    ours = {item["conversation_id"] for item in opened}
    per_writer = 25
    async with open_stream(http, f"{API}/events?types=message.created", SERVICE_HEADERS) as r:
        await say(http, sessions[0], "start")
        (start,) = await own_events(r, ours, 1)

    async def write(sid: str) -> None:
        for number in range(per_writer):
            await say(http, sid, f"message {number}")

    path = f"{API}/events?types=message.created&after={start.id}"

    async def read(seed: int) -> list[int]:
        chance = random.Random(seed)
        seen: list[int] = []
        headers = dict(SERVICE_HEADERS)
        while len(seen) < 3 * per_writer:
            async with open_stream(http, path, headers) as reader:
                for _ in range(chance.randint(1, 30)):
                    if len(seen) >= 3 * per_writer:
                        break
                    (event,) = await own_events(reader, ours, 1)
                    seen.append(int(event.id or 0))
                    headers = {**SERVICE_HEADERS, "Last-Event-ID": event.id or ""}
        return seen

    results = await asyncio.gather(*(write(sid) for sid in sessions), read(1), read(2), read(3))
    first = results[3]
    assert first == sorted(set(first)) and len(first) == 3 * per_writer
    assert results[4] == first and results[5] == first


async def test_an_assignment_and_a_staff_reply_reach_both_streams(
    http: httpx.AsyncClient, migration_url: str
) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(migration_url))
    try:
        staff_id = str(
            await connection.fetchval(
                "INSERT INTO staff (email, display_name, password_hash) "
                "VALUES ('events-' || gen_random_uuid() || '@example.org', 'Ann Lee', 'x') "
                "RETURNING id"
            )
        )
    finally:
        await connection.close()
    session = await create_session(http)
    sid, conversation_id = session["session_id"], session["conversation_id"]
    escalation = await _escalate(http, sid)
    member_path = f"{API}/sessions/{sid}/events"
    async with (
        open_stream(http, f"{API}/events", SERVICE_HEADERS) as service,
        open_stream(http, member_path, {}) as member,
    ):
        assigned = await http.patch(
            f"{API}/escalations/{escalation['id']}",
            json={"assignee_id": staff_id},
            headers=SERVICE_HEADERS,
        )
        assert assigned.status_code == 200, assigned.text
        reply = await http.post(
            f"{API}/conversations/{conversation_id}/messages",
            json={"role": "staff", "content": "Ann here."},
            headers={**SERVICE_HEADERS, "X-Staff-Id": staff_id},
        )
        assert reply.status_code == 201, reply.text
        # Events committed just before the stream opened may still be numbered after it
        # did (the escalation's own creation): look for the two this test caused.
        seen: dict[str, Any] = {}
        while set(seen) != {"escalation.updated", "message.created"}:
            [event] = await own_events(service, conversation_id, 1)
            if event.event in ("escalation.updated", "message.created"):
                seen[event.event] = event
        updated, created = seen["escalation.updated"], seen["message.created"]
        # The member stream orders messages by seq; a status or escalation change is
        # not ordered against them (a stream that catches up from the table may send
        # the message first), so read until both have come.
        member_events = [await member.next_event()]
        while {"escalation", "message"} - {event.event for event in member_events}:
            member_events.append(await member.next_event())
    assert updated.event == "escalation.updated"
    assert updated.json()["assignee_id"] == staff_id
    assert updated.json()["escalation"]["status"] == "pending"
    assert created.event == "message.created"
    assert created.json()["message"]["role"] == "staff"
    assert created.json()["message"]["author_name"] == "Ann Lee"
    assert "escalation" in [event.event for event in member_events]
    [staff_message] = [event.json() for event in member_events if event.event == "message"]
    assert (staff_message["role"], staff_message["author_name"]) == ("staff", "Ann Lee")
    assert all(staff_id not in event.data for event in member_events)


async def test_neither_stream_carries_a_clear_card_number(http: httpx.AsyncClient) -> None:
    card = "4111 1111 1111 1111"  # the well-known Visa test number: Luhn-valid
    session = await create_session(http)
    sid, conversation_id = session["session_id"], session["conversation_id"]
    async with (
        open_stream(http, f"{API}/events", SERVICE_HEADERS) as service,
        open_stream(http, f"{API}/sessions/{sid}/events", {}) as member,
    ):
        await say(http, sid, f"my card {card} was declined")
        await _reply(http, conversation_id, f"Noted: {card}")
        service_events = await own_events(service, conversation_id, 2)
        member_events = [await member.next_event() for _ in range(2)]
    data = [event.data for event in service_events + member_events]
    assert all("[card ending 1111]" in item for item in data), data
    assert not any(card in item or card.replace(" ", "") in item for item in data)


async def test_a_member_stream_is_not_held_back_by_other_conversations_waiting_to_be_numbered(
    http: httpx.AsyncClient, migration_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While an older transaction is open nothing can be numbered; member streams get
    # their conversation's committed rows early. Rows of other conversations (more than
    # one read's worth) waiting in front of them must not stand in the way.
    monkeypatch.setattr(events_module, "READ_BATCH", 2)
    held, busy, watched = [await create_session(http) for _ in range(3)]
    ready, release = asyncio.Event(), asyncio.Event()
    writer = asyncio.create_task(
        _commit_held_message(migration_url, held["conversation_id"], ready, release)
    )
    try:
        await asyncio.wait_for(ready.wait(), 5)
        for number in range(4):
            await say(http, busy["session_id"], f"waiting {number}")
        async with open_stream(http, f"{API}/sessions/{watched['session_id']}/events") as reader:
            sent = await say(http, watched["session_id"], "not held back")
            assert (await reader.next_event(5)).json() == sent
    finally:
        release.set()
        await writer
