"""The hot member answers, written once: the FastAPI routes (app.api.sessions) and the
hot-path layer (app.fastpath) both call these, each with the database handle it has (a
request's session, or a raw pooled connection), after validating with the same models."""

from __future__ import annotations

import uuid

from starlette.responses import Response

from app.api.deps import HistoryQuery
from app.repositories import Db, conversations, messages
from app.serialize import MESSAGE, SESSION, JSONBytes, message_page
from app.settings import Settings


async def read_session(db: Db, *, session_id: str) -> Response:
    """200 with the session; NotFound for an unknown id."""
    return JSONBytes(SESSION.json(await conversations.get_session(db, session_id=session_id)))


async def read_history(
    db: Db,
    query: HistoryQuery,
    *,
    session_id: str | None = None,
    conversation_id: uuid.UUID | None = None,
) -> Response:
    """200 with a page of history, by session id (members) or conversation id (service)."""
    items, has_more = await messages.page(
        db,
        session_id=session_id,
        conversation_id=conversation_id,
        limit=query.limit,
        before=query.before,
        after=query.after,
    )
    return JSONBytes(message_page(items, has_more))


async def send_member_message(
    db: Db, settings: Settings, *, session_id: str, content: str, idempotency_key: str | None
) -> Response:
    """201 with the stored message, 200 with the original on an idempotent replay."""
    row, created = await messages.append(
        db,
        session_id=session_id,
        role="user",
        content=content,
        idempotency_key=idempotency_key,
        redact_kinds=settings.redact,
        per_minute=settings.member_messages_per_minute,
        agent_events=settings.agent_webhook_enabled,
    )
    return JSONBytes(MESSAGE.json(row), status_code=201 if created else 200)
