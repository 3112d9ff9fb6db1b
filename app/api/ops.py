"""Operational routes (no key): liveness and readiness."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

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
    now = time.monotonic()
    if cached is None or now - cached.checked_at > READINESS_CACHE_SECONDS:
        cached = await _check(request)
        state.readiness = cached
    body = {"status": "ready" if cached.ready else "not ready", "reason": cached.reason}
    return JSONResponse(body, status_code=200 if cached.ready else 503)


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
