"""An async, typed Python client for the service routes (agent backends, staff tools).

Every response is parsed into the service's own pydantic models (app.schemas), so the
client and the server can never disagree about a shape. Errors come back as the
exceptions below, one per status the API promises:

    async with ServiceClient("https://support.example.org", api_key="...") as service:
        page = await service.messages(conversation_id, limit=200)
        await service.write_message(conversation_id, "Hello!", idempotency_key=webhook_id)

A 503 (database unavailable) carries `Retry-After`; the client waits that long (at most
`max_retry_wait_s`) and tries again, up to `retries` times, for reads and for writes
that are safe to repeat (every write the API makes idempotent, and message writes,
which get an `Idempotency-Key` of their own when the caller gives none).
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from app.event_schemas import MEMBER_EVENTS, SERVICE_EVENTS
from app.schemas import (
    AuditTrail,
    Conversation,
    ConversationPage,
    ConversationStatus,
    DailyStatsList,
    Escalation,
    EscalationPage,
    EscalationStatus,
    EscalationSummary,
    EscalationSummaryList,
    Message,
    MessagePage,
    Notification,
    NotificationPage,
    NotificationStatus,
    Role,
    Session,
    Stats,
    User,
)

API_PREFIX = "/api/v1"
USER_AGENT = "member-support-client/1.0"
MAX_PAGE = 200

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class StreamEvent:
    """One event of a stream: its name, its id (a position or a seq; None when the event
    has none) and its data as the service's own model for that event."""

    event: str
    id: str | None
    data: BaseModel


async def _sse_frames(response: httpx.Response) -> AsyncIterator[tuple[str, str | None, str]]:
    """(event, id, data) per frame of a WHATWG EventSource body; comments (pings) and
    `retry:` lines are skipped. Small enough not to need a library of its own."""
    event, event_id, data = "message", None, list[str]()
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event, event_id, "\n".join(data)
            event, event_id, data = "message", None, list[str]()
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data.append(value)


class _Unchanged(Enum):
    """The default of an optional field that may also be set to null."""

    UNCHANGED = "unchanged"


class ServiceError(Exception):
    """An error answer from the service: its status and its `detail`."""

    def __init__(self, status_code: int, detail: Any, *, retry_after: float | None = None):
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after


class Unauthorized(ServiceError):
    """401: a missing or wrong service key."""


class NotFound(ServiceError):
    """404: no such conversation, user, escalation or notification."""


class Conflict(ServiceError):
    """409: the resource's state refuses the change (e.g. a move the workflow forbids)."""


class ValidationError(ServiceError):
    """400 or 422: the request was refused as it stands (the detail says why)."""


class RateLimited(ServiceError):
    """429: too many at once; `retry_after` says when to try again."""


class Unavailable(ServiceError):
    """503: the database is unavailable (still so after the client's retries)."""


_BY_STATUS: dict[int, type[ServiceError]] = {
    400: ValidationError,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    422: ValidationError,
    429: RateLimited,
    503: Unavailable,
}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # an HTTP date: treated as "no hint"


