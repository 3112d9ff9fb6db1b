"""Conversations: session get-or-create, the activity list, status, archive and purge."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound, Unprocessable
from app.models import Conversation, User
from app.repositories import conversations, users
from tests.helpers import add_messages, new_session_id, open_session


async def test_opening_a_session_creates_an_anonymous_user_and_a_conversation(
    db: AsyncSession,
) -> None:
    row = await open_session(db)
    assert row.status == "active"
    user = await db.get(User, row.user_id)
    assert user is not None
    assert (user.email, user.name, user.phone) == (None, None, None)


async def test_opening_an_existing_session_returns_it_unchanged(db: AsyncSession) -> None:
    session_id = new_session_id()
    first, created = await conversations.open_session(db, session_id=session_id, contact={})
    again, created_again = await conversations.open_session(
        db, session_id=session_id, contact={"name": "Ignored"}
    )
    assert (created, created_again) == (True, False)
    assert again.conversation_id == first.conversation_id
    assert await db.scalar(select(func.count()).select_from(User)) == 1


async def test_server_made_session_ids_carry_256_random_bits() -> None:
    made = {conversations.new_session_id() for _ in range(1000)}
    assert len(made) == 1000
    assert all(len(value) == 43 for value in made)


async def test_an_unknown_session_is_not_found(db: AsyncSession) -> None:
    with pytest.raises(NotFound):
        await conversations.get_session(db, session_id=new_session_id())
    with pytest.raises(NotFound):
        await conversations.get_id_by_session(db, session_id=new_session_id())


async def test_a_conversation_reports_its_message_count_and_last_message(
    db: AsyncSession,
) -> None:
    session = await open_session(db)
    empty = await conversations.get(db, conversation_id=session.conversation_id)
    assert (empty.message_count, empty.last_message_at) == (0, None)
    await add_messages(db, session.conversation_id, "a", "b", "c")
    full = await conversations.get(db, conversation_id=session.conversation_id)
    assert full.message_count == 3
    assert full.last_message_at is not None


async def test_an_unknown_conversation_is_not_found(db: AsyncSession) -> None:
    with pytest.raises(NotFound):
        await conversations.get(db, conversation_id=uuid.uuid4())


async def _age(db: AsyncSession, conversation_id: uuid.UUID, days: int) -> None:
    # The trigger sets updated_at on UPDATE, so disable it for this one backdating.
    await db.execute(text("ALTER TABLE conversations DISABLE TRIGGER conversations_set_updated_at"))
    await db.execute(
        text(
            "UPDATE conversations SET updated_at = now() - make_interval(days => :d) WHERE id = :id"
        ),
        {"d": days, "id": conversation_id},
    )
    await db.execute(text("ALTER TABLE conversations ENABLE TRIGGER conversations_set_updated_at"))


async def test_the_list_walks_by_last_activity_with_a_keyset_cursor(db: AsyncSession) -> None:
    made = []
    for days in range(7):
        row = await open_session(db)
        await _age(db, row.conversation_id, days)
        made.append(row.conversation_id)
    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        page, cursor = await conversations.list_by_activity(
            db, status=None, user_id=None, limit=3, cursor=cursor
        )
        seen.extend(row.id for row in page)
        if cursor is None:
            break
    assert seen == made  # newest activity first: made[0] is the least aged


async def test_the_list_filters_by_status_and_user(db: AsyncSession) -> None:
    first = await open_session(db)
    second = await open_session(db)
    await conversations.set_status(db, conversation_id=second.conversation_id, status="closed")
    closed, _ = await conversations.list_by_activity(
        db, status="closed", user_id=None, limit=50, cursor=None
    )
    assert [row.id for row in closed] == [second.conversation_id]
    mine, _ = await conversations.list_by_activity(
        db, status=None, user_id=first.user_id, limit=50, cursor=None
    )
    assert [row.id for row in mine] == [first.conversation_id]


@pytest.mark.parametrize("cursor", ["", "not-base64!", "W10", "WyJ4IiwgInkiXQ", "bnVsbA"])
async def test_a_malformed_cursor_is_refused(db: AsyncSession, cursor: str) -> None:
    with pytest.raises(Unprocessable):
        await conversations.list_by_activity(db, status=None, user_id=None, limit=10, cursor=cursor)


async def test_setting_the_same_status_changes_nothing(db: AsyncSession) -> None:
    row = await open_session(db)
    await _age(db, row.conversation_id, 3)
    before = await conversations.get(db, conversation_id=row.conversation_id)
    after = await conversations.set_status(db, conversation_id=row.conversation_id, status="active")
    assert after.updated_at == before.updated_at


async def test_an_unknown_status_is_refused_by_the_database(db: AsyncSession) -> None:
    row = await open_session(db)
    with pytest.raises(IntegrityError):
        async with db.begin_nested():
            await db.execute(
                text("UPDATE conversations SET status = 'lost' WHERE id = :id"),
                {"id": row.conversation_id},
            )


async def test_a_session_id_is_unique(db: AsyncSession) -> None:
    row = await open_session(db)
    with pytest.raises(IntegrityError):
        async with db.begin_nested():
            await db.execute(
                text("INSERT INTO conversations (session_id) VALUES (:s)"),
                {"s": row.session_id},
            )


async def test_a_conversation_needs_an_existing_user(db: AsyncSession) -> None:
    with pytest.raises(IntegrityError):
        async with db.begin_nested():
            await db.execute(
                text("INSERT INTO conversations (session_id, user_id) VALUES ('x', :u)"),
                {"u": uuid.uuid4()},
            )


async def test_archiving_takes_only_idle_conversations(db: AsyncSession) -> None:
    idle = await open_session(db)
    fresh = await open_session(db)
    await _age(db, idle.conversation_id, 40)
    archived = await conversations.archive_inactive(db, inactive_days=30, batch_size=100)
    assert archived == 1
    statuses = dict((await db.execute(select(Conversation.id, Conversation.status))).all())
    assert statuses[idle.conversation_id] == "archived"
    assert statuses[fresh.conversation_id] == "active"
    assert await conversations.archive_inactive(db, inactive_days=30, batch_size=100) == 0


async def test_purging_deletes_archived_conversations_in_batches(db: AsyncSession) -> None:
    for _ in range(3):
        row = await open_session(db)
        await add_messages(db, row.conversation_id, "bye")
        await conversations.set_status(db, conversation_id=row.conversation_id, status="archived")
        await _age(db, row.conversation_id, 100)
    kept = await open_session(db)
    counted = await conversations.purge_archived(db, archived_days=90, batch_size=2, dry_run=True)
    assert counted == 3
    assert (
        await conversations.purge_archived(db, archived_days=90, batch_size=2, dry_run=False) == 2
    )
    assert (
        await conversations.purge_archived(db, archived_days=90, batch_size=2, dry_run=False) == 1
    )
    remaining = (await db.execute(select(Conversation.id))).scalars().all()
    assert remaining == [kept.conversation_id]


async def test_purging_a_users_last_conversation_removes_the_user(db: AsyncSession) -> None:
    gone = await open_session(db, email="leaving@example.org")
    await conversations.set_status(db, conversation_id=gone.conversation_id, status="archived")
    await _age(db, gone.conversation_id, 100)
    assert (
        await conversations.purge_archived(db, archived_days=90, batch_size=10, dry_run=False) == 1
    )
    assert await db.get(User, gone.user_id, populate_existing=True) is None


async def test_purging_keeps_a_user_who_still_has_a_conversation(db: AsyncSession) -> None:
    first = await open_session(db)
    second = await open_session(db)
    await users.attach_verified(
        db, conversation_id=first.conversation_id, email="staying@example.org"
    )
    await users.attach_verified(
        db, conversation_id=second.conversation_id, email="staying@example.org"
    )
    await conversations.set_status(db, conversation_id=first.conversation_id, status="archived")
    await _age(db, first.conversation_id, 100)
    assert (
        await conversations.purge_archived(db, archived_days=90, batch_size=10, dry_run=False) == 1
    )
    shared = await db.scalar(
        select(Conversation.user_id).where(Conversation.id == second.conversation_id)
    )
    assert shared is not None
    assert await db.get(User, shared, populate_existing=True) is not None


async def _open(db: AsyncSession, session_id: str) -> None:
    await conversations.open_session(
        db, session_id=session_id, contact={"name": None, "email": None, "phone": None}
    )


async def test_session_read_returns_the_member_view(db: AsyncSession) -> None:
    await _open(db, "hot-path-read-000001")
    row = await conversations.get_session(db, session_id="hot-path-read-000001")
    assert (row.session_id, row.status) == ("hot-path-read-000001", "active")
    assert row.created_at.tzinfo is not None


async def test_session_read_of_an_unknown_id_is_not_found(db: AsyncSession) -> None:
    with pytest.raises(NotFound):
        await conversations.get_session(db, session_id="hot-path-missing-0001")
