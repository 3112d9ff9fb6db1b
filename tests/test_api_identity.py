"""Member identity: contact takeover through a typed email, and verified identities.

Each test plays the member or the attacker over HTTP against the real app, as the
chat frontend (or someone with only a session id and a victim's email) would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_support import API, conversation, escalate, identity, open_session, user_of
from conftest import make_settings, started_client
from sqlalchemy.ext.asyncio import AsyncEngine

from app.identity import IDENTITY_OFF_DETAIL

SESSION_FIELDS = {"session_id", "conversation_id", "status", "created_at", "updated_at"}
VICTIM = "victim@example.org"
ATTACKER_PHONE = "+1 555 0666"


async def _patch(client: httpx.AsyncClient, session_id: str, body: Any) -> httpx.Response:
    return await client.patch(f"{API}/sessions/{session_id}/contact", json=body)


async def _verify(
    client: httpx.AsyncClient, session_id: str, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(f"{API}/sessions/{session_id}/identity", json={"identity": body})


async def _find(client: httpx.AsyncClient, headers: dict[str, str], email: str) -> httpx.Response:
    return await client.get(f"{API}/users", params={"email": email}, headers=headers)


def _comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted(
        (k, v) for k, v in response.headers.items() if k.lower() not in {"date", "x-request-id"}
    )
    return response.status_code, response.content, headers


# Finding 1: knowing a member's email let anyone plant a phone on their record.


@pytest.mark.parametrize("victim_verified", [False, True], ids=["typed", "verified"])
async def test_an_attacker_knowing_the_victims_email_cannot_take_over_their_contact(
    client: httpx.AsyncClient, service_headers: dict[str, str], victim_verified: bool
) -> None:
    if victim_verified:
        victim = await open_session(client, identity=identity(VICTIM))
        assert (await _patch(client, victim["session_id"], {"name": "Vera"})).status_code == 204
    else:
        victim = await open_session(client, name="Vera", email=VICTIM)
    victim_before = await user_of(client, service_headers, victim["conversation_id"])
    attacker = await open_session(client)
    attacker_user = (await conversation(client, service_headers, attacker["conversation_id"]))[
        "user_id"
    ]

    planted = await _patch(
        client, attacker["session_id"], {"email": VICTIM, "phone": ATTACKER_PHONE}
    )

    assert planted.status_code == 204
    # The victim's record is untouched and the attacker's conversation did not move.
    assert await user_of(client, service_headers, victim["conversation_id"]) == victim_before
    moved = await conversation(client, service_headers, attacker["conversation_id"])
    assert moved["user_id"] == attacker_user
    # The victim still edits their own details.
    own = await _patch(client, victim["session_id"], {"phone": "+1 555 0100"})
    assert own.status_code == 204
    victim_after = await user_of(client, service_headers, victim["conversation_id"])
    assert victim_after["phone"] == "+1 555 0100"
    # Staff get the victim's phone on the victim's escalation, not the attacker's ...
    victim_case = await escalate(client, victim["session_id"])
    stored = await client.get(
        f"{API}/escalations/{victim_case.json()['id']}", headers=service_headers
    )
    assert stored.json()["contact_info"]["phone"] == "+1 555 0100"
    # ... and the attacker's escalation carries nothing of the victim's but the typed,
    # unverified email.
    attacker_case = await escalate(client, attacker["session_id"])
    stored = await client.get(
        f"{API}/escalations/{attacker_case.json()['id']}", headers=service_headers
    )
    assert stored.json()["contact_info"] == {
        "email": VICTIM,
        "email_verified": False,
        "phone": ATTACKER_PHONE,
    }


async def test_a_known_and_an_unknown_email_get_the_same_answer(
    client: httpx.AsyncClient,
) -> None:
    await open_session(client, identity=identity(VICTIM))
    probe = await open_session(client)
    known = await _patch(client, probe["session_id"], {"email": VICTIM})
    unknown = await _patch(client, probe["session_id"], {"email": "nobody-here@example.org"})
    assert _comparable(known) == _comparable(unknown)


# Identity verification.


async def test_a_valid_identity_on_a_new_session_joins_the_verified_user(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.post(f"{API}/sessions", json={"identity": identity("ada@example.org")})
    assert response.status_code == 201
    assert set(response.json()) == SESSION_FIELDS
    user = await user_of(client, service_headers, response.json()["conversation_id"])
    assert (user["email"], user["email_verified"]) == ("ada@example.org", True)


async def test_a_valid_identity_on_an_existing_session_moves_it_and_removes_the_anonymous_user(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client, name="Typed Name")
    anonymous = (await conversation(client, service_headers, session["conversation_id"]))["user_id"]
    response = await _verify(client, session["session_id"], identity("ada@example.org"))
    assert response.status_code == 200
    assert set(response.json()) == SESSION_FIELDS
    assert response.json()["session_id"] == session["session_id"]
    user = await user_of(client, service_headers, session["conversation_id"])
    assert (user["email"], user["email_verified"]) == ("ada@example.org", True)
    gone = await client.get(f"{API}/users/{anonymous}", headers=service_headers)
    assert gone.status_code == 404


async def test_the_signature_is_over_the_normalised_email_and_any_hex_case(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    signed = identity("ada@example.org")
    body = {"email": "  Ada@Example.ORG ", "signature": signed["signature"].upper()}
    session = await open_session(client, identity=body)
    user = await user_of(client, service_headers, session["conversation_id"])
    assert (user["email"], user["email_verified"]) == ("ada@example.org", True)


@pytest.mark.parametrize(
    "forged",
    [
        identity("ada@example.org", secret="not-the-secret-" + "x" * 32),
        {"email": "ada@example.org", "signature": identity("eve@example.org")["signature"]},
        {"email": "ada@example.org", "signature": "0" * 64},
    ],
    ids=["other-secret", "other-email", "zeros"],
)
async def test_a_wrong_signature_is_401_and_opens_no_session(
    client: httpx.AsyncClient, service_headers: dict[str, str], forged: dict[str, str]
) -> None:
    session_id = "forged-identity-session-0001"
    response = await client.post(
        f"{API}/sessions", json={"session_id": session_id, "identity": forged}
    )
    assert response.status_code == 401
    assert "ada@example.org" not in response.text
    assert (await client.get(f"{API}/sessions/{session_id}")).status_code == 404
    assert (await _find(client, service_headers, "ada@example.org")).status_code == 404


async def test_a_wrong_signature_on_an_existing_session_is_401_and_changes_nothing(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    await open_session(client, identity=identity(VICTIM))
    victim_before = (await _find(client, service_headers, VICTIM)).json()
    session = await open_session(client, name="Eve")
    before = await conversation(client, service_headers, session["conversation_id"])
    forged = {"email": VICTIM, "signature": identity("eve@example.org")["signature"]}

    response = await _verify(client, session["session_id"], forged)

    assert response.status_code == 401
    after = await conversation(client, service_headers, session["conversation_id"])
    assert after["user_id"] == before["user_id"]
    assert (await user_of(client, service_headers, session["conversation_id"]))["name"] == "Eve"
    assert (await _find(client, service_headers, VICTIM)).json() == victim_before


@pytest.mark.parametrize(
    "body",
    [
        {"email": "ada@example.org"},
        {"email": "ada@example.org", "signature": "xyz"},
        {"email": "ada@example.org", "signature": "a" * 63},
        {"email": "not-an-email", "signature": "a" * 64},
        {"signature": "a" * 64},
    ],
)
async def test_a_malformed_identity_is_422(client: httpx.AsyncClient, body: dict[str, str]) -> None:
    session = await open_session(client)
    assert (await _verify(client, session["session_id"], body)).status_code == 422
    response = await client.post(f"{API}/sessions", json={"identity": body})
    assert response.status_code == 422


async def test_a_typed_email_other_than_the_identitys_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/sessions",
        json={"email": "other@example.org", "identity": identity("ada@example.org")},
    )
    assert response.status_code == 422


async def test_identity_for_an_unknown_session_is_404(client: httpx.AsyncClient) -> None:
    response = await _verify(client, "no-such-session-000000", identity("ada@example.org"))
    assert response.status_code == 404


async def test_reusing_an_identity_in_a_second_session_links_both_to_one_verified_user(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    first = await open_session(client, identity=identity("ada@example.org"))
    second = await open_session(client)
    assert (await _verify(client, second["session_id"], identity("ada@example.org"))).is_success
    one = await user_of(client, service_headers, first["conversation_id"])
    other = await user_of(client, service_headers, second["conversation_id"])
    assert one["id"] == other["id"]
    assert one["email_verified"]
    assert (await _find(client, service_headers, "ada@example.org")).json()["id"] == one["id"]
    listed = await client.get(
        f"{API}/conversations", params={"user_id": one["id"]}, headers=service_headers
    )
    assert {item["id"] for item in listed.json()["items"]} == {
        first["conversation_id"],
        second["conversation_id"],
    }


async def test_a_second_session_learns_nothing_of_the_verified_user(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    first = await open_session(client, identity=identity("ada@example.org"))
    await _patch(client, first["session_id"], {"name": "Ada Lovelace", "phone": "+1 555 0111"})
    user = await user_of(client, service_headers, first["conversation_id"])

    opened = await client.post(f"{API}/sessions", json={"identity": identity("ada@example.org")})
    verified = await _verify(client, opened.json()["session_id"], identity("ada@example.org"))
    read = await client.get(f"{API}/sessions/{opened.json()['session_id']}")

    for response in (opened, verified, read):
        assert response.is_success
        for secret in ("Ada Lovelace", "555 0111", "ada@example.org", user["id"]):
            assert secret not in response.text


async def test_an_existing_session_id_with_an_identity_is_200_unchanged(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client, session_id="existing-session-identity-01")
    before = await conversation(client, service_headers, session["conversation_id"])
    again = await client.post(
        f"{API}/sessions",
        json={"session_id": session["session_id"], "identity": identity("ada@example.org")},
    )
    assert again.status_code == 200
    after = await conversation(client, service_headers, session["conversation_id"])
    assert after["user_id"] == before["user_id"]


async def test_the_service_finds_a_verified_user_before_typed_copies(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    verified = await open_session(client, identity=identity("ada@example.org"))
    await open_session(client, email="ada@example.org", name="Someone Typing")
    found = await _find(client, service_headers, "ada@example.org")
    expected = await user_of(client, service_headers, verified["conversation_id"])
    assert found.json() == expected


async def test_an_escalation_says_whether_its_email_is_verified(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    verified = await open_session(client, identity=identity("ada@example.org"))
    typed = await open_session(client, email="ada@example.org")
    for session, expected in ((verified, True), (typed, False)):
        created = await escalate(client, session["session_id"])
        stored = await client.get(
            f"{API}/escalations/{created.json()['id']}", headers=service_headers
        )
        assert stored.json()["contact_info"] == {
            "email": "ada@example.org",
            "email_verified": expected,
        }


# Without IDENTITY_SECRET nothing can verify: said plainly, nothing stored.


@pytest.fixture
async def no_secret_client(
    database_url: str, committed_engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    async with started_client(make_settings(database_url, identity_secret=None)) as http:
        yield http


async def test_without_a_secret_identity_is_422_saying_verification_is_off(
    no_secret_client: httpx.AsyncClient,
) -> None:
    session_id = "identity-off-session-00001"
    signed = identity("ada@example.org")
    opened = await no_secret_client.post(
        f"{API}/sessions", json={"session_id": session_id, "identity": signed}
    )
    assert opened.status_code == 422
    assert opened.json()["detail"] == IDENTITY_OFF_DETAIL
    assert (await no_secret_client.get(f"{API}/sessions/{session_id}")).status_code == 404
    session = await open_session(no_secret_client)
    attached = await _verify(no_secret_client, session["session_id"], signed)
    assert attached.status_code == 422
    assert "off" in attached.json()["detail"]


# Concurrency, with real commits.


async def test_two_sessions_verifying_one_new_email_at_once_share_one_verified_user(
    committed_client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    for round_number in range(5):
        email = f"race-{round_number}@example.org"
        sessions = [await open_session(committed_client) for _ in range(4)]
        responses = await asyncio.gather(
            *(_verify(committed_client, s["session_id"], identity(email)) for s in sessions)
        )
        assert [r.status_code for r in responses] == [200] * 4
        owners = {
            (await conversation(committed_client, service_headers, s["conversation_id"]))["user_id"]
            for s in sessions
        }
        assert len(owners) == 1


async def test_twenty_crossing_pairs_of_contact_and_identity_requests_get_no_5xx(
    committed_client: httpx.AsyncClient,
) -> None:
    # Each pair points at the other's email at once, by typing it and by verifying it:
    # under the old relink rule these crossed links deadlocked (500).
    pairs = []
    for number in range(20):
        left = await open_session(committed_client, email=f"left-{number}@example.org")
        right = await open_session(committed_client, email=f"right-{number}@example.org")
        pairs.append((number, left["session_id"], right["session_id"]))
    requests = []
    for number, left, right in pairs:
        requests += [
            _patch(committed_client, left, {"email": f"right-{number}@example.org"}),
            _patch(committed_client, right, {"email": f"left-{number}@example.org"}),
            _verify(committed_client, left, identity(f"right-{number}@example.org")),
            _verify(committed_client, right, identity(f"left-{number}@example.org")),
        ]
    responses = await asyncio.gather(*requests)
    statuses = [response.status_code for response in responses]
    assert all(status < 500 for status in statuses), statuses
    assert set(statuses) <= {200, 204, 409}
