"""POST /sessions and GET /sessions/{id}: the member endpoints (docs/API.md)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

import httpx
import pytest
from api_support import API, open_session

# Every test here runs with the hot-path layer on and with it off (tests/conftest.py).
pytestmark = pytest.mark.both_paths

SESSION_FIELDS = {"session_id", "conversation_id", "status", "created_at", "updated_at"}


def _has_offset(timestamp: str) -> bool:
    return datetime.fromisoformat(timestamp).utcoffset() is not None


async def test_creating_a_session_without_a_body_answers_201_with_a_session(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(f"{API}/sessions")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == SESSION_FIELDS
    assert body["status"] == "active"
    uuid.UUID(body["conversation_id"])
    assert _has_offset(body["created_at"]) and _has_offset(body["updated_at"])


async def test_server_generated_session_ids_carry_at_least_128_random_bits(
    client: httpx.AsyncClient,
) -> None:
    ids = [(await open_session(client))["session_id"] for _ in range(20)]
    assert len(set(ids)) == len(ids)
    for session_id in ids:
        # URL-safe alphabet (6 bits a character), long enough for 128 bits.
        assert re.fullmatch(r"[A-Za-z0-9_-]+", session_id)
        assert len(session_id) * 6 >= 128
        assert 16 <= len(session_id) <= 255


async def test_a_client_session_id_is_used_as_given(client: httpx.AsyncClient) -> None:
    session_id = "client-Chosen_id-0123456789"
    body = await open_session(client, session_id=session_id)
    assert body["session_id"] == session_id


@pytest.mark.parametrize("length", [16, 255])
async def test_client_session_ids_of_16_to_255_characters_are_accepted(
    client: httpx.AsyncClient, length: int
) -> None:
    session_id = ("aZ9_-" * 60)[:length]
    body = await open_session(client, session_id=session_id)
    assert body["session_id"] == session_id


@pytest.mark.parametrize(
    "session_id",
    [
        "a" * 15,
        "a" * 256,
        "has space in it 123",
        "dots.are.not.allowed",
        "slash/not/allowed/x",
        "unicodé-not-allowed-x",
        "",
        12345678901234567890,
    ],
)
async def test_a_client_session_id_outside_the_alphabet_or_length_is_refused_with_422(
    client: httpx.AsyncClient, session_id: object
) -> None:
    response = await client.post(f"{API}/sessions", json={"session_id": session_id})
    assert response.status_code == 422


async def test_null_session_id_lets_the_server_choose(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{API}/sessions", json={"session_id": None})
    assert response.status_code == 201
    assert len(response.json()["session_id"]) >= 22


async def test_an_existing_session_id_answers_200_with_the_session_unchanged(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session_id = "existing-session-0123456789"
    first = await open_session(client, session_id=session_id, name="First Name")
    again = await client.post(
        f"{API}/sessions",
        json={"session_id": session_id, "name": "Other Name", "email": "other@example.org"},
    )
    assert again.status_code == 200
    assert again.json() == first
    user = await client.get(
        f"{API}/users",
        params={"email": "other@example.org"},
        headers=service_headers,
    )
    assert user.status_code == 404


async def test_contact_given_at_creation_is_stored_on_the_new_user(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(
        client, name=" Ada Lovelace ", email=" Ada@Example.ORG ", phone="+1 555 0100"
    )
    found = await client.get(
        f"{API}/users", params={"email": "ada@example.org"}, headers=service_headers
    )
    assert found.status_code == 200
    user = found.json()
    assert (user["name"], user["email"], user["phone"]) == (
        "Ada Lovelace",
        "ada@example.org",
        "+1 555 0100",
    )
    conversation = await client.get(
        f"{API}/conversations/{session['conversation_id']}", headers=service_headers
    )
    assert conversation.json()["user_id"] == user["id"]


async def test_reading_a_session_returns_it(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    response = await client.get(f"{API}/sessions/{session['session_id']}")
    assert response.status_code == 200
    assert response.json() == session


@pytest.mark.parametrize(
    "session_id", ["unknown-session-id-000000", "short", "x" * 300, "bad%20chars-0123456789"]
)
async def test_reading_an_unknown_session_is_404(
    client: httpx.AsyncClient, session_id: str
) -> None:
    response = await client.get(f"{API}/sessions/{session_id}")
    assert response.status_code == 404
    assert response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("PATCH", "/contact", {"name": "Ada"}),
        ("POST", "/messages", {"content": "hello"}),
        ("GET", "/messages", None),
        ("POST", "/escalations", {"issue_type": "loan", "original_request": "help"}),
        ("GET", "/escalations", None),
    ],
)
async def test_every_member_route_answers_404_never_403_for_an_unknown_session(
    client: httpx.AsyncClient, method: str, suffix: str, body: object
) -> None:
    response = await client.request(
        method, f"{API}/sessions/never-issued-session-0000{suffix}", json=body
    )
    assert response.status_code == 404
