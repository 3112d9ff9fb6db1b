"""The bench's own database: created, migrated by Alembic, seeded in SQL, dropped.

Conversation number n (1..conversations) is `bench-session-<n>` and was opened
365 days x n / conversations ago, so any window of /stats holds a realistic slice.
Every 100th conversation is a "hot" one the load hits (10,000 of them at 1,000,000):
- hot #5000 holds the long conversation (100,000 messages over its last 182 days);
- hot #1..#50 hold exactly 100 messages (the shallow page the deep one is compared to);
- hot #51..#300 hold 50-200;
- the other hot ones hold `filler` messages each, which brings the total to ~1,000,000.
Messages are generated with their `seq` and the trigger that assigns it is off while
seeding (it would take the conversation row lock a million times); it is back on before
the service starts, so every message the bench posts goes through it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

HOT_STRIDE = 100
LONG_HOT_INDEX = 5000
LONG_MESSAGES = 100_000
SHALLOW_CONVERSATIONS = 50
MEDIUM_CONVERSATIONS = 250


@dataclass(frozen=True)
class Plan:
    conversations: int
    filler: int

    @property
    def hot(self) -> int:
        """How many conversations the load hits."""
        return self.conversations // HOT_STRIDE

    @property
    def long_conversation(self) -> int:
        """The conversation number that holds the 100,000 messages."""
        return min(LONG_HOT_INDEX, self.hot) * HOT_STRIDE


def session_id(number: int) -> str:
    """The session id of conversation number `number`."""
    return f"bench-session-{number:010d}"


def database_url(server_url: str, name: str) -> str:
    """The server URL pointing at another database."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(server_url: str) -> str:
    """A new empty database on the server; returns its name."""
    name = f"bench_{secrets.token_hex(4)}"
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return name


async def drop_database(server_url: str, name: str) -> None:
    """Drop the bench database, closing what still uses it."""
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


STEPS = [
    (
        "users",
        """
        INSERT INTO users (id, created_at, updated_at)
        SELECT md5('u' || n)::uuid, t, t
        FROM generate_series(1, $1::int) AS n,
             LATERAL (SELECT now() - interval '365 days' * n / $1::int AS t) AS at
        """,
    ),
    (
        "conversations",
        """
        INSERT INTO conversations (id, user_id, session_id, status, created_at, updated_at)
        SELECT md5('c' || n)::uuid, md5('u' || n)::uuid,
               'bench-session-' || lpad(n::text, 10, '0'),
               CASE WHEN n % $2::int = 0 THEN 'active'
                    ELSE (ARRAY['closed', 'closed', 'escalated', 'archived', 'active'])[n % 5 + 1]
               END,
               t, t + interval '20 minutes'
        FROM generate_series(1, $1::int) AS n,
             LATERAL (SELECT now() - interval '365 days' * n / $1::int AS t) AS at
        """,
    ),
    (
        "long conversation",
        """
        INSERT INTO messages (conversation_id, role, content, created_at, seq)
        SELECT md5('c' || $1::int)::uuid,
               CASE WHEN s % 2 = 1 THEN 'user' ELSE 'assistant' END,
               'message ' || s || ' of the long one: ' || repeat('lorem ipsum ', 6),
               now() - interval '182 days' * ($2::int - s + 1) / $2::int,
               s
        FROM generate_series(1, $2::int) AS s
        """,
    ),
    (
        "hot conversations",
        """
        INSERT INTO messages (conversation_id, role, content, created_at, seq)
        SELECT c.id, CASE WHEN s % 2 = 1 THEN 'user' ELSE 'assistant' END,
               'message ' || s || ': ' || repeat('lorem ipsum ', 6),
               c.created_at + interval '20 seconds' * s, s
        FROM generate_series(1, $1::int) AS k
        CROSS JOIN LATERAL (
            SELECT md5('c' || k * $2::int)::uuid AS id,
                   now() - interval '365 days' * k * $2::int / $3::int AS created_at,
                   CASE WHEN k <= $4::int THEN 100
                        WHEN k <= $4::int + $5::int THEN 50 + (k * 37) % 151
                        ELSE $6::int END AS length
        ) AS c
        CROSS JOIN LATERAL generate_series(1, c.length) AS s
        WHERE k * $2::int <> $7::int
        """,
    ),
    (
        "escalations",
        """
        INSERT INTO escalations (conversation_id, issue_type, original_request, status,
                                 created_at, updated_at, first_response_at, resolved_at)
        SELECT md5('c' || n)::uuid, (ARRAY['loan', 'card', 'fraud', 'account'])[n % 4 + 1],
               'Please call me about my account.',
               (ARRAY['pending', 'notified', 'in_progress', 'resolved'])[n % 4 + 1], t, t,
               CASE WHEN n % 4 >= 2 THEN t + interval '1 minute' * (n % 40) END,
               CASE WHEN n % 4 = 3 THEN t + interval '1 hour' * (n % 9 + 1) END
        FROM generate_series(3, $1::int, 5) AS n,
             LATERAL (SELECT now() - interval '365 days' * n / $1::int AS t) AS at
        WHERE n % 2 = 1
        """,
    ),
]


