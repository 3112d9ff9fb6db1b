"""Security properties named in docs/SECURITY.md (OWASP API Security Top 10, 2023)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from conftest import SERVICE_KEY, TABLES, make_settings
from fastapi import FastAPI

from app.main import create_app

PII = {"email", "name", "phone", "contact_info"}
ALLOWED_ORIGIN = "https://chat.example.org"


async def _open_session(client: httpx.AsyncClient, **body: str) -> dict[str, Any]:
    response = await client.post("/api/v1/sessions", json=body)
    assert response.status_code == 201
    opened: dict[str, Any] = response.json()
    return opened


# --- API1 object-level authorization ------------------------------------------------------


async def test_one_session_id_never_reads_another_sessions_messages(
    client: httpx.AsyncClient,
) -> None:
    alice = await _open_session(client)
    bob = await _open_session(client)
    await client.post(
        f"/api/v1/sessions/{alice['session_id']}/messages", json={"content": "alice's secret"}
    )
    history = await client.get(f"/api/v1/sessions/{bob['session_id']}/messages")
    assert history.status_code == 200
    assert history.json()["items"] == []


async def test_a_guessed_session_id_is_404_not_403(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/sessions/guessed-session-id-000000/messages")
    assert response.status_code == 404


async def test_server_generated_session_ids_carry_at_least_128_bits(
    client: httpx.AsyncClient,
) -> None:
    session_id = (await _open_session(client))["session_id"]
    # 22 characters of a 64-symbol alphabet = 132 bits.
    assert len(session_id) >= 22


async def test_a_member_session_id_is_no_service_credential(client: httpx.AsyncClient) -> None:
    session = await _open_session(client)
    response = await client.get(
        f"/api/v1/conversations/{session['conversation_id']}",
        headers={"Authorization": f"Bearer {session['session_id']}"},
    )
    assert response.status_code == 401


# --- API5 function-level authorization ---------------------------------------------------

MEMBER_AND_OPS_PREFIXES = ("/api/v1/sessions", "/healthz", "/readyz", "/metrics", "/docs", "/redoc")


def _service_operations() -> list[tuple[str, str]]:
    schema = create_app(make_settings("postgresql://schema@127.0.0.1:1/only")).openapi()
    return [
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        if not path.startswith(MEMBER_AND_OPS_PREFIXES)
        for method in operations
    ]


@pytest.mark.parametrize(("method", "path"), _service_operations())
async def test_every_route_outside_member_and_ops_requires_the_service_key(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    concrete = path.replace("{", "").replace("}", "")  # ids need not exist: auth comes first
    for name in ("conversation_id", "escalation_id", "user_id", "id"):
        concrete = concrete.replace(name, "00000000-0000-0000-0000-000000000000")
    response = await client.request(method, concrete, json={})
    assert response.status_code == 401


# --- API2 authentication (service keys) ----------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", f"Basic {SERVICE_KEY}"])
async def test_service_routes_refuse_a_missing_or_wrong_key_with_401_and_a_bearer_challenge(
    client: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.get("/api/v1/escalations", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_without_api_keys_every_service_route_answers_401(database_url: str) -> None:
    app = create_app(make_settings(database_url, api_keys=""))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        response = await client.get("/api/v1/escalations", headers={"Authorization": "Bearer "})
    assert response.status_code == 401


async def test_keys_and_session_ids_never_reach_the_logs(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        session = await _open_session(client, email="ada@example.org")
        await client.get("/api/v1/escalations", headers={"Authorization": "Bearer nope-key-1"})
        await client.get("/api/v1/escalations", headers={"Authorization": f"Bearer {SERVICE_KEY}"})
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    for secret in (SERVICE_KEY, "nope-key-1", session["session_id"], "ada@example.org"):
        assert secret not in logged


# --- API3 object property level: no PII on member routes, no mass assignment --------------


async def test_member_routes_never_return_contact_details(client: httpx.AsyncClient) -> None:
    session = await _open_session(client, name="Ada", email="ada@example.org", phone="+1 555 0100")
    sid = session["session_id"]
    await client.patch(f"/api/v1/sessions/{sid}/contact", json={"name": "Ada L"})
    escalated = await client.post(
        f"/api/v1/sessions/{sid}/escalations",
        json={"issue_type": "loan", "original_request": "help", "contact_info": {"phone": "1234"}},
    )
    bodies = [
        session,
        (await client.get(f"/api/v1/sessions/{sid}")).json(),
        escalated.json(),
        (await client.get(f"/api/v1/sessions/{sid}/escalations")).json()["items"][0],
    ]
    for body in bodies:
        assert not PII & set(body)
        assert "ada@example.org" not in str(body)


async def test_a_service_conversation_never_shows_the_session_id(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await _open_session(client)
    response = await client.get(
        f"/api/v1/conversations/{session['conversation_id']}", headers=service_headers
    )
    assert response.status_code == 200
    assert "session_id" not in response.json()
    assert session["session_id"] not in response.text


@pytest.mark.parametrize(
    "body",
    [{"status": "archived"}, {"conversation_id": "00000000-0000-0000-0000-000000000000"}],
)
async def test_unknown_fields_are_refused_rather_than_assigned(
    client: httpx.AsyncClient, body: dict[str, str]
) -> None:
    response = await client.post("/api/v1/sessions", json=body)
    assert response.status_code == 422


# --- API8 misconfiguration: CORS and error bodies -----------------------------------------


@pytest.fixture
async def cors_client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(database_url, cors_origins=ALLOWED_ORIGIN))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        yield client


def _preflight(origin: str, headers: str = "content-type") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": headers,
    }


async def test_cors_admits_the_configured_frontend_origin(cors_client: httpx.AsyncClient) -> None:
    response = await cors_client.options("/api/v1/sessions", headers=_preflight(ALLOWED_ORIGIN))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "access-control-allow-credentials" not in response.headers


async def test_cors_refuses_any_other_origin(cors_client: httpx.AsyncClient) -> None:
    response = await cors_client.options(
        "/api/v1/sessions", headers=_preflight("https://evil.example")
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_cors_does_not_let_a_browser_send_a_service_key(
    cors_client: httpx.AsyncClient,
) -> None:
    response = await cors_client.options(
        "/api/v1/escalations", headers=_preflight(ALLOWED_ORIGIN, "authorization")
    )
    assert response.status_code == 400


async def test_without_cors_origins_no_cors_headers_are_sent(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"Origin": ALLOWED_ORIGIN})
    assert "access-control-allow-origin" not in response.headers


async def test_an_unexpected_error_answers_a_bare_500_without_internals(
    database_url: str,
) -> None:
    app = create_app(make_settings(database_url))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("postgresql://postgres:hunter2@db.internal:5432/x failed")

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://test",
    ) as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error"}


async def test_a_503_names_no_host_port_or_driver(unreachable_app: FastAPI) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=unreachable_app, raise_app_exceptions=False),
        base_url="http://test",
    ) as client:
        response = await client.get("/api/v1/sessions/a-session-id-long-enough-0")
    assert response.status_code == 503
    assert response.json() == {"detail": "Database unavailable, try again shortly"}


@pytest.fixture
async def unreachable_app() -> AsyncIterator[FastAPI]:
    app = create_app(
        make_settings(
            "postgresql://postgres:hunter2@127.0.0.1:1/nowhere",
            db_pooler="direct",
            db_pool_timeout_s=0.5,
        )
    )
    async with LifespanManager(app):
        yield app


async def test_a_validation_error_does_not_echo_the_input(client: httpx.AsyncClient) -> None:
    session = await _open_session(client)
    response = await client.patch(
        f"/api/v1/sessions/{session['session_id']}/contact",
        json={"email": "not-an-email-but-private@@x"},
    )
    assert response.status_code == 422
    assert "private" not in response.text
    assert all("input" not in item for item in response.json()["detail"])


# --- Row Level Security against Supabase's anon key ---------------------------------------

SUPABASE_ROLES = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN;
  END IF;
END $$;
GRANT USAGE ON SCHEMA public TO anon, authenticated;
GRANT ALL ON ALL TABLES IN SCHEMA public TO anon, authenticated;
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO anon, authenticated;
"""
SERVICE_TABLES = (
    "users",
    "conversations",
    "messages",
    "escalations",
    "notification_events",
    "staff",
    "escalation_audit",
    "member_message_windows",
    "alembic_version",
)


