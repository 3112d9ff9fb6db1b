"""GET /api/v1/stats and `member-support stats`: the documented figures, windowed by `since`."""

from __future__ import annotations

import io
import random
import re
from collections.abc import Iterator
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import stats_data
from conftest import TABLES, fresh_database
from ops_support import execute, run, run_cli
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.cli import main
from app.migrations import upgrade_to_head
from app.repositories import stats


async def _seed(connection: AsyncConnection) -> None:
    # Inside the test's transaction: rolled back afterwards, invisible to other tests.
    await connection.execute(text(f"TRUNCATE {TABLES} CASCADE"))
    for statement in stats_data.statements():
        await connection.execute(text(statement))


def _database_part(body: dict[str, Any]) -> dict[str, Any]:
    # `notifications` is the outbox now, not windowed (test_notification_outbox.py); the
    # oldest open escalation's age is now minus its creation (checked on its own).
    part = {
        key: value for key, value in body.items() if key not in {"since", "api", "notifications"}
    }
    oldest = part["escalations"].pop("oldest_open_seconds")
    opened_at = stats_data.T  # the oldest unresolved escalation of the data set
    if part["conversations"]["total"]:
        assert oldest == pytest.approx((datetime.now(UTC) - opened_at).total_seconds(), abs=60)
    return part


def _times(block: dict[str, Any]) -> dict[str, Any]:
    return {key: None if value is None else pytest.approx(value) for key, value in block.items()}


def _approx(expected: dict[str, Any]) -> Any:
    escalations = expected["escalations"]
    return {
        **expected,
        "escalation_rate": pytest.approx(expected["escalation_rate"]),
        "response_time_seconds": _times(expected["response_time_seconds"]),
        "escalations": {
            **escalations,
            "first_response_seconds": _times(escalations["first_response_seconds"]),
            "resolution_seconds": _times(escalations["resolution_seconds"]),
        },
    }


async def test_stats_count_every_record_when_since_is_absent(
    client: httpx.AsyncClient, connection: AsyncConnection, service_headers: dict[str, str]
) -> None:
    await _seed(connection)
    response = await client.get("/api/v1/stats", headers=service_headers)
    assert response.status_code == 200
    assert response.json()["since"] is None
    assert _database_part(response.json()) == _approx(stats_data.ALL_TIME)


async def test_stats_count_records_created_at_or_after_since(
    client: httpx.AsyncClient, connection: AsyncConnection, service_headers: dict[str, str]
) -> None:
    await _seed(connection)
    since = stats_data.T.isoformat()
    response = await client.get("/api/v1/stats", params={"since": since}, headers=service_headers)
    assert response.status_code == 200
    assert _database_part(response.json()) == _approx(stats_data.SINCE_T)


async def test_stats_read_a_since_without_offset_as_utc(
    client: httpx.AsyncClient, connection: AsyncConnection, service_headers: dict[str, str]
) -> None:
    await _seed(connection)
    response = await client.get(
        "/api/v1/stats", params={"since": "2026-01-10T00:00:00"}, headers=service_headers
    )
    assert response.json()["since"].startswith("2026-01-10T00:00:00")
    assert response.json()["since"].endswith(("+00:00", "Z"))
    assert _database_part(response.json()) == _approx(stats_data.SINCE_T)


async def test_stats_after_the_last_record_are_zero_with_null_response_times(
    client: httpx.AsyncClient, connection: AsyncConnection, service_headers: dict[str, str]
) -> None:
    await _seed(connection)
    response = await client.get(
        "/api/v1/stats", params={"since": "2030-01-01T00:00:00Z"}, headers=service_headers
    )
    body = response.json()
    assert body["conversations"]["total"] == 0
    assert body["messages"]["total"] == 0
    oldest_open = body["escalations"].pop("oldest_open_seconds")
    assert oldest_open > 0  # the queue as it stands, whatever the window
    assert body["escalations"] == {
        "total": 0,
        "by_status": {"pending": 0, "notified": 0, "in_progress": 0, "resolved": 0},
        "by_issue_type": {},
        "first_response_seconds": {"p50": None, "p95": None},
        "resolution_seconds": {"p50": None, "p95": None},
    }
    assert body["sla"] == {"first_response_minutes": 15, "breached": 0}
    assert body["escalation_rate"] == 0
    assert body["response_time_seconds"] == {"p50": None, "p95": None}


