"""Users: contact details (the session's own user only), verified identities, erasure."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, exists, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, NotFound
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
    """The user with this (lower-cased) email: the verified one if there is one, else the
    most recently updated; NotFound when none. Typed emails may repeat across users."""
    user = await session.scalar(
        select(User)
        .where(User.email == email.strip().lower())
        .order_by(User.email_verified.desc(), User.updated_at.desc().nulls_last(), User.id)
        .limit(1)
    )
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
    """A member's contact details, written to the conversation's own user and nowhere else.

    No other user is read or written, whatever the email, so the answer is the same
    whether or not the address is known elsewhere. A verified user's email came from the
    credit union's signature: a member request may leave it as it is but not change or
    clear it (Conflict); its name and phone are the member's own to edit.
    """
    # KEY SHARE: concurrent edits of this session proceed, while a verification moving
    # the conversation to another user (FOR UPDATE) waits for them, or they for it.
    user_id = await session.scalar(
        select(Conversation.user_id)
        .where(Conversation.id == conversation_id)
        .with_for_update(read=True, key_share=True)
    )
    if user_id is None:
        user_id = await _give_own_user(session, conversation_id=conversation_id)
    values = {name: value for name, value in changes.items() if name in CONTACT_FIELDS}
    if not values:
        return
    statement = update(User).where(User.id == user_id)
    if "email" in values:
        statement = statement.where(
            or_(~User.email_verified, User.email.is_not_distinct_from(values["email"]))
        )
    changed = await session.scalar(statement.values(**values).returning(User.id))
    if changed is None:
        raise Conflict(
            "This session's email is verified; it changes only through a new verified identity"
        )


async def _give_own_user(session: AsyncSession, *, conversation_id: uuid.UUID) -> uuid.UUID:
    # A conversation without a user (set so by hand) gets an anonymous one of its own.
    exists_now = await session.scalar(
        select(Conversation.id).where(Conversation.id == conversation_id)
    )
    if exists_now is None:
        raise NotFound("Session not found")
    user = await create(session)
    await session.execute(
        update(Conversation).where(Conversation.id == conversation_id).values(user_id=user.id)
    )
    return user.id


async def attach_verified(session: AsyncSession, *, conversation_id: uuid.UUID, email: str) -> None:
    """Attach a conversation to the verified user with this email, creating it if need be.

    The user the conversation leaves is removed when it is unverified and has no other
    conversation (an anonymous or typed-contact user is never shared, so that is the
    usual case). The caller has already checked the signature.
    """
    current = await session.scalar(
        select(Conversation.user_id).where(Conversation.id == conversation_id).with_for_update()
    )
    verified_id = await _verified_user_id(session, email=email)
    if current == verified_id:
        return
    await session.execute(
        update(Conversation).where(Conversation.id == conversation_id).values(user_id=verified_id)
    )
    if current is not None:
        await session.execute(
            delete(User).where(
                User.id == current,
                ~User.email_verified,
                ~exists().where(Conversation.user_id == current),
            )
        )


async def _verified_user_id(session: AsyncSession, *, email: str) -> uuid.UUID:
    # Two sessions verifying the same new email at once: the unique index among verified
    # users makes the second INSERT wait for the first and then do nothing, and the
    # following SELECT (a fresh snapshot) finds the row the first one committed. Another
    # round covers that user being erased in between.
    for _ in range(3):
        inserted: uuid.UUID | None = await session.scalar(
            insert(User)
            .values(email=email, email_verified=True)
            .on_conflict_do_nothing(
                index_elements=["email"],
                # A literal, as the partial index's predicate must match it exactly.
                index_where=text("email_verified"),
            )
            .returning(User.id)
        )
        if inserted is not None:
            return inserted
        found: uuid.UUID | None = await session.scalar(
            select(User.id).where(User.email == email, User.email_verified)
        )
        if found is not None:
            return found
    raise Conflict("The verified user changed concurrently; try again")


async def contact_snapshot(
    session: AsyncSession, *, user_id: uuid.UUID | None, supplied: dict[str, Any] | None
) -> dict[str, Any]:
    """An escalation's contact_info: the user's known contact merged with what the request
    supplied (the request winning), and, when there is an email, whether it is verified
    (only the verified user's own email is; one typed in the request never is)."""
    row = None
    if user_id is not None:
        row = (
            await session.execute(
                select(User.email, User.email_verified, User.name, User.phone).where(
                    User.id == user_id
                )
            )
        ).one_or_none()
    contact: dict[str, Any] = {}
    if row is not None:
        contact = {name: getattr(row, name) for name in CONTACT_FIELDS}
        contact = {name: value for name, value in contact.items() if value is not None}
    contact.update({name: value for name, value in (supplied or {}).items() if value is not None})
    if "email" in contact:
        contact["email_verified"] = bool(
            row is not None and row.email_verified and contact["email"] == row.email
        )
    return contact
