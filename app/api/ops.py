"""Operational routes (no key): liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app import metrics
from app.errors import is_unavailable
from app.migrations import head_revision

router = APIRouter(tags=["ops"])

READINESS_CACHE_SECONDS = 1.5


@dataclass
class Readiness:
    ready: bool
    reason: str
    checked_at: float


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """200 while the process runs."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness",
    responses={503: {"description": "Database unreachable or schema not at head"}},
)
async def readyz(request: Request) -> JSONResponse:
    """200 when the database answers and its schema is at Alembic head; cached briefly,
    so a storm of probes costs one query."""
    state = request.app.state
    cached: Readiness | None = getattr(state, "readiness", None)
    if cached is None or time.monotonic() - cached.checked_at > READINESS_CACHE_SECONDS:
        lock: asyncio.Lock | None = getattr(state, "readiness_lock", None)
        if lock is None:
            lock = state.readiness_lock = asyncio.Lock()
        # Probes arriving while one check runs wait for its answer instead of each
        # opening a connection of their own.
        async with lock:
            cached = getattr(state, "readiness", None)
            if cached is None or time.monotonic() - cached.checked_at > READINESS_CACHE_SECONDS:
                cached = await _check(request)
                state.readiness = cached
    body = {"status": "ready" if cached.ready else "not ready", "reason": cached.reason}
    return JSONResponse(body, status_code=200 if cached.ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def read_metrics(request: Request) -> Response:
    """Requests and latency by route template, method and status; requests in flight;
    database pool size and connections checked out (all workers in multiprocess mode)."""
    engine = getattr(request.app.state, "engine", None)
    if engine is not None:
        metrics.update_pool_gauges(engine)
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


async def _check(request: Request) -> Readiness:
    head = head_revision()
    try:
        async with request.app.state.engine.connect() as connection:
            version = (
                await connection.execute(text("SELECT version_num FROM alembic_version"))
            ).scalar_one_or_none()
    except Exception as error:
        if is_unavailable(error):
            return Readiness(False, "database unreachable", time.monotonic())
        return Readiness(False, "schema not migrated (no alembic_version)", time.monotonic())
    if version != head:
        return Readiness(
            False, f"schema at {version or 'nothing'}, expected {head}", time.monotonic()
        )
    return Readiness(True, "database reachable, schema at head", time.monotonic())
