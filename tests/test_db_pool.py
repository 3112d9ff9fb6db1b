"""The service's connection pool: a connection idle past PING_AFTER_IDLE_S is pinged
(and replaced when the server killed it) before use; a recently used one is not."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app import db as db_module
from app.db import create_engine
from app.settings import Settings


async def _backend_pid(engine_connection: AsyncConnection) -> int:
    return int(await engine_connection.scalar(text("SELECT pg_backend_pid()")))


async def test_an_idle_pooled_connection_killed_by_the_server_is_replaced_before_use(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    if settings.transaction_pooler:
        pytest.skip("behind a pooler a client connection is not one server backend")
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_S", 0.0)
    pooled = create_engine(settings)
    admin = create_engine(settings, pooled=False)
    try:
        async with pooled.connect() as first:
            killed = await _backend_pid(first)
        async with admin.connect() as admin_connection:
            await admin_connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": killed})
        async with pooled.connect() as again:
            assert await _backend_pid(again) != killed
    finally:
        await admin.dispose()
        await pooled.dispose()


async def test_a_recently_used_connection_is_not_pinged(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    pooled = create_engine(settings)
    pings: list[object] = []
    monkeypatch.setattr(
        type(pooled.sync_engine.dialect), "do_ping", lambda self, connection: pings.append(1)
    )
    try:
        for _ in range(3):
            async with pooled.connect() as connection:
                await connection.execute(text("SELECT 1"))
        assert pings == []
    finally:
        await pooled.dispose()
