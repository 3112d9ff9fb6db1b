"""GET /stats/daily: one row per UTC day, whatever the time zone of the database session."""

from __future__ import annotations

from datetime import UTC, date, datetime

import httpx
import pytest
from conftest import TABLES
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.repositories import stats

USER = "00000000-0000-4000-8000-000000000001"
EVENING = "00000000-0000-4000-8000-0000000000d1"  # opened a second before a UTC midnight
DST_DAY = "00000000-0000-4000-8000-0000000000d2"  # opened the morning US clocks went forward
EARLIER = "00000000-0000-4000-8000-0000000000d3"  # before the window


async def _seed(connection: AsyncConnection) -> None:
    await connection.execute(text(f"TRUNCATE {TABLES} CASCADE"))
    statements = [
        f"INSERT INTO users (id) VALUES ('{USER}')",
        "INSERT INTO conversations (id, user_id, session_id, created_at) VALUES "
        f"('{EVENING}', '{USER}', 'daily-evening-0123456789', '2026-03-07T23:59:59Z'), "
        f"('{DST_DAY}', '{USER}', 'daily-dst-day-0123456789', '2026-03-08T06:30:00Z'), "
        f"('{EARLIER}', '{USER}', 'daily-earlier-0123456789', '2026-03-06T12:00:00Z')",
        "INSERT INTO messages (conversation_id, role, content, created_at) VALUES "
        f"('{EARLIER}', 'user', 'x', '2026-03-06T12:00:00Z'), "
        f"('{EVENING}', 'user', 'x', '2026-03-07T23:59:59Z'), "
        f"('{EVENING}', 'assistant', 'x', '2026-03-08T00:00:09Z'), "
        f"('{DST_DAY}', 'user', 'x', '2026-03-08T06:30:00Z'), "
        f"('{DST_DAY}', 'assistant', 'x', '2026-03-08T06:31:00Z'), "
        f"('{DST_DAY}', 'staff', 'x', '2026-03-09T12:00:00Z')",
        "INSERT INTO escalations (conversation_id, issue_type, original_request, created_at) "
        f"VALUES ('{EVENING}', 'card', 'x', '2026-03-08T00:00:30Z')",
    ]
    for statement in statements:
        await connection.execute(text(statement))


EXPECTED = [
    {
        "date": date(2026, 3, 7),
        "conversations": 1,
        "messages": {"user": 1, "assistant": 0, "staff": 0},
        "escalations": 0,
        "escalation_rate": 1.0,  # its conversation was escalated (the next day)
        "response_time_seconds": {"p50": 10.0, "p95": 10.0},  # by the day it was asked
    },
    {
        "date": date(2026, 3, 8),
        "conversations": 1,
        "messages": {"user": 1, "assistant": 2, "staff": 0},
        "escalations": 1,
        "escalation_rate": 0.0,
        "response_time_seconds": {"p50": 60.0, "p95": 60.0},
    },
    {
        "date": date(2026, 3, 9),
        "conversations": 0,
        "messages": {"user": 0, "assistant": 0, "staff": 1},
        "escalations": 0,
        "escalation_rate": 0.0,
        "response_time_seconds": {"p50": None, "p95": None},
    },
]


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata"])
async def test_days_are_utc_days_across_midnight_and_a_dst_change(
    connection: AsyncConnection, db: AsyncSession, zone: str
) -> None:
    await _seed(connection)
    await connection.execute(text(f"SET LOCAL TIME ZONE '{zone}'"))
    rows = await stats.DailyCache().daily(db, days=3, today=date(2026, 3, 9))
    assert rows == EXPECTED
    assert await stats.days_between(db, first=date(2026, 3, 7), last=date(2026, 3, 9)) == EXPECTED
    # A range that ends on a day: what comes later (the answer after midnight, the next
    # day's escalation) still counts for the day it belongs to.
    [evening] = await stats.days_between(db, first=date(2026, 3, 7), last=date(2026, 3, 7))
    assert evening == EXPECTED[0]


async def test_the_route_answers_the_last_days_up_to_today(
    client: httpx.AsyncClient, connection: AsyncConnection, service_headers: dict[str, str]
) -> None:
    await _seed(connection)
    response = await client.get("/api/v1/stats/daily", headers=service_headers)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) == 30
    assert items[-1]["date"] == datetime.now(UTC).date().isoformat()
    assert [item["date"] for item in items] == sorted(item["date"] for item in items)
    one = await client.get("/api/v1/stats/daily", params={"days": 1}, headers=service_headers)
    assert len(one.json()["items"]) == 1


@pytest.mark.parametrize("days", ["0", "91", "many"])
async def test_days_outside_1_to_90_are_422(
    client: httpx.AsyncClient, service_headers: dict[str, str], days: str
) -> None:
    response = await client.get(
        "/api/v1/stats/daily", params={"days": days}, headers=service_headers
    )
    assert response.status_code == 422


async def test_daily_stats_need_a_service_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/stats/daily")).status_code == 401


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_closed_days_are_cached_for_the_ttl_and_today_is_always_live(
    connection: AsyncConnection, db: AsyncSession
) -> None:
    await _seed(connection)
    clock = _Clock()
    cache = stats.DailyCache(ttl_s=300, clock=clock)
    today = date(2026, 3, 9)
    assert await cache.daily(db, days=3, today=today) == EXPECTED
    # A late write to a closed day and a new one today.
    await connection.execute(
        text(
            "INSERT INTO messages (conversation_id, role, content, created_at) VALUES "
            f"('{DST_DAY}', 'staff', 'late', '2026-03-08T07:00:00Z'), "
            f"('{DST_DAY}', 'staff', 'now', '2026-03-09T13:00:00Z')"
        )
    )
    clock.now += 299
    rows = await cache.daily(db, days=3, today=today)
    assert rows[1]["messages"]["staff"] == 0  # the closed day, from the cache
    assert rows[2]["messages"]["staff"] == 2  # today, live
    clock.now += 1
    rows = await cache.daily(db, days=3, today=today)
    assert rows[1]["messages"]["staff"] == 1  # past the TTL: recomputed
    assert [row["date"] for row in await cache.daily(db, days=1, today=today)] == [today]
