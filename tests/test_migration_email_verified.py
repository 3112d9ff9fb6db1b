"""Revision 0011: email_verified, uniqueness among verified users, the old links split,
and a downgrade that refuses rather than merge or delete anyone's records."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from alembic import command
from conftest import asyncpg_dsn, fresh_database
from ops_support import execute

from app.migrations import alembic_config

OWNER = "00000000-0000-4000-8000-0000000000a1"
ALONE = "00000000-0000-4000-8000-0000000000a2"
FIRST = "00000000-0000-4000-8000-0000000000c1"
LINKED = "00000000-0000-4000-8000-0000000000c2"
OWN = "00000000-0000-4000-8000-0000000000c3"

# As the old relink rule left things: a stranger's conversation (LINKED, the newer one)
# moved onto the owner's user because it typed the owner's email.
OLD_DATA = (
    "INSERT INTO users (id, email, name, phone, created_at, updated_at) VALUES "
    f"('{OWNER}', 'owner@example.org', 'Owner', '+1 555 0100', '2001-01-01', '2001-02-01'), "
    f"('{ALONE}', 'alone@example.org', NULL, NULL, '2001-01-01', '2001-01-01')",
    "INSERT INTO conversations (id, user_id, session_id, created_at, updated_at) VALUES "
    f"('{FIRST}', '{OWNER}', 'first-session-0000001', '2001-01-01', '2001-03-01'), "
    f"('{LINKED}', '{OWNER}', 'linked-session-000001', '2001-01-05', '2001-03-05'), "
    f"('{OWN}', '{ALONE}', 'alone-session-0000001', '2001-01-01', '2001-03-01')",
)


@pytest.fixture
def old_database(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        command.upgrade(alembic_config(url), "0010")
        asyncio.run(execute(url, *OLD_DATA))
        yield url


async def _rows(url: str, query: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return [dict(row) for row in await connection.fetch(query)]
    finally:
        await connection.close()


def _users(url: str) -> list[dict[str, Any]]:
    return asyncio.run(
        _rows(
            url,
            "SELECT c.id::text AS conversation, c.updated_at AS conversation_updated_at, "
            "u.id::text AS user_id, u.email, u.email_verified, u.name, u.phone, "
            "u.created_at, u.updated_at "
            "FROM conversations c JOIN users u ON u.id = c.user_id ORDER BY c.id",
        )
    )


def test_upgrading_makes_everyone_unverified_and_splits_users_the_old_rule_shared(
    old_database: str,
) -> None:
    command.upgrade(alembic_config(old_database), "head")
    first, linked, own = _users(old_database)
    assert first["user_id"] == OWNER and own["user_id"] == ALONE
    assert linked["user_id"] not in (OWNER, ALONE)
    assert [row["email_verified"] for row in (first, linked, own)] == [False] * 3
    copied = ("email", "name", "phone", "created_at", "updated_at")
    assert {key: linked[key] for key in copied} == {key: first[key] for key in copied}
    # Moving a conversation onto its own user is not activity.
    assert [row["conversation_updated_at"].month for row in (first, linked, own)] == [3, 3, 3]


def test_after_upgrading_only_verified_emails_are_unique(old_database: str) -> None:
    command.upgrade(alembic_config(old_database), "head")
    asyncio.run(
        execute(
            old_database,
            "INSERT INTO users (email) VALUES ('alone@example.org')",
            "INSERT INTO users (email, email_verified) VALUES ('v@example.org', true)",
        )
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        asyncio.run(
            execute(
                old_database,
                "INSERT INTO users (email, email_verified) VALUES ('v@example.org', true)",
            )
        )


def test_downgrading_refuses_while_users_share_an_email_and_changes_nothing(
    old_database: str,
) -> None:
    config = alembic_config(old_database)
    command.upgrade(config, "head")
    before = _users(old_database)
    with pytest.raises(RuntimeError, match="held by more than one user") as refused:
        command.downgrade(config, "0010")
    assert "owner@example.org" not in str(refused.value)  # a count, never the addresses
    assert _users(old_database) == before
    version = asyncio.run(_rows(old_database, "SELECT version_num FROM alembic_version"))
    assert version == [{"version_num": "0011"}]


def test_downgrading_works_once_emails_are_unique_again(old_database: str) -> None:
    config = alembic_config(old_database)
    command.upgrade(config, "head")
    asyncio.run(
        execute(
            old_database,
            "DELETE FROM users WHERE id = "
            f"(SELECT user_id FROM conversations WHERE id = '{LINKED}')",
        )
    )
    command.downgrade(config, "0010")
    columns = asyncio.run(
        _rows(
            old_database,
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'users'",
        )
    )
    assert "email_verified" not in {row["column_name"] for row in columns}
    with pytest.raises(asyncpg.UniqueViolationError):
        asyncio.run(execute(old_database, "INSERT INTO users (email) VALUES ('alone@example.org')"))
