"""GET /stats: the setup guide's key metrics (Bearer key)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import error_responses, require_service_key
from app.db import SessionDep
from app.repositories import notifications, stats
from app.schemas import DailyStatsList, Stats
from app.settings import Settings

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
    return await current_stats(request, db, since=since)


async def current_stats(request: Request, db: AsyncSession, *, since: datetime | None) -> Stats:
    """The /stats figures since a moment (the route and the staff console show these)."""
    settings: Settings = request.app.state.settings
    collected = await stats.collect(
        db, since=since, sla_minutes=settings.sla_first_response_minutes
    )
    return Stats.model_validate(
        {
            "since": since,
            **collected.as_dict(),
            "api": request.app.state.api_counters.as_dict(),
            "notifications": await notifications.summary(db),
        }
    )


@router.get("/stats/daily", summary="Key metrics per UTC day")
async def read_daily_stats(
    request: Request,
    db: SessionDep,
    days: Annotated[int, Query(ge=1, le=90, description="How many days, ending today (UTC)")] = 30,
) -> DailyStatsList:
    """Conversations, messages by role, escalations, escalation rate and response times
    for each of the last `days` UTC days, oldest first; quiet days are rows of zeros.
    Today's row is live; the closed days are recomputed at most every 5 minutes."""
    return await daily_stats(request, db, days=days)


async def daily_stats(request: Request, db: AsyncSession, *, days: int) -> DailyStatsList:
    """The /stats/daily rows for the last `days` UTC days (the route and the console)."""
    cache: stats.DailyCache = request.app.state.daily_stats
    rows = await cache.daily(db, days=days, today=datetime.now(UTC).date())
    return DailyStatsList.model_validate({"items": rows})
