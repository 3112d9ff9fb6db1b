"""Service routes over users: read by id or email, erase with everything they own."""

from __future__ import annotations

import uuid

import httpx
import pytest
from api_support import API, escalate, identity, open_session, send_message, user_of

USER_FIELDS = {"id", "email", "email_verified", "name", "phone", "created_at", "updated_at"}


async def test_reading_a_user_returns_their_contact_details(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client, name="Ada", email="ada@example.org", phone="+1 555 0100")
    user = await user_of(client, service_headers, session["conversation_id"])
    assert set(user) == USER_FIELDS
    assert (user["name"], user["email"], user["phone"]) == ("Ada", "ada@example.org", "+1 555 0100")


async def test_an_anonymous_user_has_no_contact_details(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    user = await user_of(client, service_headers, session["conversation_id"])
    assert (user["name"], user["email"], user["phone"]) == (None, None, None)


async def test_reading_an_unknown_user_is_404(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.get(f"{API}/users/{uuid.uuid4()}", headers=service_headers)
    assert response.status_code == 404


@pytest.mark.parametrize("email", ["ada@example.org", "ADA@Example.org", "  ada@example.org "])
async def test_finding_a_user_by_email_ignores_case_and_spaces(
    client: httpx.AsyncClient, service_headers: dict[str, str], email: str
) -> None:
    session = await open_session(client, email="ada@example.org")
    expected = await user_of(client, service_headers, session["conversation_id"])
    response = await client.get(f"{API}/users", params={"email": email}, headers=service_headers)
    assert response.status_code == 200
    assert response.json() == expected


async def test_finding_an_unknown_email_is_404(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.get(
        f"{API}/users", params={"email": "nobody@example.org"}, headers=service_headers
    )
    assert response.status_code == 404


@pytest.mark.parametrize("params", [{}, {"email": "not-an-email"}, {"email": ""}])
async def test_finding_by_a_missing_or_invalid_email_is_422(
    client: httpx.AsyncClient, service_headers: dict[str, str], params: dict[str, str]
) -> None:
    response = await client.get(f"{API}/users", params=params, headers=service_headers)
    assert response.status_code == 422


async def test_erasing_a_user_answers_204_and_removes_everything_they_own(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client, email="erase-me@example.org")
    await send_message(client, session["session_id"], "my account number is 1234")
    escalation = (await escalate(client, session["session_id"])).json()
    user = await user_of(client, service_headers, session["conversation_id"])
    bystander = await open_session(client)

    response = await client.delete(f"{API}/users/{user['id']}", headers=service_headers)

    assert response.status_code == 204
    assert response.content == b""
    for path in (
        f"/users/{user['id']}",
        f"/conversations/{session['conversation_id']}",
        f"/conversations/{session['conversation_id']}/messages",
        f"/escalations/{escalation['id']}",
    ):
        assert (await client.get(f"{API}{path}", headers=service_headers)).status_code == 404
    assert (await client.get(f"{API}/sessions/{session['session_id']}")).status_code == 404
    found = await client.get(
        f"{API}/users", params={"email": "erase-me@example.org"}, headers=service_headers
    )
    assert found.status_code == 404
    queue = await client.get(f"{API}/escalations", headers=service_headers)
    assert escalation["id"] not in queue.text
    assert (await client.get(f"{API}/sessions/{bystander['session_id']}")).status_code == 200


async def test_erasing_a_user_removes_all_their_linked_conversations(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    first = await open_session(client, identity=identity("member@example.org"))
    second = await open_session(client, identity=identity("member@example.org"))
    user = await user_of(client, service_headers, first["conversation_id"])
    assert user["email_verified"]
    await client.delete(f"{API}/users/{user['id']}", headers=service_headers)
    for session in (first, second):
        assert (await client.get(f"{API}/sessions/{session['session_id']}")).status_code == 404


async def test_erasing_an_unknown_user_is_404(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.delete(f"{API}/users/{uuid.uuid4()}", headers=service_headers)
    assert response.status_code == 404
