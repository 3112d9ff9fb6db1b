"""create_app(): the FastAPI app, its lifespan, routers and error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import console
from app.api import (
    conversations,
    escalations,
    events,
    notifications,
    ops,
    sessions,
    stats,
    users,
)
from app.db import RetryTransactionConflicts, create_engine, create_sessionmaker
from app.errors import install_error_handlers
from app.events import EventHub
from app.fastpath import HotPaths
from app.metrics import ApiCounters, ObserveRequests, RouteTemplates, forget_pool, observe_pool
from app.notify import BackgroundNotifier
from app.repositories.stats import DailyCache
from app.settings import Settings, load_settings

log = logging.getLogger("app")

MAX_BODY_BYTES = 64 * 1024

DESCRIPTION = """\
The persistence and REST layer of the credit union's member support chat.

* **member** routes: the chat frontend, authenticated by its `session_id` alone.
  They never return stored contact details.
* **service** routes: the agent backend and staff tools, with
  `Authorization: Bearer <key>` (a key from `API_KEYS`).
* **ops** routes: `/healthz`, `/readyz`, `/metrics`.

Errors are `{"detail": ...}`; 422 bad input, 401 bad key, 404 unknown,
409 state conflict, 413 body over 64 KB, 503 database unavailable.
"""


_BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyLimit:
    """Bodies over the limit get 413 with the usual JSON error body.

    A declared Content-Length over it is refused before anything is read; a body that
    grows past it while being read raises HTTPException(413), which FastAPI's handler
    (or this layer, for the hot-path layer below it) turns into JSON. FastAPI's own
    `max_body_size` is not used: it answers in plain text.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.detail = f"Request body larger than {max_body_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _BODILESS:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_body_bytes:
                    await self._refuse(scope, receive, send)
                    return
                break
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(status_code=413, detail=self.detail)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as error:
            if error.status_code != 413 or started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": self.detail}, status_code=413)
        await response(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the engine is created in the lifespan, not here."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine, settings)
        observe_pool(engine)
        if not settings.api_keys:
            log.warning(
                "no_api_keys: every service route answers 401; "
                "set API_KEYS=<key>[,<key>...] to enable them"
            )
        log.info(
            "started",
            extra={
                "database": settings.database.redacted(),
                "pooler_mode": "transaction" if settings.transaction_pooler else "direct",
                "connection_budget": settings.connection_budget,
            },
        )
        event_hub = EventHub(settings, app.state.sessionmaker)
        app.state.event_hub = event_hub
        await event_hub.start()
        notifier = (
            BackgroundNotifier.start(app.state.sessionmaker, settings)
            if settings.notify_worker
            else None
        )
        try:
            yield
        finally:
            await event_hub.stop()
            if notifier is not None:
                await notifier.stop()
            await engine.dispose()
            forget_pool()
            log.info("stopped")

    app = FastAPI(
        title="Member Support Service",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Metrics are Prometheus (app.metrics); FastAPI's OpenTelemetry hooks would only
        # look for providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.api_keys = settings.api_key_values
    app.state.api_counters = ApiCounters()
    app.state.daily_stats = DailyCache()  # /stats/daily: closed days kept 5 minutes
    # Full route templates (/api/v1/sessions/{session_id}), for metrics, request logs
    # and the outage log alike.
    app.state.route_templates = RouteTemplates()

    for router in (
        sessions.router,
        conversations.router,
        users.router,
        escalations.router,
        notifications.router,
        stats.router,
        events.router,
    ):
        app.include_router(router, prefix="/api/v1")
    app.include_router(ops.router)
    install_error_handlers(app)
    console.install(app, settings)

    # Innermost: a request repeated after a deadlock or serialization failure is one
    # request to everything outside (metrics, logs), and hot-path hand-overs get it too.
    app.add_middleware(RetryTransactionConflicts)
    # Next, so CORS headers, counters, metrics and request logs still apply.
    app.state.hot_paths = not settings.transaction_pooler
    app.add_middleware(
        HotPaths,
        engine=lambda: getattr(app.state, "engine", None) if app.state.hot_paths else None,
        message_max_chars=settings.message_max_chars,
        redact_kinds=settings.redact,
        member_messages_per_minute=settings.member_messages_per_minute,
        agent_events=settings.agent_webhook_enabled,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH"],
            allow_headers=["Content-Type", "Idempotency-Key"],
            max_age=600,
        )
    app.add_middleware(BodyLimit, max_body_bytes=MAX_BODY_BYTES)
    app.add_middleware(
        ObserveRequests, counters=app.state.api_counters, routes=app.state.route_templates
    )
    return app
