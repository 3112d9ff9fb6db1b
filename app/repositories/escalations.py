"""Escalations: open (or return the open duplicate), the staff queue, status moves."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, NotFound, TooManyRequests
from app.models import Conversation, Escalation
from app.repositories import messages, notifications, paging, users

CONTEXT_MESSAGES = 20
CONTEXT_MAX_BYTES = 16 * 1024
# A slot frees up only when staff resolve an escalation; a minute is a polite hint.
OPEN_CAP_RETRY_AFTER_S = 60

# Forward along pending → notified → in_progress → resolved (steps may be skipped),
# and resolved → in_progress to reopen.
ALLOWED_MOVES: dict[str, tuple[str, ...]] = {
    "pending": ("notified", "in_progress", "resolved"),
    "notified": ("in_progress", "resolved"),
    "in_progress": ("resolved",),
    "resolved": ("in_progress",),
}


def _sources_of(target: str) -> list[str]:
    return [source for source, targets in ALLOWED_MOVES.items() if target in targets]


async def _lock_conversation(
    session: AsyncSession, *, session_id: str | None, conversation_id: uuid.UUID | None
) -> Conversation:
    match = (
        Conversation.session_id == session_id
        if session_id is not None
        else Conversation.id == conversation_id
    )
    # FOR NO KEY UPDATE serialises escalation changes per conversation, so the
    # conversation status effects below never race one another.
    conversation = await session.scalar(
        select(Conversation)
        .where(match)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    if conversation is None:
        raise NotFound("Session not found" if session_id is not None else "Conversation not found")
    return conversation


async def _check_open_cap(
    session: AsyncSession, *, conversation_id: uuid.UUID, open_max: int
) -> None:
    # Read after taking the conversation lock: every escalation insert holds it, so the
    # count is current and two concurrent opens at the cap cannot both pass.
    still_open = await session.scalar(
        select(func.count())
        .select_from(Escalation)
        .where(Escalation.conversation_id == conversation_id, Escalation.status != "resolved")
    )
    if (still_open or 0) >= open_max:
        raise TooManyRequests(
            f"This conversation already has {open_max} open escalations; "
            "staff will be in touch before another can be opened",
            OPEN_CAP_RETRY_AFTER_S,
        )


async def open_escalation(
    session: AsyncSession,
    *,
    session_id: str,
    issue_type: str,
    original_request: str,
    contact_info: dict[str, Any] | None,
    open_max: int | None = None,
) -> tuple[Escalation, bool]:
    """Escalate a conversation, or return its unresolved escalation of the same issue type.

    Returns (escalation, created). The conversation becomes `escalated`. A conversation
    already holding `open_max` unresolved escalations gets TooManyRequests and nothing
    is stored (the member route passes ESCALATIONS_OPEN_MAX; None, for tools, means no
    cap); the conversation lock makes the count exact under concurrency.
    """
    conversation = await _lock_conversation(session, session_id=session_id, conversation_id=None)
    existing = await session.scalar(
        select(Escalation).where(
            Escalation.conversation_id == conversation.id,
            Escalation.issue_type == issue_type,
            Escalation.status != "resolved",
        )
    )
    if existing is not None:
        return existing, False
    if conversation.status == "archived":
        raise Conflict("The conversation is archived and cannot be escalated")
    if open_max is not None:
        await _check_open_cap(session, conversation_id=conversation.id, open_max=open_max)
    contact = await users.known_contact(session, user_id=conversation.user_id)

    contact.update({key: value for key, value in (contact_info or {}).items() if value is not None})
    context = await messages.recent_transcript(
        session,
        conversation_id=conversation.id,
        messages=CONTEXT_MESSAGES,
        max_bytes=CONTEXT_MAX_BYTES,
    )
    inserted = await session.scalar(
        insert(Escalation)
        .values(
            conversation_id=conversation.id,
            issue_type=issue_type,
            original_request=original_request,
            contact_info=contact or None,
            conversation_context=context,
        )
        .on_conflict_do_nothing(
            index_elements=["conversation_id", "issue_type"],
            # A literal, not a bound parameter: once PostgreSQL switches the prepared
            # statement to a generic plan (the 6th run on a connection), a parameter in
            # the predicate no longer matches the partial index and the insert fails.
            index_where=text("status <> 'resolved'"),
        )
        .returning(Escalation)
    )
    if inserted is None:  # unreachable while the conversation lock is held; kept as a guard
        raise Conflict("An open escalation of this issue type already exists")
    await notifications.record(
        session,
        escalation_id=inserted.id,
        event_type=notifications.CREATED,
        data={"status": inserted.status},
    )
    await session.execute(
        update(Conversation)
        .where(Conversation.id == conversation.id, Conversation.status != "escalated")
        .values(status="escalated")
    )
    return inserted, True


async def list_for_session(session: AsyncSession, *, session_id: str) -> list[Escalation]:
    """A session's escalations, oldest first; NotFound when the session is unknown."""
    conversation_id = await session.scalar(
        select(Conversation.id).where(Conversation.session_id == session_id)
    )
    if conversation_id is None:
        raise NotFound("Session not found")
    result = await session.scalars(
        select(Escalation)
        .where(Escalation.conversation_id == conversation_id)
        .order_by(Escalation.created_at, Escalation.id)
    )
    return list(result)


