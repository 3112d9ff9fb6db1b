"""Hostile and malformed input: always a 4xx with a detail, never a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_support import API, open_session, send_message
from asgi_lifespan import LifespanManager
from conftest import make_settings
from fastapi import FastAPI

from app.main import create_app

# Every test here runs with the hot-path layer on and with it off (tests/conftest.py).
pytestmark = pytest.mark.both_paths

MAX_BODY = 64 * 1024


async def test_content_of_exactly_message_max_chars_is_accepted(
    client: httpx.AsyncClient,
) -> None:
    session = await open_session(client)
    response = await send_message(client, session["session_id"], "x" * 8000)
    assert response.status_code == 201


async def test_message_max_chars_counts_characters_not_bytes(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    response = await send_message(client, session["session_id"], "💳" * 8000)
    assert response.status_code == 201


@pytest.mark.parametrize(
    "content",
    ["", " ", "\n\t \r\n", "\u00a0\u2003", "a\u0000b", "\u0000", "x" * 8001],
    ids=["empty", "space", "whitespace", "unicode-space", "nul-inside", "nul", "too-long"],
)
async def test_blank_nul_or_overlong_content_is_422(
    client: httpx.AsyncClient, service_headers: dict[str, str], content: str
) -> None:
    session = await open_session(client)
    member = await send_message(client, session["session_id"], content)
    service = await client.post(
        f"{API}/conversations/{session['conversation_id']}/messages",
        json={"role": "assistant", "content": content},
        headers=service_headers,
    )
    assert (member.status_code, service.status_code) == (422, 422)


async def test_an_overlong_original_request_is_422(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    response = await client.post(
        f"{API}/sessions/{session['session_id']}/escalations",
        json={"issue_type": "loan", "original_request": "x" * 8001},
    )
    assert response.status_code == 422


@pytest.fixture(scope="module")
async def short_message_app(database_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(database_url, message_max_chars=10))
    async with LifespanManager(application):
        yield application


@pytest.mark.parametrize(("length", "status"), [(10, 201), (11, 422)])
async def test_the_message_max_chars_setting_is_honoured(
    short_message_app: FastAPI, committed_engine: Any, length: int, status: int
) -> None:
    transport = httpx.ASGITransport(app=short_message_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        session = await open_session(client)
        response = await send_message(client, session["session_id"], "x" * length)
    assert response.status_code == status


# --- body size, encoding, content type -------------------------------------------------------


def _member_bodies(session_id: str) -> list[tuple[str, str]]:
    return [
        ("POST", f"{API}/sessions"),
        ("PATCH", f"{API}/sessions/{session_id}/contact"),
        ("POST", f"{API}/sessions/{session_id}/messages"),
        ("POST", f"{API}/sessions/{session_id}/escalations"),
    ]


async def test_a_body_over_64_kb_is_413_on_every_body_route(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    body = json.dumps({"content": "x" * (MAX_BODY + 1)})
    routes = [
        *_member_bodies(session["session_id"]),
        ("POST", f"{API}/conversations/{session['conversation_id']}/messages"),
        ("PATCH", f"{API}/conversations/{session['conversation_id']}"),
    ]
    for method, url in routes:
        response = await client.request(
            method,
            url,
            content=body,
            headers={"Content-Type": "application/json", **service_headers},
        )
        assert response.status_code == 413, (method, url, response.status_code)


async def test_a_streamed_body_over_64_kb_without_content_length_is_413(
    client: httpx.AsyncClient,
) -> None:
    session = await open_session(client)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"content": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    response = await client.post(
        f"{API}/sessions/{session['session_id']}/messages",
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413


async def test_a_body_just_under_64_kb_is_judged_on_its_content(
    client: httpx.AsyncClient,
) -> None:
    session = await open_session(client)
    body = json.dumps({"content": "x" * (MAX_BODY - 100)})
    response = await client.post(
        f"{API}/sessions/{session['session_id']}/messages",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422  # over MESSAGE_MAX_CHARS, not over the body limit


RAW_BODIES = {
    "malformed": b'{"content": ',
    "trailing garbage": b'{"content": "hi"} x',
    "single quotes": b"{'content': 'hi'}",
    "nan": b'{"content": NaN}',
    "infinity": b'{"content": Infinity}',
    "minus infinity": b'{"content": -Infinity}',
    "huge number": b'{"content": 1e999}',
    "invalid utf-8": b'{"content": "\xff\xfe"}',
    "overlong utf-8": b'{"content": "\xc0\xaf"}',
    "lone surrogate": b'{"content": "\\ud800"}',
    "escaped nul": b'{"content": "a\\u0000b"}',
    "deep nesting": b'{"content": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "array": b'["hi"]',
    "string": b'"hi"',
    "number": b"42",
    "null": b"null",
    "empty object": b"{}",
    "bom": b'\xef\xbb\xbf{"content": "hi"}',
    "duplicate keys": b'{"content": "hi", "content": ""}',
}


@pytest.mark.parametrize("raw", RAW_BODIES.values(), ids=RAW_BODIES.keys())
async def test_malformed_json_bodies_are_a_4xx_on_every_body_route(
    client: httpx.AsyncClient, service_headers: dict[str, str], raw: bytes
) -> None:
    session = await open_session(client)
    routes = [
        *_member_bodies(session["session_id"])[1:],
        ("POST", f"{API}/conversations/{session['conversation_id']}/messages"),
        ("PATCH", f"{API}/conversations/{session['conversation_id']}"),
    ]
    for method, url in routes:
        response = await client.request(
            method,
            url,
            content=raw,
            headers={"Content-Type": "application/json", **service_headers},
        )
        assert 400 <= response.status_code < 500, (method, url, response.status_code)
        assert "detail" in response.json()


@pytest.mark.parametrize(
    "raw", [b'{"content": NaN}', b'{"content": ', b'{"session_id": "\xff\xfe\xfd-0123456789abc"}']
)
async def test_malformed_json_on_session_creation_is_422(
    client: httpx.AsyncClient, raw: bytes
) -> None:
    response = await client.post(
        f"{API}/sessions", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
async def test_a_body_that_is_not_declared_json_is_415(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    session = await open_session(client)
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post(
        f"{API}/sessions/{session['session_id']}/messages",
        content=b'{"content": "hi"}',
        headers=headers,
    )
    assert response.status_code == 415


async def test_a_json_body_with_a_charset_parameter_is_accepted(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    response = await client.post(
        f"{API}/sessions/{session['session_id']}/messages",
        content=b'{"content": "hi"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/sessions", {"session_id": None, "nickname": "x"}),
        ("PATCH", "/sessions/{sid}/contact", {"name": "Ada", "role": "admin"}),
        ("POST", "/sessions/{sid}/messages", {"content": "hi", "role": "assistant"}),
        (
            "POST",
            "/sessions/{sid}/escalations",
            {"issue_type": "loan", "original_request": "x", "status": "resolved"},
        ),
        ("POST", "/conversations/{cid}/messages", {"role": "user", "content": "x", "seq": 1}),
        ("PATCH", "/conversations/{cid}", {"status": "closed", "user_id": None}),
    ],
)
async def test_unknown_fields_are_422(
    client: httpx.AsyncClient,
    service_headers: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any],
) -> None:
    session = await open_session(client)
    url = API + path.format(sid=session["session_id"], cid=session["conversation_id"])
    response = await client.request(method, url, json=body, headers=service_headers)
    assert response.status_code == 422


@pytest.mark.parametrize(
    "bad_id", ["not-a-uuid", "1234", "00000000-0000-0000-0000-00000000000g", "%00", "' OR 1=1 --"]
)
@pytest.mark.parametrize(
    ("method", "template", "body"),
    [
        ("GET", "/conversations/{}", None),
        ("GET", "/conversations/{}/messages", None),
        ("POST", "/conversations/{}/messages", {"role": "user", "content": "x"}),
        ("PATCH", "/conversations/{}", {"status": "closed"}),
        ("GET", "/users/{}", None),
        ("DELETE", "/users/{}", None),
        ("GET", "/escalations/{}", None),
        ("PATCH", "/escalations/{}", {"status": "resolved"}),
    ],
)
async def test_a_bad_uuid_in_a_service_path_is_422(
    client: httpx.AsyncClient,
    service_headers: dict[str, str],
    method: str,
    template: str,
    body: Any,
    bad_id: str,
) -> None:
    response = await client.request(
        method, API + template.format(bad_id), json=body, headers=service_headers
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "session_id", ["%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00", "a" * 5000, "é" * 20]
)
async def test_a_malformed_session_id_in_a_member_path_is_404(
    client: httpx.AsyncClient, session_id: str
) -> None:
    response = await client.get(f"{API}/sessions/{session_id}/messages")
    assert response.status_code == 404


@pytest.mark.parametrize(
    "query",
    [
        "since=yesterday",
        "since=2024-13-45",
        "since=%00",
        "since=99999-01-01T00:00:00Z",
        "since=0001-01-01T00:00:00%2B14:00",
        "since=9999-12-31T23:59:59-14:00",
    ],
)
async def test_a_bad_stats_since_is_422(
    client: httpx.AsyncClient, service_headers: dict[str, str], query: str
) -> None:
    response = await client.get(f"{API}/stats?{query}", headers=service_headers)
    assert response.status_code == 422


FUZZ_QUERIES = [
    "limit=99999999999999999999999",
    "limit=1e3",
    "limit=%00",
    "before=99999999999999999999999",
    "after=-0",
    "after=0x10",
    "cursor=%00",
    "cursor=" + "%FF" * 10,
    "status=%00",
    "issue_type=%00",
    "email=%00%40example.org",
    "email=" + "a" * 300 + "%40example.org",
    "user_id=%00",
    "since=0001-01-01T00:00:00%2B14:00",
    "since=9999-12-31T23:59:59-14:00",
]


@pytest.mark.parametrize("query", FUZZ_QUERIES)
async def test_strange_query_strings_never_cause_a_500(
    client: httpx.AsyncClient, service_headers: dict[str, str], query: str
) -> None:
    session = await open_session(client)
    for path in (
        f"/sessions/{session['session_id']}/messages",
        f"/conversations/{session['conversation_id']}/messages",
        "/conversations",
        "/escalations",
        "/users",
        "/stats",
    ):
        response = await client.get(f"{API}{path}?{query}", headers=service_headers)
        assert response.status_code < 500, (path, query, response.status_code)


async def test_an_idempotency_key_with_a_nul_byte_is_422(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    response = await client.post(
        f"{API}/sessions/{session['session_id']}/messages",
        json={"content": "hi"},
        headers={"Idempotency-Key": b"\x00key"},
    )
    assert response.status_code == 422
