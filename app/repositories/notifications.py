"""The notification outbox: events written with escalation changes (and, for the agent
webhook, with member messages: see messages.append), claimed under a lease.

An event row exists if and only if the change that wrote it committed, because it is
written in the same transaction. The delivery worker (app/notify.py) claims due events
in one short transaction, POSTs them outside any transaction, and records each outcome
in another; `attempts` doubles as the fencing token, so a worker whose lease ran out
cannot overwrite the outcome of the worker that took the event over.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, NotFound
from app.models import NOTIFICATION_STATUSES, NotificationEvent
from app.repositories import paging

CREATED = "escalation.created"
STATUS_CHANGED = "escalation.status_changed"
STAFF_TYPES = (CREATED, STATUS_CHANGED)
ERROR_MAX_CHARS = 500

# Due pending events of the given types, oldest due first; SKIP LOCKED lets workers share
# a backlog without waiting on one another. Taking an event pushes available_at to the
# lease's end, so a worker that dies mid-batch leaves events that fall due again when the
# lease runs out. A member message's event waits while an earlier message of the same
# conversation still has one pending (in flight, or due again after a failed attempt):
# the agent hears a conversation's messages in seq order; a parked one stops blocking.
_CLAIM = text(
    """
    WITH due AS (
        SELECT id FROM notification_events AS event
        WHERE status = 'pending' AND available_at <= now()
          AND type = ANY(CAST(:types AS text[]))
          AND (event.message_id IS NULL OR NOT EXISTS (
              SELECT 1 FROM notification_events AS earlier
              JOIN messages AS earlier_message ON earlier_message.id = earlier.message_id
              WHERE earlier.conversation_id = event.conversation_id
                AND earlier.status = 'pending'
                AND earlier_message.seq < (
                    SELECT seq FROM messages WHERE messages.id = event.message_id
                )
          ))
        ORDER BY available_at, id
        LIMIT :batch_size
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE notification_events AS event
        SET attempts = event.attempts + 1,
            available_at = now() + make_interval(secs => :lease_s)
        FROM due
        WHERE event.id = due.id
        RETURNING event.id, event.type, event.data, event.attempts, event.created_at,
                  event.escalation_id, event.conversation_id, event.message_id
    )
    SELECT claimed.id, claimed.type, claimed.data, claimed.attempts, claimed.created_at,
           claimed.escalation_id, claimed.message_id,
           COALESCE(claimed.conversation_id, escalation.conversation_id) AS conversation_id,
           escalation.issue_type, escalation.original_request, escalation.contact_info,
           escalation.status AS escalation_status,
           escalation.created_at AS escalation_created_at
    FROM claimed
    LEFT JOIN escalations AS escalation ON escalation.id = claimed.escalation_id
    ORDER BY claimed.created_at, claimed.id
    """
)


@dataclass(frozen=True)
class ClaimedEvent:
    """An event taken under a lease, with what its webhook payload needs."""

    id: uuid.UUID
    type: str
    data: dict[str, Any]
    attempt: int
    created_at: datetime
    escalation_id: uuid.UUID | None
    conversation_id: uuid.UUID | None
    issue_type: str | None
    original_request: str | None
    contact_info: dict[str, Any] | None
    escalation_status: str | None
    escalation_created_at: datetime | None
    message_id: uuid.UUID | None = None


async def record(
    session: AsyncSession, *, escalation_id: uuid.UUID, event_type: str, data: dict[str, Any]
) -> None:
    """Write an event in the caller's transaction: it commits or rolls back with the change."""
    await session.execute(
        insert(NotificationEvent).values(escalation_id=escalation_id, type=event_type, data=data)
    )


async def claim(
    session: AsyncSession,
    *,
    batch_size: int,
    lease_s: float,
    types: Sequence[str] = STAFF_TYPES,
) -> list[ClaimedEvent]:
    """Take up to `batch_size` due events of `types` for `lease_s` seconds, each counted
    as an attempt."""
    rows = await session.execute(
        _CLAIM, {"batch_size": batch_size, "lease_s": lease_s, "types": list(types)}
    )
    return [
        ClaimedEvent(
            id=row.id,
            type=row.type,
            data=row.data,
            attempt=row.attempts,
            created_at=row.created_at,
            escalation_id=row.escalation_id,
            conversation_id=row.conversation_id,
            issue_type=row.issue_type,
            original_request=row.original_request,
            contact_info=row.contact_info,
            escalation_status=row.escalation_status,
            escalation_created_at=row.escalation_created_at,
            message_id=row.message_id,
        )
        for row in rows
    ]


