"""The event log's sequencer (app/repositories/events.py) on a database of its own, so no
event hub of the shared test app numbers rows under the test."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import fresh_database, make_settings
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import create_engine, create_sessionmaker
from app.migrations import upgrade_to_head
from app.repositories import events as event_log

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module")
def sequencer_url(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture
async def sessions(sequencer_url: str) -> AsyncIterator[Sessions]:
    settings = make_settings(sequencer_url, db_pooler="direct")
    engine = create_engine(settings)
    try:
        yield create_sessionmaker(engine, settings)
    finally:
        await engine.dispose()


async def _insert(sessions: Sessions, count: int) -> list[int]:
    """`count` event rows written by one committed transaction; their ids."""
    async with sessions() as session, session.begin():
        result = await session.execute(
            text(
                "INSERT INTO event_log (type, conversation_id) "
                "SELECT 'message.created', gen_random_uuid() FROM generate_series(1, :n) "
                "RETURNING id"
            ),
            {"n": count},
        )
        return sorted(result.scalars())


async def _positions(sessions: Sessions, ids: list[int]) -> list[int | None]:
    async with sessions() as session:
        result = await session.execute(
            text("SELECT position FROM event_log WHERE id = ANY(:ids) ORDER BY id"), {"ids": ids}
        )
        return list(result.scalars())


async def _run(sessions: Sessions) -> bool:
    async with sessions() as session, session.begin():
        return await event_log.sequence(session)


async def _number(sessions: Sessions, ids: list[int], *, runs: int = 200) -> list[int | None]:
    """Run the sequencer until these rows are numbered (a write transaction elsewhere on
    the shared server can hold them back for a moment); their positions in id order."""
    for _ in range(runs):
        await _run(sessions)
        positions = await _positions(sessions, ids)
        if None not in positions:
            return positions
        await asyncio.sleep(0.02)
    return await _positions(sessions, ids)


async def test_a_transaction_cut_by_the_batch_is_numbered_on_the_next_runs_in_order(
    sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await _insert(sessions, 1)
    await _number(sessions, before)
    monkeypatch.setattr(event_log, "SEQUENCE_BATCH", 2)
    cut = await _insert(sessions, 5)  # one transaction: numbered over three runs
    after = await _insert(sessions, 1)
    positions = await _number(sessions, before + cut + after)
    first = positions[0]
    assert first is not None
    # Gap-free and in (transaction, id) order: nothing after the cut was skipped.
    assert positions == list(range(first, first + 7))
    assert await _run(sessions) is False


def _blocks_read(plan: Any) -> int:
    """Shared buffers a statement touched (from EXPLAIN's JSON)."""
    top = plan[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


async def _explain(session: AsyncSession, statement: TextClause, **params: Any) -> int:
    explained = text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement.text}")
    raw = await session.scalar(explained, params)
    return _blocks_read(json.loads(raw) if isinstance(raw, str) else raw)


async def test_a_run_reads_only_the_rows_still_waiting_not_every_row_numbered_before(
    sessions: Sessions,
) -> None:
    # Thousands of rows numbered and no vacuum since: each left a dead entry in the
    # partial index of unnumbered rows. A scan from its start would visit them all.
    many = await _insert(sessions, 6000)
    assert None not in await _number(sessions, many)
    fresh = await _insert(sessions, 3)
    async with sessions() as session, session.begin():
        touched = {
            "waiting": await _explain(session, event_log._WAITING),
            "early look": await _explain(
                session, event_log._UNSEQUENCED_ANY, seen=[], limit=event_log.SEQUENCE_BATCH
            ),
            "numbering": await _explain(session, event_log._SEQUENCE, batch=100),
        }
        await session.rollback()
    # A few index and heap pages each (over 6,000 dead entries a scan from the start
    # touches well over a hundred).
    assert all(blocks < 60 for blocks in touched.values()), touched
    assert None not in await _number(sessions, fresh)
