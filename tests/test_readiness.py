"""/healthz, /readyz (cached, one check per storm) and graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic import command
from conftest import SERVICE_KEY, fresh_database, make_settings, started_client
from ops_support import asyncpg_dsn, fetch_value, run, running_server, server_log

from app.api import ops
from app.migrations import alembic_config, head_revision, upgrade_to_head

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/member_support"


@pytest.fixture(scope="module")
def unmigrated_database(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        yield url


@pytest.fixture(scope="module")
def behind_database(server_url: str) -> Iterator[str]:
    """A database one revision short of head."""
    with fresh_database(server_url) as url:
        script = alembic_config().get_main_option("script_location")
        assert script
        from alembic.script import ScriptDirectory

        previous = ScriptDirectory(script).get_revision(head_revision()).down_revision
        assert isinstance(previous, str)
        command.upgrade(alembic_config(url), previous)
        yield url


async def test_healthz_answers_while_the_process_runs(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_200_when_the_database_answers_at_head(database_url: str) -> None:
    async with started_client(make_settings(database_url)) as http:
        response = await http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "reason": "database reachable, schema at head"}


async def test_readyz_is_503_when_the_database_is_unreachable() -> None:
    async with started_client(make_settings(UNREACHABLE)) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not ready", "reason": "database unreachable"}


async def test_readyz_is_503_naming_both_revisions_when_the_schema_is_behind(
    behind_database: str,
) -> None:
    async with started_client(make_settings(behind_database)) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    reason = response.json()["reason"]
    assert reason.startswith("schema at ")
    assert reason.endswith(f"expected {head_revision()}")


async def test_readyz_is_503_when_the_database_was_never_migrated(
    unmigrated_database: str,
) -> None:
    async with started_client(make_settings(unmigrated_database)) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert "not migrated" in response.json()["reason"]


async def test_a_storm_of_probes_costs_one_database_check(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = 0
    real_check = ops._check

    async def counted(request: object) -> ops.Readiness:
        nonlocal checks
        checks += 1
        await asyncio.sleep(0.05)  # a slow database: the others arrive meanwhile
        return await real_check(request)  # type: ignore[arg-type]

    monkeypatch.setattr(ops, "_check", counted)
    async with started_client(make_settings(database_url)) as http:
        responses = await asyncio.gather(*(http.get("/readyz") for _ in range(50)))
        for _ in range(20):
            responses.append(await http.get("/readyz"))
    assert {response.status_code for response in responses} == {200}
    assert checks == 1


async def test_readiness_is_checked_again_once_the_cached_answer_is_old(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = 0
    real_check = ops._check

    async def counted(request: object) -> ops.Readiness:
        nonlocal checks
        checks += 1
        return await real_check(request)  # type: ignore[arg-type]

    monkeypatch.setattr(ops, "_check", counted)
    monkeypatch.setattr(ops, "READINESS_CACHE_SECONDS", 0.05)
    async with started_client(make_settings(database_url)) as http:
        await http.get("/readyz")
        await asyncio.sleep(0.1)
        await http.get("/readyz")
    assert checks == 2


# --- graceful shutdown ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def shutdown_database(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        upgrade_to_head(url)
        yield url


async def _wait_for_lock_wait(url: str) -> None:
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'member-support' AND wait_event_type = 'Lock'"
    )
    for _ in range(200):
        if await fetch_value(url, query):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the request never reached the database")


def test_sigterm_lets_a_request_in_flight_finish_then_closes_the_pool(
    shutdown_database: str, tmp_path: Path
) -> None:
    url = shutdown_database
    headers = {"Authorization": f"Bearer {SERVICE_KEY}"}

    async def scenario(process_id: int, base_url: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
            created = await http.post("/api/v1/sessions")
            conversation_id = created.json()["conversation_id"]
            holder = await asyncpg.connect(asyncpg_dsn(url))
            try:
                transaction = holder.transaction()
                await transaction.start()
                # Hold the conversation's row: the PATCH below waits on it, in flight.
                await holder.execute(
                    "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conversation_id
                )
                patch = asyncio.create_task(
                    http.patch(
                        f"/api/v1/conversations/{conversation_id}",
                        json={"status": "closed"},
                        headers=headers,
                    )
                )
                await _wait_for_lock_wait(url)
                os.kill(process_id, signal.SIGTERM)
                await asyncio.sleep(0.5)
                await transaction.rollback()
            finally:
                await holder.close()
            return await patch

    with running_server(url, tmp_path, DB_STATEMENT_TIMEOUT_MS="60000") as (process, base_url):
        response = run(scenario(process.pid, base_url))
        assert isinstance(response, httpx.Response)
        assert process.wait(timeout=30) == 0
    assert response.status_code == 200
    assert response.json()["status"] == "closed"
    log = server_log(tmp_path)
    assert log.index("Shutting down") < log.index("route=/api/v1/conversations/{conversation_id}")
    assert "stopped" in log
    connections = run(
        fetch_value(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'member-support'",
        )
    )
    assert connections == 0
    # Nothing new is accepted once the server has stopped.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base_url}/healthz", timeout=2)
