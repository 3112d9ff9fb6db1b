"""Users: creation, retrieval, contact details (own user only), verified identity, erasure."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, NotFound
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


async def test_unverified_users_may_share_an_email(db: AsyncSession) -> None:
    first = await users.create(db, email="same@example.org")
    second = await users.create(db, email="same@example.org")
    assert first.id != second.id


async def test_two_verified_users_cannot_share_an_email(db: AsyncSession) -> None:
    await db.execute(
        text("INSERT INTO users (email, email_verified) VALUES ('v@example.org', true)")
    )
    with pytest.raises(IntegrityError):
        async with db.begin_nested():
            await db.execute(
                text("INSERT INTO users (email, email_verified) VALUES ('v@example.org', true)")
            )


async def test_finding_by_email_prefers_the_verified_user(db: AsyncSession) -> None:
    verified = await db.scalar(
        text(
            "INSERT INTO users (email, email_verified, updated_at) "
            "VALUES ('pick@example.org', true, '2000-01-01') RETURNING id"
        )
    )
    await users.create(db, email="pick@example.org")
    assert (await users.get_by_email(db, email="pick@example.org")).id == verified


async def test_finding_by_email_otherwise_takes_the_most_recently_updated(
    db: AsyncSession,
) -> None:
    await db.execute(
        text("INSERT INTO users (email, updated_at) VALUES ('recent@example.org', '2000-01-01')")
    )
    newer = await users.create(db, email="recent@example.org")
    assert (await users.get_by_email(db, email="recent@example.org")).id == newer.id


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


async def _user_of(db: AsyncSession, conversation_id: object) -> User:
    user_id = await db.scalar(
        select(Conversation.user_id)
        .where(Conversation.id == conversation_id)
        .execution_options(populate_existing=True)
    )
    user = await db.get(User, user_id, populate_existing=True)
    assert user is not None
    return user


async def test_another_users_email_changes_only_the_sessions_own_user(db: AsyncSession) -> None:
    known = await existing_user(db, email="known@example.org", name="Known Name")
    session = await open_session(db)
    await users.apply_contact(
        db,
        conversation_id=session.conversation_id,
        changes={"email": "known@example.org", "name": "Impostor", "phone": "+1 555 0199"},
    )
    own = await _user_of(db, session.conversation_id)
    assert own.id == session.user_id
    assert (own.email, own.email_verified, own.name) == ("known@example.org", False, "Impostor")
    refreshed = await db.get(User, known.id, populate_existing=True)
    assert refreshed is not None
    assert (refreshed.name, refreshed.phone) == ("Known Name", None)


async def test_attaching_a_verified_identity_creates_the_verified_user(db: AsyncSession) -> None:
    session = await open_session(db, name="Typed")
    await users.attach_verified(
        db, conversation_id=session.conversation_id, email="verified@example.org"
    )
    user = await _user_of(db, session.conversation_id)
    assert (user.email, user.email_verified, user.name) == ("verified@example.org", True, None)
    # The anonymous user left without conversations is removed.
    assert await db.get(User, session.user_id, populate_existing=True) is None


async def test_a_second_session_with_the_same_identity_shares_the_verified_user(
    db: AsyncSession,
) -> None:
    first = await open_session(db)
    second = await open_session(db)
    for session in (first, second):
        await users.attach_verified(
            db, conversation_id=session.conversation_id, email="both@example.org"
        )
    assert (await _user_of(db, first.conversation_id)).id == (
        await _user_of(db, second.conversation_id)
    ).id


async def test_attaching_the_same_identity_again_changes_nothing(db: AsyncSession) -> None:
    session = await open_session(db)
    await users.attach_verified(db, conversation_id=session.conversation_id, email="a@example.org")
    before = await _user_of(db, session.conversation_id)
    await users.attach_verified(db, conversation_id=session.conversation_id, email="a@example.org")
    assert (await _user_of(db, session.conversation_id)).id == before.id


async def test_switching_identity_keeps_the_previous_verified_user(db: AsyncSession) -> None:
    session = await open_session(db)
    await users.attach_verified(db, conversation_id=session.conversation_id, email="a@example.org")
    first = await _user_of(db, session.conversation_id)
    await users.attach_verified(db, conversation_id=session.conversation_id, email="b@example.org")
    assert (await _user_of(db, session.conversation_id)).email == "b@example.org"
    assert await db.get(User, first.id, populate_existing=True) is not None


async def test_a_verified_email_cannot_be_changed_or_cleared_by_a_member(db: AsyncSession) -> None:
    session = await open_session(db)
    await users.attach_verified(db, conversation_id=session.conversation_id, email="v@example.org")
    for email in ("other@example.org", None):
        with pytest.raises(Conflict):
            async with db.begin_nested():
                await users.apply_contact(
                    db, conversation_id=session.conversation_id, changes={"email": email}
                )
    await users.apply_contact(
        db,
        conversation_id=session.conversation_id,
        changes={"email": "v@example.org", "name": "Ada", "phone": "+1 555 0100"},
    )
    user = await _user_of(db, session.conversation_id)
    assert (user.email, user.email_verified, user.name) == ("v@example.org", True, "Ada")


async def test_contact_of_a_conversation_without_a_user_gets_a_user_of_its_own(
    db: AsyncSession,
) -> None:
    session = await open_session(db)
    await db.execute(
        text("UPDATE conversations SET user_id = NULL WHERE id = :id"),
        {"id": session.conversation_id},
    )
    await users.apply_contact(db, conversation_id=session.conversation_id, changes={"name": "Lin"})
    assert (await _user_of(db, session.conversation_id)).name == "Lin"


async def test_contact_of_an_unknown_conversation_is_not_found(db: AsyncSession) -> None:
    with pytest.raises(NotFound):
        await users.apply_contact(db, conversation_id=uuid.uuid4(), changes={"name": "Lin"})


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


async def test_the_contact_snapshot_lists_only_filled_fields(db: AsyncSession) -> None:
    user = await users.create(db, email="k@example.org", phone="+1 555 0100")
    assert await users.contact_snapshot(db, user_id=user.id, supplied=None) == {
        "email": "k@example.org",
        "email_verified": False,
        "phone": "+1 555 0100",
    }
    assert await users.contact_snapshot(db, user_id=None, supplied=None) == {}


async def test_the_contact_snapshot_calls_only_the_verified_users_own_email_verified(
    db: AsyncSession,
) -> None:
    session = await open_session(db)
    await users.attach_verified(db, conversation_id=session.conversation_id, email="v@example.org")
    user = await _user_of(db, session.conversation_id)
    own = await users.contact_snapshot(db, user_id=user.id, supplied={"name": "Ada"})
    assert own == {"email": "v@example.org", "email_verified": True, "name": "Ada"}
    typed = await users.contact_snapshot(db, user_id=user.id, supplied={"email": "x@example.org"})
    assert typed == {"email": "x@example.org", "email_verified": False}


async def test_a_session_can_be_opened_with_contact_details(db: AsyncSession) -> None:
    row, created = await conversations.open_session(
        db, session_id=None, contact={"name": "Lin", "email": "lin@example.org", "phone": None}
    )
    assert created
    assert (await users.get(db, user_id=row.user_id)).name == "Lin"


async def test_contact_without_any_contact_field_changes_nothing(db: AsyncSession) -> None:
    session = await open_session(db, name="Kept")
    await users.apply_contact(db, conversation_id=session.conversation_id, changes={})
    assert (await _user_of(db, session.conversation_id)).name == "Kept"
