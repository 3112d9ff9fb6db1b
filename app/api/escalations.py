"""Service routes over the escalation queue (Bearer key)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.api.deps import StrictJSONRoute, error_responses, require_service_key
from app.api.sessions import Limit
from app.db import SessionDep
from app.repositories import escalations
from app.schemas import (
    ISSUE_TYPE_PATTERN,
    Escalation,
    EscalationPage,
    EscalationStatus,
    EscalationStatusUpdate,
)

router = APIRouter(
    prefix="/escalations",
    tags=["service"],
    route_class=StrictJSONRoute,
    dependencies=[Depends(require_service_key)],
    responses=error_responses(401),
)


@router.get("", summary="The escalation work queue")
async def list_escalations(
    db: SessionDep,
    status: EscalationStatus | None = None,
    issue_type: Annotated[str | None, Query(pattern=ISSUE_TYPE_PATTERN)] = None,
    limit: Limit = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> EscalationPage:
    """Oldest first; no `status` means every status."""
    rows, next_cursor = await escalations.list_queue(
        db, status=status, issue_type=issue_type, limit=limit, cursor=cursor
    )
    return EscalationPage(
        items=[Escalation.model_validate(row) for row in rows], next_cursor=next_cursor
    )


@router.get("/{escalation_id}", responses=error_responses(404), summary="Read an escalation")
async def read_escalation(db: SessionDep, escalation_id: uuid.UUID) -> Escalation:
    """An escalation with its contact info and conversation context."""
    return Escalation.model_validate(await escalations.get(db, escalation_id=escalation_id))


@router.patch(
    "/{escalation_id}",
    responses=error_responses(404, 409),
    summary="Move an escalation along",
)
async def update_escalation(
    db: SessionDep, escalation_id: uuid.UUID, body: EscalationStatusUpdate
) -> Escalation:
    """Forward along pending → notified → in_progress → resolved (skips allowed), or
    resolved → in_progress to reopen. The same status is a no-op; anything else is 409."""
    escalation = await escalations.transition(db, escalation_id=escalation_id, status=body.status)
    return Escalation.model_validate(escalation)
