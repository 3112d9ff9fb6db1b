"""Abuse limits, tried as an attacker would over HTTP: escalation flooding, message
flooding (across two server processes sharing one database), nested JSON, a client that
leaves mid-upload, and duplicate Content-Type headers on both request paths."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from conftest import SERVICE_KEY, execute, fresh_database, make_settings
from ops_support import fetch_value, running_server, server_log

from app.jsonbody import MAX_DEPTH
from app.main import create_app
from app.migrations import upgrade_to_head
from app.settings import ConfigError, load_settings

API = "/api/v1"
SERVICE = {"Authorization": f"Bearer {SERVICE_KEY}"}
DEFAULT_MESSAGES_PER_MINUTE = 30
DEFAULT_OPEN_MAX = 3


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


# ---------------------------------------------------------------- real server processes


@pytest.fixture(scope="module")
def served_database(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture(scope="module")
def two_servers(served_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two `member-support serve` processes, shipped limits, one database."""
    directory = tmp_path_factory.mktemp("two-servers")
    with (
        running_server(served_database, directory) as (_, first),
        running_server(served_database, directory) as (_, second),
    ):
        yield first, second, directory


def _open_session(base_url: str) -> str:
    response = httpx.post(f"{base_url}{API}/sessions")
    assert response.status_code == 201, response.text
    return str(response.json()["session_id"])


def _retry_after(response: httpx.Response, most: int) -> int:
    seconds = int(response.headers["retry-after"])
    assert 1 <= seconds <= most
    return seconds


def test_message_flooding_stops_at_the_limit_across_two_processes(
    two_servers: Any, served_database: str
) -> None:
    first, second, _ = two_servers
    session_id = _open_session(first)
    url = f"{API}/sessions/{session_id}/messages"
    for number in range(DEFAULT_MESSAGES_PER_MINUTE):
        base = (first, second)[number % 2]
        response = httpx.post(
            f"{base}{url}",
            json={"content": f"m{number}"},
            headers={"Idempotency-Key": f"k{number}"},
        )
        assert response.status_code == 201, (number, response.text)
    for base in (first, second):
        refused = httpx.post(f"{base}{url}", json={"content": "one more"})
        assert refused.status_code == 429, refused.text
        _retry_after(refused, 60)
        # A retried send of a stored message is not a new message: it still answers.
        replay = httpx.post(
            f"{base}{url}", json={"content": "m0"}, headers={"Idempotency-Key": "k0"}
        )
        assert replay.status_code == 200, replay.text
    stored = asyncio.run(
        fetch_value(
            served_database,
            "SELECT count(*) FROM messages JOIN conversations c ON c.id = conversation_id"
            " WHERE c.session_id = $1",
            session_id,
        )
    )
    assert stored == DEFAULT_MESSAGES_PER_MINUTE


def test_escalation_flooding_stores_three_across_two_processes(
    two_servers: Any, served_database: str
) -> None:
    first, second, _ = two_servers
    session_id = _open_session(first)
    url = f"{API}/sessions/{session_id}/escalations"
    statuses = []
    for number in range(1, 61):
        base = (first, second)[number % 2]
        response = httpx.post(
            f"{base}{url}", json={"issue_type": f"t{number}", "original_request": "help"}
        )
        statuses.append(response.status_code)
        if response.status_code == 429:
            _retry_after(response, 3600)
    assert statuses == [201] * DEFAULT_OPEN_MAX + [429] * (60 - DEFAULT_OPEN_MAX)
    # The same unresolved issue type is still answered with the one already open.
    again = httpx.post(f"{second}{url}", json={"issue_type": "t1", "original_request": "help"})
    assert again.status_code == 200
    stored = asyncio.run(
        fetch_value(
            served_database,
            "SELECT count(*) FROM escalations e JOIN conversations c ON c.id = e.conversation_id"
            " WHERE c.session_id = $1",
            session_id,
        )
    )
    assert stored == DEFAULT_OPEN_MAX


