"""PATCH /sessions/{id}/contact: normalisation, clearing, and only the session's own user."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from api_support import API, conversation, identity, open_session, user_of

# Every test here runs with the hot-path layer on and with it off (tests/conftest.py).
pytestmark = pytest.mark.both_paths


async def _patch(client: httpx.AsyncClient, session_id: str, body: Any) -> httpx.Response:
    return await client.patch(f"{API}/sessions/{session_id}/contact", json=body)


async def test_contact_update_answers_204_with_no_body(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    response = await _patch(client, session["session_id"], {"name": "Ada"})
    assert response.status_code == 204
    assert response.content == b""


async def test_email_is_trimmed_and_lower_cased(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    response = await _patch(client, session["session_id"], {"email": "  Ada.L@Example.ORG\t"})
    assert response.status_code == 204
    user = await user_of(client, service_headers, session["conversation_id"])
    assert user["email"] == "ada.l@example.org"


@pytest.mark.parametrize(
    "email",
    [
        "not-an-email",
        "a@",
        "@example.org",
        "a b@example.org",
        "",
        "   ",
        "a@b@c.org",
        "x" * 250 + "@example.org",
        42,
    ],
)
async def test_an_invalid_email_is_refused_with_422(
    client: httpx.AsyncClient, email: object
) -> None:
    session = await open_session(client)
    response = await _patch(client, session["session_id"], {"email": email})
    assert response.status_code == 422


async def test_only_the_fields_sent_change(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client, name="Ada", phone="+1 555 0100")
    assert (
        await _patch(client, session["session_id"], {"email": "ada@example.org"})
    ).status_code == 204
    user = await user_of(client, service_headers, session["conversation_id"])
    assert (user["name"], user["email"], user["phone"]) == ("Ada", "ada@example.org", "+1 555 0100")


@pytest.mark.parametrize("field", ["name", "email", "phone"])
async def test_null_clears_a_field(
    client: httpx.AsyncClient, service_headers: dict[str, str], field: str
) -> None:
    session = await open_session(
        client, name="Ada", email="clear-me@example.org", phone="+1 555 0100"
    )
    assert (await _patch(client, session["session_id"], {field: None})).status_code == 204
    user = await user_of(client, service_headers, session["conversation_id"])
    assert user[field] is None
    others = {"name", "email", "phone"} - {field}
    assert all(user[other] is not None for other in others)


async def test_an_empty_update_is_refused_with_422(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    assert (await _patch(client, session["session_id"], {})).status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "x" * 256},
        {"phone": "call me maybe"},
        {"phone": "1" * 51},
        {"address": "1 Main St"},
        {"name": "Ada\u0000"},
        [],
        "Ada",
        None,
    ],
)
async def test_invalid_contact_bodies_are_refused_with_422(
    client: httpx.AsyncClient, body: Any
) -> None:
    session = await open_session(client)
    assert (await _patch(client, session["session_id"], body)).status_code == 422


async def test_an_email_another_user_has_stays_on_this_sessions_own_user(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    known = await open_session(client, name="Known Member", email="member@example.org")
    owner_before = await user_of(client, service_headers, known["conversation_id"])
    other = await open_session(client)
    own_id = (await conversation(client, service_headers, other["conversation_id"]))["user_id"]

    response = await _patch(client, other["session_id"], {"email": "MEMBER@example.org"})

    assert response.status_code == 204
    own = await user_of(client, service_headers, other["conversation_id"])
    assert own["id"] == own_id
    assert (own["email"], own["email_verified"]) == ("member@example.org", False)
    assert await user_of(client, service_headers, known["conversation_id"]) == owner_before


async def test_opening_a_session_with_a_known_email_gives_it_a_user_of_its_own(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    known = await open_session(client, name="Known Member", email="member@example.org")
    owner = await user_of(client, service_headers, known["conversation_id"])
    second = await open_session(client, name="Someone Else", email="Member@Example.org")
    own = await user_of(client, service_headers, second["conversation_id"])
    assert own["id"] != owner["id"]
    assert (own["name"], own["email"]) == ("Someone Else", "member@example.org")
    assert (await user_of(client, service_headers, known["conversation_id"]))["name"] == (
        "Known Member"
    )


async def test_a_verified_sessions_email_cannot_be_changed_by_a_member(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client, identity=identity("verified@example.org"))
    for body in ({"email": "other@example.org"}, {"email": None}):
        response = await _patch(client, session["session_id"], body)
        assert response.status_code == 409
        assert "verified" in response.json()["detail"]
    user = await user_of(client, service_headers, session["conversation_id"])
    assert (user["email"], user["email_verified"]) == ("verified@example.org", True)


async def test_a_verified_member_edits_their_own_name_and_phone(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client, identity=identity("verified@example.org"))
    response = await _patch(
        client,
        session["session_id"],
        {"email": "Verified@Example.org", "name": "Ada", "phone": "+1 555 0100"},
    )
    assert response.status_code == 204
    user = await user_of(client, service_headers, session["conversation_id"])
    assert (user["email"], user["email_verified"], user["name"], user["phone"]) == (
        "verified@example.org",
        True,
        "Ada",
        "+1 555 0100",
    )


async def test_changing_to_a_new_email_keeps_the_same_user(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client, email="old@example.org")
    before = await user_of(client, service_headers, session["conversation_id"])
    await _patch(client, session["session_id"], {"email": "new@example.org"})
    after = await user_of(client, service_headers, session["conversation_id"])
    assert after["id"] == before["id"]
    assert after["email"] == "new@example.org"
