"""The escalation audit trail: one row per status change, assignment and staff message."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import EscalationAudit


async def record(
    session: AsyncSession,
    *,
    escalation_ids: Sequence[uuid.UUID],
    actor: str,
    action: str,
    from_value: str | None,
    to_value: str | None,
) -> None:
    """Write the rows in the caller's transaction: the change and its record commit together."""
    if not escalation_ids:
        return
    await session.execute(
        insert(EscalationAudit),
        [
            {
                "escalation_id": escalation_id,
                "actor": actor,
                "action": action,
                "from_value": from_value,
                "to_value": to_value,
            }
            for escalation_id in escalation_ids
        ],
    )


async def trail(session: AsyncSession, *, escalation_id: uuid.UUID) -> Sequence[EscalationAudit]:
    """An escalation's rows, oldest first."""
    result = await session.scalars(
        select(EscalationAudit)
        .where(EscalationAudit.escalation_id == escalation_id)
        .order_by(EscalationAudit.id)
    )
    return result.all()
