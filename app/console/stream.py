"""The console's live feed: the service event stream, read with the staff session.

The browser's EventSource sends the console cookie (same origin), never a service key.
Events are renamed to one word (`escalation`, `message`, `conversation`) so htmx
triggers can name them, and `conversation=<id>` keeps only one case's messages and
status changes (escalation changes always pass: the queue refetches on them).

An event here only tells the page to refetch what it shows, so the feed has no ids
and no resume: a reconnecting page refetches anyway. That lets it take committed events
before the sequencer numbers them (the hub's early delivery), so a case appears at once
even while an unrelated long transaction holds the gap-free order back.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from sse_starlette import ServerSentEvent

from app.api.events import RETRY_MS, _hub, _open
from app.console.auth import StaffSession
from app.events import EVENTS_SENT, Ping, Stream
from app.sse import PING_EVENT, StreamResponse, frame

router = APIRouter(prefix="/console", include_in_schema=False)

# Log ids remembered to drop the numbered copy of an event already sent early.
SEEN_MAX = 10_000


@router.get("/events", response_class=StreamResponse)
async def console_events(
    request: Request, session: StaffSession, conversation: uuid.UUID | None = None
) -> StreamResponse:
    """Escalation changes everywhere; messages and status of `conversation` when given."""
    hub = _hub(request)
    stream = _open(hub, kind="service", types=None, early=True)
    body = _console_body(stream, conversation, hub.settings.sse_ping_s)
    return StreamResponse(body, stream, hub)


async def _console_body(
    stream: Stream, conversation: uuid.UUID | None, ping_s: float
) -> AsyncIterator[ServerSentEvent]:
    yield frame(retry=RETRY_MS)
    seen: set[int] = set()
    while True:
        event = await stream.next(ping_s)
        if event is None:
            return
        if isinstance(event, Ping):
            yield PING_EVENT
            continue
        if event.log_id in seen:
            if event.position is not None:
                seen.discard(event.log_id)
            continue
        if event.position is None:
            if len(seen) >= SEEN_MAX:
                seen.clear()
            seen.add(event.log_id)
        kind = event.type.split(".", 1)[0]
        if event.service_data is None or (
            kind != "escalation" and event.conversation_id != conversation
        ):
            continue
        yield frame(data=event.service_data, event=kind)
        EVENTS_SENT.labels("service").inc()