def error_for(response: httpx.Response) -> ServiceError:
    """The exception an error response stands for."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = response.text[:200]
    kind = _BY_STATUS.get(response.status_code, ServiceError)
    return kind(response.status_code, detail, retry_after=_retry_after(response))


def _params(**values: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        params[name] = value.isoformat() if isinstance(value, datetime) else str(value)
    return params


class ServiceClient:
    """The service's REST API from Python.

    `base_url` is where the service answers (without `/api/v1`). Give `http` to reuse an
    `httpx.AsyncClient` of your own (its base URL is then used; the client does not
    close it), or `transport` for an in-process app (`httpx.ASGITransport`).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        max_retry_wait_s: float = 10.0,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = timeout
        self._headers = {"user-agent": USER_AGENT}
        if api_key is not None:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._retries = max(retries, 0)
        self._max_retry_wait_s = max_retry_wait_s
        self._owned = http is None
        self._http = http or httpx.AsyncClient(
            base_url=base_url, timeout=timeout, transport=transport, follow_redirects=False
        )

    def replica(self) -> ServiceClient:
        """A new client with the same address, key and limits, for another event loop
        (an httpx client belongs to the loop that first used it)."""
        if not self._owned:
            raise RuntimeError("a client built on a given httpx client cannot be replicated")
        return ServiceClient(
            self._base_url,
            api_key=self._api_key,
            timeout=self._timeout,
            retries=self._retries,
            max_retry_wait_s=self._max_retry_wait_s,
        )

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client, if this client made it."""
        if self._owned:
            await self._http.aclose()

    # --- the one request path ----------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = True,
    ) -> httpx.Response:
        all_headers = {**self._headers, **(headers or {})}
        attempt = 0
        while True:
            response = await self._http.request(
                method, API_PREFIX + path, params=params, json=json, headers=all_headers
            )
            if response.status_code < 400:
                return response
            error = error_for(response)
            if (
                isinstance(error, Unavailable)
                and retry
                and attempt < self._retries
                and (error.retry_after or 0.0) <= self._max_retry_wait_s
            ):
                attempt += 1
                await asyncio.sleep(error.retry_after if error.retry_after is not None else 1.0)
                continue
            raise error

    async def _get(
        self, model: type[ModelT], path: str, params: Mapping[str, Any] | None = None
    ) -> ModelT:
        response = await self._send("GET", path, params=params)
        return model.model_validate_json(response.content)

    # --- conversations and messages ----------------------------------------------------

    async def write_message(
        self,
        conversation_id: uuid.UUID | str,
        content: str,
        *,
        role: Role = "assistant",
        idempotency_key: str | None = None,
        staff_id: uuid.UUID | str | None = None,
    ) -> Message:
        """Append a message (an assistant reply by default). A repeat with the same
        `idempotency_key` returns the original message and stores nothing. Role `staff`
        needs `staff_id`, the active staff account that writes it."""
        headers = {"idempotency-key": idempotency_key or str(uuid.uuid4())}
        if staff_id is not None:
            headers["x-staff-id"] = str(staff_id)
        response = await self._send(
            "POST",
            f"/conversations/{conversation_id}/messages",
            json={"role": role, "content": content},
            headers=headers,
        )
        return Message.model_validate_json(response.content)

    async def messages(
        self,
        conversation_id: uuid.UUID | str,
        *,
        limit: int = 50,
        before: int | None = None,
        after: int | None = None,
    ) -> MessagePage:
        """One page of history, oldest first (latest `limit`, or around a seq cursor)."""
        return await self._get(
            MessagePage,
            f"/conversations/{conversation_id}/messages",
            _params(limit=limit, before=before, after=after),
        )

    async def all_messages(self, conversation_id: uuid.UUID | str) -> list[Message]:
        """The whole history, oldest first, read in pages of 200."""
        items: list[Message] = []
        async for message in self.iter_messages(conversation_id):
            items.append(message)
        return items

    async def iter_messages(
        self, conversation_id: uuid.UUID | str, *, after: int = 0
    ) -> AsyncIterator[Message]:
        """Every message with seq > `after`, oldest first, page by page."""
        cursor = after
        while True:
            page = await self.messages(conversation_id, limit=MAX_PAGE, after=cursor)
            for message in page.items:
                yield message
            if not page.has_more or not page.items:
                return
            cursor = page.items[-1].seq

    async def conversations(
        self,
        *,
        status: ConversationStatus | None = None,
        user_id: uuid.UUID | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ConversationPage:
        """Conversations by last activity, newest first."""
        return await self._get(
            ConversationPage,
            "/conversations",
            _params(status=status, user_id=user_id, limit=limit, cursor=cursor),
        )

    async def conversation(self, conversation_id: uuid.UUID | str) -> Conversation:
        """One conversation (never its session id)."""
        return await self._get(Conversation, f"/conversations/{conversation_id}")

    async def set_conversation_status(
        self, conversation_id: uuid.UUID | str, status: ConversationStatus
    ) -> Conversation:
        """Set a conversation's status; the same status changes nothing."""
        response = await self._send(
            "PATCH", f"/conversations/{conversation_id}", json={"status": status}
        )
        return Conversation.model_validate_json(response.content)

    # --- users -------------------------------------------------------------------------

    async def user(self, user_id: uuid.UUID | str) -> User:
        """A user's contact details."""
        return await self._get(User, f"/users/{user_id}")

    async def user_by_email(self, email: str) -> User:
        """The user with this email (NotFound when none)."""
        return await self._get(User, "/users", {"email": email})

    async def erase_user(self, user_id: uuid.UUID | str) -> None:
        """Delete a user with their conversations, messages and escalations."""
        await self._send("DELETE", f"/users/{user_id}")

    # --- escalations -------------------------------------------------------------------

    async def escalations(
        self,
        *,
        status: EscalationStatus | None = None,
        issue_type: str | None = None,
        assignee: uuid.UUID | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> EscalationPage:
        """The work queue, oldest first; `assignee="none"` lists the unassigned."""
        return await self._get(
            EscalationPage,
            "/escalations",
            _params(
                status=status, issue_type=issue_type, assignee=assignee, limit=limit, cursor=cursor
            ),
        )

    async def escalation(self, escalation_id: uuid.UUID | str) -> Escalation:
        """One escalation with its contact info and conversation context."""
        return await self._get(Escalation, f"/escalations/{escalation_id}")

    async def update_escalation(
        self,
        escalation_id: uuid.UUID | str,
        *,
        status: EscalationStatus | None = None,
        assignee_id: uuid.UUID | str | _Unchanged | None = _Unchanged.UNCHANGED,
    ) -> Escalation:
        """Move an escalation along and/or (un)assign it (`assignee_id=None` unassigns)."""
        body: dict[str, Any] = {}
        if status is not None:
            body["status"] = status
        if not isinstance(assignee_id, _Unchanged):
            body["assignee_id"] = None if assignee_id is None else str(assignee_id)
        response = await self._send("PATCH", f"/escalations/{escalation_id}", json=body)
        return Escalation.model_validate_json(response.content)

    async def escalation_events(self, escalation_id: uuid.UUID | str) -> AuditTrail:
        """An escalation's audit trail, oldest first."""
        return await self._get(AuditTrail, f"/escalations/{escalation_id}/events")

    # --- notifications and stats -------------------------------------------------------

    async def notifications(
        self,
        *,
        status: NotificationStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> NotificationPage:
        """Webhook deliveries, oldest first; `status="failed"` lists the parked ones."""
        return await self._get(
            NotificationPage, "/notifications", _params(status=status, limit=limit, cursor=cursor)
        )

    async def retry_notification(self, notification_id: uuid.UUID | str) -> Notification:
        """Re-queue a parked delivery (Conflict when it was delivered)."""
        response = await self._send("POST", f"/notifications/{notification_id}/retry")
        return Notification.model_validate_json(response.content)

    async def stats(self, *, since: datetime | None = None) -> Stats:
        """The key metrics, over records created at or after `since`."""
        return await self._get(Stats, "/stats", _params(since=since))

    async def daily_stats(self, *, days: int = 30) -> DailyStatsList:
        """The key metrics per UTC day, oldest first."""
        return await self._get(DailyStatsList, "/stats/daily", {"days": days})

    # --- member routes (what a chat frontend does; no key needed) ----------------------

    async def open_session(self, session_id: str | None = None) -> Session:
        """Open a member session, or return the existing one with this id. Without one,
        a random id (256 bits) is made here, so a retried request cannot open two."""
        body = {"session_id": session_id or secrets.token_urlsafe(32)}
        response = await self._send("POST", "/sessions", json=body)
        return Session.model_validate_json(response.content)

    async def session(self, session_id: str) -> Session:
        """A member session."""
        return await self._get(Session, f"/sessions/{session_id}")

    async def send_member_message(
        self, session_id: str, content: str, *, idempotency_key: str | None = None
    ) -> Message:
        """Post a member (`user`) message through the member route."""
        response = await self._send(
            "POST",
            f"/sessions/{session_id}/messages",
            json={"content": content},
            headers={"idempotency-key": idempotency_key or str(uuid.uuid4())},
        )
        return Message.model_validate_json(response.content)

    async def member_messages(
        self,
        session_id: str,
        *,
        limit: int = 50,
        before: int | None = None,
        after: int | None = None,
    ) -> MessagePage:
        """A member's history page, as the member sees it."""
        return await self._get(
            MessagePage,
            f"/sessions/{session_id}/messages",
            _params(limit=limit, before=before, after=after),
        )

    async def member_escalate(
        self,
        session_id: str,
        issue_type: str,
        original_request: str,
        *,
        contact_info: Mapping[str, Any] | None = None,
    ) -> EscalationSummary:
        """Ask for a human on the member's behalf."""
        body: dict[str, Any] = {"issue_type": issue_type, "original_request": original_request}
        if contact_info is not None:
            body["contact_info"] = dict(contact_info)
        response = await self._send("POST", f"/sessions/{session_id}/escalations", json=body)
        return EscalationSummary.model_validate_json(response.content)

    async def member_escalations(self, session_id: str) -> EscalationSummaryList:
        """The member's escalations."""
        return await self._get(EscalationSummaryList, f"/sessions/{session_id}/escalations")

    async def events(
        self,
        *,
        session_id: str | None = None,
        types: list[str] | None = None,
        after: int | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Follow the service event stream (`/events`, with the key), or a member's
        (`/sessions/{session_id}/events`), yielding each event as the service's own
        model. `after` resumes after that position (service) or seq (member). The
        stream ends when the server ends it; resume with the last id you saw."""
        if session_id is not None:
            path, models = f"/sessions/{session_id}/events", MEMBER_EVENTS
            params = _params(after=after)
        else:
            path, models = "/events", SERVICE_EVENTS
            params = _params(after=after, types=",".join(types) if types else None)
        async with self._http.stream(
            "GET",
            f"{API_PREFIX}{path}",
            params=params,
            headers=self._headers,
            timeout=httpx.Timeout(self._timeout, read=None),
        ) as response:
            if response.status_code != 200:
                await response.aread()
                raise error_for(response)
            async for event, event_id, data in _sse_frames(response):
                model = models.get(event)
                if model is not None:
                    yield StreamEvent(event, event_id, model.model_validate_json(data))
