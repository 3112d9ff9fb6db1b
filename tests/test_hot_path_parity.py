"""The hot-path layer answers exactly as the FastAPI routes do, and hands over the rest.

The member route tests (marked `both_paths`) already run every member rule both ways;
these cases add the byte-for-byte comparison of the same request answered each way,
the hand-over counts, and the HOT_PATHS switch."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from conftest import make_settings
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import get_read_session, get_session
from app.main import create_app
from app.settings import Settings

BASE = "/api/v1/sessions"


@pytest.fixture
async def both(
    app: FastAPI, committed_client: httpx.AsyncClient
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The committed client, and a switch for the hot-path layer."""
    if app.state.settings.transaction_pooler:
        pytest.skip("the hot-path layer stands aside behind a transaction pooler")
    original = app.state.hot_connection

    def switch(enabled: bool) -> None:
        app.state.hot_connection = original if enabled else None

    try:
        yield committed_client, switch
    finally:
        switch(original)


async def _twice(both: Any, method: str, url: str, **kwargs: Any) -> tuple[Any, Any]:
    client, switch = both
    switch(True)
    fast = await client.request(method, url, **kwargs)
    switch(False)
    framework = await client.request(method, url, **kwargs)
    switch(True)
    return fast, framework


def _same(fast: httpx.Response, framework: httpx.Response) -> None:
    assert fast.status_code == framework.status_code
    assert fast.content == framework.content
    assert fast.headers["content-type"] == framework.headers["content-type"]


async def _session_with_history(client: httpx.AsyncClient, count: int) -> str:
    session_id = (await client.post(BASE)).json()["session_id"]
    for index in range(count):
        response = await client.post(
            f"{BASE}/{session_id}/messages", json={"content": f"message {index} ✓"}
        )
        assert response.status_code == 201
    return str(session_id)


async def test_a_session_reads_the_same_both_ways(both: Any) -> None:
    session_id = await _session_with_history(both[0], 1)
    _same(*await _twice(both, "GET", f"{BASE}/{session_id}"))


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?limit=3",
        "?before=5",
        "?before=5&limit=2",
        "?after=2",
        "?after=2&limit=200",
        "?after=9",
    ],
)
async def test_history_pages_read_the_same_both_ways(both: Any, query: str) -> None:
    session_id = await _session_with_history(both[0], 8)
    _same(*await _twice(both, "GET", f"{BASE}/{session_id}/messages{query}"))


@pytest.mark.parametrize(
    "query",
    [
        "?limit=0",
        "?limit=201",
        "?limit=x",
        "?before=1&after=2",
        "?before=-1",
        "?cursor=1",
        "?limit=1&limit=2",
        "?before=99999999999999999999",
    ],
)
async def test_odd_history_queries_get_the_frameworks_answer(both: Any, query: str) -> None:
    session_id = await _session_with_history(both[0], 2)
    _same(*await _twice(both, "GET", f"{BASE}/{session_id}/messages{query}"))


async def test_unknown_sessions_get_the_frameworks_404(both: Any) -> None:
    unknown = "x" * 20
    _same(*await _twice(both, "GET", f"{BASE}/{unknown}"))
    _same(*await _twice(both, "GET", f"{BASE}/{unknown}/messages"))
    _same(*await _twice(both, "POST", f"{BASE}/{unknown}/messages", json={"content": "hi"}))


async def test_a_sent_message_is_shaped_like_the_frameworks(both: Any) -> None:
    client, switch = both
    session_id = await _session_with_history(client, 0)
    switch(True)
    fast = await client.post(
        f"{BASE}/{session_id}/messages", json={"content": "from the fast path"}
    )
    switch(False)
    framework = await client.post(f"{BASE}/{session_id}/messages", json={"content": "from FastAPI"})
    switch(True)
    assert fast.status_code == framework.status_code == 201
    fast_body, framework_body = fast.json(), framework.json()
    assert list(fast_body) == list(framework_body)
    assert (fast_body["seq"], framework_body["seq"]) == (1, 2)
    assert fast_body["created_at"][-6:] == framework_body["created_at"][-6:] == "+00:00"


