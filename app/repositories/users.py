"""Users: contact details, the email relink rule, erasure."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound
from app.models import Conversation, User

CONTACT_FIELDS = ("name", "email", "phone")


async def create(
    session: AsyncSession,
    *,
    email: str | None = None,
    name: str | None = None,
    phone: str | None = None,
) -> User:
    """Insert a user and return it with its database defaults."""
    user = User(email=email, name=name, phone=phone)
    session.add(user)
    await session.flush()
    await session.refresh(user)
    return user


async def get(session: AsyncSession, *, user_id: uuid.UUID) -> User:
    """A user by id; NotFound when absent."""
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("User not found")
    return user


async def get_by_email(session: AsyncSession, *, email: str) -> User:
    """A user by (lower-cased) email; NotFound when absent."""
    user = await session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound("User not found")
    return user


async def delete_user(session: AsyncSession, *, user_id: uuid.UUID) -> None:
    """Erase a user with their conversations, messages and escalations (FK cascades)."""
    result = await session.execute(delete(User).where(User.id == user_id).returning(User.id))
    if result.scalar_one_or_none() is None:
        raise NotFound("User not found")


async def apply_contact(
    session: AsyncSession, *, conversation_id: uuid.UUID, changes: dict[str, str | None]
) -> None:
    """Apply a member's contact details to the user behind a conversation (the PATCH contact rules).

    - An email another user already has moves the conversation to that user: their
      empty fields are filled from `changes`, nothing of theirs is overwritten, and the
      anonymous user left without conversations is removed.
    - A user this session did not create (it was linked by email) is only ever filled,
      never overwritten or cleared, from this session: knowing an email must not let a
      stranger rewrite that member's details. A new email there detaches the
      conversation onto a user of its own.
    """
    conversation = await session.scalar(
        select(Conversation)
        .where(Conversation.id == conversation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if conversation is None:
        raise NotFound("Session not found")
    if conversation.user_id is None:
        user = await create(session)
        conversation.user_id = user.id
        await session.flush()
    current = await session.scalar(
        select(User)
        .where(User.id == conversation.user_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert current is not None  # the foreign key guarantees it
    # Only a user created with this session and used by no other conversation is this
    # session's own; a user reached by email may only have its empty fields filled.
    shared = (
        current.created_at is None
        or conversation.created_at is None
        or current.created_at < conversation.created_at
        or bool(
            await session.scalar(
                select(
                    exists().where(
                        Conversation.user_id == current.id, Conversation.id != conversation_id
                    )
                )
            )
        )
    )
    email = changes.get("email")
    if email is not None and email != current.email:
        if await _link_to_email_owner(session, conversation, current, changes, email):
            return
        if shared:
            # Detach this conversation from the shared user onto a new one of its own.
            fresh = await create(
                session, email=email, name=changes.get("name"), phone=changes.get("phone")
            )
            conversation.user_id = fresh.id
            await session.flush()
            return
        try:
            async with session.begin_nested():
                await _write_fields(session, current.id, changes)
        except IntegrityError:
            # Someone claimed the email between our look-up and our write: link instead.
            if not await _link_to_email_owner(session, conversation, current, changes, email):
                raise
        return
    if shared:
        await _fill_empty_fields(session, current.id, changes)
    else:
        await _write_fields(session, current.id, changes)


async def _link_to_email_owner(
    session: AsyncSession,
    conversation: Conversation,
    current: User,
    changes: dict[str, str | None],
    email: str,
) -> bool:
    owner = await session.scalar(
        select(User)
        .where(User.email == email)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if owner is None or owner.id == current.id:
        return False
    conversation.user_id = owner.id
    await session.flush()
    await _fill_empty_fields(session, owner.id, changes)
    await session.execute(
        delete(User).where(
            User.id == current.id,
            ~exists().where(Conversation.user_id == current.id),
        )
    )
    return True


async def _write_fields(
    session: AsyncSession, user_id: uuid.UUID, changes: dict[str, str | None]
) -> None:
    values = {name: value for name, value in changes.items() if name in CONTACT_FIELDS}
    if values:
        await session.execute(update(User).where(User.id == user_id).values(**values))


async def _fill_empty_fields(
    session: AsyncSession, user_id: uuid.UUID, changes: dict[str, str | None]
) -> None:
    for name in ("name", "phone"):
        value = changes.get(name)
        if value is not None:
            column = getattr(User, name)
            await session.execute(
                update(User).where(User.id == user_id, column.is_(None)).values({name: value})
            )


async def known_contact(session: AsyncSession, *, user_id: uuid.UUID | None) -> dict[str, str]:
    """The user's non-empty contact fields, for an escalation's contact_info."""
    if user_id is None:
        return {}
    row = (
        await session.execute(select(User.email, User.name, User.phone).where(User.id == user_id))
    ).one_or_none()
    if row is None:
        return {}
    return {name: value for name, value in row._mapping.items() if value is not None}