async def test_stats_refuse_a_since_that_is_not_a_timestamp(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.get(
        "/api/v1/stats", params={"since": "last tuesday"}, headers=service_headers
    )
    assert response.status_code == 422


async def test_stats_need_a_service_key(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/stats")
    assert response.status_code == 401


async def test_stats_api_block_counts_this_process_requests(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    first = (await client.get("/api/v1/stats", headers=service_headers)).json()["api"]
    await client.get("/healthz")
    second = (await client.get("/api/v1/stats", headers=service_headers)).json()["api"]
    # The healthz request and the first stats request itself.
    assert second["requests"] == first["requests"] + 2
    assert 0 <= second["error_rate"] <= 1


# How large tables get before the plans are checked: enough for the planner to prefer
# an index over reading everything, small enough to build in a second or two.
BULK_CONVERSATIONS = 20_000
BULK_MESSAGES_EACH = 5


async def _bulk_history(connection: AsyncConnection) -> None:
    await connection.execute(text(f"TRUNCATE {TABLES} CASCADE"))
    # The seq trigger serialises on the conversation row: fine for a chat, slow for a
    # bulk load. Inside this rolled-back transaction, seq is given directly instead.
    await connection.execute(text("SET LOCAL statement_timeout = 0"))
    await connection.execute(text("ALTER TABLE messages DISABLE TRIGGER USER"))
    await connection.execute(
        text("INSERT INTO users (id) VALUES ('00000000-0000-4000-8000-000000000002')")
    )
    # Spread over a year; only the newest few hundred fall in the last day.
    await connection.execute(
        text(
            "INSERT INTO conversations (user_id, session_id, status, created_at) "
            "SELECT '00000000-0000-4000-8000-000000000002', 'bulk-session-' || n || '-0123', "
            "'active', now() - n * interval '26 minutes' "
            f"FROM generate_series(1, {BULK_CONVERSATIONS}) AS n"
        )
    )
    await connection.execute(
        text(
            "INSERT INTO messages (conversation_id, seq, role, content, created_at) "
            "SELECT c.id, k, CASE WHEN k % 2 = 0 THEN 'assistant' ELSE 'user' END, 'x', "
            "c.created_at + k * interval '1 second' "
            f"FROM conversations AS c, generate_series(1, {BULK_MESSAGES_EACH}) AS k"
        )
    )
    await connection.execute(
        text(
            "INSERT INTO escalations (conversation_id, issue_type, original_request, created_at) "
            "SELECT id, 'loan', 'x', created_at FROM conversations"
        )
    )
    for table in ("conversations", "messages", "escalations"):
        await connection.execute(text(f"ANALYZE {table}"))


async def test_windowed_stats_queries_read_indexes_not_whole_tables(
    connection: AsyncConnection,
) -> None:
    await _bulk_history(connection)
    since = "(now() - interval '1 day')"
    for name, query in stats._WINDOWED.items():
        sql = query.text.replace(":since", since).replace(":sla_seconds", "900")
        plan_rows = await connection.execute(text("EXPLAIN " + sql))
        plan = "\n".join(row[0] for row in plan_rows)
        assert not re.search(r"Seq Scan on (conversations|messages|escalations)", plan), (
            name,
            plan,
        )
        if name == "response_times":
            # From the window's replies, not from every message of the window.
            assert "ix_messages_assistant_created_at" in plan, plan


# The CLI reads committed data: its own database, seeded once.
@pytest.fixture(scope="module")
def stats_database(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        upgrade_to_head(url)
        run(execute(url, *stats_data.statements()))
        yield url


def _parse_table(output: str) -> dict[str, str]:
    values = {}
    for line in output.splitlines():
        name, _, value = line.partition(" ")
        values[name] = value.strip()
    return values


def _flatten(numbers: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in numbers.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _assert_table_matches(table: dict[str, str], expected: dict[str, Any]) -> None:
    for name, value in _flatten(expected).items():
        assert name in table, name
        if value is None:
            assert table[name] == "-", name
        else:
            assert float(table[name]) == pytest.approx(value, abs=1e-4), name


def test_cli_stats_print_the_same_numbers_as_the_api(stats_database: str, tmp_path: Path) -> None:
    result = run_cli("stats", database_url=stats_database, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = _parse_table(result.stdout)
    assert table["since:"] == "all time"
    _assert_table_matches(table, stats_data.ALL_TIME)


def test_cli_stats_window_by_since(stats_database: str, tmp_path: Path) -> None:
    result = run_cli(
        "stats", "--since", "2026-01-10T00:00:00+00:00", database_url=stats_database, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    _assert_table_matches(_parse_table(result.stdout), stats_data.SINCE_T)


def test_cli_stats_show_a_dash_for_response_times_when_nothing_was_answered(
    stats_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", stats_database)
    output = io.StringIO()
    with redirect_stdout(output):
        main(["stats", "--since", "2031-01-01"])
    table = _parse_table(output.getvalue())
    assert table["since:"] == "2031-01-01T00:00:00+00:00"
    assert table["response_time_seconds.p50"] == "-"
    assert table["conversations.total"] == "0"


def _percentile_cont(values: list[float], fraction: float) -> float:
    # PostgreSQL's percentile_cont: linear interpolation between the two nearest ranks.
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def _reference_waits(
    history: dict[str, list[tuple[str, datetime]]], since: datetime | None
) -> list[float]:
    """Each user message of the window, timed to the next assistant message of its
    conversation when that reply is in the window too: the documented rule, spelled out."""
    waits = []
    for messages in history.values():
        for position, (role, moment) in enumerate(messages):
            if role != "user" or (since is not None and moment < since):
                continue
            reply = next((m for r, m in messages[position + 1 :] if r == "assistant"), None)
            if reply is not None and (since is None or reply >= since):
                waits.append((reply - moment).total_seconds())
    return waits


async def test_response_times_match_the_rule_over_random_histories(db: AsyncSession) -> None:
    # Runs of unanswered questions, replies with no question since the last one, replies
    # just inside the window to questions just outside it, and conversations that never
    # get a reply: every shape the walk back from a reply has to get right.
    rng = random.Random(20261125)
    await db.execute(text(f"TRUNCATE {TABLES} CASCADE"))
    await db.execute(text("INSERT INTO users (id) VALUES ('00000000-0000-4000-8000-000000000003')"))
    start = datetime(2026, 3, 1, tzinfo=UTC)
    history: dict[str, list[tuple[str, datetime]]] = {}
    for number in range(60):
        conversation = f"00000000-0000-4000-8000-{number:012x}"
        await db.execute(
            text(
                "INSERT INTO conversations (id, user_id, session_id, created_at) "
                "VALUES (:id, '00000000-0000-4000-8000-000000000003', :session, :at)"
            ),
            {"id": conversation, "session": f"reference-session-{number:04d}-0123", "at": start},
        )
        moment = start + timedelta(seconds=rng.randint(0, 3600))
        messages = []
        for _ in range(rng.choice([0, 1, 2, 5, 12, 30])):
            moment += timedelta(seconds=rng.randint(1, 400))
            messages.append((rng.choice(["user", "user", "assistant"]), moment))
        for role, at in messages:
            await db.execute(
                text(
                    "INSERT INTO messages (conversation_id, role, content, created_at) "
                    "VALUES (:id, :role, 'x', :at)"
                ),
                {"id": conversation, "role": role, "at": at},
            )
        history[conversation] = messages
    moments = sorted(at for messages in history.values() for _, at in messages)
    windows: list[datetime | None] = [None, start, *(rng.choice(moments) for _ in range(6))]
    for since in windows:
        collected = await stats.collect(db, since=since, sla_minutes=15)
        waits = _reference_waits(history, since)
        assert waits, since  # the data set answers something in every window
        assert collected.response_p50 == pytest.approx(_percentile_cont(waits, 0.5)), since
        assert collected.response_p95 == pytest.approx(_percentile_cont(waits, 0.95)), since
        in_window = [r for m in history.values() for r, at in m if since is None or at >= since]
        assert collected.messages == {
            "user": in_window.count("user"),
            "assistant": in_window.count("assistant"),
            "staff": 0,
        }


@pytest.mark.parametrize(("minutes", "breached"), [(1, 2), (15, 2), (30, 1)])
async def test_the_sla_counts_late_and_still_unanswered_escalations(
    connection: AsyncConnection, db: AsyncSession, minutes: int, breached: int
) -> None:
    # First responses after 1 min (old, resolved) and 20 min; one still unanswered.
    await _seed(connection)
    collected = await stats.collect(db, since=None, sla_minutes=minutes)
    assert (collected.sla_minutes, collected.sla_breached) == (minutes, breached)


def test_the_sla_setting_is_read_and_checked() -> None:
    from app.settings import ConfigError, load_settings

    assert load_settings(_env_file=None).sla_first_response_minutes == 15
    assert (
        load_settings(_env_file=None, sla_first_response_minutes=5).sla_first_response_minutes == 5
    )
    with pytest.raises(ConfigError, match="SLA_FIRST_RESPONSE_MINUTES"):
        load_settings(_env_file=None, sla_first_response_minutes=0)


async def test_escalation_times_and_the_sla_match_a_reference_over_random_histories(
    db: AsyncSession,
) -> None:
    # Escalations opened over a week: some answered (quickly or late), some resolved,
    # some still waiting; windows cut through them at random.
    rng = random.Random(20261202)
    await db.execute(text(f"TRUNCATE {TABLES} CASCADE"))
    await db.execute(text("INSERT INTO users (id) VALUES ('00000000-0000-4000-8000-000000000004')"))
    now = datetime.now(UTC)
    start = now - timedelta(days=7)
    rows: list[tuple[datetime, float | None, float | None, str]] = []
    for number in range(120):
        conversation = f"00000000-0000-4000-8001-{number:012x}"
        await db.execute(
            text(
                "INSERT INTO conversations (id, user_id, session_id, created_at) "
                "VALUES (:id, '00000000-0000-4000-8000-000000000004', :session, :at)"
            ),
            {"id": conversation, "session": f"sla-session-{number:04d}-0123456", "at": start},
        )
        opened = start + timedelta(seconds=rng.randint(0, 6 * 86400))
        first = rng.choice([None, rng.uniform(5, 600), rng.uniform(600, 7200)])
        resolved = None if first is None or rng.random() < 0.4 else first + rng.uniform(60, 9e4)
        status = "resolved" if resolved is not None else rng.choice(["pending", "in_progress"])
        rows.append((opened, first, resolved, status))
        await db.execute(
            text(
                "INSERT INTO escalations (conversation_id, issue_type, original_request, status,"
                " created_at, first_response_at, resolved_at) VALUES (:c, 'loan', 'x', :status,"
                " :opened, :first, :resolved)"
            ),
            {
                "c": conversation,
                "status": status,
                "opened": opened,
                "first": None if first is None else opened + timedelta(seconds=first),
                "resolved": None if resolved is None else opened + timedelta(seconds=resolved),
            },
        )
    sla_minutes = 15
    windows: list[datetime | None] = [None, *(rng.choice(rows)[0] for _ in range(5))]
    for since in windows:
        chosen = [row for row in rows if since is None or row[0] >= since]
        firsts = [first for _, first, _, _ in chosen if first is not None]
        resolutions = [resolved for _, _, resolved, _ in chosen if resolved is not None]
        breached = sum(
            1
            for opened, first, _, status in chosen
            if (first is not None and first > sla_minutes * 60)
            or (first is None and status != "resolved" and (now - opened).total_seconds() > 900)
        )
        collected = await stats.collect(db, since=since, sla_minutes=sla_minutes)
        assert collected.first_response_p50 == pytest.approx(_percentile_cont(firsts, 0.5))
        assert collected.first_response_p95 == pytest.approx(_percentile_cont(firsts, 0.95))
        assert collected.resolution_p50 == pytest.approx(_percentile_cont(resolutions, 0.5))
        assert collected.resolution_p95 == pytest.approx(_percentile_cont(resolutions, 0.95))
        assert collected.sla_breached == breached, since
        oldest = min(opened for opened, _, _, status in rows if status != "resolved")
        assert collected.oldest_open_seconds == pytest.approx(
            (now - oldest).total_seconds(), abs=30
        )
