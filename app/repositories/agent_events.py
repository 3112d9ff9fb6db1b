"""What the agent webhook says about a member message: read when the event is sent.

The event row itself is written by messages.append, in the statement that stores the
message. The body is built at each attempt from the conversation as it is then, so
`handoff` and the open escalations are current when the agent reads them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.schemas import EscalationSummary, Message

# `handoff`: a staff member has written in the conversation since its latest escalation
# opened (any staff message counts when it never escalated). A resolved escalation does
# not end it; a new escalation does, until staff write again.
_MESSAGES = text(
    """
    SELECT message.id, message.conversation_id, message.seq, message.role, message.content,
           message.created_at, conversation.status AS conversation_status,
           EXISTS (
               SELECT 1 FROM messages AS staff_message
               WHERE staff_message.conversation_id = message.conversation_id
                 AND staff_message.role = 'staff'
                 AND staff_message.created_at >= COALESCE(
                     (SELECT max(created_at) FROM escalations
                      WHERE escalations.conversation_id = message.conversation_id),
                     '-infinity'::timestamptz
                 )
           ) AS handoff
    FROM messages AS message
    JOIN conversations AS conversation ON conversation.id = message.conversation_id
    WHERE message.id = ANY(CAST(:ids AS uuid[]))
    """
)
_OPEN_ESCALATIONS = text(
    """
    SELECT id, conversation_id, issue_type, status, created_at, updated_at FROM escalations
    WHERE conversation_id = ANY(CAST(:ids AS uuid[])) AND status <> 'resolved'
    ORDER BY created_at, id
    """
)


async def payload_data(
    session: AsyncSession, *, message_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Any]]:
    """The `data` of each message's webhook body, by message id (a deleted message has
    none). No contact details: the member's message, its conversation's state, and the
    open escalations' summaries."""
    if not message_ids:
        return {}
    rows = (await session.execute(_MESSAGES, {"ids": list(message_ids)})).all()
    conversation_ids = list({row.conversation_id for row in rows})
    open_by_conversation: dict[uuid.UUID, list[dict[str, Any]]] = {
        conversation_id: [] for conversation_id in conversation_ids
    }
    for escalation in await session.execute(_OPEN_ESCALATIONS, {"ids": conversation_ids}):
        summary = EscalationSummary.model_validate(escalation, from_attributes=True)
        open_by_conversation[escalation.conversation_id].append(summary.model_dump(mode="json"))
    return {
        row.id: {
            "conversation_id": str(row.conversation_id),
            "conversation_status": row.conversation_status,
            "handoff": row.handoff,
            "message": Message.model_validate(row, from_attributes=True).model_dump(mode="json"),
            "open_escalations": open_by_conversation[row.conversation_id],
        }
        for row in rows
    }