@pytest.fixture
async def supabase_like(own_postgres: Any) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a server of our own where the roles and grants Supabase gives
    every project exist (roles are cluster-wide: never on the shared server)."""
    connection = await asyncpg.connect(own_postgres.url)
    await connection.execute(SUPABASE_ROLES)
    await connection.execute(f"TRUNCATE {TABLES} CASCADE")
    user_id = await connection.fetchval(
        "INSERT INTO users (email) VALUES ('member@example.org') RETURNING id"
    )
    conversation_id = await connection.fetchval(
        "INSERT INTO conversations (user_id, session_id) VALUES ($1, 'rls-session-0000000001')"
        " RETURNING id",
        user_id,
    )
    await connection.execute(
        "INSERT INTO messages (conversation_id, role, content) VALUES ($1, 'user', 'hi')",
        conversation_id,
    )
    escalation_id = await connection.fetchval(
        "INSERT INTO escalations (conversation_id, issue_type, original_request)"
        " VALUES ($1, 'loan', 'help') RETURNING id",
        conversation_id,
    )
    await connection.execute(
        "INSERT INTO notification_events (escalation_id, type) VALUES ($1, 'escalation.created')",
        escalation_id,
    )
    await connection.execute(
        "INSERT INTO staff (email, display_name, password_hash) VALUES ('s@example.org', 'S', 'x')"
    )
    await connection.execute(
        "INSERT INTO escalation_audit (escalation_id, actor, action)"
        " VALUES ($1, 'key:t', 'status')",
        escalation_id,
    )
    await connection.execute(
        "INSERT INTO member_message_windows (conversation_id, window_start, messages)"
        " VALUES ($1, now(), 1)",
        conversation_id,
    )
    try:
        yield connection
    finally:
        await connection.execute(f"TRUNCATE {TABLES} CASCADE")
        await connection.close()


async def test_every_table_in_the_schema_has_row_level_security(
    supabase_like: asyncpg.Connection,
) -> None:
    unprotected = await supabase_like.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        " AND relkind IN ('r', 'p') AND NOT relrowsecurity"
    )
    assert [row["relname"] for row in unprotected] == []


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("table", SERVICE_TABLES)
async def test_the_anon_key_reads_nothing_even_with_table_grants(
    supabase_like: asyncpg.Connection, role: str, table: str
) -> None:
    async with supabase_like.transaction():
        assert await supabase_like.fetchval(f"SELECT count(*) FROM {table}") > 0
        await supabase_like.execute(f"SET LOCAL ROLE {role}")
        assert await supabase_like.fetchval(f"SELECT count(*) FROM {table}") == 0


@pytest.mark.parametrize("table", SERVICE_TABLES)
async def test_the_anon_key_changes_and_deletes_nothing(
    supabase_like: asyncpg.Connection, table: str
) -> None:
    column = {
        "alembic_version": "version_num",
        "escalation_audit": "at",
        "member_message_windows": "window_start",
    }.get(table, "created_at")
    async with supabase_like.transaction():
        await supabase_like.execute("SET LOCAL ROLE anon")
        updated = await supabase_like.execute(f"UPDATE {table} SET {column} = {column}")
        deleted = await supabase_like.execute(f"DELETE FROM {table}")
    assert updated == "UPDATE 0"
    assert deleted == "DELETE 0"
    assert await supabase_like.fetchval(f"SELECT count(*) FROM {table}") > 0


async def test_the_anon_key_cannot_insert(supabase_like: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with supabase_like.transaction():
            await supabase_like.execute("SET LOCAL ROLE anon")
            await supabase_like.execute("INSERT INTO users (email) VALUES ('x@example.org')")
