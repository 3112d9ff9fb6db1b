"""Service routes over conversations: write messages, list, read, history, status."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest
from api_support import API, conversation, open_session, send_message, send_messages, user_of

CONVERSATION_FIELDS = {
    "id",
    "user_id",
    "status",
    "created_at",
    "updated_at",
    "message_count",
    "last_message_at",
}


async def _write(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    conversation_id: str,
    body: Any,
    key: str | None = None,
) -> httpx.Response:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return await client.post(
        f"{API}/conversations/{conversation_id}/messages", json=body, headers=headers | extra
    )


async def _list(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> httpx.Response:
    return await client.get(f"{API}/conversations", params=params, headers=headers)


# --- writing messages ----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["assistant", "user"])
async def test_the_service_writes_messages_of_either_role_with_201(
    client: httpx.AsyncClient, service_headers: dict[str, str], role: str
) -> None:
    session = await open_session(client)
    response = await _write(
        client, service_headers, session["conversation_id"], {"role": role, "content": "Hi"}
    )
    assert response.status_code == 201
    body = response.json()
    assert (body["role"], body["content"], body["seq"]) == (role, "Hi", 1)
    assert body["conversation_id"] == session["conversation_id"]


async def test_a_service_reply_shows_in_the_members_history_in_order(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    await send_message(client, session["session_id"], "question")
    await _write(
        client,
        service_headers,
        session["conversation_id"],
        {"role": "assistant", "content": "answer"},
    )
    page = (await client.get(f"{API}/sessions/{session['session_id']}/messages")).json()
    assert [(item["role"], item["content"]) for item in page["items"]] == [
        ("user", "question"),
        ("assistant", "answer"),
    ]


async def test_a_service_write_replays_on_the_same_idempotency_key(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    body = {"role": "assistant", "content": "reply"}
    first = await _write(client, service_headers, session["conversation_id"], body, key="r-1")
    again = await _write(client, service_headers, session["conversation_id"], body, key="r-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert (await conversation(client, service_headers, session["conversation_id"]))[
        "message_count"
    ] == 1


@pytest.mark.parametrize(
    "body", [{"role": "assistant", "content": "other"}, {"role": "user", "content": "reply"}]
)
async def test_a_service_write_with_a_reused_key_and_other_message_is_422(
    client: httpx.AsyncClient, service_headers: dict[str, str], body: dict[str, str]
) -> None:
    session = await open_session(client)
    original = {"role": "assistant", "content": "reply"}
    await _write(client, service_headers, session["conversation_id"], original, key="r-1")
    response = await _write(client, service_headers, session["conversation_id"], body, key="r-1")
    assert response.status_code == 422


async def test_a_service_write_to_an_archived_conversation_is_409(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    await client.patch(
        f"{API}/conversations/{session['conversation_id']}",
        json={"status": "archived"},
        headers=service_headers,
    )
    response = await _write(
        client, service_headers, session["conversation_id"], {"role": "assistant", "content": "x"}
    )
    assert response.status_code == 409


async def test_a_service_write_to_an_unknown_conversation_is_404(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await _write(
        client, service_headers, str(uuid.uuid4()), {"role": "assistant", "content": "x"}
    )
    assert response.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"role": "system", "content": "x"},
        {"role": "assistant"},
        {"content": "x"},
        {"role": "assistant", "content": " "},
        {"role": "assistant", "content": "a\u0000b"},
        {"role": "assistant", "content": "x", "extra": True},
    ],
)
async def test_a_bad_service_message_is_422(
    client: httpx.AsyncClient, service_headers: dict[str, str], body: dict[str, Any]
) -> None:
    session = await open_session(client)
    response = await _write(client, service_headers, session["conversation_id"], body)
    assert response.status_code == 422


# --- reading -------------------------------------------------------------------------------


async def test_reading_a_conversation_returns_counts_and_never_the_session_id(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    await send_messages(client, session["session_id"], 3)
    response = await client.get(
        f"{API}/conversations/{session['conversation_id']}", headers=service_headers
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == CONVERSATION_FIELDS
    assert body["message_count"] == 3
    assert body["last_message_at"] is not None
    assert session["session_id"] not in response.text


async def test_a_conversation_without_messages_has_no_last_message_time(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    body = await conversation(client, service_headers, session["conversation_id"])
    assert (body["message_count"], body["last_message_at"]) == (0, None)


async def test_reading_an_unknown_conversation_is_404(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.get(f"{API}/conversations/{uuid.uuid4()}", headers=service_headers)
    assert response.status_code == 404


async def test_the_service_history_pages_like_the_member_route(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    await send_messages(client, session["session_id"], 10)
    url = f"{API}/conversations/{session['conversation_id']}/messages"
    latest = (await client.get(url, params={"limit": 4}, headers=service_headers)).json()
    assert [item["seq"] for item in latest["items"]] == [7, 8, 9, 10]
    assert latest["has_more"] is True
    older = (
        await client.get(url, params={"limit": 4, "before": 7}, headers=service_headers)
    ).json()
    assert [item["seq"] for item in older["items"]] == [3, 4, 5, 6]
    newer = (await client.get(url, params={"limit": 4, "after": 8}, headers=service_headers)).json()
    assert [item["seq"] for item in newer["items"]] == [9, 10]
    assert newer["has_more"] is False
    both = await client.get(url, params={"before": 5, "after": 1}, headers=service_headers)
    assert both.status_code == 422


async def test_the_service_history_of_an_unknown_conversation_is_404(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.get(
        f"{API}/conversations/{uuid.uuid4()}/messages", headers=service_headers
    )
    assert response.status_code == 404


# --- listing -------------------------------------------------------------------------------


async def test_the_list_is_ordered_by_last_activity_newest_first(
    committed_client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    first = await open_session(committed_client)
    second = await open_session(committed_client)
    third = await open_session(committed_client)
    await send_message(committed_client, first["session_id"], "bump")
    response = await _list(committed_client, service_headers)
    assert response.status_code == 200
    ids = [item["id"] for item in response.json()["items"]]
    assert ids == [first["conversation_id"], third["conversation_id"], second["conversation_id"]]
    assert response.json()["next_cursor"] is None


async def test_the_list_filters_by_status(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    closed = await open_session(client)
    await open_session(client)
    await client.patch(
        f"{API}/conversations/{closed['conversation_id']}",
        json={"status": "closed"},
        headers=service_headers,
    )
    items = (await _list(client, service_headers, status="closed")).json()["items"]
    assert [item["id"] for item in items] == [closed["conversation_id"]]


async def test_the_list_filters_by_user(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    mine = await open_session(client)
    await open_session(client)
    user = await user_of(client, service_headers, mine["conversation_id"])
    items = (await _list(client, service_headers, user_id=user["id"])).json()["items"]
    assert [item["id"] for item in items] == [mine["conversation_id"]]
    nobody = (await _list(client, service_headers, user_id=str(uuid.uuid4()))).json()
    assert nobody == {"items": [], "next_cursor": None}


async def test_the_list_cursor_walks_every_conversation_once_and_no_session_id_leaks(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    sessions = [await open_session(client) for _ in range(7)]
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    pages = 0
    while True:
        response = await _list(client, service_headers, **params)
        assert response.status_code == 200
        for session in sessions:
            assert session["session_id"] not in response.text
        body = response.json()
        assert all(set(item) == CONVERSATION_FIELDS for item in body["items"])
        seen += [item["id"] for item in body["items"]]
        pages += 1
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert pages == 3
    assert len(seen) == len(set(seen))
    assert set(seen) == {session["conversation_id"] for session in sessions}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        "",
        "é",
        _b64(b"not json"),
        _b64(b"[]"),
        _b64(b"null"),
        _b64(b"42"),
        _b64(b'["2024-01-01T00:00:00+00:00"]'),
        _b64(b'["2024-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"]'),
        _b64(b'["yesterday", "00000000-0000-0000-0000-000000000000"]'),
        _b64(b'["2024-01-01T00:00:00+00:00", "not-a-uuid"]'),
        _b64(b'["2024-01-01T00:00:00+00:00", "00000000-0000-0000-0000-000000000000", 1]'),
        _b64(b"[1, 2]"),
        _b64(b'["9999-12-31T23:59:59-14:00", "00000000-0000-0000-0000-000000000000"]'),
        _b64(b'["0001-01-01T00:00:00+14:00", "00000000-0000-0000-0000-000000000000"]'),
        _b64(b"\xff\xfe"),
        "x" * 513,
    ],
)
async def test_a_malformed_cursor_is_422(
    client: httpx.AsyncClient, service_headers: dict[str, str], cursor: str
) -> None:
    response = await _list(client, service_headers, cursor=cursor)
    assert response.status_code == 422


@pytest.mark.parametrize(
    "params",
    [{"status": "open"}, {"user_id": "not-a-uuid"}, {"limit": 0}, {"limit": 201}, {"limit": "x"}],
)
async def test_bad_list_filters_are_422(
    client: httpx.AsyncClient, service_headers: dict[str, str], params: dict[str, Any]
) -> None:
    assert (await _list(client, service_headers, **params)).status_code == 422


# --- status --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["closed", "archived", "escalated", "active"])
async def test_patching_a_conversation_sets_its_status(
    client: httpx.AsyncClient, service_headers: dict[str, str], status: str
) -> None:
    session = await open_session(client)
    response = await client.patch(
        f"{API}/conversations/{session['conversation_id']}",
        json={"status": status},
        headers=service_headers,
    )
    assert response.status_code == 200
    assert set(response.json()) == CONVERSATION_FIELDS
    assert response.json()["status"] == status
    member_view = await client.get(f"{API}/sessions/{session['session_id']}")
    assert member_view.json()["status"] == status


async def test_patching_an_unknown_conversation_is_404(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.patch(
        f"{API}/conversations/{uuid.uuid4()}", json={"status": "closed"}, headers=service_headers
    )
    assert response.status_code == 404


@pytest.mark.parametrize("body", [{"status": "deleted"}, {}, {"status": None}, {"user_id": None}])
async def test_patching_a_conversation_with_a_bad_body_is_422(
    client: httpx.AsyncClient, service_headers: dict[str, str], body: dict[str, Any]
) -> None:
    session = await open_session(client)
    response = await client.patch(
        f"{API}/conversations/{session['conversation_id']}", json=body, headers=service_headers
    )
    assert response.status_code == 422


async def test_the_list_defaults_to_50_and_accepts_up_to_200(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    for _ in range(51):
        await client.post(f"{API}/sessions")
    default = (await _list(client, service_headers)).json()
    assert len(default["items"]) == 50
    assert default["next_cursor"] is not None
    widest = (await _list(client, service_headers, limit=200)).json()
    assert len(widest["items"]) == 51
    assert widest["next_cursor"] is None
