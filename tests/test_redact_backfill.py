"""`member-support redact`: rows stored in clear before redaction, rewritten in batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import asyncpg_dsn, fresh_database
from ops_support import execute, run, run_cli
from stdnum import luhn

from app import cli
from app.db import create_engine, create_sessionmaker
from app.migrations import upgrade_to_head
from app.repositories import redaction
from app.settings import load_settings

_BODY = "510012345678901"
CARD = _BODY + luhn.calc_check_digit(_BODY)  # generated: a Mastercard-range test number
CARD_SPACED = " ".join(CARD[i : i + 4] for i in range(0, 16, 4))
SSN = "536-90-4399"
OLD = "2020-01-01 00:00:00+00"

MESSAGES = [
    f"card {CARD}",
    f"my ssn is {SSN}",
    "order 12345 on 2024-01-02, call 555-123-4567",
    f"two: {CARD} and {CARD_SPACED}",
    "nothing to see",
    "account 123456789",
]
ESCALATIONS = [  # (original_request, conversation_context)
    (f"block {CARD}", "user: hello"),
    ("call me", f"user: ssn {SSN}\nassistant: noted"),
    ("loan question", None),
]


@pytest.fixture(scope="module")
def backfill_database(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture
def stored(backfill_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Rows written in clear (before redaction existed), updated_at long ago."""
    url = backfill_database
    statements = [
        "TRUNCATE users, conversations, messages, escalations CASCADE",
        "INSERT INTO conversations (session_id, updated_at) VALUES ('backfill-session-0001', "
        f"'{OLD}')",
    ]
    for content in MESSAGES:
        statements.append(
            "INSERT INTO messages (conversation_id, role, content) "
            f"SELECT id, 'user', $${content}$$ FROM conversations"
        )
    for index, (request, context) in enumerate(ESCALATIONS):
        context_sql = "NULL" if context is None else f"$${context}$$"
        statements.append(
            "INSERT INTO escalations (conversation_id, issue_type, original_request, "
            "conversation_context, created_at, updated_at) "
            f"SELECT id, 'type_{index}', $${request}$$, {context_sql}, '{OLD}', '{OLD}' "
            "FROM conversations"
        )
    run(execute(url, *statements))
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.delenv("REDACT", raising=False)
    yield url


async def _snapshot(url: str) -> dict[str, list[dict[str, Any]]]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return {
            "messages": [
                dict(row) for row in await connection.fetch("SELECT * FROM messages ORDER BY seq")
            ],
            "escalations": [
                dict(row)
                for row in await connection.fetch("SELECT * FROM escalations ORDER BY issue_type")
            ],
            "conversations": [
                dict(row) for row in await connection.fetch("SELECT * FROM conversations")
            ],
        }
    finally:
        await connection.close()


def _redact(capsys: pytest.CaptureFixture[str], *arguments: str) -> list[str]:
    cli.main(["redact", *arguments])
    return capsys.readouterr().out.splitlines()


def test_a_dry_run_counts_and_changes_nothing(
    stored: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = run(_snapshot(stored))
    assert _redact(capsys, "--dry-run") == [
        "messages: 6 row(s) scanned, would change 3; card 3, ssn 1",
        "escalations: 3 row(s) scanned, would change 2; card 1, ssn 1",
    ]
    assert run(_snapshot(stored)) == before


def test_the_run_rewrites_matches_and_the_second_run_changes_nothing(
    stored: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = run(_snapshot(stored))
    assert _redact(capsys, "--batch", "2") == [
        "messages: 6 row(s) scanned, changed 3; card 3, ssn 1",
        "escalations: 3 row(s) scanned, changed 2; card 1, ssn 1",
    ]
    after = run(_snapshot(stored))
    contents = [row["content"] for row in after["messages"]]
    ending = f"[card ending {CARD[-4:]}]"
    assert contents == [
        f"card {ending}",
        "my ssn is [ssn redacted]",
        MESSAGES[2],
        f"two: {ending} and {ending}",
        MESSAGES[4],
        MESSAGES[5],
    ]
    # Rows without a match are untouched, updated_at included; the conversation too.
    assert after["messages"][2] == before["messages"][2]
    assert after["escalations"][2] == before["escalations"][2]
    assert after["conversations"] == before["conversations"]
    requests = [
        (row["original_request"], row["conversation_context"]) for row in after["escalations"][:2]
    ]
    assert requests == [
        (f"block {ending}", "user: hello"),
        ("call me", "user: ssn [ssn redacted]\nassistant: noted"),
    ]
    assert _redact(capsys) == [
        "messages: 6 row(s) scanned, changed 0; card 0, ssn 0",
        "escalations: 3 row(s) scanned, changed 0; card 0, ssn 0",
    ]
    assert run(_snapshot(stored)) == after


def test_a_run_killed_after_one_batch_resumes_with_what_is_left(
    stored: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(_env_file=None, database_url=stored)

    async def until_the_first_change() -> int:
        # Batches of one row, each committed, until one row was rewritten: the run is
        # then "killed" with some rows done and some left, whatever order ids fall in.
        engine = create_engine(settings, pooled=False)
        after = None
        try:
            while True:
                async with create_sessionmaker(engine, settings)() as session, session.begin():
                    batch = await redaction.redact_batch(
                        session,
                        table="messages",
                        after=after,
                        batch_size=1,
                        kinds=settings.redact,
                    )
                if batch.changed:
                    return batch.changed
                after = batch.last_id
        finally:
            await engine.dispose()

    done_before_the_kill = run(until_the_first_change())
    assert done_before_the_kill == 1
    lines = _redact(capsys, "--batch", "1")
    assert lines[0].startswith(f"messages: 6 row(s) scanned, changed {3 - done_before_the_kill};")
    assert _redact(capsys)[0] == "messages: 6 row(s) scanned, changed 0; card 0, ssn 0"
    contents = " ".join(row["content"] for row in run(_snapshot(stored))["messages"])
    assert CARD not in contents.replace(" ", "") and SSN not in contents


def test_redact_follows_the_redact_setting(
    stored: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDACT", "ssn")
    assert _redact(capsys, "--dry-run") == [
        "messages: 6 row(s) scanned, would change 1; ssn 1",
        "escalations: 3 row(s) scanned, would change 1; ssn 1",
    ]
    monkeypatch.setenv("REDACT", "none")
    assert _redact(capsys) == ["REDACT=none: nothing to redact"]


def test_redact_from_the_shell(stored: str, tmp_path: Path) -> None:
    result = run_cli("redact", "--batch", "0", database_url=stored, cwd=tmp_path)
    assert result.returncode == 2
    result = run_cli("redact", "--dry-run", database_url=stored, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.splitlines()[0] == "messages: 6 row(s) scanned, would change 3; card 3, ssn 1"
    )
