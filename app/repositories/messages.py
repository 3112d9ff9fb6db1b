"""Messages: append with seq and idempotency keys, and history pages by seq."""

from __future__ import annotations

import uuid
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, NotFound, Unprocessable
from app.models import Message
from app.redact import ALL_KINDS, redact, report
from app.repositories import Record

# A staff message carries its author's display name (never the email); the CASE skips
# the lookup for every other message.
MESSAGE_COLUMNS = (
    "id, conversation_id, seq, role, content, created_at, "
    "CASE WHEN messages.author_id IS NULL THEN NULL ELSE "
    "(SELECT display_name FROM staff WHERE staff.id = messages.author_id) END AS author_name"
)

# One round trip: lock the conversation (inserts into it queue here; the seq trigger
# relies on it), refuse archived ones, and insert unless the idempotency key was seen.
# With $6 true (an agent webhook is configured) a new `user` message also writes its
# `message.created` outbox event, in the same statement and so the same transaction.
# A hot path: run with exec_driver_sql (asyncpg's $n parameters), past SQLAlchemy's
# compile and result layers.
_APPEND = """
WITH conversation AS (
    SELECT id, status FROM conversations WHERE {match} FOR NO KEY UPDATE
), inserted AS (
    INSERT INTO messages (conversation_id, role, content, idempotency_key, author_id)
    SELECT id, $2, $3, $4, $5 FROM conversation
    WHERE status <> 'archived'
    ON CONFLICT (conversation_id, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING {columns}
), agent_event AS (
    INSERT INTO notification_events (type, conversation_id, message_id)
    SELECT 'message.created', conversation_id, id FROM inserted
    WHERE role = 'user' AND $6::boolean
)
SELECT conversation.id AS found_conversation_id, conversation.status AS conversation_status,
       inserted.*
FROM conversation LEFT JOIN inserted ON true
"""
APPEND_BY_SESSION = _APPEND.format(match="session_id = $1", columns=MESSAGE_COLUMNS)
APPEND_BY_ID = _APPEND.format(match="id = $1", columns=MESSAGE_COLUMNS)
_BY_IDEMPOTENCY_KEY = (
    f"SELECT {MESSAGE_COLUMNS}, author_id FROM messages "  # noqa: S608 (constants only)
    "WHERE conversation_id = $1 AND idempotency_key = $2"
)


async def append(
    session: AsyncSession,
    *,
    role: str,
    content: str,
    idempotency_key: str | None = None,
    session_id: str | None = None,
    conversation_id: uuid.UUID | None = None,
    redact_kinds: frozenset[str] = ALL_KINDS,
    author_id: uuid.UUID | None = None,
    agent_events: bool = False,
) -> tuple[Record, bool]:
    """Append a message to a conversation (by session id or id); returns (message, created).

    Card numbers and SSNs (`redact_kinds`) are replaced first, so what is stored and what
    a repeated Idempotency-Key is compared with are both the redacted text. A repeat
    with the same role, content and author returns the original message and stores
    nothing; with anything else it is Unprocessable. `author_id` names the staff member
    of a `staff` message. `agent_events`: an agent webhook is configured, so a new `user`
    message records its `message.created` event with it.
    """
    if (session_id is None) == (conversation_id is None):
        raise ValueError("give exactly one of session_id, conversation_id")
    content, redactions = redact(content, redact_kinds)
    statement = APPEND_BY_SESSION if session_id is not None else APPEND_BY_ID
    connection = await session.connection()
    key = session_id if session_id is not None else conversation_id
    row = (
        await connection.exec_driver_sql(
            statement, (key, role, content, idempotency_key, author_id, agent_events)
        )
    ).one_or_none()
    if row is None:
        raise NotFound("Session not found" if session_id is not None else "Conversation not found")
    if row.id is not None:
        report(redactions, table="messages")
        return row, True
    if idempotency_key is not None:
        original = (
            await connection.exec_driver_sql(
                _BY_IDEMPOTENCY_KEY,
                (row.found_conversation_id, idempotency_key),
            )
        ).one_or_none()
        if original is not None:
            if (original.role, original.content, original.author_id) != (role, content, author_id):
                raise Unprocessable("Idempotency-Key was already used for a different message")
            return original, False
    raise Conflict("The conversation is archived and accepts no new messages")


_PAGE_BASE = """
SELECT conversation.id AS found_conversation_id, page.*
FROM conversations AS conversation
LEFT JOIN LATERAL (
    SELECT {columns} FROM messages
    WHERE conversation_id = conversation.id {bound}
    ORDER BY seq {direction}
    LIMIT $2
) AS page ON true
WHERE conversation.{match}
"""


def _page_statement(match: str, mode: Literal["latest", "before", "after"]) -> str:
    bound = {"latest": "", "before": "AND seq < $3", "after": "AND seq > $3"}[mode]
    direction = "ASC" if mode == "after" else "DESC"
    return _PAGE_BASE.format(columns=MESSAGE_COLUMNS, bound=bound, direction=direction, match=match)


PAGE_STATEMENTS = {
    (match_name, mode): _page_statement(match, mode)
    for match_name, match in (("session", "session_id = $1"), ("id", "id = $1"))
    for mode in ("latest", "before", "after")
}


async def page(
    session: AsyncSession,
    *,
    limit: int,
    before: int | None = None,
    after: int | None = None,
    session_id: str | None = None,
    conversation_id: uuid.UUID | None = None,
) -> tuple[list[Record], bool]:
    """A page of history, oldest first, and whether more exist in the paging direction.

    No cursor: the latest `limit`; `before`: the latest `limit` with seq < before;
    `after`: the first `limit` with seq > after.
    """
    if before is not None and after is not None:
        raise ValueError("before and after are exclusive")
    mode: Literal["latest", "before", "after"] = (
        "before" if before is not None else "after" if after is not None else "latest"
    )
    statement = PAGE_STATEMENTS[("session" if session_id is not None else "id", mode)]
    key = session_id if session_id is not None else conversation_id
    cursor = before if before is not None else after
    connection = await session.connection()
    arguments = (key, limit + 1) if cursor is None else (key, limit + 1, cursor)
    rows = list((await connection.exec_driver_sql(statement, arguments)).all())
    if not rows:
        raise NotFound("Session not found" if session_id is not None else "Conversation not found")
    items = [row for row in rows if row.id is not None]
    has_more = len(items) > limit
    items = items[:limit]
    if mode != "after":
        items.reverse()
    return items, has_more


async def recent_transcript(
    session: AsyncSession,
    *,
    conversation_id: uuid.UUID,
    messages: int,
    max_bytes: int,
    redact_kinds: frozenset[str] = ALL_KINDS,
) -> tuple[str, dict[str, int]]:
    """The last `messages` messages as 'role: content' lines, oldest first, cut to
    `max_bytes` of UTF-8 by dropping the oldest text first; and its redaction counts.

    Redacted before it is cut: a cut through a card number stored before redaction
    began would leave a piece too short to be recognised.
    """
    rows = (
        await session.execute(
            select(Message.role, Message.content)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.seq.desc())
            .limit(messages)
        )
    ).all()
    transcript = "\n".join(f"{row.role}: {row.content}" for row in reversed(rows))
    transcript, redactions = redact(transcript, redact_kinds)
    encoded = transcript.encode()
    if len(encoded) <= max_bytes:
        return transcript, redactions
    # Keep the newest bytes; a character split at the cut is dropped whole.
    return encoded[-max_bytes:].decode("utf-8", errors="ignore"), redactions
