"""Small helpers the HTTP tests share: build sessions, messages and escalations via the API."""

from __future__ import annotations

from typing import Any

import httpx
from conftest import IDENTITY_SECRET

from app.identity import sign

API = "/api/v1"


def identity(email: str, secret: str = IDENTITY_SECRET) -> dict[str, str]:
    """An identity as the credit union's app signs it (email already normalised)."""
    return {"email": email, "signature": sign(secret, email)}


async def open_session(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """POST /sessions and return the new Session (asserting 201)."""
    response = await client.post(f"{API}/sessions", json=body or None)
    assert response.status_code == 201, response.text
    session: dict[str, Any] = response.json()
    return session


async def send_message(
    client: httpx.AsyncClient, session_id: str, content: str, key: str | None = None
) -> httpx.Response:
    """POST a member message, optionally with an Idempotency-Key."""
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await client.post(
        f"{API}/sessions/{session_id}/messages", json={"content": content}, headers=headers
    )


async def send_messages(client: httpx.AsyncClient, session_id: str, count: int) -> None:
    """Post `count` member messages numbered 1..count."""
    for number in range(1, count + 1):
        response = await send_message(client, session_id, f"message {number}")
        assert response.status_code == 201, response.text


async def escalate(
    client: httpx.AsyncClient,
    session_id: str,
    issue_type: str = "loan",
    original_request: str = "I need a person",
    contact_info: dict[str, Any] | None = None,
) -> httpx.Response:
    """POST /sessions/{id}/escalations."""
    body: dict[str, Any] = {"issue_type": issue_type, "original_request": original_request}
    if contact_info is not None:
        body["contact_info"] = contact_info
    return await client.post(f"{API}/sessions/{session_id}/escalations", json=body)


async def set_escalation_status(
    client: httpx.AsyncClient, headers: dict[str, str], escalation_id: str, status: str
) -> httpx.Response:
    """PATCH /escalations/{id} with a service key."""
    return await client.patch(
        f"{API}/escalations/{escalation_id}", json={"status": status}, headers=headers
    )


async def conversation(
    client: httpx.AsyncClient, headers: dict[str, str], conversation_id: str
) -> dict[str, Any]:
    """GET /conversations/{id} (asserting 200)."""
    response = await client.get(f"{API}/conversations/{conversation_id}", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def user_of(
    client: httpx.AsyncClient, headers: dict[str, str], conversation_id: str
) -> dict[str, Any]:
    """The User behind a conversation, through the service routes."""
    found = await conversation(client, headers, conversation_id)
    response = await client.get(f"{API}/users/{found['user_id']}", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