async def test_an_idempotent_replay_through_the_layer_returns_the_original(both: Any) -> None:
    client, _ = both
    session_id = await _session_with_history(client, 0)
    headers = {"Idempotency-Key": "hot-1"}
    first = await client.post(
        f"{BASE}/{session_id}/messages", json={"content": "a"}, headers=headers
    )
    again = await client.post(
        f"{BASE}/{session_id}/messages", json={"content": "a"}, headers=headers
    )
    other = await client.post(
        f"{BASE}/{session_id}/messages", json={"content": "b"}, headers=headers
    )
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 422)
    assert again.json() == first.json()
    history = await client.get(f"{BASE}/{session_id}/messages")
    assert [item["content"] for item in history.json()["items"]] == ["a"]


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"content": "   "}', {"content-type": "application/json"}),
        (b'{"content": "a\\u0000b"}', {"content-type": "application/json"}),
        (b'{"content": "hi", "role": "assistant"}', {"content-type": "application/json"}),
        (b'{"content": 5}', {"content-type": "application/json"}),
        (b'{"content": "hi"}', {"content-type": "text/plain"}),
        (b'{"content": NaN}', {"content-type": "application/json"}),
        (b'["content"]', {"content-type": "application/json"}),
        (b'{"content": "hi"}', {"content-type": "application/json", "idempotency-key": ""}),
        (b'{"content": "' + b"x" * 8001 + b'"}', {"content-type": "application/json"}),
        (b'{"content": "' + b"x" * 70000 + b'"}', {"content-type": "application/json"}),
    ],
)
async def test_odd_sends_get_the_frameworks_answer_and_store_nothing(
    both: Any, body: bytes, headers: dict[str, str]
) -> None:
    client, _ = both
    session_id = await _session_with_history(client, 0)
    fast, framework = await _twice(
        both, "POST", f"{BASE}/{session_id}/messages", content=body, headers=headers
    )
    assert fast.status_code == framework.status_code
    assert 400 <= fast.status_code < 500
    assert fast.json() == framework.json()
    history = await client.get(f"{BASE}/{session_id}/messages")
    assert history.json()["items"] == []


async def test_an_archived_conversation_refuses_through_the_layer(
    both: Any, service_headers: dict[str, str]
) -> None:
    client, _ = both
    session_id = await _session_with_history(client, 0)
    conversation_id = (await client.get(f"{BASE}/{session_id}")).json()["conversation_id"]
    await client.patch(
        f"/api/v1/conversations/{conversation_id}",
        json={"status": "archived"},
        headers=service_headers,
    )
    response = await client.post(f"{BASE}/{session_id}/messages", json={"content": "late"})
    assert response.status_code == 409


