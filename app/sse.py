"""The HTTP side of an event stream: one ASGI response that writes Server-Sent Events.

The events are framed by sse-starlette's `ServerSentEvent` (the one place framing
happens: `frame()` below). The response itself is ours rather than sse-starlette's
`EventSourceResponse`, for memory: that response runs each stream in a task group of
four tasks (body, ping, shutdown signal, disconnect) with an anyio lock and event,
about 24 KB of a 60 KB idle stream (bench/README.md, "Event streams"). Here an idle
stream is the request's own task waiting on its Stream plus one task that waits for
the client to go away; pings are the Stream's timeout, and shutdown is one watcher per
process (EventHub).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import ServerSentEvent
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.events import EventHub, Stream

log = logging.getLogger("app.events")

SEPARATOR = "\n"
PING_EVENT = ServerSentEvent(comment="ping", sep=SEPARATOR)


def frame(
    *,
    data: str | None = None,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> ServerSentEvent:
    """One event (or the `retry:` field) as the streams send it."""
    return ServerSentEvent(data=data, event=event, id=id, retry=retry, sep=SEPARATOR)


class StreamResponse(Response):
    """`text/event-stream` from an iterator of events; the hub can end it (EventHub._end):
    a cut stream (its client stopped reading, so a send may never return) is torn down
    at once, a stream ended at shutdown gets a moment to finish on its own first."""

    media_type = "text/event-stream"

    def __init__(
        self, content: AsyncIterator[ServerSentEvent], stream: Stream, hub: EventHub
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.body_iterator = content
        self.stream = stream
        self.hub = hub
        self._cancelling = False
        self._done = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        task = asyncio.current_task()
        assert task is not None
        self.stream.cancel = lambda: self._cancel(task)
        watcher = asyncio.create_task(self._watch_disconnect(receive, task))
        end = {"type": "http.response.body", "body": b"", "more_body": False}
        try:
            await send(start)
            async for event in self.body_iterator:
                body = event.encode()
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send(end)
        except Exception as error:
            # The database went away while the stream read from it (the connection to
            # the client is fine): end the stream cleanly; the client resumes from its
            # last id after `retry`.
            log.warning("event_stream_failed", extra={"error_type": type(error).__name__})
            with contextlib.suppress(Exception):
                await send(end)
        except asyncio.CancelledError:
            # Our own cancel (cut, shutdown grace over, client gone) ends the response;
            # any other (the server's) goes on.
            if not self._cancelling or task.uncancel() > 0:
                raise
        finally:
            self._done = True
            watcher.cancel()
            self.hub.close(self.stream)
            await _close(self.body_iterator)

    def _cancel(self, task: asyncio.Task[Any]) -> None:
        if not (self._cancelling or self._done):
            self._cancelling = True
            task.cancel()

    async def _watch_disconnect(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._cancel(task)
                return


async def _close(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
