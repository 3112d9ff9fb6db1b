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
_MESSAGES = """
    SELECT count(*) FILTER (WHERE role = 'user') AS user_messages,
           count(*) FILTER (WHERE role = 'assistant') AS assistant_messages
    FROM messages
    WHERE {window}
    """
# A user message's response time runs until the next assistant message of its
# conversation. Start from the window's replies (a partial index holds assistant rows
# only) and walk back along (conversation_id, seq) to the previous reply: the user
# messages in between are the ones each reply answers. Messages still waiting for a
# reply, on a busy day most of the window, are never read. The previous reply is the
# window's own when there is one (lag) and else one backward probe. A reply after a user
# message of the window is in the window too: created_at follows seq (up to the start
# times of concurrent transactions, a few milliseconds at the window's edge).
# OFFSET 0 keeps the lateral subquery a per-reply index probe: pulled up into a join,
# the planner may sort the whole window to merge it instead.
_RESPONSE_TIMES = """
    WITH replies AS MATERIALIZED (
        SELECT conversation_id, seq, created_at,
               lag(seq) OVER (PARTITION BY conversation_id ORDER BY seq) AS previous_seq
        FROM messages
        WHERE role = 'assistant' AND {window}
    ), answers AS (
        SELECT conversation_id, seq, created_at,
               coalesce(
                   previous_seq,
                   (SELECT earlier.seq FROM messages AS earlier
                    WHERE earlier.conversation_id = replies.conversation_id
                      AND earlier.seq < replies.seq AND earlier.role = 'assistant'
                    ORDER BY earlier.seq DESC LIMIT 1),
                   0
               ) AS answers_after_seq
        FROM replies
    )
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY waits.seconds) AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY waits.seconds) AS p95
    FROM answers CROSS JOIN LATERAL (
        SELECT extract(epoch FROM answers.created_at - asked.created_at)::float8 AS seconds
        FROM messages AS asked
        WHERE asked.conversation_id = answers.conversation_id
          AND asked.seq > answers.answers_after_seq AND asked.seq < answers.seq
          AND asked.role = 'user' AND {asked_window}
        OFFSET 0
    ) AS waits
    """


_QUERIES = {
    name: query
    for name, query in (
        ("conversations", _CONVERSATIONS),
        ("escalations", _ESCALATIONS),
        ("escalated_conversations", _ESCALATED_CONVERSATIONS),
        ("messages", _MESSAGES),
        ("response_times", _RESPONSE_TIMES),
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
                asked_window=window("asked.created_at"),
            )
        )
        for name, query in _QUERIES.items()
    }


_WINDOWED = _variant(True)
_ALL_TIME = _variant(False)


# For this transaction only (safe behind a transaction pooler): memory to sort the
# replies of a long window in, and no JIT, whose compile time (tens of milliseconds)
# a window's few thousand rows never win back; row estimates just after a burst of
# inserts are stale enough to cross its cost threshold.
_TUNING = text("SELECT set_config('work_mem', '32MB', true), set_config('jit', 'off', true)")


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
    await session.execute(_TUNING)
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
    messages = (await session.execute(queries["messages"], parameters)).one()
    response_times = (await session.execute(queries["response_times"], parameters)).one()
    return DatabaseStats(
        conversations=conversations,
        messages={"user": messages.user_messages, "assistant": messages.assistant_messages},
        escalations_by_status=by_status,
        escalations_by_issue_type=by_issue_type,
        escalated_conversations=escalated,
        response_p50=response_times.p50,
        response_p95=response_times.p95,
    )
