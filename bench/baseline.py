"""The floor: a bare ASGI app on an asyncpg pool serving the bench's three requests.

Same routes, same response bodies and the same SQL as the service's hot paths, but no
framework, no ORM, no validation beyond what the SQL needs and no transaction block
(each request is one statement, which PostgreSQL runs atomically on its own). Whatever
the service spends beyond this is its overhead. Run by the bench as
`uvicorn bench.baseline:app` with BASELINE_DSN set.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

import asyncpg
import orjson

MESSAGE_COLUMNS = "id, conversation_id, seq, role, content, created_at"

SESSION_SQL = """
SELECT session_id, id AS conversation_id, status, created_at, updated_at, user_id
FROM conversations WHERE session_id = $1
"""

PAGE_SQL = """
SELECT conversation.id AS found_conversation_id, page.*
FROM conversations AS conversation
LEFT JOIN LATERAL (
    SELECT {columns} FROM messages
    WHERE conversation_id = conversation.id {bound}
    ORDER BY seq DESC
    LIMIT $2
) AS page ON true
WHERE conversation.session_id = $1
"""
LATEST_SQL = PAGE_SQL.format(columns=MESSAGE_COLUMNS, bound="")
BEFORE_SQL = PAGE_SQL.format(columns=MESSAGE_COLUMNS, bound="AND seq < $3")

APPEND_SQL = f"""
WITH conversation AS (
    SELECT id, status FROM conversations WHERE session_id = $1 FOR NO KEY UPDATE
), inserted AS (
    INSERT INTO messages (conversation_id, role, content, idempotency_key)
    SELECT id, $2, $3, $4 FROM conversation
    WHERE status <> 'archived'
    ON CONFLICT (conversation_id, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING {MESSAGE_COLUMNS}
)
SELECT conversation.id AS found_conversation_id, conversation.status AS conversation_status,
       inserted.*
FROM conversation LEFT JOIN inserted ON true
"""  # noqa: S608 - a constant column list

PREFIX = "/api/v1/sessions/"
_pool: asyncpg.Pool | None = None


def _timestamp(value: datetime) -> str:
    return value.isoformat()


def _message(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "conversation_id": str(row["conversation_id"]),
        "seq": row["seq"],
        "role": row["role"],
        "content": row["content"],
        "created_at": _timestamp(row["created_at"]),
    }


async def _respond(send: Any, status: int, body: Any) -> None:
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _session(pool: asyncpg.Pool, session_id: str) -> tuple[int, Any]:
    row = await pool.fetchrow(SESSION_SQL, session_id)
    if row is None:
        return 404, {"detail": "Session not found"}
    return 200, {
        "session_id": row["session_id"],
        "conversation_id": str(row["conversation_id"]),
        "status": row["status"],
        "created_at": _timestamp(row["created_at"]),
        "updated_at": _timestamp(row["updated_at"]),
    }


async def _history(pool: asyncpg.Pool, session_id: str, query: bytes) -> tuple[int, Any]:
    parameters = parse_qs(query.decode())
    limit = int(parameters.get("limit", ["50"])[0])
    before = parameters.get("before")
    if before:
        rows = await pool.fetch(BEFORE_SQL, session_id, limit + 1, int(before[0]))
    else:
        rows = await pool.fetch(LATEST_SQL, session_id, limit + 1)
    if not rows:
        return 404, {"detail": "Session not found"}
    items = [row for row in rows if row["id"] is not None]
    has_more = len(items) > limit
    items = items[:limit]
    items.reverse()
    return 200, {"items": [_message(row) for row in items], "has_more": has_more}


async def _append(
    pool: asyncpg.Pool, session_id: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, Any]:
    content = orjson.loads(body)["content"]
    key = next((value.decode() for name, value in headers if name == b"idempotency-key"), None)
    row = await pool.fetchrow(APPEND_SQL, session_id, "user", content, key)
    if row is None:
        return 404, {"detail": "Session not found"}
    if row["id"] is None:
        return 409, {"detail": "not inserted"}
    return 201, _message(row)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI callable."""
    global _pool
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _pool = await asyncpg.create_pool(
                    os.environ["BASELINE_DSN"], min_size=10, max_size=20
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _pool is not None:
                    await _pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    pool = _pool
    assert pool is not None
    path: str = scope["path"]
    method: str = scope["method"]
    if path == "/readyz":
        await _respond(send, 200, {"status": "ok"})
        return
    if not path.startswith(PREFIX):
        await _respond(send, 404, {"detail": "Not Found"})
        return
    session_id, _, rest = path[len(PREFIX) :].partition("/")
    if rest == "" and method == "GET":
        status, body = await _session(pool, session_id)
    elif rest == "messages" and method == "GET":
        status, body = await _history(pool, session_id, scope["query_string"])
    elif rest == "messages" and method == "POST":
        status, body = await _append(pool, session_id, await _read_body(receive), scope["headers"])
    else:
        status, body = 404, {"detail": "Not Found"}
    await _respond(send, status, body)
