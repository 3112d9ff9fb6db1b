"""Staff console sessions and the failed-login record behind the login rate limit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ConsoleLoginFailure, ConsoleSession, Staff

SESSION_LIFETIME = timedelta(hours=8)
LOGIN_FAILURE_WINDOW = timedelta(minutes=15)


@dataclass(frozen=True)
class ActiveSession:
    """A working console session and the account behind it."""

    session_id: str
    csrf_token: str
    staff_id: uuid.UUID
    display_name: str
    email: str


async def start(
    session: AsyncSession, *, session_id: str, staff_id: uuid.UUID, csrf_token: str
) -> None:
    """Record a new login, valid for SESSION_LIFETIME from now."""
    await session.execute(
        insert(ConsoleSession).values(
            id=session_id,
            staff_id=staff_id,
            csrf_token=csrf_token,
            expires_at=func.now() + SESSION_LIFETIME,
        )
    )


async def find_active(session: AsyncSession, *, session_id: str) -> ActiveSession | None:
    """The session when it is not ended, not expired and its account is active."""
    row = (
        await session.execute(
            select(
                ConsoleSession.id,
                ConsoleSession.csrf_token,
                Staff.id.label("staff_id"),
                Staff.display_name,
                Staff.email,
            )
            .join(Staff, Staff.id == ConsoleSession.staff_id)
            .where(
                ConsoleSession.id == session_id,
                ConsoleSession.ended_at.is_(None),
                ConsoleSession.expires_at > func.now(),
                Staff.active,
            )
        )
    ).one_or_none()
    if row is None:
        return None
    return ActiveSession(
        session_id=row.id,
        csrf_token=row.csrf_token,
        staff_id=row.staff_id,
        display_name=row.display_name,
        email=row.email,
    )


async def end(session: AsyncSession, *, session_id: str) -> None:
    """Log out: the session stops working at once, on every worker."""
    await session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.id == session_id, ConsoleSession.ended_at.is_(None))
        .values(ended_at=func.now())
    )


async def hold_sign_ins(session: AsyncSession, *, email: str) -> None:
    """Take this email's sign-in lock until the transaction ends: concurrent attempts for
    one email are checked and counted one after the other, so the limit is exact."""
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(email, 0))))


async def recent_failures(session: AsyncSession, *, email: str) -> int:
    """Failed logins for this email within the last LOGIN_FAILURE_WINDOW."""
    count = await session.scalar(
        select(func.count())
        .select_from(ConsoleLoginFailure)
        .where(
            ConsoleLoginFailure.email == email,
            ConsoleLoginFailure.failed_at > func.now() - LOGIN_FAILURE_WINDOW,
        )
    )
    return count or 0


async def record_failure(session: AsyncSession, *, email: str) -> None:
    """Count a failed login; rows past the window are dropped on the way."""
    await session.execute(
        delete(ConsoleLoginFailure).where(
            ConsoleLoginFailure.email == email,
            ConsoleLoginFailure.failed_at <= func.now() - LOGIN_FAILURE_WINDOW,
        )
    )
    await session.execute(insert(ConsoleLoginFailure).values(email=email))


async def display_names(
    session: AsyncSession, *, staff_ids: set[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """Display names of these staff accounts (for assignees and audit actors)."""
    if not staff_ids:
        return {}
    rows = await session.execute(
        select(Staff.id, Staff.display_name).where(Staff.id.in_(staff_ids))
    )
    return {row.id: row.display_name for row in rows}
