"""One module of async functions per table; each takes the database handle first.

The hot reads and writes (a session, a page of history, a member message) take either
handle a caller has: a request's `AsyncSession` (the FastAPI routes, inside their
transaction) or a raw asyncpg connection (the hot-path layer, app.fastpath). Their SQL
is written once, with asyncpg's `$n` parameters, and `fetch` runs it on either.
"""

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

# A result row of any shape; columns are read by name.
Record = Row[*tuple[Any, ...]]


class Fields(Protocol):
    """A row read by column name: an asyncpg Record or a SQLAlchemy RowMapping."""

    def __getitem__(self, name: str, /) -> Any: ...


class Driver(Protocol):
    """A raw asyncpg connection (only the call the shared repository functions make)."""

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...


Db = AsyncSession | Driver


async def fetch(db: Db, statement: str, *arguments: Any) -> Sequence[Fields]:
    """Run one statement (asyncpg `$n` parameters) on the caller's connection."""
    if isinstance(db, AsyncSession):
        connection = await db.connection()
        result = await connection.exec_driver_sql(statement, arguments)
        return result.mappings().all()
    rows: Sequence[Fields] = await db.fetch(statement, *arguments)
    return rows
