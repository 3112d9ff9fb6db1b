"""The key metrics of the setup guide, counted in SQL over records created since a moment."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from time import monotonic
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
           count(*) FILTER (WHERE role = 'assistant') AS assistant_messages,
           count(*) FILTER (WHERE role = 'staff') AS staff_messages
    FROM messages
    WHERE {window}
    """
# The window's escalations (an indexed created_at range): how long the first staff
# answer and the resolution took, and how many broke the first-response SLA (still
# unanswered past it, or answered later than it).
_ESCALATION_TIMES = """
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY first_wait)
               FILTER (WHERE first_wait IS NOT NULL) AS first_p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY first_wait)
               FILTER (WHERE first_wait IS NOT NULL) AS first_p95,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY resolution)
               FILTER (WHERE resolution IS NOT NULL) AS resolution_p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY resolution)
               FILTER (WHERE resolution IS NOT NULL) AS resolution_p95,
           count(*) FILTER (
               WHERE first_wait > :sla_seconds
                  OR (first_wait IS NULL AND status <> 'resolved'
                      AND extract(epoch FROM now() - created_at) > :sla_seconds)
           ) AS breached
    FROM (
        SELECT status, created_at,
               extract(epoch FROM first_response_at - created_at)::float8 AS first_wait,
               extract(epoch FROM resolved_at - created_at)::float8 AS resolution
        FROM escalations
        WHERE {window}
    ) AS times
    """
# Not windowed: the queue as it stands. Open escalations are few (the staff's queue).
_OLDEST_OPEN = """
    SELECT extract(epoch FROM now() - min(created_at))::float8 FROM escalations
    WHERE status IN ('pending', 'notified', 'in_progress') AND {always}
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
    SELECT {day} percentile_cont(0.5) WITHIN GROUP (ORDER BY waits.seconds) AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY waits.seconds) AS p95
    FROM answers CROSS JOIN LATERAL (
        SELECT extract(epoch FROM answers.created_at - asked.created_at)::float8 AS seconds,
               asked.created_at AS asked_at
        FROM messages AS asked
        WHERE asked.conversation_id = answers.conversation_id
          AND asked.seq > answers.answers_after_seq AND asked.seq < answers.seq
          AND asked.role = 'user' AND {asked_window}
        OFFSET 0
    ) AS waits
    {group_by}
    """


_QUERIES = {
    name: query
    for name, query in (
        ("conversations", _CONVERSATIONS),
        ("escalations", _ESCALATIONS),
        ("escalated_conversations", _ESCALATED_CONVERSATIONS),
        ("messages", _MESSAGES),
        ("response_times", _RESPONSE_TIMES),
        ("escalation_times", _ESCALATION_TIMES),
        ("oldest_open", _OLDEST_OPEN),
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
                always="true",
                day="",
                group_by="",
            )
        )
        for name, query in _QUERIES.items()
    }


_WINDOWED = _variant(True)
_ALL_TIME = _variant(False)


# /stats/daily: the figures per UTC day of what was created in [:since, :until), day
# boundaries both, one query per figure, each an indexed created_at range grouped by day.
# What happens later still counts for the day it belongs to: a conversation escalated
# the next day makes its own day's escalation rate, an answer after midnight its
# question's day's response time (the escalation and reply sides have no upper bound).
_DAILY = {
    "conversations": text(
        """
        SELECT date_trunc('day', created_at AT TIME ZONE 'UTC') AS day, count(*) AS n
        FROM conversations WHERE created_at >= :since AND created_at < :until GROUP BY 1
        """
    ),
    # From the escalations (few) to their conversations, as /stats does.
    "escalated": text(
        """
        SELECT date_trunc('day', c.created_at AT TIME ZONE 'UTC') AS day,
               count(DISTINCT e.conversation_id) AS n
        FROM escalations AS e JOIN conversations AS c ON c.id = e.conversation_id
        WHERE e.created_at >= :since AND c.created_at >= :since AND c.created_at < :until
        GROUP BY 1
        """
    ),
    "messages": text(
        """
        SELECT date_trunc('day', created_at AT TIME ZONE 'UTC') AS day,
               count(*) FILTER (WHERE role = 'user') AS user_messages,
               count(*) FILTER (WHERE role = 'assistant') AS assistant_messages,
               count(*) FILTER (WHERE role = 'staff') AS staff_messages
        FROM messages WHERE created_at >= :since AND created_at < :until GROUP BY 1
        """
    ),
    "escalations": text(
        """
        SELECT date_trunc('day', created_at AT TIME ZONE 'UTC') AS day, count(*) AS n
        FROM escalations WHERE created_at >= :since AND created_at < :until GROUP BY 1
        """
    ),
    "response_times": text(
        _RESPONSE_TIMES.format(
            window="created_at >= :since",
            asked_window="asked.created_at >= :since AND asked.created_at < :until",
            day="date_trunc('day', waits.asked_at AT TIME ZONE 'UTC') AS day,",
            group_by="GROUP BY 1",
        )
    ),
}


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
    first_response_p50: float | None
    first_response_p95: float | None
    resolution_p50: float | None
    resolution_p95: float | None
    oldest_open_seconds: float | None
    sla_minutes: int
    sla_breached: int

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
                "first_response_seconds": {
                    "p50": self.first_response_p50,
                    "p95": self.first_response_p95,
                },
                "resolution_seconds": {"p50": self.resolution_p50, "p95": self.resolution_p95},
                "oldest_open_seconds": self.oldest_open_seconds,
            },
            "sla": {"first_response_minutes": self.sla_minutes, "breached": self.sla_breached},
            "escalation_rate": (
                self.escalated_conversations / conversations_total if conversations_total else 0.0
            ),
            "response_time_seconds": {"p50": self.response_p50, "p95": self.response_p95},
        }


