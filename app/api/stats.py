"""GET /stats: the setup guide's key metrics (Bearer key)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError

from app.api.deps import error_responses, require_service_key
from app.db import SessionDep
from app.repositories import notifications, stats
from app.schemas import Stats

router = APIRouter(
    tags=["service"], dependencies=[Depends(require_service_key)], responses=error_responses(401)
)


@router.get("/stats", summary="Key metrics")
async def read_stats(request: Request, db: SessionDep, since: datetime | None = None) -> Stats:
    """Conversations, messages, escalations, escalation rate and response times over
    records created at or after `since` (all time when absent); API counts of this process."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    if since is not None:
        try:
            since = since.astimezone(UTC)
        except OverflowError:  # e.g. 9999-12-31T23:59:59-14:00: past what UTC can hold
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("query", "since"), "msg": "out of range"}]
            ) from None
    collected = await stats.collect(db, since=since)
    return Stats.model_validate(
        {
            "since": since,
            **collected.as_dict(),
            "api": request.app.state.api_counters.as_dict(),
            "notifications": await notifications.summary(db),
        }
    )