# The seeded rows are history from before the service ran: the triggers that record
# each write in the event log (for the event streams) are off while seeding, or the
# service would start with a million events to number and read (minutes of dispatcher
# work under the measured loads, with no stream able to see a new write meanwhile).
EVENT_TRIGGERS = (
    ("messages", "messages_record_event"),
    ("conversations", "conversations_record_event"),
    ("escalations", "escalations_record_created"),
    ("escalations", "escalations_record_updated"),
)


async def _event_triggers(connection: asyncpg.Connection, action: str) -> None:
    for table, trigger in EVENT_TRIGGERS:
        await connection.execute(f"ALTER TABLE {table} {action} TRIGGER {trigger}")


async def seed(url: str, plan: Plan, log: object = print) -> dict[str, float]:
    """Fill the migrated database; returns seconds per step."""
    timings: dict[str, float] = {}
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("SET synchronous_commit = off")
        await connection.execute("ALTER TABLE messages DISABLE TRIGGER messages_assign_seq")
        await _event_triggers(connection, "DISABLE")
        arguments: dict[str, tuple[object, ...]] = {
            "users": (plan.conversations,),
            "conversations": (plan.conversations, HOT_STRIDE),
            "long conversation": (plan.long_conversation, LONG_MESSAGES),
            "hot conversations": (
                plan.hot,
                HOT_STRIDE,
                plan.conversations,
                SHALLOW_CONVERSATIONS,
                MEDIUM_CONVERSATIONS,
                plan.filler,
                plan.long_conversation,
            ),
            "escalations": (plan.conversations,),
        }
        for name, statement in STEPS:
            started = time.perf_counter()
            await connection.execute(statement, *arguments[name])
            timings[name] = time.perf_counter() - started
            log(f"  seeded {name} in {timings[name]:.1f} s")  # type: ignore[operator]
        await connection.execute("ALTER TABLE messages ENABLE TRIGGER messages_assign_seq")
        await _event_triggers(connection, "ENABLE")
        started = time.perf_counter()
        await connection.execute("VACUUM (ANALYZE)")
        timings["vacuum analyze"] = time.perf_counter() - started
        log(f"  vacuum analyze in {timings['vacuum analyze']:.1f} s")  # type: ignore[operator]
    finally:
        await connection.close()
    return timings


async def counts(url: str) -> dict[str, int]:
    """Rows per table, to print what was measured against."""
    connection = await asyncpg.connect(url)
    try:
        return {
            table: int(await connection.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
            for table in ("users", "conversations", "messages", "escalations")
        }
    finally:
        await connection.close()
