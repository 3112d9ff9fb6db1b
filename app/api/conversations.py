"""Service routes over conversations and their messages (Bearer key)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response, status

from app.api import answers
from app.api.deps import (
    ActorDep,
    HistoryQueryDep,
    IdempotencyKey,
    Limit,
    SettingsDep,
    StrictJSONRoute,
    check_content_length,
    error_responses,
    require_service_key,
)
from app.db import ReadSessionDep, SessionDep
from app.errors import Unprocessable
from app.repositories import conversations, escalations
from app.schemas import (
    Conversation,
    ConversationPage,
    ConversationStatus,
    ConversationStatusUpdate,
    Message,
    MessagePage,
    ServiceMessageCreate,
)
from app.serialize import MESSAGE, JSONBytes

router = APIRouter(
    prefix="/conversations",
    tags=["service"],
    route_class=StrictJSONRoute,
    dependencies=[Depends(require_service_key)],
    responses=error_responses(401),
)


@router.post(
    "/{conversation_id}/messages",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": Message, "description": "Idempotent replay of the original message"},
        **error_responses(404, 409),
    },
    summary="Write a message (assistant and staff replies)",
    response_model=Message,
)
async def write_message(
    db: SessionDep,
    settings: SettingsDep,
    conversation_id: uuid.UUID,
    body: ServiceMessageCreate,
    actor: ActorDep,
    idempotency_key: IdempotencyKey = None,
    staff_id: Annotated[
        uuid.UUID | None,
        Header(
            alias="X-Staff-Id",
            description="With role `staff`: the active staff member who writes the reply",
        ),
    ] = None,
) -> Response:
    """Append a `user`, `assistant` or `staff` message, with the member route's rules.

    A `staff` message (the human handoff) needs `X-Staff-Id` naming an active staff
    account; it is audited on the conversation's unresolved escalations, sets their
    first response time if it is the first, and reaches the member with the author's
    display name.
    """
    check_content_length(settings, body.content)
    if (body.role == "staff") != (staff_id is not None):
        raise Unprocessable("X-Staff-Id is required with role staff, and only with it")
    row, created = await escalations.append_message(
        db,
        conversation_id=conversation_id,
        role=body.role,
        content=body.content,
        actor=actor,
        staff_id=staff_id,
        idempotency_key=idempotency_key,
        redact_kinds=settings.redact,
        agent_events=settings.agent_webhook_enabled,
    )
    return JSONBytes(MESSAGE.json(row), status_code=201 if created else 200)


@router.get("", summary="List conversations by last activity")
async def list_conversations(
    db: SessionDep,
    status: ConversationStatus | None = None,
    user_id: uuid.UUID | None = None,
    limit: Limit = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> ConversationPage:
    """Newest activity first; pass `next_cursor` back as `cursor` for the next page."""
    rows, next_cursor = await conversations.list_by_activity(
        db, status=status, user_id=user_id, limit=limit, cursor=cursor
    )
    return ConversationPage(
        items=[Conversation.model_validate(row) for row in rows], next_cursor=next_cursor
    )


@router.get("/{conversation_id}", responses=error_responses(404), summary="Read a conversation")
async def read_conversation(db: SessionDep, conversation_id: uuid.UUID) -> Conversation:
    """A conversation with its message count and last message time (never its session id)."""
    return Conversation.model_validate(await conversations.get(db, conversation_id=conversation_id))


@router.get(
    "/{conversation_id}/messages",
    responses=error_responses(404),
    summary="Read a conversation's history",
    response_model=MessagePage,
)
async def read_messages(
    db: ReadSessionDep, conversation_id: uuid.UUID, query: HistoryQueryDep
) -> Response:
    """The member route's paging, for any conversation."""
    return await answers.read_history(db, query, conversation_id=conversation_id)


@router.patch(
    "/{conversation_id}", responses=error_responses(404), summary="Set a conversation's status"
)
async def update_conversation(
    db: SessionDep, conversation_id: uuid.UUID, body: ConversationStatusUpdate
) -> Conversation:
    """Any of active, escalated, closed, archived; the same status changes nothing."""
    row = await conversations.set_status(db, conversation_id=conversation_id, status=body.status)
    return Conversation.model_validate(row)