async def test_concurrent_escalations_at_the_cap_do_not_both_pass(
    two_servers: Any, served_database: str
) -> None:
    first, second, _ = two_servers
    session_id = _open_session(first)
    url = f"{API}/sessions/{session_id}/escalations"
    async with httpx.AsyncClient() as client:
        for number in range(DEFAULT_OPEN_MAX - 1):
            body = {"issue_type": f"first_{number}", "original_request": "help"}
            assert (await client.post(f"{first}{url}", json=body)).status_code == 201
        # One slot left; eight different issue types race for it through both processes.
        racing = [
            client.post(
                f"{(first, second)[number % 2]}{url}",
                json={"issue_type": f"race_{number}", "original_request": "help"},
            )
            for number in range(8)
        ]
        statuses = sorted(response.status_code for response in await asyncio.gather(*racing))
    assert statuses == [201] + [429] * 7
    stored = await fetch_value(
        served_database,
        "SELECT count(*) FROM escalations e JOIN conversations c ON c.id = e.conversation_id"
        " WHERE c.session_id = $1",
        session_id,
    )
    assert stored == DEFAULT_OPEN_MAX


def _member_body_routes(session_id: str) -> list[tuple[str, str]]:
    return [
        ("POST", f"{API}/sessions"),
        ("PATCH", f"{API}/sessions/{session_id}/contact"),
        ("POST", f"{API}/sessions/{session_id}/messages"),
        ("POST", f"{API}/sessions/{session_id}/escalations"),
    ]


def test_deeply_nested_json_is_422_with_a_small_log(two_servers: Any) -> None:
    first, _, directory = two_servers
    session_id = _open_session(first)
    before = len(server_log(directory))
    for method, path in _member_body_routes(session_id):
        for field in ("content", "name", "issue_type"):
            response = httpx.request(method, f"{first}{path}", json={field: _nested(500)})
            assert response.status_code == 422, (path, response.text)
            assert response.json()["detail"][0]["type"] == "json_too_deep"
    # Raw bracket runs, past any parser's own depth limit, and inside a valid object.
    for body in (b"[" * 60_000, b'{"content": ' + b"[" * 2000 + b"]" * 2000 + b"}"):
        response = httpx.post(
            f"{first}{API}/sessions/{session_id}/messages",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 422
        assert response.json()["detail"][0]["type"] == "json_too_deep"
    grown = server_log(directory)[before:]
    assert "Traceback" not in grown
    assert "RecursionError" not in grown
    assert len(grown) < 5_000


def _metric(text: str, route: str, status_prefix: str) -> float:
    total = 0.0
    pattern = re.compile(r"^http_requests_total\{(?P<labels>.*)\} (?P<value>\S+)$", re.M)
    for match in pattern.finditer(text):
        labels = match["labels"]
        if f'route="{route}"' in labels and f'status="{status_prefix}' in labels:
            total += float(match["value"])
    return total


def _abort_mid_body(base_url: str, method: str, path: str) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 5000\r\n\r\n".encode()
            + b'{"content": "only the start'
        )
        time.sleep(0.2)


def test_a_client_that_leaves_mid_upload_is_a_client_abort_not_a_5xx(
    served_database: str, tmp_path: Path
) -> None:
    with running_server(served_database, tmp_path) as (_, base_url):
        session_id = _open_session(base_url)
        routes = [
            (
                "POST",
                f"{API}/sessions/{session_id}/messages",
                "/api/v1/sessions/{session_id}/messages",
            ),
            (
                "POST",
                f"{API}/sessions/{session_id}/escalations",
                "/api/v1/sessions/{session_id}/escalations",
            ),
            (
                "PATCH",
                f"{API}/sessions/{session_id}/contact",
                "/api/v1/sessions/{session_id}/contact",
            ),
        ]
        for method, path, _ in routes:
            _abort_mid_body(base_url, method, path)
        deadline = time.monotonic() + 10
        while True:
            metrics = httpx.get(f"{base_url}/metrics").text
            aborted = sum(_metric(metrics, template, "499") for *_, template in routes)
            if aborted == len(routes) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert aborted == len(routes)
        assert all(_metric(metrics, template, "5") == 0 for *_, template in routes)
        stats = httpx.get(f"{base_url}{API}/stats", headers=SERVICE).json()
        assert stats["api"]["errors_5xx"] == 0
    log = server_log(tmp_path)
    assert "client_abort" in log
    assert "Traceback" not in log
    assert "ERROR" not in log


# ---------------------------------------------------------------- in-process apps


@contextlib.asynccontextmanager
async def _app_client(database_url: str, **overrides: Any) -> AsyncIterator[Any]:
    """An app of its own (shipped limits unless overridden), and a client on it."""
    application = create_app(make_settings(database_url, **overrides))
    async with (
        LifespanManager(application),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application, raise_app_exceptions=False),
            base_url="http://test",
        ) as client,
    ):
        yield application, client