@contextlib.asynccontextmanager
async def _own_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    application = create_app(settings)
    transport = httpx.ASGITransport(app=application)
    async with (
        LifespanManager(application),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield application, client


HANDOVER_REASONS = (
    "invalid_query",
    "invalid_body",
    "content_type",
    "headers",
    "client_abort",
    "transaction_conflict",
)


def hot_path_errors(error_type: str) -> float:
    return REGISTRY.get_sample_value("hot_path_errors_total", {"error_type": error_type}) or 0.0


def handovers(reason: str) -> float:
    return REGISTRY.get_sample_value("hot_path_handovers_total", {"reason": reason}) or 0.0


@pytest.mark.parametrize(
    ("reason", "method", "tail", "kwargs"),
    [
        ("invalid_query", "GET", "/messages?limit=0", {}),
        ("invalid_body", "POST", "/messages", {"json": {"content": " "}}),
        ("content_type", "POST", "/messages", {"content": b"hi"}),
        (
            "headers",
            "POST",
            "/messages",
            {"json": {"content": "hi"}, "headers": [("Idempotency-Key", "a")] * 2},
        ),
    ],
)
async def test_each_hand_over_is_counted_by_reason(
    both: Any, reason: str, method: str, tail: str, kwargs: dict[str, Any]
) -> None:
    session_id = await _session_with_history(both[0], 0)
    before = handovers(reason)
    await both[0].request(method, f"{BASE}/{session_id}{tail}", **kwargs)
    assert handovers(reason) == before + 1


async def test_a_plain_request_is_answered_without_fastapi(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layer really serves: FastAPI's database dependency is never asked for."""
    settings = make_settings(database_url)
    if not settings.hot_paths_active:
        pytest.skip("the hot-path layer stands aside behind a transaction pooler")
    framework_requests: list[str] = []
    async with _own_app(settings) as (application, client):
        session_id = (await client.post(BASE)).json()["session_id"]

        async def counting_session() -> AsyncIterator[Any]:
            framework_requests.append("session")
            async with application.state.sessionmaker.begin() as session:
                yield session

        application.dependency_overrides[get_session] = counting_session
        application.dependency_overrides[get_read_session] = counting_session
        sent = await client.post(f"{BASE}/{session_id}/messages", json={"content": "hi"})
        read = await client.get(f"{BASE}/{session_id}")
        page = await client.get(f"{BASE}/{session_id}/messages?limit=5")
        assert (sent.status_code, read.status_code, page.status_code) == (201, 200, 200)
        assert framework_requests == []
        refused = await client.get(f"{BASE}/{session_id}/messages?limit=0")
        assert refused.status_code == 422
        assert framework_requests == ["session"]


async def test_hot_paths_off_hands_everything_to_fastapi(database_url: str) -> None:
    settings = make_settings(database_url, hot_paths=False)
    assert settings.hot_paths_active is False
    async with _own_app(settings) as (application, client):
        assert application.state.hot_connection is None
        session_id = (await client.post(BASE)).json()["session_id"]
        before = handovers("invalid_query")
        assert (await client.get(f"{BASE}/{session_id}/messages?limit=0")).status_code == 422
        assert handovers("invalid_query") == before  # not a hand-over: never taken


def test_the_layer_stands_aside_behind_a_transaction_pooler(database_url: str) -> None:
    assert make_settings(database_url, db_pooler="transaction").hot_paths_active is False
    assert make_settings(database_url, db_pooler="direct").hot_paths_active is True
    assert (
        make_settings(database_url, db_pooler="direct", hot_paths=False).hot_paths_active is False
    )


_REFUSING_TRIGGER = (
    """
    CREATE FUNCTION test_refuse_message() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.content = 'refuse me' THEN
            RAISE EXCEPTION 'refused by a test trigger' USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER test_refuse_message BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION test_refuse_message()
    """,
)


@pytest.mark.parametrize("hot_paths", [True, False], ids=["hot", "fastapi"], indirect=True)
async def test_a_database_refusal_gets_the_one_sqlstate_mapping_on_both_paths(
    app: FastAPI, client: httpx.AsyncClient, connection: AsyncConnection, hot_paths: bool
) -> None:
    """A database error that is not an outage: the same 422 either way, and the layer
    counts it as an error of its own (never replayed through FastAPI)."""
    for statement in _REFUSING_TRIGGER:  # in the test's transaction: rolled back after
        await connection.exec_driver_sql(statement)
    session_id = (await client.post(BASE)).json()["session_id"]
    served_by_layer = app.state.hot_connection is not None  # off: param, or a pooler
    errors_before = hot_path_errors("CheckViolationError")
    handovers_before = sum(handovers(reason) for reason in HANDOVER_REASONS)
    refused = await client.post(f"{BASE}/{session_id}/messages", json={"content": "refuse me"})
    assert refused.status_code == 422
    assert refused.json() == {"detail": "Value not accepted by the database"}
    assert hot_path_errors("CheckViolationError") == errors_before + served_by_layer
    assert sum(handovers(reason) for reason in HANDOVER_REASONS) == handovers_before
    history = await client.get(f"{BASE}/{session_id}/messages")
    assert history.json()["items"] == []
