"""Transaction-pooler safety: bursts through PgBouncer/Supavisor-style pooling, SET LOCAL only.

With TEST_POOLER_URL set (CI's PgBouncer pass) these run through a PgBouncer in
transaction mode; without it they run against the server directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from conftest import SERVICE_KEY, make_settings, truncate
from fastapi import FastAPI
from sqlalchemy import text

from app.db import create_engine, create_sessionmaker
from app.main import create_app

BURST = 120
SESSIONS = 6
THROUGH_POOLER = bool(os.environ.get("TEST_POOLER_URL"))
# The shared test server allows 100 connections; only a pooler multiplexes more clients.
POOL_SIZES = [(1, 0), (10, 10), (60, 60)] if THROUGH_POOLER else [(1, 0), (10, 10)]
PREPARED_STATEMENT_SQLSTATES = {"26000", "42P05"}  # does not exist / already exists


@pytest.fixture
async def clean(engine: Any) -> AsyncIterator[None]:
    await truncate(engine)
    yield
    await truncate(engine)


async def _app_client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://test",
    )


async def _burst(app: FastAPI, *, control: bool = False) -> tuple[Counter[int], int]:
    """Open sessions, then fire BURST mixed member and service requests at once.

    `control`: the app is misconfigured on purpose, so opening a session may already
    fail; such answers are counted with the burst's instead of failing the set-up."""
    service = {"Authorization": f"Bearer {SERVICE_KEY}"}
    failed_opens: Counter[int] = Counter()
    async with await _app_client(app) as client:
        sessions = []
        for _ in range(SESSIONS):
            opened = await client.post("/api/v1/sessions")
            if control and opened.status_code != 201:
                failed_opens[opened.status_code] += 1
                continue
            assert opened.status_code == 201, opened.text
            sessions.append(opened.json())
        if not sessions:
            return failed_opens, 0

        async def one(index: int) -> int:
            session = sessions[index % len(sessions)]
            kind = index % 4
            if kind == 0:
                response = await client.post(
                    f"/api/v1/sessions/{session['session_id']}/messages",
                    json={"content": f"burst {index}"},
                )
            elif kind == 1:
                response = await client.get(
                    f"/api/v1/sessions/{session['session_id']}/messages?limit=20"
                )
            elif kind == 2:
                response = await client.post(
                    f"/api/v1/conversations/{session['conversation_id']}/messages",
                    json={"role": "assistant", "content": f"reply {index}"},
                    headers={**service, "Idempotency-Key": uuid.uuid4().hex},
                )
            else:
                response = await client.get(
                    f"/api/v1/conversations/{session['conversation_id']}", headers=service
                )
            return response.status_code

        statuses = Counter(await asyncio.gather(*(one(index) for index in range(BURST))))
        writes = sum(1 for index in range(BURST) if index % 4 in (0, 2))
    return statuses + failed_opens, writes


@pytest.mark.parametrize(("pool_size", "max_overflow"), POOL_SIZES)
async def test_a_burst_of_concurrent_requests_succeeds_whatever_the_pool_size(
    database_url: str, engine: Any, clean: None, pool_size: int, max_overflow: int
) -> None:
    app = create_app(
        make_settings(database_url, db_pool_size=pool_size, db_max_overflow=max_overflow)
    )
    async with LifespanManager(app):
        statuses, writes = await _burst(app)
    assert set(statuses) <= {200, 201}, statuses
    async with engine.connect() as connection:
        stored = (await connection.execute(text("SELECT count(*) FROM messages"))).scalar_one()
    assert stored == writes


@pytest.mark.pooler
@pytest.mark.skipif(not THROUGH_POOLER, reason="needs TEST_POOLER_URL (a transaction pooler)")
async def test_the_burst_fails_through_the_pooler_without_the_pooler_settings(
    database_url: str, clean: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The control: proves the harness reproduces the field failure the settings prevent."""
    app = create_app(
        make_settings(
            database_url,
            db_pooler="direct",
            db_statement_timeout_ms=0,  # a start-up parameter PgBouncer would refuse
            db_pool_size=10,
            db_max_overflow=10,
        )
    )
    with caplog.at_level(logging.ERROR, logger="app.errors"):
        async with LifespanManager(app):
            # Each client connection runs several transactions, so its cached statements
            # meet backends that never prepared them.
            statuses, _ = await _burst(app, control=True)
    sqlstates = {getattr(record, "sqlstate", None) for record in caplog.records}
    assert statuses[500] > 0
    assert sqlstates & PREPARED_STATEMENT_SQLSTATES


async def test_the_statement_timeout_is_set_per_transaction_and_never_leaks(
    database_url: str,
) -> None:
    settings = make_settings(database_url, db_pooler="transaction", db_statement_timeout_ms=4321)
    engine = create_engine(settings, pooled=False)
    sessions = create_sessionmaker(engine, settings)
    try:
        async with sessions() as session, session.begin():
            inside = (await session.execute(text("SHOW statement_timeout"))).scalar_one()
        async with engine.connect() as connection:
            outside = (await connection.execute(text("SHOW statement_timeout"))).scalar_one()
    finally:
        await engine.dispose()
    assert inside == "4321ms"
    assert outside != "4321ms"
