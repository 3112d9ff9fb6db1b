"""Helpers for the event-stream tests: the app under a real uvicorn in the test's loop,
and a small Server-Sent Events reader over httpx's streaming API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from conftest import SERVICE_KEY
from fastapi import FastAPI
from ops_support import free_port

from app.main import create_app
from app.settings import Settings

SERVICE_HEADERS = {"Authorization": f"Bearer {SERVICE_KEY}"}
API = "/api/v1"


async def create_session(http: httpx.AsyncClient) -> dict[str, Any]:
    """A new member session (201)."""
    response = await http.post(f"{API}/sessions")
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def say(http: httpx.AsyncClient, session_id: str, content: str) -> dict[str, Any]:
    """A member message (201); the Message."""
    response = await http.post(f"{API}/sessions/{session_id}/messages", json={"content": content})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def until(condition: Any, wait_s: float = 20) -> None:
    """Wait until `condition()` is true; fail after `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def own_events(reader: SseReader, conversation_id: str | set[str], count: int) -> list[Any]:
    """The next `count` service events of one conversation (earlier tests' events can be
    numbered late, after a stream opened, while another transaction on the server runs)."""
    wanted = {conversation_id} if isinstance(conversation_id, str) else conversation_id
    found = []
    while len(found) < count:
        event = await reader.next_event()
        if event.json().get("conversation_id") in wanted:
            found.append(event)
    return found


@dataclass
class LiveServer:
    app: FastAPI
    base_url: str
    server: uvicorn.Server


@contextlib.asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    """The app served by uvicorn on a free port, in this event loop (streams need real
    HTTP: httpx's ASGI transport returns only once the whole body is done)."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield LiveServer(app=app, base_url=f"http://127.0.0.1:{port}", server=server)
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[LiveServer, httpx.AsyncClient]]:
    """live_server with an HTTP client on it."""
    async with (
        live_server(settings) as live,
        httpx.AsyncClient(base_url=live.base_url, timeout=30) as http,
    ):
        yield live, http


@dataclass
class SseEvent:
    event: str | None = None
    id: str | None = None
    data: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)


class SseReader:
    """Parses an event stream, one event (or comment block) at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, wait_s: float = 20) -> SseEvent:
        """The next dispatched block: an event, a retry field or comments."""
        return await asyncio.wait_for(self._next(), wait_s)

    async def _next(self) -> SseEvent:
        current = SseEvent()
        seen = False
        data: list[str] = []
        async for line in self._lines:
            if line == "":
                if seen:
                    current.data = "\n".join(data)
                    return current
                continue
            seen = True
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                current.comments.append(value)
            elif name == "event":
                current.event = value
            elif name == "id":
                current.id = value
            elif name == "data":
                data.append(value)
            elif name == "retry":
                current.retry = int(value)
        raise EOFError("stream ended")

    async def next_event(self, wait_s: float = 20) -> SseEvent:
        """The next real event, skipping pings and the retry field."""
        while True:
            block = await self.next(wait_s)
            if block.event is not None or block.data:
                return block

    async def events(self, count: int, wait_s: float = 20) -> list[SseEvent]:
        """The next `count` real events."""
        return [await self.next_event(wait_s) for _ in range(count)]

    async def nothing_within(self, seconds: float) -> bool:
        """True when no real event arrives for `seconds`."""
        try:
            await self.next_event(seconds)
        except TimeoutError:
            return True
        return False


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SseReader]:
    """GET an event stream and check it starts as every stream must."""
    async with client.stream("GET", path, headers=headers or {}) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        reader = SseReader(response)
        first = await reader.next()
        assert first.retry == 3000
        yield reader
