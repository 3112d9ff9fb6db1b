"""The chat frontend's three hot requests, served below the framework when well-formed.

GET /api/v1/sessions/{id}, GET /api/v1/sessions/{id}/messages and
POST /api/v1/sessions/{id}/messages are most of a chat backend's traffic. When such a
request is plainly valid, this ASGI layer answers it with one statement on a pooled
asyncpg connection and an orjson body: the same SQL as the repositories, the same
status codes and bodies as the FastAPI routes (tests compare the two byte for byte).
Anything else (a 404, a malformed query, an odd body, two Content-Type headers, an
idempotent replay, an archived conversation, a member over the message rate limit, a
pooled connection behind a transaction pooler) is handed to FastAPI,
which stays the one definition of the API, its validation and its OpenAPI document.

Behind a transaction pooler this layer stands aside: there every statement must run in
an explicit transaction (a pooler may hand consecutive autocommit statements to
different server connections, so nothing may span them), which the FastAPI path does.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import jsonbody
from app.errors import (
    UNAVAILABLE_DETAIL,
    UNAVAILABLE_RETRY_AFTER_S,
    is_transaction_conflict,
    is_unavailable,
    note_unavailable,
)
from app.redact import redact, report
from app.repositories.conversations import GET_SESSION_STATEMENT
from app.repositories.messages import APPEND_BY_SESSION, PAGE_STATEMENTS
from app.schemas import SESSION_ID_PATTERN

PREFIX = "/api/v1/sessions/"
SESSION_ROUTE = "/api/v1/sessions/{session_id}"
MESSAGES_ROUTE = "/api/v1/sessions/{session_id}/messages"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)
_DIGITS = re.compile(r"[0-9]{1,19}")
_MAX_SEQ = 2**63 - 1
_JSON_HEADERS = [(b"content-type", b"application/json")]
_UNAVAILABLE = orjson.dumps({"detail": UNAVAILABLE_DETAIL})
_RETRY_AFTER = [(b"retry-after", str(UNAVAILABLE_RETRY_AFTER_S).encode())]


def _dumps(value: Any) -> bytes:
    # asyncpg's UUID type is its own; orjson serialises only uuid.UUID natively.
    return orjson.dumps(value, default=str)


class _HandOver(Exception):
    """The request is not a plain hot one: FastAPI answers it."""


def _message(row: Any) -> dict[str, Any]:
    message = {
        "id": row["id"],
        "conversation_id": row["conversation_id"],
        "seq": row["seq"],
        "role": row["role"],
        "content": row["content"],
        "created_at": row["created_at"],
    }
    if row["author_name"] is not None:  # staff messages only, as schemas.Message
        message["author_name"] = row["author_name"]
    return message


def _page_arguments(query: bytes) -> tuple[str, int, int | None]:
    """(mode, limit, cursor) of a plain history query; _HandOver for anything else."""
    limit, before, after = 50, None, None
    seen: set[str] = set()
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name in seen or not _DIGITS.fullmatch(value):
            raise _HandOver
        seen.add(name)
        number = int(value)
        if name == "limit" and 1 <= number <= 200:
            limit = number
        elif name == "before" and number <= _MAX_SEQ:
            before = number
        elif name == "after" and number <= _MAX_SEQ:
            after = number
        else:
            raise _HandOver
    if before is not None and after is not None:
        raise _HandOver
    if before is not None:
        return "before", limit, before
    if after is not None:
        return "after", limit, after
    return "latest", limit, None


class HotPaths:
    """ASGI middleware: the hot member requests on a raw pooled connection."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        engine: Callable[[], AsyncEngine | None],
        message_max_chars: int,
        redact_kinds: frozenset[str],
        member_messages_per_minute: int,
        agent_events: bool = False,
    ) -> None:
        self.app = app
        self.engine = engine
        self.message_max_chars = message_max_chars
        self.redact_kinds = redact_kinds
        self.member_messages_per_minute = member_messages_per_minute
        # As messages.append: the same statement records the agent webhook's event.
        self.agent_events = agent_events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        session_id, slash, tail = path[len(PREFIX) :].partition("/")
        method = scope["method"]
        engine = self.engine()
        if engine is None or not _SESSION_ID.fullmatch(session_id):
            await self.app(scope, receive, send)
            return
        if method == "GET" and not slash:
            scope["route_template"] = SESSION_ROUTE
            await self._answer_or_hand_over(scope, receive, send, self._read_session, session_id)
        elif tail == "messages" and method == "GET":
            scope["route_template"] = MESSAGES_ROUTE
            await self._answer_or_hand_over(scope, receive, send, self._read_page, session_id)
        elif tail == "messages" and method == "POST":
            scope["route_template"] = MESSAGES_ROUTE
            await self._send_message(scope, receive, send, session_id)
        else:
            await self.app(scope, receive, send)

    async def _answer_or_hand_over(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        read: Callable[[Any, Scope, str], Awaitable[bytes]],
        session_id: str,
    ) -> None:
        """Reads are safe to repeat: on anything unusual, FastAPI does the whole request."""
        try:
            body = await self._with_connection(
                lambda connection: read(connection, scope, session_id)
            )
        except _HandOver:
            await self.app(scope, receive, send)
            return
        except Exception as error:
            if is_unavailable(error):
                note_unavailable(error, scope["route_template"])
                await _respond(send, 503, _UNAVAILABLE, _RETRY_AFTER)
                return
            # Anything else: the framework path repeats the read and maps the error.
            await self.app(scope, receive, send)
            return
        await _respond(send, 200, body)

    async def _read_session(self, connection: Any, scope: Scope, session_id: str) -> bytes:
        row = await connection.fetchrow(GET_SESSION_STATEMENT, session_id)
        if row is None:
            raise _HandOver
        return _dumps(
            {
                "session_id": row["session_id"],
                "conversation_id": row["conversation_id"],
                "status": row["status"],
                "created_at": row["created_at"],
                "updated_at": row["updated_at"],
            }
        )

    async def _read_page(self, connection: Any, scope: Scope, session_id: str) -> bytes:
        mode, limit, cursor = _page_arguments(scope.get("query_string", b""))
        statement = PAGE_STATEMENTS[("session", mode)]
        if cursor is None:
            rows = await connection.fetch(statement, session_id, limit + 1)
        else:
            rows = await connection.fetch(statement, session_id, limit + 1, cursor)
        if not rows:
            raise _HandOver
        items = [row for row in rows if row["id"] is not None]
        has_more = len(items) > limit
        items = items[:limit]
        if mode != "after":
            items.reverse()
        return _dumps({"items": [_message(row) for row in items], "has_more": has_more})

    async def _send_message(
        self, scope: Scope, receive: Receive, send: Send, session_id: str
    ) -> None:
        body, more = await _read_body(receive)
        replay = _replaying(body, more, receive)
        try:
            content, idempotency_key = self._plain_message(scope, body, more)
        except _HandOver:
            await self.app(scope, replay, send)
            return
        # As messages.append does: what is stored is the redacted text. A replay is
        # handed over below with the original body, and FastAPI redacts it the same way
        # before comparing.
        content, redactions = redact(content, self.redact_kinds)

        async def append(connection: Any) -> Any:
            return await connection.fetchrow(
                APPEND_BY_SESSION,
                session_id,
                "user",
                content,
                idempotency_key,
                self.member_messages_per_minute,
                self.agent_events,
            )

        try:
            row = await self._with_connection(append)
        except Exception as error:
            if is_transaction_conflict(error):
                # The one statement failed and wrote nothing: FastAPI retries and maps it.
                await self.app(scope, replay, send)
                return
            if not is_unavailable(error):
                raise
            # Unknown outcome, as on the framework path: the client retries with its key.
            note_unavailable(error, scope["route_template"])
            await _respond(send, 503, _UNAVAILABLE, _RETRY_AFTER)
            return
        if row is None or row["id"] is None:
            # Unknown session, archived conversation, a replay or the member's rate limit
            # reached: all decided by FastAPI, which runs the same statement again (the
            # replay reads the original; nothing was written or counted here).
            await self.app(scope, replay, send)
            return
        report(redactions, table="messages")
        await _respond(send, 201, _dumps(_message(row)))

    def _plain_message(self, scope: Scope, body: bytes, more: bool) -> tuple[str, str | None]:
        if more:
            raise _HandOver
        content_type: bytes | None = None
        idempotency_key: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                if content_type is not None:  # two: FastAPI refuses the ambiguity
                    raise _HandOver
                content_type = value
            elif name == b"idempotency-key":
                if idempotency_key is not None or not 1 <= len(value) <= 255:
                    raise _HandOver
                idempotency_key = value.decode("latin-1")
        if (content_type or b"").split(b";", 1)[0].strip().lower() != b"application/json":
            raise _HandOver
        try:
            parsed = jsonbody.loads(body)
        except (jsonbody.JSONInvalid, jsonbody.JSONTooDeep):
            raise _HandOver from None
        if not isinstance(parsed, dict) or len(parsed) != 1:
            raise _HandOver
        content = parsed.get("content")
        if (
            not isinstance(content, str)
            or not content.strip()
            or "\x00" in content
            or len(content) > self.message_max_chars
        ):
            raise _HandOver
        return content, idempotency_key

    async def _with_connection(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        engine = self.engine()
        if engine is None:
            raise _HandOver
        pooled = await engine.raw_connection()
        try:
            result = await work(pooled.driver_connection)
        except _HandOver:
            await greenlet_spawn(pooled.close)
            raise
        except BaseException as error:
            # The connection may be broken or mid-statement: never reuse it.
            await greenlet_spawn(pooled.invalidate, error)
            raise
        await greenlet_spawn(pooled.close)
        return result


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole body (app.main.BodyLimit, around this layer, stops one past 64 KB);
    `more` when the client went away before the end."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replaying(body: bytes, more: bool, receive: Receive) -> Receive:
    """A receive() that first hands back what was already read."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay


async def _respond(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(extra or ())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
