"""create_app(): the FastAPI app, its lifespan, routers and error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

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
from app.db import (
    RetryTransactionConflicts,
    create_engine,
    create_read_sessionmaker,
    create_sessionmaker,
)
from app.errors import install_error_handlers
from app.events import EventHub
from app.fastpath import HotPaths, pooled_driver
from app.metrics import ApiCounters, ObserveRequests, RouteTemplates, forget_pool, observe_pool
from app.middleware import MAX_BODY_BYTES, BodyLimit
from app.notify import BackgroundNotifier
from app.repositories import Driver
from app.repositories.stats import DailyCache
from app.settings import Settings, load_settings

log = logging.getLogger("app")

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


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the engine is created in the lifespan, not here."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine, settings)
        app.state.read_sessionmaker = create_read_sessionmaker(engine, settings)
        # The hot-path layer's connections (tests hand it theirs; None: it stands aside).
        app.state.hot_connection = (
            (lambda: pooled_driver(engine)) if settings.hot_paths_active else None
        )
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
    def hot_connection() -> AbstractAsyncContextManager[Driver] | None:
        source = getattr(app.state, "hot_connection", None)
        return source() if source is not None else None

    app.add_middleware(HotPaths, connections=hot_connection, settings=settings)
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