async def get(session: AsyncSession, *, escalation_id: uuid.UUID) -> Escalation:
    """An escalation by id; NotFound when absent."""
    escalation = await session.get(Escalation, escalation_id, populate_existing=True)
    if escalation is None:
        raise NotFound("Escalation not found")
    return escalation


async def list_queue(
    session: AsyncSession,
    *,
    status: str | None,
    issue_type: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Escalation], str | None]:
    """The staff work queue, oldest first, one keyset page at a time."""
    conditions: list[ColumnElement[bool]] = []
    if status is not None:
        conditions.append(Escalation.status == status)
    if issue_type is not None:
        conditions.append(Escalation.issue_type == issue_type)
    return await paging.oldest_first(
        session, Escalation, conditions=conditions, limit=limit, cursor=cursor
    )


async def transition(
    session: AsyncSession, *, escalation_id: uuid.UUID, status: str, record_event: bool = True
) -> Escalation:
    """Move an escalation to `status` as a compare-and-set, with the conversation effects.

    The same status is a no-op (nothing changes, not even updated_at); an illegal
    move is a Conflict naming the allowed ones. Resolving a conversation's last open
    escalation makes it `active`; reopening makes it `escalated` again. A move writes an
    `escalation.status_changed` event unless `record_event` is False (the delivery
    worker's own pending → notified, which would only echo the webhook it just delivered).
    """
    conversation_id = await session.scalar(
        select(Escalation.conversation_id).where(Escalation.id == escalation_id)
    )
    if conversation_id is None:
        raise NotFound("Escalation not found")
    await _lock_conversation(session, session_id=None, conversation_id=conversation_id)
    # Read after taking the lock: every status move holds it, so this is current.
    previous = await session.scalar(select(Escalation.status).where(Escalation.id == escalation_id))
    if previous == status:
        return await get(session, escalation_id=escalation_id)
    moved = await session.scalar(
        update(Escalation)
        .where(Escalation.id == escalation_id, Escalation.status.in_(_sources_of(status)))
        .values(status=status)
        .returning(Escalation)
        .execution_options(populate_existing=True)
    )
    if moved is None:
        allowed = ", ".join(ALLOWED_MOVES.get(previous or "", ())) or "none"
        raise Conflict(f"Cannot move an escalation from {previous} to {status}; allowed: {allowed}")
    if record_event:
        await notifications.record(
            session,
            escalation_id=escalation_id,
            event_type=notifications.STATUS_CHANGED,
            data={"previous_status": previous, "status": status},
        )
    if status == "resolved":
        still_open = exists().where(
            Escalation.conversation_id == conversation_id, Escalation.status != "resolved"
        )
        await session.execute(
            update(Conversation)
            .where(
                Conversation.id == conversation_id,
                Conversation.status == "escalated",
                ~still_open,
            )
            .values(status="active")
        )
    elif previous == "resolved":
        await session.execute(
            update(Conversation)
            .where(
                Conversation.id == conversation_id,
                Conversation.status.in_(("active", "closed")),
            )
            .values(status="escalated")
        )
    return moved
