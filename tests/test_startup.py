"""What the service says when it starts."""

from __future__ import annotations

import logging

import pytest
from asgi_lifespan import LifespanManager

from app.main import create_app
from tests.conftest import make_settings


async def test_start_up_logs_the_connection_budget_without_the_password(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        database_url.replace("postgres@", "postgres:sekrit-pw@", 1),
        workers=3,
        db_pool_size=4,
        db_max_overflow=2,
    )
    caplog.set_level(logging.INFO, logger="app")
    async with LifespanManager(create_app(settings)):
        pass
    started = next(record for record in caplog.records if record.getMessage() == "started")
    assert started.connection_budget == 18  # type: ignore[attr-defined]
    assert "sekrit-pw" not in caplog.text
    assert "sekrit-pw" not in str(started.__dict__)


async def test_start_up_without_keys_warns_how_to_set_one(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app")
    async with LifespanManager(create_app(make_settings(database_url, api_keys=""))):
        pass
    assert any("API_KEYS=" in record.getMessage() for record in caplog.records)
