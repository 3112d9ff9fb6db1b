"""Staff accounts: add, list, disable, change a password."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, NotFound, Unprocessable
from app.models import Staff


async def add(
    session: AsyncSession, *, email: str, display_name: str, password_hash: str, role: str
) -> Staff:
    """A new account; Conflict when the email already has one (enabled or not)."""
    statement = (
        insert(Staff)
        .values(email=email, display_name=display_name, password_hash=password_hash, role=role)
        .on_conflict_do_nothing(index_elements=[Staff.email])
        .returning(Staff)
    )
    staff = await session.scalar(statement)
    if staff is None:
        raise Conflict("A staff account with that email already exists")
    return staff


async def get_by_email(session: AsyncSession, *, email: str) -> Staff:
    """The account with this (normalised) email; NotFound when there is none."""
    staff = await session.scalar(select(Staff).where(Staff.email == email))
    if staff is None:
        raise NotFound("No staff account with that email")
    return staff


async def list_all(session: AsyncSession) -> Sequence[Staff]:
    """Every account, active first, then by email."""
    result = await session.scalars(select(Staff).order_by(Staff.active.desc(), Staff.email))
    return result.all()


async def disable(session: AsyncSession, *, email: str) -> bool:
    """Disable an account; False when it was already disabled. NotFound when absent."""
    changed = await session.scalar(
        update(Staff)
        .where(Staff.email == email, Staff.active)
        .values(active=False)
        .returning(Staff.id)
    )
    if changed is None:
        await get_by_email(session, email=email)
        return False
    return True


async def set_password_hash(session: AsyncSession, *, email: str, password_hash: str) -> None:
    """Replace an account's password hash; NotFound when absent."""
    changed = await session.scalar(
        update(Staff)
        .where(Staff.email == email)
        .values(password_hash=password_hash)
        .returning(Staff.id)
    )
    if changed is None:
        raise NotFound("No staff account with that email")


async def require_active(session: AsyncSession, *, staff_id: uuid.UUID, field: str) -> Staff:
    """The active account with this id; Unprocessable (naming `field`) otherwise."""
    staff = await session.get(Staff, staff_id)
    if staff is None or not staff.active:
        raise Unprocessable(f"{field} must name an active staff account")
    return staff
