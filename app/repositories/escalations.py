"""Escalations: open (or return the open duplicate), the staff queue, status moves."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from sqlalchemy import ColumnElement, exists, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, NotFound, TooManyRequests
from app.models import Conversation, Escalation
from app.redact import ALL_KINDS, merge, redact, report
from app.repositories import Fields, audit, messages, notifications, paging, staff, users

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
    redact_kinds: frozenset[str] = ALL_KINDS,
    open_max: int | None = None,
) -> tuple[Escalation, bool]:
    """Escalate a conversation, or return its unresolved escalation of the same issue type.

    Returns (escalation, created). The conversation becomes `escalated`. Card numbers and
    SSNs (`redact_kinds`) are replaced in the request and the context before they are
    stored, and so before any notification can carry them. A conversation already
    holding `open_max` unresolved escalations gets TooManyRequests and nothing is stored
    (the member route passes ESCALATIONS_OPEN_MAX; None, for tools, means no cap); the
    conversation lock makes the count exact under concurrency.
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
    contact = await users.contact_snapshot(
        session, user_id=conversation.user_id, supplied=contact_info
    )
    original_request, request_redactions = redact(original_request, redact_kinds)
    context, context_redactions = await messages.recent_transcript(
        session,
        conversation_id=conversation.id,
        messages=CONTEXT_MESSAGES,
        max_bytes=CONTEXT_MAX_BYTES,
        redact_kinds=redact_kinds,
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
    report(merge(request_redactions, context_redactions), table="escalations")
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
    assignee: uuid.UUID | Literal["none"] | None = None,
    open_only: bool = False,
) -> tuple[list[Escalation], str | None]:
    """The staff work queue, oldest first, one keyset page at a time.

    `assignee`: a staff id, or "none" for the unassigned; None means anyone's.
    `open_only`: leave out the resolved (the staff console's queue).
    """
    conditions: list[ColumnElement[bool]] = []
    if status is not None:
        conditions.append(Escalation.status == status)
    if open_only:
        conditions.append(Escalation.status != "resolved")
    if issue_type is not None:
        conditions.append(Escalation.issue_type == issue_type)
    if assignee == "none":
        conditions.append(Escalation.assignee_id.is_(None))
    elif assignee is not None:
        conditions.append(Escalation.assignee_id == assignee)
    return await paging.oldest_first(
        session, Escalation, conditions=conditions, limit=limit, cursor=cursor
    )


UNCHANGED: Any = object()  # "not given", as opposed to None ("unassign")
SYSTEM_ACTOR = "system"


async def transition(
    session: AsyncSession,
    *,
    escalation_id: uuid.UUID,
    status: str,
    record_event: bool = True,
    actor: str = SYSTEM_ACTOR,
) -> Escalation:
    """Move an escalation to `status`: `change` with the status only."""
    return await change(
        session, escalation_id=escalation_id, status=status, actor=actor, record_event=record_event
    )


