"""Service routes over the escalation queue (Bearer key)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from app.api.deps import ActorDep, Limit, StrictJSONRoute, error_responses, require_service_key
from app.db import SessionDep
from app.repositories import audit, escalations
from app.schemas import (
    ISSUE_TYPE_PATTERN,
    AuditEntry,
    AuditTrail,
    Escalation,
    EscalationPage,
    EscalationStatus,
    EscalationUpdate,
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
    assignee: Annotated[
        uuid.UUID | Literal["none"] | None,
        Query(description="A staff id, or `none` for the unassigned; absent means anyone's"),
    ] = None,
) -> EscalationPage:
    """Oldest first; no `status` means every status."""
    rows, next_cursor = await escalations.list_queue(
        db, status=status, issue_type=issue_type, limit=limit, cursor=cursor, assignee=assignee
    )
    return EscalationPage(
        items=[Escalation.model_validate(row) for row in rows], next_cursor=next_cursor
    )


@router.get("/{escalation_id}", responses=error_responses(404), summary="Read an escalation")
async def read_escalation(db: SessionDep, escalation_id: uuid.UUID) -> Escalation:
    """An escalation with its contact info and conversation context."""
    return Escalation.model_validate(await escalations.get(db, escalation_id=escalation_id))


@router.get(
    "/{escalation_id}/events",
    responses=error_responses(404),
    summary="An escalation's audit trail",
)
async def read_audit_trail(db: SessionDep, escalation_id: uuid.UUID) -> AuditTrail:
    """Every status change, assignment and staff message, oldest first, with its actor."""
    await escalations.get(db, escalation_id=escalation_id)
    rows = await audit.trail(db, escalation_id=escalation_id)
    return AuditTrail(items=[AuditEntry.model_validate(row) for row in rows])


@router.patch(
    "/{escalation_id}",
    responses=error_responses(404, 409),
    summary="Move an escalation along, or assign it",
)
async def update_escalation(
    db: SessionDep, escalation_id: uuid.UUID, body: EscalationUpdate, actor: ActorDep
) -> Escalation:
    """`status`: forward along pending → notified → in_progress → resolved (skips allowed),
    or resolved → in_progress to reopen; the same status is a no-op; anything else is 409
    naming the allowed moves. `assignee_id`: an active staff id, or null to unassign;
    unknown or disabled → 422.

    Concurrent changes are applied one after the other, each against the state the
    other left: a status move that is no longer allowed gets 409 (its message names the
    current status), one that still applies is applied; of two assignments the later
    wins. Every change writes an audit row (`GET /escalations/{id}/events`) in the same
    transaction."""
    fields = body.model_fields_set
    escalation = await escalations.change(
        db,
        escalation_id=escalation_id,
        actor=actor,
        status=body.status,
        assignee_id=body.assignee_id if "assignee_id" in fields else escalations.UNCHANGED,
    )
    return Escalation.model_validate(escalation)
