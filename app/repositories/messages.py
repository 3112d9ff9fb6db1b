"""Messages: append with seq and idempotency keys, and history pages by seq."""

from __future__ import annotations

import uuid
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, NotFound, TooManyRequests, Unprocessable
from app.models import Message
from app.redact import ALL_KINDS, redact, report
from app.repositories import Db, Fields, fetch

# A staff message carries its author's display name (never the email); the CASE skips
# the lookup for every other message.
MESSAGE_COLUMNS = (
    "id, conversation_id, seq, role, content, created_at, "
    "CASE WHEN messages.author_id IS NULL THEN NULL ELSE "
    "(SELECT display_name FROM staff WHERE staff.id = messages.author_id) END AS author_name"
)


# With $6 true (an agent webhook is configured) a new `user` message also writes its
# `message.created` outbox event, in the same statement and so the same transaction;
# both append statements end their CTEs with this one.
_AGENT_EVENT = """, agent_event AS (
    INSERT INTO notification_events (type, conversation_id, message_id)
    SELECT 'message.created', conversation_id, id FROM inserted
    WHERE role = 'user' AND $6::boolean
)"""
# The end both appends share: a key already stored inserts nothing (the caller then
# tells a replay from a refusal), and the row returned says whether the conversation
# was found, its status, and the message if one was stored.
_INSERT_TAIL = f"""
    ON CONFLICT (conversation_id, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING {MESSAGE_COLUMNS}
){_AGENT_EVENT}
SELECT conversation.id AS found_conversation_id, conversation.status AS conversation_status,
       inserted.*
FROM conversation LEFT JOIN inserted ON true
"""  # noqa: S608 (a constant column list)

# One round trip: lock the conversation (inserts into it queue here; the seq trigger
# relies on it), refuse archived ones, and insert unless the idempotency key was seen.
# A hot path: run with exec_driver_sql (asyncpg's $n parameters), past SQLAlchemy's
# compile and result layers.
_APPEND = """
WITH conversation AS (
    SELECT id, status FROM conversations WHERE id = $1 FOR NO KEY UPDATE
), inserted AS (
    INSERT INTO messages (conversation_id, role, content, idempotency_key, author_id)
    SELECT id, $2, $3, $4, $5 FROM conversation
    WHERE status <> 'archived'{tail}"""

# Member messages are rate-limited per conversation, in the database so the limit holds
# across workers and replicas: one counter row per conversation and window (a window
# opens with the first message after the last one ended and lasts RATE_WINDOW). The
# counter is taken in the same statement as the insert, as an upsert whose WHERE refuses
# once $5 messages are in the window; a refused count inserts nothing. An idempotent
# replay of a stored message (its key already present) is not counted: it stores
# nothing. (Two concurrent first sends of one key both count, the loser storing nothing:
# a client racing itself pays one extra slot.)
# The replay check is a scalar subquery on purpose: as NOT EXISTS the planner may turn it
# into a join that reads the key index by key alone (every keyed message stored), as it
# does when the statistics still say the index is empty.
RATE_WINDOW = "1 minute"
_APPEND_MEMBER = """
WITH conversation AS (
    SELECT id, status FROM conversations WHERE session_id = $1 FOR NO KEY UPDATE
), counted AS (
    INSERT INTO member_message_windows AS w (conversation_id, window_start, messages)
    SELECT id, now(), 1 FROM conversation
    WHERE status <> 'archived' AND (
        SELECT m.id FROM messages AS m
        WHERE m.conversation_id = conversation.id AND m.idempotency_key = $4
    ) IS NULL
    ON CONFLICT (conversation_id) DO UPDATE SET
        window_start = CASE WHEN w.window_start > now() - interval '{window}'
                            THEN w.window_start ELSE now() END,
        messages = CASE WHEN w.window_start > now() - interval '{window}'
                        THEN w.messages + 1 ELSE 1 END
    WHERE w.window_start <= now() - interval '{window}' OR w.messages < $5
    RETURNING conversation_id
), inserted AS (
    INSERT INTO messages (conversation_id, role, content, idempotency_key)
    SELECT conversation_id, $2, $3, $4 FROM counted{tail}"""