async def change(
    session: AsyncSession,
    *,
    escalation_id: uuid.UUID,
    actor: str,
    status: str | None = None,
    assignee_id: uuid.UUID | None = UNCHANGED,
    record_event: bool = True,
) -> Escalation:
    """Change an escalation's status and/or assignee, audited, as one compare-and-set.

    Every change to an escalation holds its conversation's row lock, so two staff acting
    at once are applied one after the other, each against the state the other left:
    - status: the same status is a no-op (nothing changes, not even updated_at); an
      illegal move from the current status is a Conflict naming the allowed ones.
      Resolving sets `resolved_at`, reopening clears it; resolving a conversation's last
      open escalation makes it `active`, reopening makes it `escalated` again. A move
      writes an `escalation.status_changed` event unless `record_event` is False (the
      delivery worker's own pending -> notified, which would only echo its webhook).
    - assignee: an explicit choice, so the later of two assignments applies (both are in
      the audit trail); the same assignee is a no-op; an unknown or disabled staff id is
      Unprocessable and nothing changes.
    """
    conversation_id = await session.scalar(
        select(Escalation.conversation_id).where(Escalation.id == escalation_id)
    )
    if conversation_id is None:
        raise NotFound("Escalation not found")
    await _lock_conversation(session, session_id=None, conversation_id=conversation_id)
    # Read after taking the lock: every change holds it, so this is current.
    current = await session.execute(
        select(Escalation.status, Escalation.assignee_id).where(Escalation.id == escalation_id)
    )
    previous, previous_assignee = current.one()
    if assignee_id is not UNCHANGED and assignee_id is not None:
        await staff.require_active(session, staff_id=assignee_id, field="assignee_id")
    if status is not None and status != previous:
        await _move(
            session,
            escalation_id=escalation_id,
            conversation_id=conversation_id,
            previous=previous,
            status=status,
            record_event=record_event,
        )
        await audit.record(
            session,
            escalation_ids=[escalation_id],
            actor=actor,
            action="status",
            from_value=previous,
            to_value=status,
        )
    if assignee_id is not UNCHANGED and assignee_id != previous_assignee:
        await session.execute(
            update(Escalation).where(Escalation.id == escalation_id).values(assignee_id=assignee_id)
        )
        await audit.record(
            session,
            escalation_ids=[escalation_id],
            actor=actor,
            action="assignment",
            from_value=None if previous_assignee is None else str(previous_assignee),
            to_value=None if assignee_id is None else str(assignee_id),
        )
    return await get(session, escalation_id=escalation_id)


async def _move(
    session: AsyncSession,
    *,
    escalation_id: uuid.UUID,
    conversation_id: uuid.UUID,
    previous: str | None,
    status: str,
    record_event: bool,
) -> None:
    moved = await session.scalar(
        update(Escalation)
        .where(Escalation.id == escalation_id, Escalation.status.in_(_sources_of(status)))
        .values(status=status, resolved_at=func.now() if status == "resolved" else None)
        .returning(Escalation.id)
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


async def append_message(
    session: AsyncSession,
    *,
    conversation_id: uuid.UUID,
    role: str,
    content: str,
    actor: str,
    staff_id: uuid.UUID | None,
    idempotency_key: str | None = None,
    redact_kinds: frozenset[str] = ALL_KINDS,
    agent_events: bool = False,
) -> tuple[Fields, bool]:
    """Write a service-side message (assistant, user or a staff reply); (message, created).

    A staff reply (`staff_id`, an active account) is audited on the conversation's
    unresolved escalations and sets their first response time if it is the first; the
    REST route and the staff console both write replies through here.
    """
    if staff_id is not None:
        await staff.require_active(session, staff_id=staff_id, field="X-Staff-Id")
    row, created = await messages.append(
        session,
        conversation_id=conversation_id,
        role=role,
        content=content,
        idempotency_key=idempotency_key,
        redact_kinds=redact_kinds,
        agent_events=agent_events,
        author_id=staff_id,
    )
    if created and staff_id is not None:
        await note_staff_reply(
            session,
            conversation_id=conversation_id,
            actor=f"{actor}+staff:{staff_id}",
            message_seq=row["seq"],
        )
    return row, created


async def note_staff_reply(
    session: AsyncSession, *, conversation_id: uuid.UUID, actor: str, message_seq: int
) -> None:
    """A staff message was written: audit it on the conversation's unresolved escalations
    and set their `first_response_at` if this is the first. Runs in the message's
    transaction, which holds the conversation's row lock (the insert took it)."""
    open_ids = list(
        await session.scalars(
            update(Escalation)
            .where(Escalation.conversation_id == conversation_id, Escalation.status != "resolved")
            .values(first_response_at=func.coalesce(Escalation.first_response_at, func.now()))
            .returning(Escalation.id)
        )
    )
    await audit.record(
        session,
        escalation_ids=open_ids,
        actor=actor,
        action="staff_message",
        from_value=None,
        to_value=f"message {message_seq}",
    )
