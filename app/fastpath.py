"""The chat frontend's three hot requests, served below the framework (HOT_PATHS).

GET /api/v1/sessions/{id}, GET /api/v1/sessions/{id}/messages and
POST /api/v1/sessions/{id}/messages are most of a chat backend's traffic. This ASGI
layer answers them on a pooled asyncpg connection without FastAPI's per-request
machinery (dependency solving, response-model validation, a SQLAlchemy session and its
BEGIN/COMMIT round trips for a single statement). It holds no rule of its own: it
validates with the routes' own models (app.api.deps, app.schemas), then calls the very
functions the routes call to answer (app.api.answers: the repository functions and the
serializers), and maps errors with app.errors. What remains here is dispatch,
connection handling and the hand-over: a request these models refuse (FastAPI then
renders the 422/415 with its own error shape), an ambiguous header, a client that left
mid-body or a transaction conflict (FastAPI retries it) goes to FastAPI, counted by
reason on /metrics (`hot_path_handovers_total`).

It stands aside with HOT_PATHS=off, and behind a transaction pooler: there every
statement must run in an explicit transaction (a pooler may hand consecutive autocommit
statements to different server connections), which the FastAPI path does.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from urllib.parse import parse_qsl

from fastapi.exceptions import RequestValidationError
from prometheus_client import Counter
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import jsonbody
from app.api import answers
from app.api.deps import HistoryQuery, IdempotencyKeyValue, check_content_length
from app.errors import (
    DomainError,
    domain_error_response,
    is_transaction_conflict,
    is_unavailable,
    unexpected_error_response,
)
from app.repositories import Driver
from app.schemas import SESSION_ID_PATTERN, MessageCreate
from app.settings import Settings

PREFIX = "/api/v1/sessions/"
SESSION_ROUTE = "/api/v1/sessions/{session_id}"
MESSAGES_ROUTE = "/api/v1/sessions/{session_id}/messages"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)
_IDEMPOTENCY_KEY: TypeAdapter[str] = TypeAdapter(IdempotencyKeyValue)

HANDOVERS = Counter(
    "hot_path_handovers_total",
    "Hot member requests the hot-path layer handed to FastAPI, by reason.",
    ["reason"],
)
ERRORS = Counter(
    "hot_path_errors_total",
    "Unexpected errors inside the hot-path layer, by exception class.",
    ["error_type"],
)

# A source of raw connections for the layer: a context manager per request, or None
# while the layer stands aside.
ConnectionSource = Callable[[], AbstractAsyncContextManager[Driver] | None]
Work = Callable[[Driver], Awaitable[Response]]


class _HandOver(Exception):
    """FastAPI answers this request; `reason` labels the count."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@asynccontextmanager
async def pooled_driver(engine: AsyncEngine) -> AsyncIterator[Driver]:
    """A connection from the service's pool, as the raw asyncpg connection it wraps.

    Used in autocommit: each answer here is one statement, or a read after a statement
    that wrote nothing. A connection that saw anything but a clean end or a domain answer
    may be mid-statement, so it is invalidated rather than reused.

    `AsyncEngine.raw_connection()` is public; giving the connection back is not: the
    pool's `close()`/`invalidate()` are synchronous and may await the driver, which
    SQLAlchemy allows only inside its greenlet bridge, `greenlet_spawn` (not in its
    documented API). The documented route, `engine.connect()` then
    `get_raw_connection()`, works too but builds a Connection per request and switches
    greenlets three times: about 50 us more CPU per request, measured, which is a sixth of
    a GET session. So the bridge is used here, and only here.
    """
    pooled = await engine.raw_connection()
    driver = pooled.driver_connection
    if driver is None:  # pragma: no cover - only a closed connection has none
        raise RuntimeError("the pooled connection has no driver connection")
    try:
        yield driver
    except (_HandOver, DomainError):
        await greenlet_spawn(pooled.close)
        raise
    except BaseException as error:
        await greenlet_spawn(pooled.invalidate, error)
        raise
    await greenlet_spawn(pooled.close)


