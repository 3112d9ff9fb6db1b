"""GET /stats: the guide's key metrics over records created since a moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from api_support import API, escalate, open_session, send_message


async def test_stats_have_the_documented_shape(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.get(f"{API}/stats", headers=service_headers)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "since",
        "conversations",
        "messages",
        "escalations",
        "escalation_rate",
        "response_time_seconds",
        "sla",
        "api",
        "notifications",  # additive: the webhook outbox (README, "Escalation notifications")
    }
    assert body["since"] is None
    assert set(body["conversations"]) == {"total", "active", "escalated", "closed", "archived"}
    assert set(body["messages"]) == {"total", "user", "assistant", "staff"}
    assert set(body["escalations"]) == {
        "total",
        "by_status",
        "by_issue_type",
        "first_response_seconds",
        "resolution_seconds",
        "oldest_open_seconds",
    }
    assert set(body["sla"]) == {"first_response_minutes", "breached"}
    assert set(body["escalations"]["by_status"]) == {
        "pending",
        "notified",
        "in_progress",
        "resolved",
    }
    assert set(body["response_time_seconds"]) == {"p50", "p95"}
    assert set(body["api"]) == {"requests", "errors_5xx", "error_rate"}
    assert 0 <= body["escalation_rate"] <= 1
    assert body["api"]["requests"] >= 1


async def test_stats_count_conversations_messages_and_escalations(
    committed_client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    escalated = await open_session(committed_client)
    quiet = await open_session(committed_client)
    await send_message(committed_client, escalated["session_id"], "question")
    await committed_client.post(
        f"{API}/conversations/{escalated['conversation_id']}/messages",
        json={"role": "assistant", "content": "answer"},
        headers=service_headers,
    )
    await send_message(committed_client, quiet["session_id"], "unanswered")
    await escalate(committed_client, escalated["session_id"], issue_type="card")

    body = (await committed_client.get(f"{API}/stats", headers=service_headers)).json()

    assert body["conversations"] == {
        "total": 2,
        "active": 1,
        "escalated": 1,
        "closed": 0,
        "archived": 0,
    }
    assert body["messages"] == {"total": 3, "user": 2, "assistant": 1, "staff": 0}
    assert body["escalations"]["total"] == 1
    assert body["escalations"]["by_status"]["pending"] == 1
    assert body["escalations"]["by_issue_type"] == {"card": 1}
    assert body["escalation_rate"] == 0.5
    assert body["response_time_seconds"]["p50"] >= 0
    assert body["response_time_seconds"]["p95"] >= body["response_time_seconds"]["p50"]


async def test_stats_since_a_future_moment_count_nothing(
    committed_client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    await open_session(committed_client)
    since = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    response = await committed_client.get(
        f"{API}/stats", params={"since": since}, headers=service_headers
    )
    body = response.json()
    assert response.status_code == 200
    assert datetime.fromisoformat(body["since"]) == datetime.fromisoformat(since)
    assert body["conversations"]["total"] == 0
    assert body["escalation_rate"] == 0
    assert body["response_time_seconds"] == {"p50": None, "p95": None}


async def test_stats_since_a_past_moment_count_what_came_after(
    committed_client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    await open_session(committed_client)
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    body = (
        await committed_client.get(f"{API}/stats", params={"since": since}, headers=service_headers)
    ).json()
    assert body["conversations"]["total"] == 1


async def test_a_naive_since_is_read_as_utc(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.get(
        f"{API}/stats", params={"since": "2024-01-01T00:00:00"}, headers=service_headers
    )
    assert response.status_code == 200
    assert datetime.fromisoformat(response.json()["since"]) == datetime(2024, 1, 1, tzinfo=UTC)
