"""The console's live feed: the service event stream, read with the staff session.

The browser's EventSource sends the console cookie (same origin), never a service key.
Events are renamed to one word (`escalation`, `message`, `conversation`) so htmx
triggers can name them, and `conversation=<id>` keeps only one case's events.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request
from sse_starlette import ServerSentEvent

from app.api.events import After, LastEventId, StreamResponse, _hub, _open, _resume_point
from app.api.events import _service_body as service_body
from app.console.auth import StaffSession

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/events", response_class=StreamResponse)
async def console_events(
    request: Request,
    session: StaffSession,
    conversation: uuid.UUID | None = None,
    after: After = None,
    last_event_id: LastEventId = None,
) -> StreamResponse:
    """Escalation changes everywhere, and the messages of `conversation` when given."""
    resume = _resume_point(last_event_id, after)
    hub = _hub(request)
    stream = _open(hub, kind="service", types=None)
    body = service_body(request, stream, None, resume)
    return StreamResponse(_for_console(body, conversation), stream, hub)


async def _for_console(
    events: AsyncIterator[ServerSentEvent], conversation: uuid.UUID | None
) -> AsyncIterator[ServerSentEvent]:
    wanted = str(conversation) if conversation is not None else None
    async for event in events:
        if event.event is None or event.event == "reset":
            yield event
            continue
        kind = event.event.split(".", 1)[0]
        if kind != "escalation" and (
            wanted is None or orjson.loads(event.data or "{}").get("conversation_id") != wanted
        ):
            continue
        yield ServerSentEvent(data=event.data, event=kind, id=event.id, sep="\n")