def _still_held(event_id: uuid.UUID, attempt: int) -> Any:
    return and_(
        NotificationEvent.id == event_id,
        NotificationEvent.status == "pending",
        NotificationEvent.attempts == attempt,
    )


async def mark_delivered(session: AsyncSession, *, event_id: uuid.UUID, attempt: int) -> bool:
    """Record a 2xx; False when the lease was lost (another worker owns the event now)."""
    moved = await session.scalar(
        update(NotificationEvent)
        .where(_still_held(event_id, attempt))
        .values(status="delivered", delivered_at=func.now(), last_error=None)
        .returning(NotificationEvent.id)
    )
    return moved is not None


async def mark_failed_attempt(
    session: AsyncSession,
    *,
    event_id: uuid.UUID,
    attempt: int,
    error: str,
    retry_in_s: float | None,
) -> bool:
    """Record a failed attempt: due again after `retry_in_s`, or parked as failed when None.

    False when the lease was lost.
    """
    values: dict[str, Any] = {"last_error": error[:ERROR_MAX_CHARS]}
    if retry_in_s is None:
        values["status"] = "failed"
    else:
        values["available_at"] = func.now() + func.make_interval(0, 0, 0, 0, 0, 0, retry_in_s)
    moved = await session.scalar(
        update(NotificationEvent)
        .where(_still_held(event_id, attempt))
        .values(**values)
        .returning(NotificationEvent.id)
    )
    return moved is not None


async def get(session: AsyncSession, *, event_id: uuid.UUID) -> NotificationEvent:
    """An event by id; NotFound when absent."""
    event = await session.get(NotificationEvent, event_id)
    if event is None:
        raise NotFound("Notification not found")
    return event


async def requeue(session: AsyncSession, *, event_id: uuid.UUID) -> NotificationEvent:
    """Put a failed event back in the queue, due now with a fresh attempt budget.

    A pending event is returned unchanged; a delivered one is a Conflict.
    """
    moved = await session.scalar(
        update(NotificationEvent)
        .where(NotificationEvent.id == event_id, NotificationEvent.status == "failed")
        .values(status="pending", attempts=0, available_at=func.now())
        .returning(NotificationEvent)
        .execution_options(populate_existing=True)
    )
    if moved is not None:
        return moved
    event = await get(session, event_id=event_id)
    if event.status == "delivered":
        raise Conflict("The notification was delivered; only failed ones can be retried")
    return event


async def list_events(
    session: AsyncSession, *, status: str | None, limit: int, cursor: str | None
) -> tuple[list[NotificationEvent], str | None]:
    """Events oldest first, optionally of one status, one keyset page at a time."""
    conditions: list[ColumnElement[bool]] = []
    if status is not None:
        conditions.append(NotificationEvent.status == status)
    return await paging.oldest_first(
        session, NotificationEvent, conditions=conditions, limit=limit, cursor=cursor
    )


async def oldest_pending_age_s(session: AsyncSession) -> float | None:
    """Seconds since the oldest undelivered, not parked event was written; None when none."""
    age = await session.scalar(
        select(func.extract("epoch", func.now() - func.min(NotificationEvent.created_at))).where(
            NotificationEvent.status == "pending"
        )
    )
    return None if age is None else max(float(age), 0.0)


async def summary(session: AsyncSession) -> dict[str, Any]:
    """The `notifications` block of /stats: the outbox as it is now (not windowed)."""
    counts = dict.fromkeys(NOTIFICATION_STATUSES, 0)
    rows = await session.execute(
        select(NotificationEvent.status, func.count()).group_by(NotificationEvent.status)
    )
    for status, count in rows.all():
        counts[status] = count
    return {**counts, "oldest_pending_age_seconds": await oldest_pending_age_s(session)}
