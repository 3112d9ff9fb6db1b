"""The event log: the sequencer that numbers it, the readers of both streams, retention.

Why positions are handed out late. A position taken when the row is written (a
bigserial) is not safe to resume from: transaction A takes 41, B takes 42, B commits, a
reader sees 42 and resumes "after 42" before A commits 41, which it then never reads.
Here a row is written with no position and with its transaction id (xid8). The
sequencer numbers only rows whose transaction id is below the oldest transaction still
running (`pg_snapshot_xmin(pg_current_snapshot())`): those transactions have all ended,
so no row can ever join that set again. It numbers them in (xid, id) order, continuing
from the last position it gave, under a transaction-level advisory lock, so runs are
serialised and each run's numbers are above every number committed before. A reader
that has seen position P has therefore seen every position below P, and
`position > last ORDER BY position` never skips a row. (Filtering on the xid alone
would not do: a transaction with a lower xid may take a higher bigserial.)

The cost: an event is numbered only once every older writing transaction anywhere on
the server has ended, so a long write transaction delays the service stream (never the
member stream, which follows `messages.seq`).

Where the work list starts. Numbering a row updates it, and the old version's entry in
the partial index of unnumbered rows stays until a vacuum removes it. A scan from the
index's start would step over every row numbered since the last vacuum (tens of
thousands of dead entries between autovacuum runs on a busy log, each a heap visit), so
every run would cost more as the log grew. So every scan starts after the (xid, id) of
the row holding the last position given (`_FLOOR`): runs number rows in that order, and
a row with a lower transaction id was visible to the run that numbered a higher one
(that transaction had ended), so every row before it in that order is numbered already,
and only the entries of rows still waiting are read.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.repositories import Record
from app.repositories.messages import MESSAGE_COLUMNS

# Any constant the service owns; a transaction-level lock, so pooler-safe.
SEQUENCER_LOCK_KEY = 0x4D53_4556  # "MSEV"
SEQUENCE_BATCH = 5000

# Rows still waiting for a position come after the last numbered row in (xid, id) order
# (see the module docstring); with no such row (none yet, or purged), after (0, 0).
_LAST_NUMBERED = (
    "FROM event_sequencer AS sequencer JOIN event_log AS numbered "
    "ON numbered.position = sequencer.last_position WHERE sequencer.id = 1"
)
_FLOOR = (
    f"(xid, id) > (coalesce((SELECT numbered.xid {_LAST_NUMBERED}), '0'::xid8), "
    f"coalesce((SELECT numbered.id {_LAST_NUMBERED}), 0))"
)
_SEQUENCE = text(
    f"""
    WITH pending AS (
        SELECT id, row_number() OVER (ORDER BY xid, id) AS n
        FROM event_log
        WHERE position IS NULL AND {_FLOOR}
          AND xid < pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY xid, id
        LIMIT :batch
    ), counter AS (
        UPDATE event_sequencer SET last_position = last_position + (SELECT count(*) FROM pending)
        WHERE id = 1 AND EXISTS (SELECT 1 FROM pending)
        RETURNING last_position - (SELECT count(*) FROM pending) AS base
    )
    UPDATE event_log SET position = counter.base + pending.n
    FROM pending, counter
    WHERE event_log.id = pending.id
    """  # noqa: S608 - a constant floor subquery
)

_WAITING = text(
    f"SELECT EXISTS (SELECT 1 FROM event_log WHERE position IS NULL AND {_FLOOR})"  # noqa: S608 - constant
)


async def sequence(session: AsyncSession) -> bool:
    """Number every event log row that can no longer be overtaken; True when some rows
    still wait for an older transaction to end (run again shortly).

    Runs in the caller's transaction, which must commit right after: the lock is held
    until then, so the next run sees these numbers.
    """
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEQUENCER_LOCK_KEY})
    # A statement after the lock: its snapshot sees every earlier run's numbers.
    await session.execute(_SEQUENCE, {"batch": SEQUENCE_BATCH})
    return bool(await session.scalar(_WAITING))


async def last_position(session: AsyncSession) -> int:
    """The highest position handed out so far (0 before the first)."""
    value = await session.scalar(text("SELECT last_position FROM event_sequencer WHERE id = 1"))
    return int(value or 0)


async def oldest_position(session: AsyncSession) -> int | None:
    """The lowest position still retained, or None when the log holds none."""
    value = await session.scalar(text("SELECT min(position) FROM event_log"))
    return None if value is None else int(value)


_AFTER = """
SELECT id, position, type, conversation_id, subject_id, status, created_at
FROM event_log WHERE position > :after {types}
ORDER BY position LIMIT :limit
"""
_READ_AFTER = text(_AFTER.format(types=""))
_READ_AFTER_TYPES = text(_AFTER.format(types="AND type = ANY(:types)"))


async def read_after(
    session: AsyncSession, *, after: int, limit: int, types: Iterable[str] | None = None
) -> Sequence[Record]:
    """Numbered events with position > after, in position order."""
    if types is None:
        result = await session.execute(_READ_AFTER, {"after": after, "limit": limit})
    else:
        result = await session.execute(
            _READ_AFTER_TYPES, {"after": after, "limit": limit, "types": list(types)}
        )
    return result.all()


# MESSAGE_COLUMNS is a constant: one definition of what a Message row holds.
_UNSEQUENCED_COLUMNS = "id, position, type, conversation_id, subject_id, status, created_at"
_UNSEQUENCED = text(
    f"SELECT {_UNSEQUENCED_COLUMNS} "  # noqa: S608 - constant column list and floor
    f"FROM event_log WHERE position IS NULL AND {_FLOOR} "
    "AND conversation_id = ANY(:conversations) "
    "AND NOT (id = ANY(:seen)) ORDER BY id LIMIT :limit"
)
_UNSEQUENCED_ANY = text(
    f"SELECT {_UNSEQUENCED_COLUMNS} "  # noqa: S608 - constant column list and floor
    f"FROM event_log WHERE position IS NULL AND {_FLOOR} "
    "AND NOT (id = ANY(:seen)) ORDER BY id LIMIT :limit"
)


async def read_unsequenced(
    session: AsyncSession,
    *,
    conversation_ids: Sequence[uuid.UUID] | None,
    seen: Sequence[int],
    limit: int,
) -> Sequence[Record]:
    """Committed rows of these conversations still waiting for a position, except the
    `seen` ones (the member streams' early look). Filtered here, not by the caller, so
    that rows of other conversations waiting behind a long transaction never fill the
    batch."""
    if conversation_ids is None:  # every conversation's (the staff console's early look)
        result = await session.execute(_UNSEQUENCED_ANY, {"seen": list(seen), "limit": limit})
    else:
        result = await session.execute(
            _UNSEQUENCED,
            {"conversations": list(conversation_ids), "seen": list(seen), "limit": limit},
        )
    return result.all()


_MESSAGES_AFTER = text(
    f"SELECT {MESSAGE_COLUMNS} FROM messages "  # noqa: S608 - a constant column list
    "WHERE conversation_id = :conversation_id AND seq > :after ORDER BY seq LIMIT :limit"
)
_MESSAGES_BY_ID = text(
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ANY(:ids)"  # noqa: S608 - constant
)


async def messages_after(
    session: AsyncSession, *, conversation_id: uuid.UUID, after: int, limit: int
) -> Sequence[Record]:
    """A conversation's messages with seq > after, oldest first (the member stream)."""
    result = await session.execute(
        _MESSAGES_AFTER, {"conversation_id": conversation_id, "after": after, "limit": limit}
    )
    return result.all()


async def last_seq(session: AsyncSession, *, conversation_id: uuid.UUID) -> int:
    """The conversation's highest message seq (0 when it has none)."""
    value = await session.scalar(
        text("SELECT max(seq) FROM messages WHERE conversation_id = :conversation_id"),
        {"conversation_id": conversation_id},
    )
    return int(value or 0)


async def messages_by_id(
    session: AsyncSession, *, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Record]:
    """Messages by id (those still stored)."""
    if not ids:
        return {}
    result = await session.execute(_MESSAGES_BY_ID, {"ids": list(ids)})
    return {row.id: row for row in result}


async def escalations_by_id(
    session: AsyncSession, *, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Record]:
    """Escalation summaries and assignees by id (those still stored); never contact details."""
    if not ids:
        return {}
    result = await session.execute(
        text(
            "SELECT id, issue_type, status, created_at, updated_at, assignee_id FROM escalations "
            "WHERE id = ANY(:ids)"
        ),
        {"ids": list(ids)},
    )
    return {row.id: row for row in result}


async def purge(session: AsyncSession, *, older_than: datetime, batch: int) -> int:
    """Delete up to `batch` numbered rows created before `older_than`; returns the count."""
    result = await session.execute(
        text(
            "DELETE FROM event_log WHERE id IN ("
            " SELECT id FROM event_log WHERE created_at < :cutoff AND position IS NOT NULL"
            " ORDER BY created_at LIMIT :batch)"
        ),
        {"cutoff": older_than, "batch": batch},
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
