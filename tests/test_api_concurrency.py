"""Real parallel HTTP: the app under uvicorn on a local port, many requests at once."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from api_support import API
from conftest import make_settings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.main import create_app

PARALLEL = 20


@pytest.fixture(scope="module")
def live_url(database_url: str) -> Iterator[str]:
    """The app served by uvicorn in a background thread on a free 127.0.0.1 port."""
    app = create_app(make_settings(database_url, db_pool_size=PARALLEL, db_max_overflow=5))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


@pytest.fixture
async def live(
    live_url: str, committed_engine: AsyncEngine, service_headers: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client over TCP to the live server; tables are emptied before and after."""
    limits = httpx.Limits(max_connections=PARALLEL * 2)
    async with httpx.AsyncClient(base_url=live_url, limits=limits, timeout=30) as client:
        yield client


async def _count(engine: AsyncEngine, sql: str, **params: Any) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text(sql), params)).scalar_one())


async def _new_session(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post(f"{API}/sessions")
    assert response.status_code == 201
    body: dict[str, Any] = response.json()
    return body


async def test_the_live_server_answers_over_tcp(live: httpx.AsyncClient) -> None:
    response = await live.get("/healthz")
    assert response.status_code == 200


async def test_concurrent_creates_of_one_new_session_id_make_one_conversation(
    live: httpx.AsyncClient, committed_engine: AsyncEngine
) -> None:
    session_id = "concurrent-session-id-000001"
    responses = await asyncio.gather(
        *(live.post(f"{API}/sessions", json={"session_id": session_id}) for _ in range(PARALLEL))
    )
    codes = Counter(response.status_code for response in responses)
    assert codes == {201: 1, 200: PARALLEL - 1}
    assert len({response.json()["conversation_id"] for response in responses}) == 1
    conversations = await _count(
        committed_engine, "SELECT count(*) FROM conversations WHERE session_id = :id", id=session_id
    )
    assert conversations == 1
    assert await _count(committed_engine, "SELECT count(*) FROM users") == 1


async def test_concurrent_duplicate_escalations_make_one_row(
    live: httpx.AsyncClient, committed_engine: AsyncEngine
) -> None:
    session = await _new_session(live)
    url = f"{API}/sessions/{session['session_id']}/escalations"
    responses = await asyncio.gather(
        *(
            live.post(url, json={"issue_type": "fraud", "original_request": f"help {n}"})
            for n in range(PARALLEL)
        )
    )
    codes = Counter(response.status_code for response in responses)
    assert codes == {201: 1, 200: PARALLEL - 1}
    assert len({response.json()["id"] for response in responses}) == 1
    assert await _count(committed_engine, "SELECT count(*) FROM escalations") == 1


async def test_concurrent_sends_with_one_idempotency_key_store_one_message(
    live: httpx.AsyncClient, committed_engine: AsyncEngine
) -> None:
    session = await _new_session(live)
    url = f"{API}/sessions/{session['session_id']}/messages"
    responses = await asyncio.gather(
        *(
            live.post(url, json={"content": "once"}, headers={"Idempotency-Key": "retry-1"})
            for _ in range(PARALLEL)
        )
    )
    codes = Counter(response.status_code for response in responses)
    assert codes == {201: 1, 200: PARALLEL - 1}
    assert len({response.json()["id"] for response in responses}) == 1
    assert await _count(committed_engine, "SELECT count(*) FROM messages") == 1


async def test_concurrent_messages_get_distinct_gapless_seqs(live: httpx.AsyncClient) -> None:
    session = await _new_session(live)
    url = f"{API}/sessions/{session['session_id']}/messages"
    responses = await asyncio.gather(
        *(live.post(url, json={"content": f"m{n}"}) for n in range(PARALLEL))
    )
    assert all(response.status_code == 201 for response in responses)
    seqs = sorted(response.json()["seq"] for response in responses)
    assert seqs == list(range(1, PARALLEL + 1))
    history = (await live.get(url, params={"limit": 200})).json()
    assert [item["seq"] for item in history["items"]] == seqs


async def test_concurrent_escalation_patches_never_lose_an_update(
    live: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    # From pending, "in_progress" is always allowed (after notified too); "notified" is
    # allowed only before in_progress. Whatever the order, every in_progress request
    # must succeed and the escalation must end in_progress: a notified write that read
    # a stale "pending" and landed last would be a lost update.
    for _ in range(3):
        session = await _new_session(live)
        created = await live.post(
            f"{API}/sessions/{session['session_id']}/escalations",
            json={"issue_type": "loan", "original_request": "help"},
        )
        escalation_url = f"{API}/escalations/{created.json()['id']}"
        targets = ["notified", "in_progress"] * (PARALLEL // 2)
        random.shuffle(targets)
        responses = await asyncio.gather(
            *(
                live.patch(escalation_url, json={"status": target}, headers=service_headers)
                for target in targets
            )
        )
        for target, response in zip(targets, responses, strict=True):
            if target == "in_progress":
                assert response.status_code == 200
                assert response.json()["status"] == "in_progress"
            else:
                assert response.status_code in {200, 409}
                if response.status_code == 200:
                    assert response.json()["status"] == "notified"
        final = await live.get(escalation_url, headers=service_headers)
        assert final.json()["status"] == "in_progress"


async def test_concurrent_resolves_and_reopens_keep_the_conversation_status_true(
    live: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await _new_session(live)
    ids = []
    for issue_type in ("loan", "card", "fraud"):
        created = await live.post(
            f"{API}/sessions/{session['session_id']}/escalations",
            json={"issue_type": issue_type, "original_request": "help"},
        )
        ids.append(created.json()["id"])
    rng = random.Random(7)
    for _ in range(8):
        moves = [(escalation_id, rng.choice(["resolved", "in_progress"])) for escalation_id in ids]
        moves += [(rng.choice(ids), rng.choice(["resolved", "in_progress"])) for _ in range(3)]
        responses = await asyncio.gather(
            *(
                live.patch(
                    f"{API}/escalations/{escalation_id}",
                    json={"status": status},
                    headers=service_headers,
                )
                for escalation_id, status in moves
            )
        )
        assert all(response.status_code in {200, 409} for response in responses)
        statuses = [
            (await live.get(f"{API}/escalations/{escalation_id}", headers=service_headers)).json()[
                "status"
            ]
            for escalation_id in ids
        ]
        conversation = (
            await live.get(
                f"{API}/conversations/{session['conversation_id']}", headers=service_headers
            )
        ).json()
        expected = "active" if all(status == "resolved" for status in statuses) else "escalated"
        assert conversation["status"] == expected, statuses
