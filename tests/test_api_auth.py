"""The service key: every service route refuses a missing, wrong or malformed key."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_support import API
from asgi_lifespan import LifespanManager
from conftest import SERVICE_KEY, make_settings
from fastapi import FastAPI

from app.main import create_app

SOME_ID = "00000000-0000-4000-8000-000000000000"
# (method, path, JSON body): every service route, with a body that would be valid.
SERVICE_ROUTES: list[tuple[str, str, Any]] = [
    ("POST", f"/conversations/{SOME_ID}/messages", {"role": "assistant", "content": "hi"}),
    ("GET", "/conversations", None),
    ("GET", f"/conversations/{SOME_ID}", None),
    ("GET", f"/conversations/{SOME_ID}/messages", None),
    ("PATCH", f"/conversations/{SOME_ID}", {"status": "closed"}),
    ("GET", f"/users/{SOME_ID}", None),
    ("GET", "/users?email=someone@example.org", None),
    ("DELETE", f"/users/{SOME_ID}", None),
    ("GET", "/escalations", None),
    ("GET", f"/escalations/{SOME_ID}", None),
    ("PATCH", f"/escalations/{SOME_ID}", {"status": "resolved"}),
    ("GET", f"/escalations/{SOME_ID}/events", None),
    ("GET", "/stats", None),
    ("GET", "/stats/daily", None),
    ("GET", "/notifications", None),
    ("POST", f"/notifications/{SOME_ID}/retry", None),
]
ROUTE_IDS = [f"{method} {path.split('?')[0]}" for method, path, _ in SERVICE_ROUTES]
BAD_AUTHORIZATION: dict[str, dict[str, Any]] = {
    "none": {},
    "wrong key": {"Authorization": "Bearer not-the-key"},
    "key prefix": {"Authorization": f"Bearer {SERVICE_KEY[:-1]}"},
    "key with suffix": {"Authorization": f"Bearer {SERVICE_KEY}x"},
    "basic scheme": {"Authorization": f"Basic {SERVICE_KEY}"},
    "empty bearer": {"Authorization": "Bearer "},
    "bare scheme": {"Authorization": "Bearer"},
    "key without scheme": {"Authorization": SERVICE_KEY},
    "non-ascii key": {"Authorization": "Bearer clé".encode("latin-1")},
}


async def _call(
    client: httpx.AsyncClient, method: str, path: str, body: Any, headers: dict[str, Any]
) -> httpx.Response:
    return await client.request(method, f"{API}{path}", json=body, headers=headers)


def _assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert SERVICE_KEY not in response.text


def _operations(app: FastAPI) -> dict[tuple[str, str], Any]:
    """Every (METHOD, path template) under /api/v1 with its OpenAPI security."""
    return {
        (method.upper(), re.sub(r"\{[a-z_]+\}", "{id}", path)): operation.get("security")
        for path, operations in app.openapi()["paths"].items()
        if path.startswith(API)
        for method, operation in operations.items()
    }


def test_the_matrix_covers_every_service_route(app: FastAPI) -> None:
    service = {
        key: security
        for key, security in _operations(app).items()
        if not key[1].startswith(f"{API}/sessions")
    }
    listed = {
        (method, f"{API}{path.split('?')[0].replace(SOME_ID, '{id}')}")
        for method, path, _ in SERVICE_ROUTES
    }
    assert set(service) == listed
    assert all(security == [{"HTTPBearer": []}] for security in service.values())


def test_no_member_route_asks_for_a_key(app: FastAPI) -> None:
    members = {
        key: security
        for key, security in _operations(app).items()
        if key[1].startswith(f"{API}/sessions")
    }
    assert len(members) == 8
    assert all(security is None for security in members.values())


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION.values(), ids=BAD_AUTHORIZATION.keys())
@pytest.mark.parametrize(("method", "path", "body"), SERVICE_ROUTES, ids=ROUTE_IDS)
async def test_a_service_route_without_a_valid_bearer_key_is_401(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: Any,
    authorization: dict[str, Any],
) -> None:
    _assert_unauthorized(await _call(client, method, path, body, authorization))


@pytest.mark.parametrize(("method", "path", "body"), SERVICE_ROUTES, ids=ROUTE_IDS)
async def test_a_service_route_admits_the_configured_key(
    client: httpx.AsyncClient, service_headers: dict[str, str], method: str, path: str, body: Any
) -> None:
    response = await _call(client, method, path, body, service_headers)
    assert response.status_code in {200, 404}


async def test_the_bearer_scheme_name_is_case_insensitive(client: httpx.AsyncClient) -> None:
    response = await client.get(
        f"{API}/conversations", headers={"Authorization": f"bearer {SERVICE_KEY}"}
    )
    assert response.status_code == 200


async def test_a_missing_key_is_401_before_any_input_is_judged(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{API}/conversations/not-a-uuid")
    _assert_unauthorized(response)


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b'{"status": NaN}', "application/json"),
        (b'{"status": ', "application/json"),
        (b"status=resolved", "application/x-www-form-urlencoded"),
        (b'{"status": "bogus", "extra": 1}', "application/json"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [(method, path) for method, path, body in SERVICE_ROUTES if body is not None],
)
async def test_a_malformed_body_without_a_key_is_still_401(
    client: httpx.AsyncClient, method: str, path: str, raw: bytes, content_type: str
) -> None:
    response = await client.request(
        method, f"{API}{path}", content=raw, headers={"Content-Type": content_type}
    )
    _assert_unauthorized(response)


async def test_member_routes_need_no_key(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{API}/sessions")
    assert response.status_code == 201


@pytest.fixture(scope="module")
async def keyless_app(database_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(database_url, api_keys=""))
    async with LifespanManager(application):
        yield application


@pytest.fixture(scope="module")
async def two_key_app(database_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(database_url, api_keys="first-key-000, second-key-000"))
    async with LifespanManager(application):
        yield application


def _client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.mark.parametrize(
    "authorization",
    [{}, {"Authorization": f"Bearer {SERVICE_KEY}"}, {"Authorization": "Bearer "}],
    ids=["no header", "the usual test key", "empty token"],
)
@pytest.mark.parametrize(("method", "path", "body"), SERVICE_ROUTES, ids=ROUTE_IDS)
async def test_with_no_api_keys_configured_every_service_route_is_401(
    keyless_app: FastAPI, method: str, path: str, body: Any, authorization: dict[str, str]
) -> None:
    async with _client_for(keyless_app) as client:
        _assert_unauthorized(await _call(client, method, path, body, authorization))


async def test_with_no_api_keys_configured_member_routes_still_work(
    keyless_app: FastAPI, committed_engine: Any
) -> None:
    async with _client_for(keyless_app) as client:
        response = await client.post(f"{API}/sessions")
    assert response.status_code == 201


@pytest.mark.parametrize("key", ["first-key-000", "second-key-000"])
async def test_each_of_several_configured_keys_is_admitted(two_key_app: FastAPI, key: str) -> None:
    async with _client_for(two_key_app) as client:
        response = await client.get(
            f"{API}/escalations/{uuid.uuid4()}", headers={"Authorization": f"Bearer {key}"}
        )
    assert response.status_code == 404


async def test_a_key_of_another_deployment_is_refused(two_key_app: FastAPI) -> None:
    async with _client_for(two_key_app) as client:
        response = await client.get(
            f"{API}/conversations", headers={"Authorization": f"Bearer {SERVICE_KEY}"}
        )
    _assert_unauthorized(response)
