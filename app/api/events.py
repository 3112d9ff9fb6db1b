"""The realtime event streams (Server-Sent Events): a member's session and the service log."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from sse_starlette import ServerSentEvent

from app.api.deps import SessionIdDep, error_responses, require_service_key
from app.event_schemas import MEMBER_EVENTS, SERVICE_EVENTS, ResetData, openapi_stream
from app.events import (
    EVENT_TYPES,
    EVENTS_SENT,
    EventHub,
    Ping,
    Stream,
    TooManyStreams,
    load_events,
)
from app.repositories import conversations
from app.repositories import events as event_log
from app.schemas import Message
from app.sse import PING_EVENT, StreamResponse, frame

router = APIRouter(tags=["events"])

RETRY_MS = 3000
CATCH_UP_BATCH = 200
OVERLOADED_RETRY_AFTER_S = 5
MAX_POSITION = 2**63 - 1

After = Annotated[
    int | None,
    Query(ge=0, le=MAX_POSITION, description="Resume after this id (as Last-Event-ID does)"),
]
LastEventId = Annotated[
    str | None,
    Header(alias="Last-Event-ID", description="Sent by EventSource on reconnect; wins over after"),
]


def _resume_point(last_event_id: str | None, after: int | None) -> int | None:
    if last_event_id is None or not last_event_id.strip():
        return after
    value = last_event_id.strip()
    if not value.isdigit() or int(value) > MAX_POSITION:
        raise RequestValidationError(
            [
                {
                    "type": "int_parsing",
                    "loc": ("header", "Last-Event-ID"),
                    "msg": "must be a non-negative integer",
                }
            ]
        )
    return int(value)


def _hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.event_hub
    return hub


def _open(hub: EventHub, **options: Any) -> Stream:
    try:
        return hub.open(**options)
    except TooManyStreams:
        raise HTTPException(
            status_code=503,
            detail="Too many open event streams, try again shortly",
            headers={"Retry-After": str(OVERLOADED_RETRY_AFTER_S)},
        ) from None


def _message_event(row: Any) -> ServerSentEvent:
    data = Message.model_validate(row).model_dump_json()
    return frame(data=data, event="message", id=str(row.seq))


EVENTS_DESCRIPTION = (
    "`text/event-stream` (Server-Sent Events). Starts with `retry: 3000`; a `: ping` "
    "comment every SSE_PING_S seconds while idle."
)


@router.get(
    "/sessions/{session_id}/events",
    response_class=StreamResponse,
    status_code=200,
    responses={
        200: openapi_stream(
            MEMBER_EVENTS,
            EVENTS_DESCRIPTION + " Events: `message` (id = seq, data = Message), `conversation` "
            "(data = {status}, no id), `escalation` (data = EscalationSummary, no id).",
        ),
        **error_responses(404),
    },
    summary="Stream a session's messages and status changes",
)
async def session_events(
    request: Request,
    session_id: SessionIdDep,
    after: After = None,
    last_event_id: LastEventId = None,
) -> StreamResponse:
    """Every message of the conversation in seq order, exactly once, and its status and
    escalation changes. Resume with `Last-Event-ID` or `?after=S` (messages with seq > S
    first); with neither, only what is written after the stream opens."""
    resume = _resume_point(last_event_id, after)
    hub = _hub(request)
    async with request.app.state.sessionmaker() as session, session.begin():
        conversation_id = await conversations.get_id_by_session(session, session_id=session_id)
    stream = _open(hub, kind="member", conversation_id=conversation_id)
    if resume is None:
        # The start is fixed before the client sees the stream open (and after it
        # registered, so nothing written from here on is missed): a message written once
        # the client has its 200 is always after it, however late the body first runs.
        try:
            async with request.app.state.sessionmaker() as session, session.begin():
                resume = await event_log.last_seq(session, conversation_id=conversation_id)
        except BaseException:
            hub.close(stream)
            raise
    return StreamResponse(_member_body(request, stream, conversation_id, resume), stream, hub)


async def _member_body(
    request: Request, stream: Stream, conversation_id: uuid.UUID, resume: int
) -> AsyncIterator[ServerSentEvent]:
    sessionmaker = request.app.state.sessionmaker
    ping_s = _hub(request).settings.sse_ping_s
    yield frame(retry=RETRY_MS)
    last = resume
    catch_up = True
    while True:
        if catch_up:
            catch_up = False
            # Messages are read by seq, which is commit order within a conversation:
            # reading seq > last can neither skip nor repeat one.
            while True:
                async with sessionmaker() as session, session.begin():
                    rows = await event_log.messages_after(
                        session, conversation_id=conversation_id, after=last, limit=CATCH_UP_BATCH
                    )
                for row in rows:
                    yield _message_event(row)
                    EVENTS_SENT.labels("member").inc()
                    last = row.seq
                if len(rows) < CATCH_UP_BATCH:
                    break
        event = await stream.next(ping_s)
        if event is None:
            return
        if isinstance(event, Ping):
            yield PING_EVENT
            continue
        if event.type == "message.created":
            if event.message is not None and event.message[0] == last + 1:
                # The next message, serialised once for every stream: no query needed.
                last, data = event.message
                yield frame(data=data, event="message", id=str(last))
                EVENTS_SENT.labels("member").inc()
            elif event.message is None or event.message[0] > last:
                catch_up = True  # out of order or erased: read seq > last from the table
        elif event.member_event is not None:
            name, data = event.member_event
            yield frame(data=data, event=name)
            EVENTS_SENT.labels("member").inc()


def _types(raw: str | None) -> frozenset[str] | None:
    if raw is None or not raw.strip():
        return None
    names = frozenset(name.strip() for name in raw.split(",") if name.strip())
    unknown = sorted(names - set(EVENT_TYPES))
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "types"),
                    "msg": f"unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}",
                }
            ]
        )
    return names


@router.get(
    "/events",
    response_class=StreamResponse,
    status_code=200,
    dependencies=[Depends(require_service_key)],
    responses={
        200: openapi_stream(
            SERVICE_EVENTS,
            EVENTS_DESCRIPTION + " Events: `message.created`, `conversation.updated`, "
            "`escalation.created`, `escalation.updated`, each with id = its position and "
            "data = {type, at, conversation_id, ...}; `reset` when the resume position is "
            "older than the retained log.",
        ),
        **error_responses(401),
    },
    summary="Stream every conversation's events (service)",
)
async def service_events(
    request: Request,
    types: Annotated[
        str | None, Query(description="Comma list of event types; default every type")
    ] = None,
    after: After = None,
    last_event_id: LastEventId = None,
) -> StreamResponse:
    """The service-wide event log, in position order. Resume with `Last-Event-ID` or
    `?after=P`: no event is skipped, also one whose transaction committed late."""
    wanted = _types(types)
    resume = _resume_point(last_event_id, after)
    hub = _hub(request)
    stream = _open(hub, kind="service", types=wanted)
    return StreamResponse(_service_body(request, stream, wanted, resume), stream, hub)


async def _service_body(
    request: Request, stream: Stream, types: frozenset[str] | None, resume: int | None
) -> AsyncIterator[ServerSentEvent]:
    sessionmaker = request.app.state.sessionmaker
    ping_s = _hub(request).settings.sse_ping_s
    yield frame(retry=RETRY_MS)
    last = stream.opened_at_position
    if resume is not None:
        last = resume
        async with sessionmaker() as session, session.begin():
            oldest = await event_log.oldest_position(session)
            newest = await event_log.last_position(session)
        # Rows between `resume` and the oldest retained one were purged: the client
        # must refetch its state, then follows from the newest position.
        if (oldest is None and resume < newest) or (oldest is not None and resume + 1 < oldest):
            last = newest
            yield frame(data=ResetData().model_dump_json(), event="reset", id=str(newest))
            EVENTS_SENT.labels("service").inc()
        while True:
            async with sessionmaker() as session, session.begin():
                rows = await event_log.read_after(
                    session, after=last, limit=CATCH_UP_BATCH, types=types
                )
                built = await load_events(session, rows)
            for event in built:
                if event.service_data is not None:
                    yield frame(data=event.service_data, event=event.type, id=str(event.position))
                    EVENTS_SENT.labels("service").inc()
            if rows:
                last = rows[-1].position
            if len(rows) < CATCH_UP_BATCH:
                break
    while True:
        live = await stream.next(ping_s)
        if live is None:
            return
        if isinstance(live, Ping):
            yield PING_EVENT
            continue
        if live.position is None or live.position <= last or live.service_data is None:
            continue  # already sent while catching up
        last = live.position
        yield frame(data=live.service_data, event=live.type, id=str(live.position))
        EVENTS_SENT.labels("service").inc()