APPEND_BY_SESSION = _APPEND_MEMBER.format(window=RATE_WINDOW, tail=_INSERT_TAIL)
APPEND_BY_ID = _APPEND.format(tail=_INSERT_TAIL)
_RETRY_AFTER = """
SELECT ceil(extract(epoch FROM window_start + interval '{window}' - clock_timestamp()))
       AS retry_after
FROM member_message_windows WHERE conversation_id = $1
"""
_RATE_RETRY_AFTER = _RETRY_AFTER.format(window=RATE_WINDOW)
# Tools and tests that write through a session without the member limit.
UNLIMITED = 2**31 - 1
_BY_IDEMPOTENCY_KEY = (
    f"SELECT {MESSAGE_COLUMNS}, author_id FROM messages "  # noqa: S608 (constants only)
    "WHERE conversation_id = $1 AND idempotency_key = $2"
)


async def append(
    db: Db,
    *,
    role: str,
    content: str,
    idempotency_key: str | None = None,
    session_id: str | None = None,
    conversation_id: uuid.UUID | None = None,
    redact_kinds: frozenset[str] = ALL_KINDS,
    author_id: uuid.UUID | None = None,
    per_minute: int = UNLIMITED,
    agent_events: bool = False,
) -> tuple[Fields, bool]:
    """Append a message to a conversation (by session id or id); returns (message, created).

    Card numbers and SSNs (`redact_kinds`) are replaced first, so what is stored and what
    a repeated Idempotency-Key is compared with are both the redacted text. A repeat
    with the same role, content and author returns the original message and stores
    nothing; with anything else it is Unprocessable. `author_id` names the staff member
    of a `staff` message (written by id, never through a member's session). Through a
    session (a member) at most `per_minute` messages are stored per window; one more is
    TooManyRequests and stores nothing. `agent_events`: an agent webhook is configured,
    so a new `user` message records its `message.created` event with it.
    """
    if (session_id is None) == (conversation_id is None):
        raise ValueError("give exactly one of session_id, conversation_id")
    if session_id is not None and author_id is not None:
        raise ValueError("a member's message has no staff author")
    content, redactions = redact(content, redact_kinds)
    if session_id is not None:
        rows = await fetch(
            db,
            APPEND_BY_SESSION,
            session_id,
            role,
            content,
            idempotency_key,
            per_minute,
            agent_events,
        )
    else:
        rows = await fetch(
            db,
            APPEND_BY_ID,
            conversation_id,
            role,
            content,
            idempotency_key,
            author_id,
            agent_events,
        )
    if not rows:
        raise NotFound("Session not found" if session_id is not None else "Conversation not found")
    row = rows[0]
    if row["id"] is not None:
        report(redactions, table="messages")
        return row, True
    if idempotency_key is not None:
        found = await fetch(db, _BY_IDEMPOTENCY_KEY, row["found_conversation_id"], idempotency_key)
        if found:
            original = found[0]
            if (original["role"], original["content"], original["author_id"]) != (
                role,
                content,
                author_id,
            ):
                raise Unprocessable("Idempotency-Key was already used for a different message")
            return original, False
    if row["conversation_status"] == "archived" or session_id is None:
        raise Conflict("The conversation is archived and accepts no new messages")
    # Neither stored, nor a replay, nor archived: the member's window is full.
    wait = await fetch(db, _RATE_RETRY_AFTER, row["found_conversation_id"])
    raise TooManyRequests(
        f"At most {per_minute} messages a minute; try again shortly",
        int((wait[0]["retry_after"] if wait else None) or 1),
    )


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
    db: Db,
    *,
    limit: int,
    before: int | None = None,
    after: int | None = None,
    session_id: str | None = None,
    conversation_id: uuid.UUID | None = None,
) -> tuple[list[Fields], bool]:
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
    arguments = (key, limit + 1) if cursor is None else (key, limit + 1, cursor)
    rows = await fetch(db, statement, *arguments)
    if not rows:
        raise NotFound("Session not found" if session_id is not None else "Conversation not found")
    items = [row for row in rows if row["id"] is not None]
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
