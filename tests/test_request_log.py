"""Request logs: one line per request with a request id, JSON on demand, nothing secret."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import httpx
import pytest
from conftest import SERVICE_KEY, make_settings, started_client

from app.log import configure_logging

ACCESS = "app.access"


def _access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == ACCESS]


async def test_each_request_logs_one_line_with_route_template_status_and_duration(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await client.get("/api/v1/sessions/unknown-session-0123456789")
    [record] = _access_records(caplog)
    assert record.getMessage() == "request"
    assert record.method == "GET"  # type: ignore[attr-defined]
    assert record.route == "/api/v1/sessions/{session_id}"  # type: ignore[attr-defined]
    assert record.status == 404  # type: ignore[attr-defined]
    assert record.duration_ms > 0  # type: ignore[attr-defined]


async def test_a_callers_request_id_is_echoed_and_logged(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = await client.get("/healthz", headers={"X-Request-ID": "edge-7f3a.42"})
    assert response.headers["X-Request-ID"] == "edge-7f3a.42"
    [record] = _access_records(caplog)
    assert record.request_id == "edge-7f3a.42"  # type: ignore[attr-defined]


async def test_a_request_without_an_id_gets_a_fresh_one(client: httpx.AsyncClient) -> None:
    first = (await client.get("/healthz")).headers["X-Request-ID"]
    second = (await client.get("/healthz")).headers["X-Request-ID"]
    assert len(first) == 32 and int(first, 16) >= 0
    assert first != second


@pytest.mark.parametrize(
    "offered", ["has spaces in it", "x" * 129, 'quote"and\\backslash', "tab\there"]
)
async def test_a_request_id_that_does_not_look_like_one_is_replaced(
    client: httpx.AsyncClient, offered: str
) -> None:
    echoed = (await client.get("/healthz", headers={"X-Request-ID": offered})).headers[
        "X-Request-ID"
    ]
    assert echoed != offered
    assert len(echoed) == 32


async def test_requests_are_not_logged_below_the_configured_level(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    await client.get("/healthz")
    assert _access_records(caplog) == []


async def test_log_lines_written_during_a_request_carry_its_request_id(
    caplog: pytest.LogCaptureFixture, captured_json: io.StringIO
) -> None:
    # A database on a closed port: the request logs `database_unavailable` and answers 503.
    settings = make_settings("postgresql://postgres@127.0.0.1:1/member_support")
    async with started_client(settings) as http:
        response = await http.get(
            "/api/v1/sessions/some-session-0123456789", headers={"X-Request-ID": "trace-503"}
        )
        # The same outage met by a FastAPI route rather than the hot-path layer.
        routed = await http.get(
            "/api/v1/sessions/some-session-0123456789/escalations",
            headers={"X-Request-ID": "trace-503-routed"},
        )
    assert response.status_code == routed.status_code == 503
    lines = [json.loads(line) for line in captured_json.getvalue().splitlines()]
    for request_id, template in (
        ("trace-503", "/api/v1/sessions/{session_id}"),
        ("trace-503-routed", "/api/v1/sessions/{session_id}/escalations"),
    ):
        by_event = {line["event"]: line for line in lines if line.get("request_id") == request_id}
        assert set(by_event) == {"database_unavailable", "request"}
        assert by_event["request"]["status"] == 503
        assert by_event["request"]["level"] == "WARNING"
        # Both lines name the route the same way, as /metrics does.
        assert by_event["database_unavailable"]["path_template"] == template
        assert by_event["request"]["route"] == template


@pytest.fixture
def captured_json(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """configure_logging(DEBUG, json) writing into a buffer; the root logger restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging("DEBUG", "json")
    try:
        yield buffer
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


