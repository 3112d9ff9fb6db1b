"""Database faults on a PostgreSQL the test owns: outage, recovery, no lost or doubled write."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import ROOMY_LIMITS, make_settings, started_client
from own_postgres import free_port

pytestmark = [pytest.mark.faults, pytest.mark.slow]

POOL_TIMEOUT_S = 2.0
OUTAGE_SECONDS = 3.0
RECOVERY_LIMIT_S = 5.0
WRITERS = 4
REQUEST_LIMIT_S = 15.0


@dataclass
class Ledger:
    """What the clients saw: acknowledged keys, every status, how long 503s took."""

    acknowledged: dict[str, int] = field(default_factory=dict)
    statuses: Counter[int | str] = field(default_factory=Counter)
    unavailable_seconds: list[float] = field(default_factory=list)
    last_ack_at: float = 0.0


def _fault_settings(url: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "db_pooler": "direct",
        "db_pool_size": 5,
        "db_max_overflow": 0,
        "db_pool_timeout_s": POOL_TIMEOUT_S,
        "db_statement_timeout_ms": 2000,
        **ROOMY_LIMITS,  # the faults post far more than a member may in a minute
    }
    values.update(overrides)
    return make_settings(url, **values)


async def _send_until_acknowledged(
    client: httpx.AsyncClient, session_id: str, ledger: Ledger
) -> None:
    """One message, retried with the same Idempotency-Key until the service acknowledges it."""
    key = uuid.uuid4().hex
    while True:
        started = time.monotonic()
        try:
            response = await asyncio.wait_for(
                client.post(
                    f"/api/v1/sessions/{session_id}/messages",
                    json={"content": f"message {key}"},
                    headers={"Idempotency-Key": key},
                ),
                REQUEST_LIMIT_S,
            )
        except TimeoutError:
            ledger.statuses["hung"] += 1
            continue
        elapsed = time.monotonic() - started
        ledger.statuses[response.status_code] += 1
        if response.status_code in (200, 201):
            ledger.acknowledged[key] = response.status_code
            ledger.last_ack_at = time.monotonic()
            return
        assert response.status_code == 503, response.text
        ledger.unavailable_seconds.append(elapsed)
        await asyncio.sleep(0.05)


async def _writer(
    client: httpx.AsyncClient, session_id: str, ledger: Ledger, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        await _send_until_acknowledged(client, session_id, ledger)


async def _wait_for_status(
    client: httpx.AsyncClient, path: str, status: int, limit: float
) -> httpx.Response:
    deadline = time.monotonic() + limit
    while True:
        response = await client.get(path)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.1)


async def _truncate(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("TRUNCATE users, conversations, messages, escalations CASCADE")
    finally:
        await connection.close()


async def _stored_keys(url: str) -> Counter[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT idempotency_key, count(*) AS n FROM messages "
            "WHERE idempotency_key IS NOT NULL GROUP BY idempotency_key"
        )
    finally:
        await connection.close()
    return Counter({row["idempotency_key"]: row["n"] for row in rows})


PGBOUNCER_SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "pgbouncer"


@pytest.fixture(params=["direct", "pgbouncer"])
def service_url(request: pytest.FixtureRequest, own_postgres: Any) -> Iterator[tuple[str, str]]:
    """How the service reaches the server under test: directly, or through a PgBouncer in
    transaction mode (as behind Supavisor), with the settings for that mode."""
    if request.param == "direct":
        yield own_postgres.url, "direct"
        return
    if shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists():
        pytest.skip("pgbouncer is not installed")
    directory = tempfile.mkdtemp(prefix="member-support-pgbouncer-")
    port = free_port()
    subprocess.run(
        [str(PGBOUNCER_SCRIPT), "start", directory, str(port), "127.0.0.1", str(own_postgres.port)],
        check=True,
        timeout=60,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", "transaction"
    finally:
        subprocess.run([str(PGBOUNCER_SCRIPT), "stop", directory], check=False, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


async def test_an_outage_answers_503_and_loses_or_doubles_no_acknowledged_write(
    own_postgres: Any, service_url: tuple[str, str]
) -> None:
    url, pooler = service_url
    await _truncate(own_postgres.url)
    settings = _fault_settings(url, db_pooler=pooler)
    # Through a pooler the wait for a server connection happens inside a statement, so
    # the client-side backstop (command timeout = statement + pool timeout) bounds it,
    # after at most a pool timeout spent waiting for one of our own connections.
    command_timeout = settings.db_statement_timeout_ms / 1000 + POOL_TIMEOUT_S
    slowest_allowed = POOL_TIMEOUT_S + (command_timeout if pooler == "transaction" else 0)
    ledger = Ledger()
    stop = asyncio.Event()
    async with started_client(settings) as client:
        opened = await client.post("/api/v1/sessions")
        assert opened.status_code == 201
        session_id = opened.json()["session_id"]
        writers = [
            asyncio.create_task(_writer(client, session_id, ledger, stop)) for _ in range(WRITERS)
        ]
        try:
            await asyncio.sleep(1.0)
            before_outage = len(ledger.acknowledged)

            await own_postgres.stop_async("immediate")
            outage_started = time.monotonic()
            readiness = await _wait_for_status(client, "/readyz", 503, OUTAGE_SECONDS)
            health = await client.get("/healthz")
            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_started)))
            failed_during_outage = len(ledger.unavailable_seconds)

            await own_postgres.start_async()
            restarted = time.monotonic()
            outage_seconds = restarted - outage_started
            while ledger.last_ack_at < restarted and time.monotonic() - restarted < 30:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            recovery_seconds = ledger.last_ack_at - restarted
            ready_again = await _wait_for_status(client, "/readyz", 200, RECOVERY_LIMIT_S)
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*writers), 60)

    stored = await _stored_keys(own_postgres.url)
    print(
        f"\noutage {outage_seconds:.1f} s, recovery {recovery_seconds:.2f} s, "
        f"acknowledged {len(ledger.acknowledged)} (before outage {before_outage}), "
        f"stored {sum(stored.values())} rows for {len(stored)} keys, "
        f"statuses {dict(ledger.statuses)}, slowest 503 {max(ledger.unavailable_seconds):.2f} s"
    )
    assert before_outage > 0
    assert failed_during_outage > 0, "the outage never reached a request"
    assert readiness.status_code == 503
    assert readiness.json()["reason"] == "database unreachable"
    assert health.status_code == 200
    assert max(ledger.unavailable_seconds) <= slowest_allowed + 1.0
    assert "hung" not in ledger.statuses
    assert 0 <= recovery_seconds < RECOVERY_LIMIT_S
    assert ready_again.status_code == 200
    assert set(ledger.acknowledged) <= set(stored), "an acknowledged write was lost"
    assert max(stored.values()) == 1, "a retried write was stored twice"
    assert set(stored) == set(ledger.acknowledged)


async def test_a_database_that_accepts_but_never_answers_gives_503_within_the_pool_timeout() -> (
    None
):
    silent: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = _fault_settings(
        f"postgresql://postgres@127.0.0.1:{port}/postgres", db_pool_timeout_s=0.5
    )
    try:
        async with started_client(settings) as client:
            started = time.monotonic()
            response = await asyncio.wait_for(
                client.get("/api/v1/sessions/a-session-id-that-is-long-enough"), 10
            )
            elapsed = time.monotonic() - started
            readiness = await asyncio.wait_for(client.get("/readyz"), 10)
    finally:
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()
    assert response.status_code == 503
    assert elapsed < 0.5 + 1.0
    assert readiness.status_code == 503
    assert readiness.json()["reason"] == "database unreachable"
