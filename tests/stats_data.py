"""A small, exactly known data set for the /stats numbers, shared by the API and CLI tests.

Five conversations: one old (ten days before T) and four created exactly at T.
Response times: 100 s in the old conversation, 10 s and 30 s in a recent one,
plus one user message nobody answered.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

T = datetime(2026, 1, 10, tzinfo=UTC)
OLD = T - timedelta(days=10)

USER = "00000000-0000-4000-8000-000000000001"
OLD_ACTIVE = "00000000-0000-4000-8000-0000000000c1"
ESCALATED = "00000000-0000-4000-8000-0000000000c2"
CLOSED = "00000000-0000-4000-8000-0000000000c3"
ARCHIVED = "00000000-0000-4000-8000-0000000000c4"
ACTIVE = "00000000-0000-4000-8000-0000000000c5"


def _at(moment: datetime, seconds: float = 0) -> str:
    return f"'{(moment + timedelta(seconds=seconds)).isoformat()}'::timestamptz"


def statements() -> list[str]:
    """INSERTs for the data set, one statement each."""
    conversations = [
        (OLD_ACTIVE, "active", OLD),
        (ESCALATED, "escalated", T),
        (CLOSED, "closed", T),
        (ARCHIVED, "archived", T),
        (ACTIVE, "active", T),
    ]
    rows = [
        f"INSERT INTO users (id, created_at, updated_at) VALUES ('{USER}', {_at(OLD)}, {_at(OLD)})"
    ]
    rows += [
        "INSERT INTO conversations (id, user_id, session_id, status, created_at, updated_at) "
        f"VALUES ('{id_}', '{USER}', 'stats-session-{id_[-2:]}-0123456789', '{status}', "
        f"{_at(created)}, {_at(created)})"
        for id_, status, created in conversations
    ]
    messages = [
        (OLD_ACTIVE, "user", OLD, 0),
        (OLD_ACTIVE, "assistant", OLD, 100),
        (ESCALATED, "user", T, 0),
        (ESCALATED, "assistant", T, 10),
        (ESCALATED, "user", T, 100),
        (ESCALATED, "assistant", T, 130),
        (ESCALATED, "user", T, 200),
        (ESCALATED, "staff", T, 1200),
    ]
    rows += [
        "INSERT INTO messages (conversation_id, role, content, created_at) "
        f"VALUES ('{conversation}', '{role}', 'text', {_at(moment, seconds)})"
        for conversation, role, moment, seconds in messages
    ]
    # (conversation, issue type, status, opened, first response after s, resolved after s)
    escalations = [
        (OLD_ACTIVE, "card", "resolved", OLD, 60, 600),
        (ESCALATED, "loan", "pending", T, 1200, None),
        (ESCALATED, "card", "notified", T, None, None),
    ]

    def _after(moment: datetime, seconds: float | None) -> str:
        return "NULL" if seconds is None else _at(moment, seconds)

    rows += [
        "INSERT INTO escalations (conversation_id, issue_type, original_request, status, "
        "created_at, updated_at, first_response_at, resolved_at) "
        f"VALUES ('{conversation}', '{issue}', 'help', '{status}', "
        f"{_at(moment)}, {_at(moment)}, {_after(moment, first)}, {_after(moment, resolved)})"
        for conversation, issue, status, moment, first, resolved in escalations
    ]
    return rows


ALL_TIME = {
    "conversations": {"total": 5, "active": 2, "escalated": 1, "closed": 1, "archived": 1},
    "messages": {"total": 8, "user": 4, "assistant": 3, "staff": 1},
    "escalations": {
        "total": 3,
        "by_status": {"pending": 1, "notified": 1, "in_progress": 0, "resolved": 1},
        "by_issue_type": {"card": 2, "loan": 1},
        # first responses after 60 s and 1200 s: p95 = 60 + 0.95 * 1140
        "first_response_seconds": {"p50": 630.0, "p95": 1143.0},
        "resolution_seconds": {"p50": 600.0, "p95": 600.0},
    },
    "escalation_rate": 0.4,
    # percentile_cont over 10, 30, 100: p95 = 30 + 0.9 * 70
    "response_time_seconds": {"p50": 30.0, "p95": 93.0},
    # with the default 15 minutes: answered after 20 min, and still unanswered since T
    "sla": {"first_response_minutes": 15, "breached": 2},
}

# Records created at or after T: the boundary is inclusive.
SINCE_T = {
    "conversations": {"total": 4, "active": 1, "escalated": 1, "closed": 1, "archived": 1},
    "messages": {"total": 6, "user": 3, "assistant": 2, "staff": 1},
    "escalations": {
        "total": 2,
        "by_status": {"pending": 1, "notified": 1, "in_progress": 0, "resolved": 0},
        "by_issue_type": {"card": 1, "loan": 1},
        "first_response_seconds": {"p50": 1200.0, "p95": 1200.0},
        "resolution_seconds": {"p50": None, "p95": None},
    },
    "escalation_rate": 0.25,
    # over 10 and 30: p50 = 20, p95 = 10 + 0.95 * 20
    "response_time_seconds": {"p50": 20.0, "p95": 29.0},
    "sla": {"first_response_minutes": 15, "breached": 2},
}