async def collect(
    session: AsyncSession, *, since: datetime | None, sla_minutes: int
) -> DatabaseStats:
    """Count conversations, messages and escalations created at or after `since`."""
    parameters: dict[str, Any] = {"since": since}
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
    times = (
        await session.execute(
            queries["escalation_times"], {**parameters, "sla_seconds": sla_minutes * 60}
        )
    ).one()
    oldest_open = await session.scalar(queries["oldest_open"])
    return DatabaseStats(
        conversations=conversations,
        messages={
            "user": messages.user_messages,
            "assistant": messages.assistant_messages,
            "staff": messages.staff_messages,
        },
        escalations_by_status=by_status,
        escalations_by_issue_type=by_issue_type,
        escalated_conversations=escalated,
        response_p50=response_times.p50,
        response_p95=response_times.p95,
        first_response_p50=times.first_p50,
        first_response_p95=times.first_p95,
        resolution_p50=times.resolution_p50,
        resolution_p95=times.resolution_p95,
        oldest_open_seconds=oldest_open,
        sla_minutes=sla_minutes,
        sla_breached=times.breached,
    )


def _empty_day(day: date) -> dict[str, Any]:
    return {
        "date": day,
        "conversations": 0,
        "messages": {"user": 0, "assistant": 0, "staff": 0},
        "escalations": 0,
        "escalation_rate": 0.0,
        "response_time_seconds": {"p50": None, "p95": None},
    }


async def days_between(session: AsyncSession, *, first: date, last: date) -> list[dict[str, Any]]:
    """One row per UTC day from `first` to `last` inclusive, oldest first; days without
    activity are rows of zeros (and null response times)."""
    rows = {
        first + timedelta(days=offset): _empty_day(first + timedelta(days=offset))
        for offset in range((last - first).days + 1)
    }
    parameters = {
        "since": datetime.combine(first, time(), tzinfo=UTC),
        "until": datetime.combine(last + timedelta(days=1), time(), tzinfo=UTC),
    }
    await session.execute(_TUNING)
    results = {name: await session.execute(query, parameters) for name, query in _DAILY.items()}
    for record in results["conversations"]:
        rows[record.day.date()]["conversations"] = record.n
    for record in results["escalated"]:
        row = rows[record.day.date()]
        row["escalation_rate"] = record.n / row["conversations"] if row["conversations"] else 0.0
    for record in results["messages"]:
        rows[record.day.date()]["messages"] = {
            "user": record.user_messages,
            "assistant": record.assistant_messages,
            "staff": record.staff_messages,
        }
    for record in results["escalations"]:
        rows[record.day.date()]["escalations"] = record.n
    for record in results["response_times"]:
        rows[record.day.date()]["response_time_seconds"] = {"p50": record.p50, "p95": record.p95}
    return list(rows.values())


@dataclass
class DailyCache:
    """Past days' rows, kept `ttl_s` seconds per process; today's row is always live.

    A past day barely moves (a late answer or escalation of one of its conversations),
    and computing thirty of them reads a month of messages; the dashboard asks every
    few seconds. So the closed days are computed at most once per `ttl_s` and today is
    read fresh on each call.
    """

    ttl_s: float = 300.0
    clock: Any = field(default=monotonic)
    _entries: dict[tuple[date, date], tuple[float, list[dict[str, Any]]]] = field(
        default_factory=dict
    )

    async def daily(self, session: AsyncSession, *, days: int, today: date) -> list[dict[str, Any]]:
        """The `days` UTC days ending with `today`, oldest first."""
        today_row = await days_between(session, first=today, last=today)
        if days == 1:
            return today_row
        key = (today - timedelta(days=days - 1), today - timedelta(days=1))
        cached = self._entries.get(key)
        now = self.clock()
        if cached is None or now - cached[0] >= self.ttl_s:
            past = await days_between(session, first=key[0], last=key[1])
            # Yesterday's keys go stale at midnight: keep only what today can still ask.
            self._entries = {k: v for k, v in self._entries.items() if k[1] == key[1]}
            self._entries[key] = (now, past)
            cached = self._entries[key]
        return [*cached[1], *today_row]
