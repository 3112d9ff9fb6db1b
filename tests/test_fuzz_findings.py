"""Regressions for what the fuzzer found, each pinned by a plain test."""

from __future__ import annotations

from conftest import make_settings, started_client
from sqlalchemy.ext.asyncio import AsyncEngine


async def test_escalations_keep_working_after_the_server_switches_to_a_generic_plan(
    database_url: str, committed_engine: AsyncEngine
) -> None:
    # PostgreSQL plans a prepared statement with its values 5 times, then may use a
    # generic plan; ON CONFLICT's partial-index predicate must not be a bind parameter
    # then, or the index is not inferred (42P10) and the 6th escalation was a 500.
    # Eight open at once on one connection: the open-escalation cap is raised to let them.
    settings = make_settings(
        database_url, db_pool_size=1, db_max_overflow=0, escalations_open_max=8
    )
    async with started_client(settings) as client:
        session_id = (await client.post("/api/v1/sessions")).json()["session_id"]
        statuses = [
            (
                await client.post(
                    f"/api/v1/sessions/{session_id}/escalations",
                    json={"issue_type": f"issue_{number}", "original_request": "help"},
                )
            ).status_code
            for number in range(8)
        ]
    assert statuses == [201] * 8
