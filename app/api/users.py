"""Service routes over users (Bearer key)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from app.api.deps import StrictJSONRoute, error_responses, require_service_key
from app.db import SessionDep
from app.repositories import users
from app.schemas import Email, User

router = APIRouter(
    prefix="/users",
    tags=["service"],
    route_class=StrictJSONRoute,
    dependencies=[Depends(require_service_key)],
    responses=error_responses(401),
)


@router.get("", responses=error_responses(404), summary="Find a user by email")
async def find_user(db: SessionDep, email: Annotated[Email, Query()]) -> User:
    """The user with this email (matched case-insensitively)."""
    return User.model_validate(await users.get_by_email(db, email=email))


@router.get("/{user_id}", responses=error_responses(404), summary="Read a user")
async def read_user(db: SessionDep, user_id: uuid.UUID) -> User:
    """A user's contact details."""
    return User.model_validate(await users.get(db, user_id=user_id))


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
    summary="Erase a user",
)
async def erase_user(db: SessionDep, user_id: uuid.UUID) -> None:
    """Delete the user with their conversations, messages and escalations."""
    await users.delete_user(db, user_id=user_id)
