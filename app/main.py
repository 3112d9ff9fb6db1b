"""create_app(): the FastAPI app, its lifespan, routers and error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api import conversations, escalations, notifications, ops, sessions, stats, users
from app.db import create_engine, create_sessionmaker
from app.errors import install_error_handlers
from app.metrics import ApiCounters, CountRequests, ObserveRequests, forget_pool, observe_pool
from app.notify import BackgroundNotifier
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
        notifier = (
            BackgroundNotifier.start(app.state.sessionmaker, settings)
            if settings.notify_worker
            else None
        )
        try:
            yield
        finally:
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
        max_body_size=MAX_BODY_BYTES,
    )
    app.state.settings = settings
    app.state.api_keys = settings.api_key_values
    app.state.api_counters = ApiCounters()

    for router in (
        sessions.router,
        conversations.router,
        users.router,
        escalations.router,
        notifications.router,
        stats.router,
    ):
        app.include_router(router, prefix="/api/v1")
    app.include_router(ops.router)
    install_error_handlers(app)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH"],
            allow_headers=["Content-Type", "Idempotency-Key"],
            max_age=600,
        )
    app.add_middleware(CountRequests, counters=app.state.api_counters)
    app.add_middleware(ObserveRequests)
    return app