async def test_json_request_lines_parse_and_hold_the_request_fields(
    client: httpx.AsyncClient, captured_json: io.StringIO
) -> None:
    await client.post("/api/v1/sessions", headers={"X-Request-ID": "json-line-1"})
    lines = [json.loads(line) for line in captured_json.getvalue().splitlines()]
    [line] = [line for line in lines if line["logger"] == ACCESS]
    assert line["event"] == "request"
    assert line["method"] == "POST"
    assert line["route"] == "/api/v1/sessions"
    assert line["status"] == 201
    assert line["request_id"] == "json-line-1"
    assert isinstance(line["duration_ms"], float)
    assert line["level"] == "INFO"


async def test_console_request_lines_hold_the_request_fields(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging("INFO", "console")
    try:
        await client.get("/healthz", headers={"X-Request-ID": "console-1"})
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    [line] = [line for line in buffer.getvalue().splitlines() if ACCESS in line]
    for part in ("request", "method=GET", "route=/healthz", "status=200", "request_id=console-1"):
        assert part in line


async def test_a_full_walk_through_logs_no_session_id_key_content_or_contact(
    client: httpx.AsyncClient, captured_json: io.StringIO, service_headers: dict[str, str]
) -> None:
    session_id = "walk-through-session-5d1e8c0f2b"
    secrets = {
        "session id": session_id,
        "api key": SERVICE_KEY,
        "message": "my card ending 4242 was stolen",
        "reply": "we have frozen card 4242",
        "email": "ada.lovelace@example.org",
        "name": "Ada Lovelace",
        "phone": "+44 20 7946 0991",
        "contact name": "Countess of Lovelace",
        "original request": "please call me about the stolen card",
        "idempotency key": "idem-key-9f8e7d6c",
    }
    created = await client.post(
        "/api/v1/sessions",
        json={"session_id": session_id, "name": secrets["name"], "email": secrets["email"]},
    )
    assert created.status_code == 201
    conversation_id = created.json()["conversation_id"]
    base = f"/api/v1/sessions/{session_id}"
    steps = [
        client.get(base),
        client.patch(f"{base}/contact", json={"phone": secrets["phone"]}),
        client.post(
            f"{base}/messages",
            json={"content": secrets["message"]},
            headers={"Idempotency-Key": secrets["idempotency key"]},
        ),
        client.post(f"{base}/messages", json={"content": "\u0000" + secrets["message"]}),
        client.get(f"{base}/messages", params={"limit": 5}),
        client.post(
            f"{base}/escalations",
            json={
                "issue_type": "fraud",
                "original_request": secrets["original request"],
                "contact_info": {"name": secrets["contact name"], "preferred_channel": "phone"},
            },
        ),
        client.get(f"{base}/escalations"),
        client.post(
            f"/api/v1/conversations/{conversation_id}/messages",
            json={"role": "assistant", "content": secrets["reply"]},
            headers=service_headers,
        ),
        client.get(f"/api/v1/conversations/{conversation_id}", headers=service_headers),
        client.get("/api/v1/conversations", headers=service_headers),
        client.get("/api/v1/escalations", headers=service_headers),
        client.get("/api/v1/users", params={"email": secrets["email"]}, headers=service_headers),
        client.get("/api/v1/stats", headers=service_headers),
        client.get("/api/v1/stats", headers={"Authorization": f"Bearer {SERVICE_KEY}x"}),
        client.post(f"{base}/messages", json={"content": secrets["message"], "extra": 1}),
        client.get(f"/api/v1/sessions/{session_id}x"),
    ]
    for step in steps:
        assert (await step).status_code < 500
    user_id = (
        await client.get(
            "/api/v1/users", params={"email": secrets["email"]}, headers=service_headers
        )
    ).json()["id"]
    deleted = await client.delete(f"/api/v1/users/{user_id}", headers=service_headers)
    assert deleted.status_code == 204

    logged = captured_json.getvalue()
    assert logged.count('"event": "request"') == len(steps) + 3
    leaked = [what for what, value in secrets.items() if value.lower() in logged.lower()]
    assert leaked == []
