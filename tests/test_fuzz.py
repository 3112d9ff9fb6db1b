"""schemathesis against the app's own /openapi.json: every operation, in-process, real database.

Checks: no server error, responses match their schema, status codes and content types
are documented. Path ids are swapped for seeded ones half of the time, so the fuzzer
reaches past the 404 into the handlers; service routes get the Bearer key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import schemathesis
from conftest import SERVICE_KEY, make_settings
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

EXAMPLES_PER_OPERATION = int(os.environ.get("FUZZ_EXAMPLES", "100"))
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
SEEDED_SESSION_ID = "fuzz-seeded-session-0001"
CASES: Counter[str] = Counter()

# The schema only: the app answers /openapi.json without touching a database.
# The two event streams are left out: a stream that opens never ends on its own, so each
# case would wait out a read timeout (it made this test minutes long). What they answer
# before a stream starts (401, 404, 422 for bad resume points and types) is tested in
# tests/test_events.py, and their data shapes there and in test_openapi.py.
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(make_settings("postgresql://fuzz@127.0.0.1:1/schema_only"))
).exclude(path_regex=r"^/api/v1/(sessions/\{session_id\}/)?events$")


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def _seed(url: str) -> dict[str, str]:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("TRUNCATE users, conversations, messages, escalations CASCADE")
        user_id = await connection.fetchval(
            "INSERT INTO users (email, name, phone) VALUES ('fuzz@example.org', 'Fuzz', '+1 555')"
            " RETURNING id"
        )
        conversation_id = await connection.fetchval(
            "INSERT INTO conversations (user_id, session_id) VALUES ($1, $2) RETURNING id",
            user_id,
            SEEDED_SESSION_ID,
        )
        await connection.execute(
            "INSERT INTO messages (conversation_id, role, content) VALUES ($1, 'user', 'hello')",
            conversation_id,
        )
        escalation_id = await connection.fetchval(
            "INSERT INTO escalations (conversation_id, issue_type, original_request)"
            " VALUES ($1, 'loan', 'help') RETURNING id",
            conversation_id,
        )
    finally:
        await connection.close()
    return {
        "session_id": SEEDED_SESSION_ID,
        "conversation_id": str(conversation_id),
        "escalation_id": str(escalation_id),
        "user_id": str(user_id),
    }


async def _truncate(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("TRUNCATE users, conversations, messages, escalations CASCADE")
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def fuzz_target(
    database_url: str, migration_url: str, request: pytest.FixtureRequest
) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    """The real app on the test database (committing for real), and seeded ids."""
    seeded = _run(_seed(migration_url))
    app = create_app(make_settings(database_url, database_migration_url=migration_url))
    try:
        yield app, seeded
    finally:
        _run(_truncate(migration_url))
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(
                f"\nschemathesis: {sum(CASES.values())} cases over {len(CASES)} operations "
                f"(at most {EXAMPLES_PER_OPERATION} per operation)"
            )


def _aim_at_seeded(case: Any, seeded: dict[str, str]) -> None:
    """Swap generated path ids for seeded ones on every other case (never for DELETE,
    which would erase the seed)."""
    if not case.path_parameters or case.method.upper() == "DELETE":
        return
    if zlib.crc32(repr((case.query, case.body, case.headers)).encode()) % 2:
        return
    for name in list(case.path_parameters):
        if name in seeded:
            case.path_parameters[name] = seeded[name]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_without_server_errors_and_as_documented(
    case: Any, fuzz_target: tuple[FastAPI, dict[str, str]]
) -> None:
    app, seeded = fuzz_target
    _aim_at_seeded(case, seeded)
    CASES[case.operation.label] += 1
    case.call_and_validate(
        app=app, headers={"Authorization": f"Bearer {SERVICE_KEY}"}, checks=CHECKS
    )