class HotPaths:
    """ASGI middleware: the hot member requests on a raw pooled connection."""

    def __init__(self, app: ASGIApp, *, connections: ConnectionSource, settings: Settings) -> None:
        self.app = app
        self.connections = connections
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        session_id, slash, tail = path[len(PREFIX) :].partition("/")
        method = scope["method"]
        if method == "GET" and not slash:
            template = SESSION_ROUTE
        elif tail == "messages" and method in ("GET", "POST"):
            template = MESSAGES_ROUTE
        else:
            await self.app(scope, receive, send)
            return
        connection = self.connections() if _SESSION_ID.fullmatch(session_id) else None
        if connection is None:
            await self.app(scope, receive, send)
            return
        scope["route_template"] = template
        replay = receive
        if method == "POST":
            # Read once, outside the try: BodyLimit (around this layer) answers an
            # oversized body itself. A hand-over gets the body again.
            body, more = await _read_body(receive)
            replay = _replaying(body, more, receive)
        try:
            if method == "POST":
                work = self._send_message(scope, session_id, body, more)
            elif slash:
                work = self._read_page(scope, session_id)
            else:
                work = self._read_session(session_id)
            async with connection as driver:
                response = await work(driver)
        except _HandOver as handover:
            HANDOVERS.labels(handover.reason).inc()
            await self.app(scope, replay, send)
            return
        except DomainError as error:
            response = domain_error_response(error)
        except Exception as error:
            if is_transaction_conflict(error):
                # The statement failed and wrote nothing: FastAPI's retry layer repeats it.
                HANDOVERS.labels("transaction_conflict").inc()
                await self.app(scope, replay, send)
                return
            if not is_unavailable(error):
                ERRORS.labels(type(error).__name__).inc()
            response = unexpected_error_response(Request(scope), error)
        await response(scope, receive, send)

    # Each request is checked first (a refusal takes no connection), then run.

    def _read_session(self, session_id: str) -> Work:
        async def run(driver: Driver) -> Response:
            return await answers.read_session(driver, session_id=session_id)

        return run

    def _read_page(self, scope: Scope, session_id: str) -> Work:
        # FastAPI reads a repeated parameter's last value; so does dict().
        arguments = dict(
            parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        )
        try:
            query = HistoryQuery.model_validate(arguments)
        except ValidationError:
            raise _HandOver("invalid_query") from None

        async def run(driver: Driver) -> Response:
            return await answers.read_history(driver, query, session_id=session_id)

        return run

    def _send_message(self, scope: Scope, session_id: str, body: bytes, more: bool) -> Work:
        if more:
            raise _HandOver("client_abort")
        content, idempotency_key = self._message_body(scope, body)

        async def run(driver: Driver) -> Response:
            return await answers.send_member_message(
                driver,
                self.settings,
                session_id=session_id,
                content=content,
                idempotency_key=idempotency_key,
            )

        return run

    def _message_body(self, scope: Scope, body: bytes) -> tuple[str, str | None]:
        """The route's own checks; any refusal is FastAPI's to render."""
        content_types: list[str] = []
        idempotency_keys: list[str] = []
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_types.append(value.decode("latin-1"))
            elif name == b"idempotency-key":
                idempotency_keys.append(value.decode("latin-1"))
        if len(idempotency_keys) > 1:  # which one FastAPI reads is its own business
            raise _HandOver("headers")
        if not jsonbody.is_json(content_types):
            raise _HandOver("content_type")
        try:
            parsed = MessageCreate.model_validate(jsonbody.loads(body))
            check_content_length(self.settings, parsed.content)
            key = (
                _IDEMPOTENCY_KEY.validate_python(idempotency_keys[0]) if idempotency_keys else None
            )
        except (ValueError, RequestValidationError):  # incl. pydantic's and jsonbody's
            raise _HandOver("invalid_body") from None
        return parsed.content, key


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole body (BodyLimit, around this layer, stops one past 64 KB); `more` when
    the client went away before the end."""
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
