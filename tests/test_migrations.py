"""The schema Alembic builds: round trip, no drift, and what autogenerate cannot see."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import cast

import asyncpg
import pytest
from alembic import command
from conftest import fresh_database
from ops_support import execute, fetch_value
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.migrations import alembic_config, head_revision, revisions_between, upgrade_to_head

ALL_TABLES = (
    "users",
    "conversations",
    "messages",
    "escalations",
    "member_message_windows",
    "console_sessions",
    "console_login_failures",
    "alembic_version",
)


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        yield url


async def _tables(url: str) -> set[str]:
    names = await fetch_value(
        url, "SELECT array_agg(tablename) FROM pg_tables WHERE schemaname = 'public'"
    )
    return set(cast("list[str] | None", names) or [])


def test_upgrade_downgrade_and_upgrade_again_all_work(empty_database: str) -> None:
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    assert set(ALL_TABLES) <= asyncio.run(_tables(empty_database))
    command.downgrade(config, "base")
    assert asyncio.run(_tables(empty_database)) == {"alembic_version"}
    command.upgrade(config, "head")
    assert set(ALL_TABLES) <= asyncio.run(_tables(empty_database))


def test_each_revision_steps_down_and_up_again(empty_database: str) -> None:
    config = alembic_config(empty_database)
    upgrade_to_head(empty_database)
    # Every step down, however many revisions there are: the first one's too.
    for _ in range(revisions_between(None, head_revision())):
        command.downgrade(config, "-1")
    assert asyncio.run(_tables(empty_database)) == {"alembic_version"}
    command.upgrade(config, "head")
    assert set(ALL_TABLES) <= asyncio.run(_tables(empty_database))


def test_the_models_match_the_migrations(database_url: str) -> None:
    # `alembic check` raises when autogenerate would emit any operation.
    command.check(alembic_config(database_url))


async def test_the_schema_is_at_head(connection: AsyncConnection) -> None:
    version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    assert version == head_revision()


async def test_row_level_security_is_enabled_but_not_forced_on_every_table(
    connection: AsyncConnection,
) -> None:
    rows = (
        await connection.execute(
            text(
                "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
            )
        )
    ).all()
    flags = {row.relname: (row.relrowsecurity, row.relforcerowsecurity) for row in rows}
    assert set(flags) >= set(ALL_TABLES)
    for table, (enabled, forced) in flags.items():
        assert enabled, f"RLS is off on {table}"
        assert not forced, f"RLS is forced on {table}"


async def test_no_policy_opens_any_table(connection: AsyncConnection) -> None:
    count = await connection.scalar(
        text("SELECT count(*) FROM pg_policies WHERE schemaname = 'public'")
    )
    assert count == 0


async def test_a_non_owner_role_reads_and_writes_nothing(connection: AsyncConnection) -> None:
    await connection.execute(text("INSERT INTO users (email) VALUES ('rls-probe@example.org')"))
    # A stand-in for Supabase's anon role: granted table access, as Supabase does.
    # The role lives only inside the test's transaction, which is rolled back.
    role = f"anon_probe_{secrets.token_hex(4)}"
    await connection.execute(text(f"CREATE ROLE {role} NOLOGIN"))
    for table in ALL_TABLES:
        await connection.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role}"))
    await connection.execute(text(f"SET LOCAL ROLE {role}"))
    for table in ALL_TABLES:
        assert await connection.scalar(text(f"SELECT count(*) FROM {table}")) == 0
    deleted = await connection.execute(text("DELETE FROM users"))
    assert deleted.rowcount == 0
    with pytest.raises(Exception, match="row-level security"):
        await connection.execute(text("INSERT INTO users (email) VALUES ('x@example.org')"))


async def test_triggers_that_autogenerate_cannot_see_exist(connection: AsyncConnection) -> None:
    rows = (
        await connection.execute(
            text(
                "SELECT tgrelid::regclass::text AS table_name, tgname FROM pg_trigger "
                "WHERE NOT tgisinternal"
            )
        )
    ).all()
    found = {(row.table_name, row.tgname) for row in rows}
    assert {
        ("messages", "messages_assign_seq"),
        ("users", "users_set_updated_at"),
        ("conversations", "conversations_set_updated_at"),
        ("escalations", "escalations_set_updated_at"),
    } <= found


async def test_partial_unique_indexes_have_their_predicates(connection: AsyncConnection) -> None:
    rows = (
        await connection.execute(
            text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
        )
    ).all()
    definitions = {row.indexname: row.indexdef for row in rows}
    idempotency = definitions["uq_messages_conversation_id_idempotency_key"]
    assert "UNIQUE" in idempotency
    assert "WHERE (idempotency_key IS NOT NULL)" in idempotency
    open_escalation = definitions["uq_escalations_conversation_id_issue_type_open"]
    assert "UNIQUE" in open_escalation
    assert "<> 'resolved'" in open_escalation


async def test_no_index_duplicates_a_unique_constraint(connection: AsyncConnection) -> None:
    rows = (
        await connection.execute(
            text(
                "SELECT indrelid::regclass::text AS table_name, indkey::text AS columns, "
                "indpred IS NOT NULL AS partial FROM pg_index "
                "WHERE indrelid::regclass::text IN "
                "('users', 'conversations', 'messages', 'escalations')"
            )
        )
    ).all()
    keys = [(row.table_name, row.columns, row.partial) for row in rows]
    assert len(keys) == len(set(keys)), keys


async def test_seq_is_not_null_and_ids_default_in_the_database(
    connection: AsyncConnection,
) -> None:
    rows = (
        await connection.execute(
            text(
                "SELECT table_name, column_name, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public'"
            )
        )
    ).all()
    columns = {(row.table_name, row.column_name): row for row in rows}
    assert columns[("messages", "seq")].is_nullable == "NO"
    for table in ("users", "conversations", "messages", "escalations"):
        assert columns[(table, "id")].column_default == "gen_random_uuid()"
        assert columns[(table, "created_at")].column_default == "now()"


def test_the_reply_index_is_rebuilt_when_an_earlier_build_left_it_invalid(
    empty_database: str,
) -> None:
    # CREATE INDEX CONCURRENTLY that fails half way leaves an INVALID index of the name
    # behind; IF NOT EXISTS alone would then skip the build and keep the broken one.
    config = alembic_config(empty_database)
    command.upgrade(config, "0009")
    with pytest.raises(asyncpg.UniqueViolationError):
        asyncio.run(
            execute(
                empty_database,
                "INSERT INTO conversations (id, session_id) "
                "VALUES ('00000000-0000-4000-8000-00000000000a', 'invalid-index-session-0123')",
                "INSERT INTO messages (conversation_id, role, content) VALUES "
                "('00000000-0000-4000-8000-00000000000a', 'assistant', 'one'), "
                "('00000000-0000-4000-8000-00000000000a', 'assistant', 'two')",
                # Fails on the duplicate, after the catalog entry exists.
                "CREATE UNIQUE INDEX CONCURRENTLY ix_messages_assistant_created_at "
                "ON messages (role) WHERE role = 'assistant'",
            )
        )
    command.upgrade(config, "head")
    rows = asyncio.run(
        fetch_value(
            empty_database,
            "SELECT array_agg(row(i.indisvalid, pg_get_indexdef(i.indexrelid))) "
            "FROM pg_index AS i WHERE i.indexrelid = 'ix_messages_assistant_created_at'::regclass",
        )
    )
    indexes = cast("list[tuple[bool, str]]", rows)
    assert [valid for valid, _ in indexes] == [True]
    assert "(created_at) WHERE" in indexes[0][1]
