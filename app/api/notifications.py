"""Service routes over the notification outbox (Bearer key): see and re-queue deliveries."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.api.deps import Limit, error_responses, require_service_key
from app.db import SessionDep
from app.repositories import notifications
from app.schemas import Notification, NotificationPage, NotificationStatus

router = APIRouter(
    prefix="/notifications",
    tags=["service"],
    dependencies=[Depends(require_service_key)],
    responses=error_responses(401),
)


@router.get("", summary="Escalation webhook deliveries")
async def list_notifications(
    db: SessionDep,
    status: NotificationStatus | None = None,
    limit: Limit = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> NotificationPage:
    """Oldest first; `status=failed` lists the parked ones waiting for a retry."""
    rows, next_cursor = await notifications.list_events(
        db, status=status, limit=limit, cursor=cursor
    )
    return NotificationPage(
        items=[Notification.model_validate(row) for row in rows], next_cursor=next_cursor
    )


@router.post(
    "/{notification_id}/retry",
    responses=error_responses(404, 409),
    summary="Re-queue a failed delivery",
)
async def retry_notification(db: SessionDep, notification_id: uuid.UUID) -> Notification:
    """A failed event becomes pending, due now, with a fresh attempt budget. A pending one
    is returned unchanged; a delivered one is 409."""
    event = await notifications.requeue(db, event_id=notification_id)
    return Notification.model_validate(event)
