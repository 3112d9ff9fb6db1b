"""Limits that protect the database: body size, page sizes, statement and pool timeouts, caps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from conftest import make_settings, started_client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.middleware import MAX_BODY_BYTES
from app.repositories.escalations import CONTEXT_MAX_BYTES
from app.schemas import CONTACT_INFO_MAX_BYTES

# Every test here runs with the hot-path layer on and with it off (tests/conftest.py).
pytestmark = pytest.mark.both_paths


async def _open_session(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.post("/api/v1/sessions")
    assert response.status_code == 201
    body: dict[str, str] = response.json()
    return body


async def _message_count(client: httpx.AsyncClient, session_id: str) -> int:
    page = await client.get(f"/api/v1/sessions/{session_id}/messages?limit=200")
    return len(page.json()["items"])


# --- request body size ---------------------------------------------------------------


async def test_a_body_over_64_kb_is_refused_with_413_and_nothing_is_stored(
    client: httpx.AsyncClient,
) -> None:
    session = await _open_session(client)
    body = b'{"content": "' + b"a" * MAX_BODY_BYTES + b'"}'
    response = await client.post(
        f"/api/v1/sessions/{session['session_id']}/messages",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert await _message_count(client, session["session_id"]) == 0


async def test_a_body_over_64_kb_without_content_length_is_refused_too(
    client: httpx.AsyncClient,
) -> None:
    session = await _open_session(client)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"content": "'
        for _ in range(80):
            yield b"a" * 1024
        yield b'"}'

    response = await client.post(
        f"/api/v1/sessions/{session['session_id']}/messages",
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert await _message_count(client, session["session_id"]) == 0


async def test_message_content_over_message_max_chars_is_422(client: httpx.AsyncClient) -> None:
    session = await _open_session(client)
    response = await client.post(
        f"/api/v1/sessions/{session['session_id']}/messages", json={"content": "a" * 8001}
    )
    assert response.status_code == 422
    assert await _message_count(client, session["session_id"]) == 0


async def test_an_idempotency_key_over_255_characters_is_422(client: httpx.AsyncClient) -> None:
    session = await _open_session(client)
    response = await client.post(
        f"/api/v1/sessions/{session['session_id']}/messages",
        json={"content": "hello"},
        headers={"Idempotency-Key": "k" * 256},
    )
    assert response.status_code == 422


# --- page sizes ------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, 201, -1])
async def test_a_member_page_size_outside_1_to_200_is_422(
    client: httpx.AsyncClient, limit: int
) -> None:
    session = await _open_session(client)
    response = await client.get(
        f"/api/v1/sessions/{session['session_id']}/messages", params={"limit": limit}
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "path", ["/api/v1/conversations", "/api/v1/escalations", "/api/v1/conversations/{id}/messages"]
)
async def test_a_service_page_size_over_200_is_422(
    client: httpx.AsyncClient, service_headers: dict[str, str], path: str
) -> None:
    session = await _open_session(client)
    response = await client.get(
        path.format(id=session["conversation_id"]), params={"limit": 201}, headers=service_headers
    )
    assert response.status_code == 422


async def test_a_page_never_holds_more_than_200_messages(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await _open_session(client)
    for number in range(205):
        await client.post(
            f"/api/v1/sessions/{session['session_id']}/messages", json={"content": f"m{number}"}
        )
    page = await client.get(
        f"/api/v1/sessions/{session['session_id']}/messages", params={"limit": 200}
    )
    assert page.status_code == 200
    assert len(page.json()["items"]) == 200
    assert page.json()["has_more"] is True


async def test_an_oversized_cursor_is_422_before_any_query(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.get(
        "/api/v1/conversations", params={"cursor": "x" * 513}, headers=service_headers
    )
    assert response.status_code == 422


# --- caps on stored JSON and text ---------------------------------------------------------


async def test_contact_info_over_4_kb_is_422_and_no_escalation_is_stored(
    client: httpx.AsyncClient,
) -> None:
    session = await _open_session(client)
    too_big = {"name": "x" * 200, "preferred_channel": "y" * (CONTACT_INFO_MAX_BYTES)}
    response = await client.post(
        f"/api/v1/sessions/{session['session_id']}/escalations",
        json={"issue_type": "loan", "original_request": "help", "contact_info": too_big},
    )
    assert response.status_code == 422
    listed = await client.get(f"/api/v1/sessions/{session['session_id']}/escalations")
    assert listed.json()["items"] == []


async def test_contact_info_with_unknown_keys_is_422(client: httpx.AsyncClient) -> None:
    session = await _open_session(client)
    response = await client.post(
        f"/api/v1/sessions/{session['session_id']}/escalations",
        json={"issue_type": "loan", "original_request": "help", "contact_info": {"ssn": "1"}},
    )
    assert response.status_code == 422


async def test_conversation_context_is_capped_at_16_kb_keeping_the_newest_text(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await _open_session(client)
    for number in range(25):
        await client.post(
            f"/api/v1/sessions/{session['session_id']}/messages",
            json={"content": f"message {number:02d} " + "é" * 7900},
        )
    created = await client.post(
        f"/api/v1/sessions/{session['session_id']}/escalations",
        json={"issue_type": "loan", "original_request": "help"},
    )
    assert created.status_code == 201
    escalation = await client.get(
        f"/api/v1/escalations/{created.json()['id']}", headers=service_headers
    )
    context = escalation.json()["conversation_context"]
    assert len(context.encode()) <= CONTEXT_MAX_BYTES
    assert context.endswith("é")
    assert "message 24 " in context
    assert "message 00 " not in context


# --- statement timeout and pool timeout (real commits, separate connections) --------------


@asynccontextmanager
async def _conversation_locked(engine: AsyncEngine, conversation_id: str) -> AsyncIterator[None]:
    """Hold the conversation row lock that every message append needs."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        await connection.execute(
            text("SELECT 1 FROM conversations WHERE id = :id FOR UPDATE"), {"id": conversation_id}
        )
        try:
            yield
        finally:
            await transaction.rollback()


async def test_a_statement_running_past_the_statement_timeout_answers_503(
    database_url: str, committed_engine: AsyncEngine
) -> None:
    async with started_client(make_settings(database_url, db_statement_timeout_ms=300)) as client:
        session = await _open_session(client)
        async with _conversation_locked(committed_engine, session["conversation_id"]):
            started = time.monotonic()
            response = await asyncio.wait_for(
                client.post(
                    f"/api/v1/sessions/{session['session_id']}/messages", json={"content": "hi"}
                ),
                5,
            )
            elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert elapsed < 2.0
        assert await _message_count(client, session["session_id"]) == 0


async def test_a_request_that_waits_past_the_pool_timeout_answers_503(
    database_url: str, committed_engine: AsyncEngine
) -> None:
    async with started_client(
        make_settings(database_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout_s=0.3)
    ) as client:
        session = await _open_session(client)
        async with _conversation_locked(committed_engine, session["conversation_id"]):
            # This request takes the only pooled connection and waits on the lock.
            holder = asyncio.create_task(
                client.post(
                    f"/api/v1/sessions/{session['session_id']}/messages", json={"content": "1"}
                )
            )
            await asyncio.sleep(0.2)
            started = time.monotonic()
            waiting = await asyncio.wait_for(
                client.get(f"/api/v1/sessions/{session['session_id']}"), 5
            )
            elapsed = time.monotonic() - started
        held = await holder
    assert waiting.status_code == 503
    assert 0.25 <= elapsed < 1.5
    assert held.status_code == 201