async def _new_session(client: httpx.AsyncClient) -> str:
    response = await client.post(f"{API}/sessions")
    assert response.status_code == 201
    return str(response.json()["session_id"])


async def test_an_issue_type_off_the_list_is_422_naming_the_allowed_ones(
    database_url: str,
) -> None:
    async with _app_client(database_url, escalation_issue_types="loan,card") as (_, client):
        session_id = await _new_session(client)
        url = f"{API}/sessions/{session_id}/escalations"
        refused = await client.post(url, json={"issue_type": "t1", "original_request": "x"})
        assert refused.status_code == 422
        assert refused.json()["detail"] == [
            {"type": "enum", "loc": ["body", "issue_type"], "msg": "must be one of: loan, card"}
        ]
        listed = await client.get(url)
        assert listed.json()["items"] == []
        accepted = await client.post(url, json={"issue_type": "card", "original_request": "x"})
        assert accepted.status_code == 201


async def test_a_resolved_escalation_frees_a_slot(database_url: str) -> None:
    async with _app_client(database_url, escalations_open_max=1) as (_, client):
        session_id = await _new_session(client)
        url = f"{API}/sessions/{session_id}/escalations"
        opened = await client.post(url, json={"issue_type": "loan", "original_request": "x"})
        assert opened.status_code == 201
        full = await client.post(url, json={"issue_type": "card", "original_request": "x"})
        assert full.status_code == 429
        assert full.headers["retry-after"].isdigit()
        resolved = await client.patch(
            f"{API}/escalations/{opened.json()['id']}", json={"status": "resolved"}, headers=SERVICE
        )
        assert resolved.status_code == 200
        again = await client.post(url, json={"issue_type": "card", "original_request": "x"})
        assert again.status_code == 201


@pytest.mark.parametrize("hot_path", [True, False])
async def test_the_message_limit_answers_alike_on_both_paths(
    database_url: str, hot_path: bool
) -> None:
    async with _app_client(database_url, member_messages_per_minute=2, hot_paths=hot_path) as (
        application,
        client,
    ):
        if hot_path and not application.state.settings.hot_paths_active:
            pytest.skip("the hot-path layer stands aside behind a transaction pooler")
        session_id = await _new_session(client)
        url = f"{API}/sessions/{session_id}/messages"
        for number in range(2):
            sent = await client.post(url, json={"content": f"m{number}"})
            assert sent.status_code == 201
        refused = await client.post(url, json={"content": "m2"})
        assert refused.status_code == 429
        assert refused.json() == {"detail": "At most 2 messages a minute; try again shortly"}
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # The window ends: messages are accepted again.
        await execute(
            database_url,
            "UPDATE member_message_windows SET window_start = now() - interval '61 seconds'"
            " FROM conversations c WHERE c.id = conversation_id"
            f" AND c.session_id = '{session_id}'",
        )
        assert (await client.post(url, json={"content": "m3"})).status_code == 201
        # Service writes (the agent's replies) are not a member's and are not limited.
        conversation_id = (await client.get(f"{API}/sessions/{session_id}")).json()[
            "conversation_id"
        ]
        for number in range(3):
            reply = await client.post(
                f"{API}/conversations/{conversation_id}/messages",
                json={"role": "assistant", "content": f"r{number}"},
                headers=SERVICE,
            )
            assert reply.status_code == 201


async def test_an_archived_conversation_is_409_even_with_a_full_window(
    database_url: str,
) -> None:
    async with _app_client(database_url, member_messages_per_minute=1) as (_, client):
        session_id = await _new_session(client)
        url = f"{API}/sessions/{session_id}/messages"
        assert (await client.post(url, json={"content": "m"})).status_code == 201
        conversation_id = (await client.get(f"{API}/sessions/{session_id}")).json()[
            "conversation_id"
        ]
        archived = await client.patch(
            f"{API}/conversations/{conversation_id}", json={"status": "archived"}, headers=SERVICE
        )
        assert archived.status_code == 200
        assert (await client.post(url, json={"content": "m"})).status_code == 409


