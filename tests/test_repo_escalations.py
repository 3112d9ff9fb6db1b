"""Escalations: open or return the duplicate, context, the queue, status moves."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, NotFound
from app.models import Conversation, Escalation
from app.repositories import conversations, escalations, users
from tests.helpers import add_messages, escalate, new_session_id, open_session


async def conversation_status(db: AsyncSession, conversation_id: uuid.UUID) -> str | None:
    return await db.scalar(
        select(Conversation.status)
        .where(Conversation.id == conversation_id)
        .execution_options(populate_existing=True)
    )


async def test_an_escalation_is_created_pending_and_escalates_the_conversation(
    db: AsyncSession,
) -> None:
    session = await open_session(db)
    escalation, created = await escalations.open_escalation(
        db,
        session_id=session.session_id,
        issue_type="card",
        original_request="Lost card",
        contact_info=None,
    )
    assert created
    assert escalation.status == "pending"
    assert escalation.created_at is not None
    assert await conversation_status(db, session.conversation_id) == "escalated"


async def test_an_open_escalation_of_the_same_type_is_returned_not_duplicated(
    db: AsyncSession,
) -> None:
    session = await open_session(db)
    first = await escalate(db, session.session_id, "loan")
    again, created = await escalations.open_escalation(
        db,
        session_id=session.session_id,
        issue_type="loan",
        original_request="again",
        contact_info=None,
    )
    assert (again.id, created) == (first.id, False)
    other = await escalate(db, session.session_id, "fraud")
    assert other.id != first.id


async def test_a_resolved_escalation_does_not_block_a_new_one(db: AsyncSession) -> None:
    session = await open_session(db)
    first = await escalate(db, session.session_id)
    await escalations.transition(db, escalation_id=first.id, status="resolved")
    second = await escalate(db, session.session_id)
    assert second.id != first.id


async def test_the_database_refuses_a_second_open_escalation_of_a_type(db: AsyncSession) -> None:
    session = await open_session(db)
    await escalate(db, session.session_id)
    with pytest.raises(IntegrityError):
        async with db.begin_nested():
            await db.execute(
                text(
                    "INSERT INTO escalations (conversation_id, issue_type, original_request) "
                    "VALUES (:c, 'loan', 'dup')"
                ),
                {"c": session.conversation_id},
            )


async def test_the_database_refuses_an_unknown_status(db: AsyncSession) -> None:
    session = await open_session(db)
    escalation = await escalate(db, session.session_id)
    with pytest.raises(IntegrityError):
        async with db.begin_nested():
            await db.execute(
                text("UPDATE escalations SET status = 'lost' WHERE id = :id"),
                {"id": escalation.id},
            )


async def test_contact_info_merges_the_known_contact_with_the_request(db: AsyncSession) -> None:
    session = await open_session(db, name="Ada", email="ada@example.org")
    escalation = await escalate(
        db, session.session_id, email="work@example.org", preferred_channel="phone"
    )
    assert escalation.contact_info == {
        "name": "Ada",
        "email": "work@example.org",
        "email_verified": False,
        "preferred_channel": "phone",
    }


async def test_the_context_is_a_transcript_of_the_conversation(db: AsyncSession) -> None:
    session = await open_session(db)
    await add_messages(db, session.conversation_id, "my card is gone")
    await add_messages(db, session.conversation_id, "let me help", role="assistant")
    escalation = await escalate(db, session.session_id)
    assert escalation.conversation_context == "user: my card is gone\nassistant: let me help"


async def test_an_archived_conversation_cannot_be_escalated(db: AsyncSession) -> None:
    session = await open_session(db)
    await conversations.set_status(db, conversation_id=session.conversation_id, status="archived")
    with pytest.raises(Conflict):
        await escalate(db, session.session_id)


async def test_an_unknown_session_cannot_escalate(db: AsyncSession) -> None:
    with pytest.raises(NotFound):
        await escalate(db, new_session_id())


async def test_a_sessions_escalations_are_listed_oldest_first(db: AsyncSession) -> None:
    session = await open_session(db)
    first = await escalate(db, session.session_id, "loan")
    second = await escalate(db, session.session_id, "card")
    listed = await escalations.list_for_session(db, session_id=session.session_id)
    assert {item.id for item in listed} == {first.id, second.id}
    with pytest.raises(NotFound):
        await escalations.list_for_session(db, session_id=new_session_id())


async def test_the_queue_walks_oldest_first_with_filters_and_a_cursor(db: AsyncSession) -> None:
    made = []
    for index in range(5):
        session = await open_session(db)
        escalation = await escalate(db, session.session_id, "card" if index % 2 else "loan")
        await db.execute(
            text("UPDATE escalations SET created_at = :at WHERE id = :id"),
            {"at": datetime(2026, 1, index + 1, tzinfo=UTC), "id": escalation.id},
        )
        made.append(escalation.id)
    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        page, cursor = await escalations.list_queue(
            db, status=None, issue_type=None, limit=2, cursor=cursor
        )
        seen.extend(item.id for item in page)
        if cursor is None:
            break
    assert seen == made
    loans, _ = await escalations.list_queue(
        db, status="pending", issue_type="loan", limit=50, cursor=None
    )
    assert [item.id for item in loans] == [made[0], made[2], made[4]]
    resolved, _ = await escalations.list_queue(
        db, status="resolved", issue_type=None, limit=50, cursor=None
    )
    assert resolved == []


@pytest.mark.parametrize(
    ("path", "target"),
    [
        (["notified"], "notified"),
        (["in_progress"], "in_progress"),
        (["resolved"], "resolved"),
        (["notified", "in_progress", "resolved"], "resolved"),
        (["resolved", "in_progress"], "in_progress"),
    ],
)
async def test_allowed_moves_succeed(db: AsyncSession, path: list[str], target: str) -> None:
    session = await open_session(db)
    escalation = await escalate(db, session.session_id)
    for status in path:
        escalation = await escalations.transition(db, escalation_id=escalation.id, status=status)
    assert escalation.status == target


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        (["notified"], "pending"),
        (["in_progress"], "notified"),
        (["in_progress"], "pending"),
        (["resolved"], "pending"),
        (["resolved"], "notified"),
    ],
)
async def test_illegal_moves_are_refused_naming_the_allowed_ones(
    db: AsyncSession, path: list[str], refused: str
) -> None:
    session = await open_session(db)
    escalation = await escalate(db, session.session_id)
    for status in path:
        await escalations.transition(db, escalation_id=escalation.id, status=status)
    with pytest.raises(Conflict, match="allowed: "):
        await escalations.transition(db, escalation_id=escalation.id, status=refused)


async def test_the_same_status_changes_nothing(db: AsyncSession) -> None:
    session = await open_session(db)
    escalation = await escalate(db, session.session_id)
    await db.execute(
        text("UPDATE escalations SET updated_at = '2001-01-01' WHERE id = :id"),
        {"id": escalation.id},
    )
    stamp = await db.scalar(
        text("SELECT updated_at FROM escalations WHERE id = :id"), {"id": escalation.id}
    )
    same = await escalations.transition(db, escalation_id=escalation.id, status="pending")
    assert same.updated_at == stamp


async def test_moving_an_unknown_escalation_is_not_found(db: AsyncSession) -> None:
    with pytest.raises(NotFound):
        await escalations.transition(db, escalation_id=uuid.uuid4(), status="resolved")


async def test_resolving_the_last_open_escalation_reactivates_the_conversation(
    db: AsyncSession,
) -> None:
    session = await open_session(db)
    loan = await escalate(db, session.session_id, "loan")
    card = await escalate(db, session.session_id, "card")
    await escalations.transition(db, escalation_id=loan.id, status="resolved")
    assert await conversation_status(db, session.conversation_id) == "escalated"
    await escalations.transition(db, escalation_id=card.id, status="resolved")
    assert await conversation_status(db, session.conversation_id) == "active"


async def test_reopening_escalates_the_conversation_again(db: AsyncSession) -> None:
    session = await open_session(db)
    loan = await escalate(db, session.session_id)
    await escalations.transition(db, escalation_id=loan.id, status="resolved")
    await escalations.transition(db, escalation_id=loan.id, status="in_progress")
    assert await conversation_status(db, session.conversation_id) == "escalated"


async def test_deleting_a_conversation_deletes_its_escalations(db: AsyncSession) -> None:
    session = await open_session(db)
    await escalate(db, session.session_id)
    await users.delete_user(db, user_id=session.user_id)
    assert (await db.execute(select(Escalation.id))).all() == []


async def test_the_updated_at_trigger_bumps_escalations(db: AsyncSession) -> None:
    session = await open_session(db)
    escalation = await escalate(db, session.session_id)
    await db.execute(
        text("UPDATE escalations SET created_at = '2000-01-01' WHERE id = :id"),
        {"id": escalation.id},
    )
    updated_at, now = (
        await db.execute(
            text("SELECT updated_at, now() FROM escalations WHERE id = :id"), {"id": escalation.id}
        )
    ).one()
    assert updated_at == now
