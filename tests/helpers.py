"""Small builders for test data (no fixture pyramids)."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.repositories import conversations, escalations, messages


def new_session_id() -> str:
    return f"test_{secrets.token_hex(12)}"


async def open_session(db: AsyncSession, **contact: str | None) -> Any:
    """A fresh session (conversation + anonymous user); returns the session row."""
    fields = {"name": None, "email": None, "phone": None, **contact}
    row, created = await conversations.open_session(db, session_id=new_session_id(), contact=fields)
    assert created
    return row


async def add_messages(
    db: AsyncSession, conversation_id: uuid.UUID, *contents: str, role: str = "user"
) -> list[Any]:
    rows = []
    for content in contents:
        row, _ = await messages.append(
            db, conversation_id=conversation_id, role=role, content=content
        )
        rows.append(row)
    return rows


async def escalate(
    db: AsyncSession, session_id: str, issue_type: str = "loan", **contact: Any
) -> Any:
    escalation, _ = await escalations.open_escalation(
        db,
        session_id=session_id,
        issue_type=issue_type,
        original_request="Please call me",
        contact_info=contact or None,
    )
    return escalation
