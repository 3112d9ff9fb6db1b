"""PATCH /sessions/{id}/contact: normalisation, clearing, and the email relink rule."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from api_support import API, conversation, open_session, user_of


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


async def test_an_email_another_user_has_moves_the_conversation_to_that_user(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    known = await open_session(client, name="Known Member", email="member@example.org")
    owner = await user_of(client, service_headers, known["conversation_id"])
    anonymous = await open_session(client)
    anonymous_user_id = (await conversation(client, service_headers, anonymous["conversation_id"]))[
        "user_id"
    ]

    response = await _patch(client, anonymous["session_id"], {"email": "MEMBER@example.org"})

    assert response.status_code == 204
    moved = await conversation(client, service_headers, anonymous["conversation_id"])
    assert moved["user_id"] == owner["id"]
    gone = await client.get(f"{API}/users/{anonymous_user_id}", headers=service_headers)
    assert gone.status_code == 404


async def test_relinking_fills_only_the_owners_empty_fields(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    known = await open_session(client, name="Known Member", email="member@example.org")
    before = await user_of(client, service_headers, known["conversation_id"])
    anonymous = await open_session(client)

    response = await _patch(
        client,
        anonymous["session_id"],
        {"email": "member@example.org", "name": "Impostor", "phone": "+1 555 0199"},
    )

    assert response.status_code == 204
    after = await user_of(client, service_headers, known["conversation_id"])
    assert after["name"] == "Known Member"  # not overwritten
    assert after["email"] == "member@example.org"
    assert after["phone"] == "+1 555 0199"  # was empty: filled
    assert after["id"] == before["id"]


async def test_relinking_reveals_nothing_of_the_owner_to_the_session(
    client: httpx.AsyncClient,
) -> None:
    await open_session(client, name="Known Member", email="member@example.org", phone="+1 555 0111")
    anonymous = await open_session(client)
    response = await _patch(client, anonymous["session_id"], {"email": "member@example.org"})
    assert response.status_code == 204
    session = await client.get(f"{API}/sessions/{anonymous['session_id']}")
    assert "Known Member" not in session.text and "555 0111" not in session.text


async def test_relinking_keeps_the_owners_other_conversations(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    known = await open_session(client, email="member@example.org")
    owner = await user_of(client, service_headers, known["conversation_id"])
    anonymous = await open_session(client)
    await _patch(client, anonymous["session_id"], {"email": "member@example.org"})
    listed = await client.get(
        f"{API}/conversations", params={"user_id": owner["id"]}, headers=service_headers
    )
    ids = {item["id"] for item in listed.json()["items"]}
    assert ids == {known["conversation_id"], anonymous["conversation_id"]}


async def test_opening_a_session_with_a_known_email_links_it_to_that_user(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    known = await open_session(client, name="Known Member", email="member@example.org")
    owner = await user_of(client, service_headers, known["conversation_id"])
    second = await open_session(client, name="Someone Else", email="Member@Example.org")
    linked = await user_of(client, service_headers, second["conversation_id"])
    assert linked["id"] == owner["id"]
    assert linked["name"] == "Known Member"


async def test_a_linked_session_cannot_rewrite_the_shared_users_details(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    known = await open_session(client, name="Known Member", email="member@example.org")
    stranger = await open_session(client)
    await _patch(client, stranger["session_id"], {"email": "member@example.org"})
    response = await _patch(client, stranger["session_id"], {"name": "Rewritten", "phone": None})
    assert response.status_code == 204
    owner = await user_of(client, service_headers, known["conversation_id"])
    assert owner["name"] == "Known Member"


async def test_changing_to_a_new_email_keeps_the_same_user(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client, email="old@example.org")
    before = await user_of(client, service_headers, session["conversation_id"])
    await _patch(client, session["session_id"], {"email": "new@example.org"})
    after = await user_of(client, service_headers, session["conversation_id"])
    assert after["id"] == before["id"]
    assert after["email"] == "new@example.org"
