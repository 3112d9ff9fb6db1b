"""The key metrics of the setup guide, counted in SQL over records created since a moment."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import CONVERSATION_STATUSES, ESCALATION_STATUSES

# Each query is windowed by an indexed created_at, so a `since` of a day costs a day's
# rows however large the tables grow. Two variants of each (with and without the
# window) rather than `:since IS NULL OR ...`, which a generic plan cannot index.
_CONVERSATIONS = """
    SELECT status, count(*) AS n FROM conversations
    WHERE {window}
    GROUP BY status
    """
_ESCALATIONS = """
    SELECT status, issue_type, count(*) AS n FROM escalations
    WHERE {window}
    GROUP BY status, issue_type
    """
# A conversation is escalated after it was opened, so its escalations fall inside any
# window its creation does: walk the window's escalations (few) rather than probing
# every conversation of the window against all escalations.
_ESCALATED_CONVERSATIONS = """
    SELECT count(DISTINCT e.conversation_id)
    FROM escalations AS e JOIN conversations AS c ON c.id = e.conversation_id
    WHERE {e_window} AND {c_window}
    """
# Messages by role and response times, from one read of the window's messages. A user
# message's response time runs until the next assistant message of its conversation:
# walking each conversation newest first, the earliest assistant message already passed
# is that reply (created_at follows seq). One sort and one pass, however many user
# messages wait for a reply (a per-message look-ahead is quadratic in an unanswered run),
# and only over conversations with a reply in the window.
_MESSAGES_AND_RESPONSE_TIMES = """
    WITH windowed AS MATERIALIZED (
        SELECT conversation_id, seq, role, created_at FROM messages WHERE {window}
    ), answered AS (
        SELECT DISTINCT conversation_id FROM windowed WHERE role = 'assistant'
    ), timeline AS (
        SELECT windowed.role,
               extract(epoch FROM
                   min(windowed.created_at) FILTER (WHERE windowed.role = 'assistant')
                       OVER (PARTITION BY windowed.conversation_id ORDER BY windowed.seq DESC
                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                   - windowed.created_at)::float8 AS seconds
        FROM windowed JOIN answered USING (conversation_id)
    )
    SELECT (SELECT count(*) FROM windowed WHERE role = 'user') AS user_messages,
           (SELECT count(*) FROM windowed WHERE role = 'assistant') AS assistant_messages,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds) AS p95
    FROM timeline
    WHERE role = 'user' AND seconds IS NOT NULL
    """


_QUERIES = {
    name: query
    for name, query in (
        ("conversations", _CONVERSATIONS),
        ("escalations", _ESCALATIONS),
        ("escalated_conversations", _ESCALATED_CONVERSATIONS),
        ("messages_and_response_times", _MESSAGES_AND_RESPONSE_TIMES),
    )
}


def _variant(windowed: bool) -> dict[str, Any]:
    def window(column: str) -> str:
        return f"{column} >= :since" if windowed else "true"

    return {
        name: text(
            query.format(
                window=window("created_at"),
                c_window=window("c.created_at"),
                e_window=window("e.created_at"),
            )
        )
        for name, query in _QUERIES.items()
    }


_WINDOWED = _variant(True)
_ALL_TIME = _variant(False)


_SORT_MEMORY = text("SET LOCAL work_mem = '32MB'")


@dataclass(frozen=True)
class DatabaseStats:
    conversations: dict[str, int]
    messages: dict[str, int]
    escalations_by_status: dict[str, int]
    escalations_by_issue_type: dict[str, int]
    escalated_conversations: int
    response_p50: float | None
    response_p95: float | None

    def as_dict(self) -> dict[str, Any]:
        """The database half of the /stats body."""
        conversations_total = sum(self.conversations.values())
        return {
            "conversations": {"total": conversations_total, **self.conversations},
            "messages": {"total": sum(self.messages.values()), **self.messages},
            "escalations": {
                "total": sum(self.escalations_by_status.values()),
                "by_status": self.escalations_by_status,
                "by_issue_type": self.escalations_by_issue_type,
            },
            "escalation_rate": (
                self.escalated_conversations / conversations_total if conversations_total else 0.0
            ),
            "response_time_seconds": {"p50": self.response_p50, "p95": self.response_p95},
        }


async def collect(session: AsyncSession, *, since: datetime | None) -> DatabaseStats:
    """Count conversations, messages and escalations created at or after `since`."""
    parameters = {"since": since}
    queries = _WINDOWED if since is not None else _ALL_TIME
    # A busy day's messages are held and sorted in memory with this; SET LOCAL
    # ends with the transaction (safe behind a transaction pooler).
    await session.execute(_SORT_MEMORY)
    conversations = dict.fromkeys(CONVERSATION_STATUSES, 0)
    for status, count in (await session.execute(queries["conversations"], parameters)).all():
        if status in conversations:
            conversations[status] = count
    by_status = dict.fromkeys(ESCALATION_STATUSES, 0)
    by_issue_type: dict[str, int] = {}
    for status, issue_type, count in (
        await session.execute(queries["escalations"], parameters)
    ).all():
        if status in by_status:
            by_status[status] += count
        by_issue_type[issue_type] = by_issue_type.get(issue_type, 0) + count
    escalated = int(await session.scalar(queries["escalated_conversations"], parameters) or 0)
    window = (await session.execute(queries["messages_and_response_times"], parameters)).one()
    return DatabaseStats(
        conversations=conversations,
        messages={"user": window.user_messages, "assistant": window.assistant_messages},
        escalations_by_status=by_status,
        escalations_by_issue_type=by_issue_type,
        escalated_conversations=escalated,
        response_p50=window.p50,
        response_p95=window.p95,
    )
