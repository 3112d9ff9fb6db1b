"""Keyset paging: opaque cursors, and the oldest-first page the staff queues share."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import ColumnElement, and_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Unprocessable

Model = TypeVar("Model")


def encode_cursor(*parts: Any) -> str:
    """An opaque keyset cursor."""
    payload = orjson.dumps(
        [part.isoformat() if isinstance(part, datetime) else str(part) for part in parts]
    )
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (timestamp, id) inside a cursor; Unprocessable when it was not made by us."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        moment, identifier = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        at = datetime.fromisoformat(moment)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        # Raises OverflowError for moments UTC cannot hold (year 1 at +14:00, year 9999
        # at -14:00), which the driver would otherwise hit mid-query.
        at = at.astimezone(UTC)
        return at, uuid.UUID(identifier)
    except (
        ValueError,
        TypeError,
        OverflowError,
        binascii.Error,
        orjson.JSONDecodeError,
        UnicodeEncodeError,
    ):
        raise Unprocessable("Malformed cursor") from None


async def oldest_first(
    session: AsyncSession,
    model: type[Model],
    *,
    conditions: list[ColumnElement[bool]],
    limit: int,
    cursor: str | None,
) -> tuple[list[Model], str | None]:
    """One page of `model` rows by (created_at, id) ascending, and the next page's cursor."""
    created_at, identifier = model.created_at, model.id  # type: ignore[attr-defined]
    if cursor is not None:
        at, last_id = decode_cursor(cursor)
        conditions = [*conditions, tuple_(created_at, identifier) > tuple_(at, last_id)]
    rows = list(
        await session.scalars(
            select(model)
            .where(and_(True, *conditions))
            .order_by(created_at, identifier)
            .limit(limit + 1)
        )
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last: Any = rows[-1]
        next_cursor = encode_cursor(last.created_at, last.id)
    return rows, next_cursor