@pytest.mark.parametrize("hot_path", [True, False])
@pytest.mark.parametrize(
    "content_types",
    [
        ["application/json", "text/plain"],
        ["text/plain", "application/json"],
        ["application/json", "application/json"],
    ],
)
async def test_two_content_types_get_one_answer_on_both_paths(
    database_url: str, hot_path: bool, content_types: list[str]
) -> None:
    async with _app_client(database_url, hot_paths=hot_path) as (_, client):
        session_id = await _new_session(client)
        url = f"{API}/sessions/{session_id}/messages"
        response = await client.post(
            url,
            content=b'{"content": "hello"}',
            headers=[("Content-Type", value) for value in content_types],
        )
        assert response.status_code == 415
        assert response.json() == {"detail": "Send the body as application/json, once"}
        page = await client.get(url)
        assert page.json()["items"] == []


@pytest.mark.parametrize("hot_path", [True, False])
async def test_nesting_at_the_limit_is_ordinary_validation_and_past_it_json_too_deep(
    database_url: str, hot_path: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async with _app_client(database_url, hot_paths=hot_path) as (_, client):
        session_id = await _new_session(client)
        url = f"{API}/sessions/{session_id}/messages"
        with caplog.at_level(logging.DEBUG):
            at_limit = await client.post(url, json={"content": _nested(MAX_DEPTH - 1)})
            past = await client.post(url, json={"content": _nested(MAX_DEPTH)})
        assert at_limit.status_code == 422
        assert at_limit.json()["detail"][0]["type"] != "json_too_deep"
        assert past.status_code == 422
        assert past.json()["detail"] == [
            {
                "type": "json_too_deep",
                "loc": ["body"],
                "msg": f"JSON nested more than {MAX_DEPTH} levels",
            }
        ]
        assert not [record for record in caplog.records if record.exc_info]


async def test_deep_json_on_service_routes_is_422_too(database_url: str) -> None:
    async with _app_client(database_url) as (_, client):
        session_id = await _new_session(client)
        conversation_id = (await client.get(f"{API}/sessions/{session_id}")).json()[
            "conversation_id"
        ]
        for method, path in (
            ("POST", f"{API}/conversations/{conversation_id}/messages"),
            ("PATCH", f"{API}/conversations/{conversation_id}"),
        ):
            response = await client.request(
                method, path, json={"content": _nested(400)}, headers=SERVICE
            )
            assert response.status_code == 422
            assert response.json()["detail"][0]["type"] == "json_too_deep"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("escalation_issue_types", "loan,Card", "ESCALATION_ISSUE_TYPES"),
        ("escalation_issue_types", "loan,1st", "ESCALATION_ISSUE_TYPES"),
        ("escalations_open_max", "0", "ESCALATIONS_OPEN_MAX"),
        ("member_messages_per_minute", "0", "MEMBER_MESSAGES_PER_MINUTE"),
    ],
)
def test_the_limits_are_checked_at_start_up(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_env_file=None, **{variable: value})


def test_the_limits_have_their_shipped_defaults() -> None:
    settings = load_settings(_env_file=None, escalation_issue_types=" loan , card,loan ")
    assert settings.escalation_issue_types == ["loan", "card"]
    defaults = load_settings(_env_file=None)
    assert defaults.escalations_open_max == DEFAULT_OPEN_MAX
    assert defaults.member_messages_per_minute == DEFAULT_MESSAGES_PER_MINUTE
    assert defaults.escalation_issue_types == []


@pytest.mark.parametrize("tail", ["messages", "escalations", "contact"])
async def test_a_body_cut_short_is_answered_499_and_not_counted_as_5xx(
    database_url: str, tail: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with _app_client(database_url) as (application, client):
        session_id = await _new_session(client)
        arriving = [
            {"type": "http.request", "body": b'{"content": "cut sho', "more_body": True},
            {"type": "http.disconnect"},
        ]

        async def receive() -> dict[str, Any]:
            return arriving.pop(0) if arriving else {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "PATCH" if tail == "contact" else "POST",
            "scheme": "http",
            "path": f"{API}/sessions/{session_id}/{tail}",
            "raw_path": f"{API}/sessions/{session_id}/{tail}".encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"500")],
            "client": ("127.0.0.1", 50000),
            "server": ("test", 80),
        }
        errors_before = application.state.api_counters.errors_5xx
        with caplog.at_level(logging.INFO):
            await application(scope, receive, send)
        assert sent[0]["status"] == 499
        assert application.state.api_counters.errors_5xx == errors_before
        assert "client_abort" in [record.getMessage() for record in caplog.records]
        assert not [record for record in caplog.records if record.exc_info]
