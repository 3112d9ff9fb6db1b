"""Users: creation, retrieval, contact details, the email relink rule, erasure."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound
from app.models import Conversation, Escalation, Message, User
from app.repositories import conversations, users
from tests.helpers import add_messages, escalate, open_session


async def existing_user(db: AsyncSession, **fields: str) -> User:
    """A user created before this test's sessions (tests run in one transaction)."""
    user = await users.create(db, **fields)
    await db.execute(
        text("UPDATE users SET created_at = '2000-01-01' WHERE id = :id"), {"id": user.id}
    )
    return user


async def test_a_user_is_created_with_database_defaults(db: AsyncSession) -> None:
    user = await users.create(db, email="ada@example.org", name="Ada")
    assert user.id is not None
    assert user.created_at is not None
    assert user.updated_at == user.created_at
    assert (await users.get(db, user_id=user.id)).email == "ada@example.org"


async def test_a_user_is_found_by_email_case_insensitively(db: AsyncSession) -> None:
    user = await users.create(db, email="grace@example.org")
    assert (await users.get_by_email(db, email=" Grace@Example.org ")).id == user.id


async def test_an_unknown_user_is_not_found(db: AsyncSession) -> None:
    with pytest.raises(NotFound):
        await users.get_by_email(db, email="nobody@example.org")


async def test_two_users_cannot_share_an_email(db: AsyncSession) -> None:
    await users.create(db, email="same@example.org")
    with pytest.raises(IntegrityError):
        async with db.begin_nested():
            await users.create(db, email="same@example.org")


async def test_contact_fields_are_set_and_cleared(db: AsyncSession) -> None:
    session = await open_session(db)
    await users.apply_contact(
        db,
        conversation_id=session.conversation_id,
        changes={"name": "Ada", "phone": "+1 555 0100"},
    )
    await users.apply_contact(db, conversation_id=session.conversation_id, changes={"name": None})
    user = await db.scalar(
        select(User).where(User.id == session.user_id).execution_options(populate_existing=True)
    )
    assert user is not None
    assert (user.name, user.phone) == (None, "+1 555 0100")


async def test_another_users_email_moves_the_conversation_to_them(db: AsyncSession) -> None:
    known = await existing_user(db, email="known@example.org", name="Known Name")
    session = await open_session(db)
    await users.apply_contact(
        db,
        conversation_id=session.conversation_id,
        changes={"email": "known@example.org", "name": "Impostor", "phone": "+1 555 0199"},
    )
    owner = await db.scalar(
        select(Conversation.user_id).where(Conversation.id == session.conversation_id)
    )
    assert owner == known.id
    refreshed = await db.scalar(
        select(User).where(User.id == known.id).execution_options(populate_existing=True)
    )
    assert refreshed is not None
    assert refreshed.name == "Known Name"  # never overwritten
    assert refreshed.phone == "+1 555 0199"  # empty field filled
    # The anonymous user left without conversations is removed.
    assert await db.get(User, session.user_id, populate_existing=True) is None


async def test_a_shared_user_is_only_filled_never_overwritten(db: AsyncSession) -> None:
    known = await existing_user(db, email="shared@example.org", name="Owner")
    first = await open_session(db)
    await users.apply_contact(
        db, conversation_id=first.conversation_id, changes={"email": "shared@example.org"}
    )
    await users.apply_contact(
        db, conversation_id=first.conversation_id, changes={"name": "Stranger", "phone": None}
    )
    refreshed = await db.get(User, known.id, populate_existing=True)
    assert refreshed is not None
    assert refreshed.name == "Owner"


async def test_a_new_email_on_a_shared_user_detaches_the_conversation(db: AsyncSession) -> None:
    known = await existing_user(db, email="mine@example.org")
    other = await open_session(db)
    await users.apply_contact(
        db, conversation_id=other.conversation_id, changes={"email": "mine@example.org"}
    )
    second = await open_session(db)
    await users.apply_contact(
        db, conversation_id=second.conversation_id, changes={"email": "mine@example.org"}
    )
    await users.apply_contact(
        db, conversation_id=second.conversation_id, changes={"email": "typo@example.org"}
    )
    owner = await db.scalar(
        select(Conversation.user_id).where(Conversation.id == second.conversation_id)
    )
    assert owner != known.id
    assert (await users.get_by_email(db, email="typo@example.org")).id == owner
    assert (await users.get(db, user_id=known.id)).email == "mine@example.org"


async def test_deleting_a_user_cascades_to_everything_of_theirs(db: AsyncSession) -> None:
    session = await open_session(db)
    await add_messages(db, session.conversation_id, "hello", "again")
    await escalate(db, session.session_id)
    await users.delete_user(db, user_id=session.user_id)
    for model in (Conversation, Message, Escalation):
        count = await db.scalar(select(func.count()).select_from(model))
        assert count == 0, model.__name__


async def test_deleting_an_unknown_user_is_not_found(db: AsyncSession) -> None:
    session = await open_session(db)
    await users.delete_user(db, user_id=session.user_id)
    with pytest.raises(NotFound):
        await users.delete_user(db, user_id=session.user_id)


async def test_updated_at_is_bumped_by_a_raw_sql_update(db: AsyncSession) -> None:
    user_id = await db.scalar(
        text(
            "INSERT INTO users (name, created_at, updated_at) "
            "VALUES ('Old', '2000-01-01', '2000-01-01') RETURNING id"
        )
    )
    await db.execute(text("UPDATE users SET name = 'New' WHERE id = :id"), {"id": user_id})
    updated_at, now = (
        await db.execute(
            text("SELECT updated_at, now() FROM users WHERE id = :id"), {"id": user_id}
        )
    ).one()
    assert updated_at == now


async def test_an_update_that_changes_nothing_keeps_updated_at(db: AsyncSession) -> None:
    user_id = await db.scalar(
        text("INSERT INTO users (name, updated_at) VALUES ('Same', '2000-01-01') RETURNING id")
    )
    await db.execute(text("UPDATE users SET name = 'Same' WHERE id = :id"), {"id": user_id})
    updated_at = await db.scalar(
        text("SELECT updated_at FROM users WHERE id = :id"), {"id": user_id}
    )
    assert updated_at.year == 2000


async def test_known_contact_lists_only_filled_fields(db: AsyncSession) -> None:
    user = await users.create(db, email="k@example.org", phone="+1 555 0100")
    assert await users.known_contact(db, user_id=user.id) == {
        "email": "k@example.org",
        "phone": "+1 555 0100",
    }
    assert await users.known_contact(db, user_id=None) == {}


async def test_a_session_can_be_opened_with_contact_details(db: AsyncSession) -> None:
    row, created = await conversations.open_session(
        db, session_id=None, contact={"name": "Lin", "email": "lin@example.org", "phone": None}
    )
    assert created
    assert (await users.get(db, user_id=row.user_id)).name == "Lin"
