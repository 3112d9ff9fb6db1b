"""Redacting rows stored before redaction (or with REDACT narrower than now): keyset
batches by id, each in the caller's short transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.redact import merge, redact

# The stored text columns of each table that redaction covers.
TEXT_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("content",),
    "escalations": ("original_request", "conversation_context"),
}


@dataclass
class BatchResult:
    """One batch: rows read, rows (to be) rewritten, redactions by kind, and the cursor."""

    scanned: int = 0
    changed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    last_id: uuid.UUID | None = None


def _select(table: str, columns: tuple[str, ...], first: bool) -> str:
    after = "" if first else "WHERE id > :after"
    return f"SELECT id, {', '.join(columns)} FROM {table} {after} ORDER BY id LIMIT :limit"  # noqa: S608 (names from TEXT_COLUMNS)


def _update(table: str, columns: tuple[str, ...]) -> str:
    # Compare-and-set on the text read: a row edited meanwhile is left for the next run.
    # Only rows whose text changes are updated, so the updated_at trigger never fires
    # for a row without a match.
    assignments = ", ".join(f"{column} = :new_{column}" for column in columns)
    unchanged = " AND ".join(f"{column} IS NOT DISTINCT FROM :old_{column}" for column in columns)
    return f"UPDATE {table} SET {assignments} WHERE id = :id AND {unchanged}"  # noqa: S608


async def redact_batch(
    session: AsyncSession,
    *,
    table: str,
    after: uuid.UUID | None,
    batch_size: int,
    kinds: frozenset[str],
    dry_run: bool = False,
) -> BatchResult:
    """Redact the next `batch_size` rows of `table` with an id above `after`.

    Rows are read without a lock; only the rows that change are updated (locked until
    the caller's transaction ends). `last_id` is None when no row was left.
    """
    columns = TEXT_COLUMNS[table]
    parameters: dict[str, object] = {"limit": batch_size}
    if after is not None:
        parameters["after"] = after
    rows = (await session.execute(text(_select(table, columns, after is None)), parameters)).all()
    result = BatchResult(scanned=len(rows), last_id=rows[-1].id if rows else None)
    updates = []
    for row in rows:
        new_values: dict[str, object] = {"id": row.id}
        row_counts: list[dict[str, int]] = []
        for column in columns:
            old = getattr(row, column)
            new, counts = redact(old, kinds) if old is not None else (None, {})
            new_values[f"old_{column}"] = old
            new_values[f"new_{column}"] = new
            row_counts.append(counts)
        found = merge(*row_counts)
        if found:
            result.changed += 1
            result.counts = merge(result.counts, found)
            updates.append(new_values)
    if updates and not dry_run:
        await session.execute(text(_update(table, columns)), updates)
    return result
