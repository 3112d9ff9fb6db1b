"""Real races: many connections at once, committed for real, on a clean state."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import create_sessionmaker
from app.models import Conversation, Escalation, Message, User
from app.repositories import conversations, escalations, messages
from tests.helpers import new_session_id

RACERS = 12


async def _in_own_transaction(engine: AsyncEngine, work: Any) -> Any:
    async with create_sessionmaker(engine)() as session, session.begin():
        return await work(session)


async def _gather(engine: AsyncEngine, work: Any, count: int = RACERS) -> list[Any]:
    return await asyncio.gather(*(_in_own_transaction(engine, work) for _ in range(count)))


async def _count(engine: AsyncEngine, model: Any) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(model)) or 0)


async def test_racing_creators_of_one_session_id_make_one_conversation(
    committed_engine: AsyncEngine,
) -> None:
    session_id = new_session_id()

    async def create(session: Any) -> bool:
        _, created = await conversations.open_session(session, session_id=session_id, contact={})
        return created

    outcomes = await _gather(committed_engine, create)
    assert Counter(outcomes) == {True: 1, False: RACERS - 1}
    assert await _count(committed_engine, Conversation) == 1
    assert await _count(committed_engine, User) == 1  # losers leave no orphan user


async def test_racing_escalations_of_one_issue_type_make_one_row(
    committed_engine: AsyncEngine,
) -> None:
    session_id = new_session_id()
    await _in_own_transaction(
        committed_engine,
        lambda s: conversations.open_session(s, session_id=session_id, contact={}),
    )

    async def escalate(session: Any) -> tuple[Any, bool]:
        escalation, created = await escalations.open_escalation(
            session,
            session_id=session_id,
            issue_type="fraud",
            original_request="help",
            contact_info=None,
        )
        return escalation.id, created

    outcomes = await _gather(committed_engine, escalate)
    assert sum(created for _, created in outcomes) == 1
    assert len({escalation_id for escalation_id, _ in outcomes}) == 1
    assert await _count(committed_engine, Escalation) == 1


async def test_racing_status_moves_never_lose_one_another(committed_engine: AsyncEngine) -> None:
    session_id = new_session_id()
    await _in_own_transaction(
        committed_engine,
        lambda s: conversations.open_session(s, session_id=session_id, contact={}),
    )
    escalation = await _in_own_transaction(
        committed_engine,
        lambda s: escalations.open_escalation(
            s, session_id=session_id, issue_type="loan", original_request="x", contact_info=None
        ),
    )
    escalation_id = escalation[0].id

    async def move(target: str) -> str:
        async def work(session: Any) -> str:
            try:
                moved = await escalations.transition(
                    session, escalation_id=escalation_id, status=target
                )
                return f"ok:{moved.status}"
            except Exception as error:
                return f"refused:{type(error).__name__}"

        return str(await _in_own_transaction(committed_engine, work))

    # Half try pending → notified, half pending → in_progress. Compare-and-set means the
    # second wave sees the first's result: notified → in_progress is allowed, but
    # in_progress → notified is not, so exactly the outcomes below are possible.
    outcomes = await asyncio.gather(
        *(move("notified" if index % 2 else "in_progress") for index in range(RACERS))
    )
    async with committed_engine.connect() as connection:
        final = await connection.scalar(
            select(Escalation.status).where(Escalation.id == escalation_id)
        )
    assert final in {"notified", "in_progress"}
    assert all(outcome.startswith(("ok:", "refused:Conflict")) for outcome in outcomes), outcomes
    successes = [outcome for outcome in outcomes if outcome.startswith("ok:")]
    assert successes, outcomes


async def test_racing_resolutions_return_the_conversation_to_active(
    committed_engine: AsyncEngine,
) -> None:
    session_id = new_session_id()
    opened = await _in_own_transaction(
        committed_engine,
        lambda s: conversations.open_session(s, session_id=session_id, contact={}),
    )
    conversation_id = opened[0].conversation_id
    ids = []
    for issue_type in ("loan", "card", "fraud", "other"):
        made = await _in_own_transaction(
            committed_engine,
            lambda s, t=issue_type: escalations.open_escalation(
                s, session_id=session_id, issue_type=t, original_request="x", contact_info=None
            ),
        )
        ids.append(made[0].id)
    await asyncio.gather(
        *(
            _in_own_transaction(
                committed_engine,
                lambda s, i=escalation_id: escalations.transition(
                    s, escalation_id=i, status="resolved"
                ),
            )
            for escalation_id in ids
        )
    )
    async with committed_engine.connect() as connection:
        status = await connection.scalar(
            select(Conversation.status).where(Conversation.id == conversation_id)
        )
    assert status == "active"


async def test_concurrent_appends_get_distinct_gapless_seqs_in_commit_order(
    committed_engine: AsyncEngine,
) -> None:
    session_id = new_session_id()
    await _in_own_transaction(
        committed_engine,
        lambda s: conversations.open_session(s, session_id=session_id, contact={}),
    )
    count = 40

    async def append(index: int) -> int:
        async def work(session: Any) -> int:
            row, _ = await messages.append(
                session, session_id=session_id, role="user", content=f"m{index}"
            )
            return int(row.seq)

        return int(await _in_own_transaction(committed_engine, work))

    seqs = await asyncio.gather(*(append(index) for index in range(count)))
    assert sorted(seqs) == list(range(1, count + 1))
    assert await _count(committed_engine, Message) == count


async def test_concurrent_retries_with_one_idempotency_key_store_one_message(
    committed_engine: AsyncEngine,
) -> None:
    session_id = new_session_id()
    await _in_own_transaction(
        committed_engine,
        lambda s: conversations.open_session(s, session_id=session_id, contact={}),
    )

    async def send(session: Any) -> tuple[Any, bool]:
        row, created = await messages.append(
            session, session_id=session_id, role="user", content="once", idempotency_key="retry-1"
        )
        return row.id, created

    outcomes = await _gather(committed_engine, send)
    assert sum(created for _, created in outcomes) == 1
    assert len({message_id for message_id, _ in outcomes}) == 1
    assert await _count(committed_engine, Message) == 1
