"""Member messages: sending, Idempotency-Key, archived conversations, history paging."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from api_support import API, conversation, open_session, send_message, send_messages

# Every test here runs with the hot-path layer on and with it off (tests/conftest.py).
pytestmark = pytest.mark.both_paths

MESSAGE_FIELDS = {"id", "conversation_id", "seq", "role", "content", "created_at"}


async def _history(client: httpx.AsyncClient, session_id: str, **params: Any) -> httpx.Response:
    return await client.get(f"{API}/sessions/{session_id}/messages", params=params)


def _numbers(page: dict[str, Any]) -> list[int]:
    return [int(item["content"].split()[-1]) for item in page["items"]]


async def test_sending_a_message_answers_201_with_a_user_message(
    client: httpx.AsyncClient,
) -> None:
    session = await open_session(client)
    response = await send_message(client, session["session_id"], "How do I raise my limit?")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == MESSAGE_FIELDS
    assert body["role"] == "user"
    assert body["content"] == "How do I raise my limit?"
    assert body["conversation_id"] == session["conversation_id"]
    assert body["seq"] == 1
    uuid.UUID(body["id"])
    assert datetime.fromisoformat(body["created_at"]).utcoffset() is not None


async def test_content_is_stored_exactly_as_sent(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    content = '  spaced\n\tlines ✓ 💳 "quotes" <b>html</b>  '
    await send_message(client, session["session_id"], content)
    page = (await _history(client, session["session_id"])).json()
    assert page["items"][0]["content"] == content


async def test_seq_increases_by_one_per_message(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    seqs = [
        (await send_message(client, session["session_id"], f"m{n}")).json()["seq"] for n in range(5)
    ]
    assert seqs == [1, 2, 3, 4, 5]


async def test_a_repeat_with_the_same_idempotency_key_replays_the_original_with_200(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    first = await send_message(client, session["session_id"], "hello", key="key-1")
    again = await send_message(client, session["session_id"], "hello", key="key-1")
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == first.json()
    found = await conversation(client, service_headers, session["conversation_id"])
    assert found["message_count"] == 1


async def test_the_same_idempotency_key_with_other_content_is_422(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    await send_message(client, session["session_id"], "hello", key="key-1")
    response = await send_message(client, session["session_id"], "goodbye", key="key-1")
    assert response.status_code == 422
    assert "goodbye" not in response.text
    found = await conversation(client, service_headers, session["conversation_id"])
    assert found["message_count"] == 1


async def test_idempotency_keys_are_scoped_per_conversation(client: httpx.AsyncClient) -> None:
    first = await open_session(client)
    second = await open_session(client)
    a = await send_message(client, first["session_id"], "hello", key="shared-key")
    b = await send_message(client, second["session_id"], "hello", key="shared-key")
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]


async def test_different_idempotency_keys_store_separate_messages(
    client: httpx.AsyncClient,
) -> None:
    session = await open_session(client)
    a = await send_message(client, session["session_id"], "hello", key="key-a")
    b = await send_message(client, session["session_id"], "hello", key="key-b")
    assert (a.status_code, b.status_code) == (201, 201)


@pytest.mark.parametrize(("length", "status"), [(1, 201), (255, 201), (256, 422)])
async def test_idempotency_keys_of_1_to_255_characters_are_accepted(
    client: httpx.AsyncClient, length: int, status: int
) -> None:
    session = await open_session(client)
    response = await send_message(client, session["session_id"], "hello", key="k" * length)
    assert response.status_code == status


async def test_an_empty_idempotency_key_is_422(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    response = await send_message(client, session["session_id"], "hello", key="")
    assert response.status_code == 422


async def test_posting_to_an_archived_conversation_is_409(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    archived = await client.patch(
        f"{API}/conversations/{session['conversation_id']}",
        json={"status": "archived"},
        headers=service_headers,
    )
    assert archived.status_code == 200
    response = await send_message(client, session["session_id"], "anyone there?")
    assert response.status_code == 409
    found = await conversation(client, service_headers, session["conversation_id"])
    assert found["message_count"] == 0


async def test_a_closed_conversation_still_accepts_member_messages(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    await client.patch(
        f"{API}/conversations/{session['conversation_id']}",
        json={"status": "closed"},
        headers=service_headers,
    )
    assert (await send_message(client, session["session_id"], "one more")).status_code == 201


async def test_every_message_bumps_the_conversations_updated_at(
    committed_client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(committed_client)
    stamps = [session["updated_at"]]
    for number in range(2):
        await send_message(committed_client, session["session_id"], f"m{number}")
        current = await committed_client.get(f"{API}/sessions/{session['session_id']}")
        stamps.append(current.json()["updated_at"])
    moments = [datetime.fromisoformat(stamp) for stamp in stamps]
    assert moments[0] < moments[1] < moments[2]


# --- history -----------------------------------------------------------------------------


async def test_history_without_a_cursor_is_the_latest_50_oldest_first(
    client: httpx.AsyncClient,
) -> None:
    session = await open_session(client)
    await send_messages(client, session["session_id"], 60)
    page = (await _history(client, session["session_id"])).json()
    assert _numbers(page) == list(range(11, 61))
    assert page["has_more"] is True


async def test_history_of_an_empty_conversation_is_empty(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    response = await _history(client, session["session_id"])
    assert response.status_code == 200
    assert response.json() == {"items": [], "has_more": False}


async def test_history_with_a_limit_returns_the_latest_that_many(
    client: httpx.AsyncClient,
) -> None:
    session = await open_session(client)
    await send_messages(client, session["session_id"], 10)
    page = (await _history(client, session["session_id"], limit=3)).json()
    assert _numbers(page) == [8, 9, 10]
    assert page["has_more"] is True


async def test_has_more_is_false_when_everything_fits(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    await send_messages(client, session["session_id"], 5)
    page = (await _history(client, session["session_id"], limit=5)).json()
    assert _numbers(page) == [1, 2, 3, 4, 5]
    assert page["has_more"] is False


async def test_before_returns_the_latest_older_messages(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    await send_messages(client, session["session_id"], 10)
    page = (await _history(client, session["session_id"], before=6, limit=3)).json()
    assert [item["seq"] for item in page["items"]] == [3, 4, 5]
    assert page["has_more"] is True
    first = (await _history(client, session["session_id"], before=3, limit=3)).json()
    assert [item["seq"] for item in first["items"]] == [1, 2]
    assert first["has_more"] is False


async def test_after_returns_the_first_newer_messages(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    await send_messages(client, session["session_id"], 10)
    page = (await _history(client, session["session_id"], after=2, limit=3)).json()
    assert [item["seq"] for item in page["items"]] == [3, 4, 5]
    assert page["has_more"] is True
    last = (await _history(client, session["session_id"], after=7, limit=3)).json()
    assert [item["seq"] for item in last["items"]] == [8, 9, 10]
    assert last["has_more"] is False


async def test_after_the_newest_message_is_an_empty_page(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    await send_messages(client, session["session_id"], 3)
    page = (await _history(client, session["session_id"], after=3)).json()
    assert page == {"items": [], "has_more": False}


@pytest.mark.parametrize("limit", [1, 200])
async def test_limits_of_1_to_200_are_accepted(client: httpx.AsyncClient, limit: int) -> None:
    session = await open_session(client)
    assert (await _history(client, session["session_id"], limit=limit)).status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 201},
        {"limit": -1},
        {"limit": "ten"},
        {"limit": ""},
        {"before": -1},
        {"after": "x"},
        {"before": 2**63},
        {"before": 1, "after": 0},
    ],
)
async def test_bad_paging_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    session = await open_session(client)
    assert (await _history(client, session["session_id"], **params)).status_code == 422


async def test_a_full_history_walk_backwards_and_forwards_has_no_gaps_or_duplicates(
    client: httpx.AsyncClient, connection: Any
) -> None:
    from sqlalchemy import text

    session = await open_session(client)
    total = 350
    await connection.execute(
        text(
            "INSERT INTO messages (conversation_id, role, content) "
            "SELECT CAST(:id AS uuid), CASE WHEN n % 2 = 0 THEN 'assistant' ELSE 'user' END, "
            "'message ' || n FROM generate_series(1, :total) AS n ORDER BY n"
        ),
        {"id": session["conversation_id"], "total": total},
    )

    backwards: list[int] = []
    page = (await _history(client, session["session_id"], limit=40)).json()
    while True:
        seqs = [item["seq"] for item in page["items"]]
        assert seqs == sorted(seqs)
        assert _numbers(page) == seqs
        backwards = seqs + backwards
        if not page["has_more"]:
            break
        page = (await _history(client, session["session_id"], limit=40, before=seqs[0])).json()
    assert backwards == list(range(1, total + 1))

    forwards: list[int] = []
    cursor = 0
    while True:
        page = (await _history(client, session["session_id"], limit=40, after=cursor)).json()
        seqs = [item["seq"] for item in page["items"]]
        assert seqs == sorted(seqs)
        forwards += seqs
        if not page["has_more"]:
            break
        cursor = seqs[-1]
    assert forwards == list(range(1, total + 1))


async def test_before_and_after_together_are_named_in_the_error(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    response = await _history(client, session["session_id"], before=5, after=1)
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "type": "value_error",
                "loc": ["query", "after"],
                "msg": "give at most one of before, after",
            }
        ]
    }
