"""How the console shows times and states to a person in a hurry."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

STATUS_WORDS = {
    "pending": "New",
    "notified": "Notified",
    "in_progress": "In progress",
    "resolved": "Resolved",
}
ROLE_WORDS = {"user": "Member", "assistant": "Assistant", "staff": "Staff"}


def age(since: datetime | None, now: datetime) -> str:
    """ "just now", "12 min", "3 h 5 min", "2 d 4 h"."""
    if since is None:
        return ""
    seconds = max(0, int((now - since).total_seconds()))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if minutes < 1:
        return "just now"
    if hours < 1:
        return f"{minutes} min"
    if days < 1:
        rest = minutes - hours * 60
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    rest_hours = hours - days * 24
    return f"{days} d {rest_hours} h" if rest_hours else f"{days} d"


def duration(seconds: float | None) -> str:
    """A length of time from seconds, as `age` words; a dash when unknown."""
    if seconds is None:
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    end = datetime(2000, 1, 1)
    return age(end - timedelta(seconds=seconds), end)


def sla_breached(escalation: Any, now: datetime, minutes: int) -> bool:
    """The first-response SLA as /stats counts it: answered later than `minutes`, or
    still open and unanswered past it."""
    limit = timedelta(minutes=minutes)
    if escalation.first_response_at is not None:
        answered_after: timedelta = escalation.first_response_at - escalation.created_at
        return answered_after > limit
    waited: timedelta = now - escalation.created_at
    return bool(escalation.status != "resolved" and waited > limit)


def percent(rate: float) -> str:
    """0.1083 -> "10.8 %"."""
    return f"{rate * 100:.1f} %"
