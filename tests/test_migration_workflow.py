"""The workflow revision: resolved_at backfilled, and no way down over staff messages."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from alembic import command
from conftest import fresh_database
from ops_support import execute, fetch_value

from app.migrations import alembic_config

BEFORE = "0014"
WORKFLOW = "0015"


@pytest.fixture
def database(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        yield url


def test_resolved_escalations_get_their_resolved_at_from_updated_at(database: str) -> None:
    config = alembic_config(database)
    command.upgrade(config, BEFORE)
    asyncio.run(
        execute(
            database,
            "INSERT INTO users (id) VALUES ('00000000-0000-4000-8000-000000000001')",
            "INSERT INTO conversations (id, user_id, session_id) VALUES "
            "('00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000001', "
            "'migration-session-0001')",
            "INSERT INTO escalations (conversation_id, issue_type, original_request, status, "
            "updated_at) VALUES "
            "('00000000-0000-4000-8000-000000000002', 'loan', 'x', 'resolved', "
            "'2026-01-02T03:04:05+00'), "
            "('00000000-0000-4000-8000-000000000002', 'card', 'y', 'pending', "
            "'2026-01-02T03:04:05+00')",
        )
    )
    command.upgrade(config, WORKFLOW)
    rows = asyncio.run(
        fetch_value(
            database,
            "SELECT json_object_agg(issue_type, json_build_array(resolved_at, updated_at)) "
            "FROM escalations",
        )
    )
    assert isinstance(rows, str)
    assert '"loan" : ["2026-01-02T03:04:05+00:00", "2026-01-02T03:04:05+00:00"]' in rows
    assert '"card" : [null, "2026-01-02T03:04:05+00:00"]' in rows


def test_going_down_refuses_while_staff_messages_exist(database: str) -> None:
    config = alembic_config(database)
    command.upgrade(config, WORKFLOW)
    asyncio.run(
        execute(
            database,
            "INSERT INTO users (id) VALUES ('00000000-0000-4000-8000-000000000001')",
            "INSERT INTO conversations (id, user_id, session_id) VALUES "
            "('00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000001', "
            "'migration-session-0002')",
            "INSERT INTO messages (conversation_id, role, content) VALUES "
            "('00000000-0000-4000-8000-000000000002', 'staff', 'hello from staff')",
        )
    )
    with pytest.raises(RuntimeError, match="1 staff message"):
        command.downgrade(config, BEFORE)
    assert asyncio.run(fetch_value(database, "SELECT version_num FROM alembic_version")) == WORKFLOW
    asyncio.run(execute(database, "DELETE FROM messages WHERE role = 'staff'"))
    command.downgrade(config, BEFORE)
    assert asyncio.run(fetch_value(database, "SELECT version_num FROM alembic_version")) == BEFORE
