"""Pydantic request and response models of the REST API."""

from __future__ import annotations

import datetime as dt
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{16,255}$"
ISSUE_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,49}$"
CONTACT_INFO_MAX_BYTES = 4096

ConversationStatus = Literal["active", "escalated", "closed", "archived"]
EscalationStatus = Literal["pending", "notified", "in_progress", "resolved"]
Role = Literal["user", "assistant", "staff"]
AuditAction = Literal["status", "assignment", "staff_message"]
NotificationStatus = Literal["pending", "delivered", "failed"]
NotificationType = Literal["escalation.created", "escalation.status_changed", "message.created"]


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(key) or _contains_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_nul(item) for item in value)
    return False


class ApiModel(BaseModel):
    """The one base of every body: reads ORM rows, refuses NUL bytes PostgreSQL cannot store."""

    model_config = ConfigDict(from_attributes=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if _contains_nul(value):
            raise ValueError("must not contain NUL characters")
        return value


def _iso(value: datetime) -> str:
    return value.isoformat()


# ISO 8601 with an explicit offset ("+00:00"), not pydantic's "Z".
Timestamp = Annotated[datetime, PlainSerializer(_iso, return_type=str)]


def _normalise_email(value: str) -> str:
    text = value.strip().lower()
    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError:
        raise ValueError("not a valid email address") from None
    return result.normalized.lower()


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


Email = Annotated[
    str, BeforeValidator(_strip), Field(max_length=255), AfterValidator(_normalise_email)
]
Name = Annotated[str, BeforeValidator(_strip), Field(min_length=1, max_length=255)]
Phone = Annotated[
    str,
    BeforeValidator(_strip),
    Field(min_length=3, max_length=50, pattern=r"^[0-9+()./ \-xX#*,;]+$"),
]
NonBlankText = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]


_MESSAGE_EXAMPLE: dict[str, Any] = {
    "id": "9d8c7b6a-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
    "conversation_id": "4f1c2a9e-8b7d-4e3f-9a01-2b3c4d5e6f70",
    "seq": 7,
    "role": "user",
    "content": "How do I raise my card limit?",
    "created_at": "2026-11-24T09:31:12.654321+00:00",
}
_ESCALATION_SUMMARY_EXAMPLE: dict[str, Any] = {
    "id": "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d",
    "issue_type": "card",
    "status": "pending",
    "created_at": "2026-11-24T09:40:00.000000+00:00",
    "updated_at": "2026-11-24T09:40:00.000000+00:00",
}
_ESCALATION_EXAMPLE: dict[str, Any] = {
    **_ESCALATION_SUMMARY_EXAMPLE,
    "conversation_id": "4f1c2a9e-8b7d-4e3f-9a01-2b3c4d5e6f70",
    "original_request": "Please raise my limit",
    "contact_info": {
        "name": "Ada",
        "email": "ada@example.org",
        "email_verified": False,
        "preferred_channel": "phone",
    },
    "conversation_context": "user: How do I raise my card limit?\nassistant: I can connect you.",
    "assignee_id": "0d1c4a52-9d3e-4a57-9c86-5a0d2c1f7e10",
    "first_response_at": "2026-11-24T09:44:10.000000+00:00",
    "resolved_at": None,
}
_AUDIT_EXAMPLE: dict[str, Any] = {
    "escalation_id": "9d2e7b1a-3c4f-4a5b-8c6d-7e8f9a0b1c2d",
    "actor": "key:console",
    "action": "assignment",
    "from": None,
    "to": "0d1c4a52-9d3e-4a57-9c86-5a0d2c1f7e10",
    "at": "2026-11-24T09:42:00.000000+00:00",
}
_CONVERSATION_EXAMPLE: dict[str, Any] = {
    "id": "4f1c2a9e-8b7d-4e3f-9a01-2b3c4d5e6f70",
    "user_id": "0b6f3c1e-2d4a-4c5b-8e9f-1a2b3c4d5e6f",
    "status": "escalated",
    "created_at": "2026-11-24T09:30:00.123456+00:00",
    "updated_at": "2026-11-24T09:40:00.000000+00:00",
    "message_count": 7,
    "last_message_at": "2026-11-24T09:39:30.000000+00:00",
}


# --- members ---------------------------------------------------------------------------


class Identity(ApiModel):
    """An email the credit union's app vouches for: hex(HMAC-SHA256(IDENTITY_SECRET, email))."""

    email: Email = Field(description="Signed as the service stores it: trimmed, lower-cased")
    signature: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{64}$")] = Field(
        description="64 hex digits of HMAC-SHA256 over the email's UTF-8 bytes"
    )


class SessionCreate(ApiModel):
    session_id: Annotated[str, Field(pattern=SESSION_ID_PATTERN)] | None = Field(
        default=None,
        description="Bring your own id (16-255 of A-Z a-z 0-9 _ -); omitted: the server makes one.",
    )
    name: Name | None = None
    email: Email | None = None
    phone: Phone | None = None
    identity: Identity | None = Field(
        default=None,
        description="A verified identity: the conversation joins that member's verified user.",
    )

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "Ada", "email": "ada@example.org"}]}
    )

    @model_validator(mode="after")
    def _one_email(self) -> SessionCreate:
        if self.identity is not None and self.email not in (None, self.identity.email):
            raise ValueError("email must be left out or match identity.email")
        return self


_IDENTITY_EXAMPLE: dict[str, Any] = {
    "email": "ada@example.org",
    "signature": "5c1e0f4ad0b4a9a8e3f1d2c6b7a8e9f00112233445566778899aabbccddeeff0",
}


class IdentityAttach(ApiModel):
    identity: Identity

    model_config = ConfigDict(json_schema_extra={"examples": [{"identity": _IDENTITY_EXAMPLE}]})


class Session(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "session_id": "k3Jq9_xV2mTz8RbN4cWd0PfYhL6sAeGu1oQiE5nU7y",
                    "conversation_id": "4f1c2a9e-8b7d-4e3f-9a01-2b3c4d5e6f70",
                    "status": "active",
                    "created_at": "2026-11-24T09:30:00.123456+00:00",
                    "updated_at": "2026-11-24T09:31:12.654321+00:00",
                }
            ]
        }
    )

    session_id: str
    conversation_id: uuid.UUID
    status: ConversationStatus
    created_at: Timestamp
    updated_at: Timestamp


class ContactUpdate(ApiModel):
    """Any of name, email, phone; `null` clears the field."""

    name: Name | None = None
    email: Email | None = None
    phone: Phone | None = None

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"email": "ada@example.org", "phone": "+1 555 0100"}]}
    )

    @model_validator(mode="after")
    def _something(self) -> ContactUpdate:
        if not self.model_fields_set:
            raise ValueError("give at least one of name, email, phone")
        return self

    def changes(self) -> dict[str, str | None]:
        """Only the fields the client sent; None means clear."""
        return {name: getattr(self, name) for name in sorted(self.model_fields_set)}


class MessageCreate(ApiModel):
    content: NonBlankText = Field(description="1 to MESSAGE_MAX_CHARS characters, not blank")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"content": "How do I raise my card limit?"}]}
    )


class ServiceMessageCreate(ApiModel):
    role: Role = Field(description="`staff` needs an `X-Staff-Id` header naming an active account")
    content: NonBlankText

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"role": "assistant", "content": "You can ask in the app."}]
        }
    )


class Message(ApiModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_MESSAGE_EXAMPLE]})

    id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    role: Role
    content: str
    created_at: Timestamp
    author_name: str | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Only on `staff` messages: the staff member's display name",
    )


class MessagePage(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_MESSAGE_EXAMPLE], "has_more": False}]}
    )

    items: list[Message]
    has_more: bool


class ContactInfo(ApiModel):
    name: Name | None = None
    email: Email | None = None
    phone: Phone | None = None
    preferred_channel: Annotated[str, Field(min_length=1, max_length=50)] | None = None


class EscalationCreate(ApiModel):
    issue_type: Annotated[str, Field(pattern=ISSUE_TYPE_PATTERN)]
    original_request: NonBlankText
    contact_info: ContactInfo | None = Field(default=None, description="At most 4 KB as UTF-8 JSON")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "issue_type": "loan",
                    "original_request": "I want to talk to someone about refinancing.",
                    "contact_info": {"phone": "+1 555 0100", "preferred_channel": "phone"},
                }
            ]
        }
    )

    @field_validator("contact_info", mode="before")
    @classmethod
    def _contact_info_size(cls, value: Any) -> Any:
        if value is not None:
            try:
                size = len(orjson.dumps(value))
            except TypeError:
                return value  # not JSON-shaped: the model's own validation refuses it
            if size > CONTACT_INFO_MAX_BYTES:
                raise ValueError(f"contact_info is larger than {CONTACT_INFO_MAX_BYTES} bytes")
        return value


class EscalationSummary(ApiModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_ESCALATION_SUMMARY_EXAMPLE]})

    id: uuid.UUID
    issue_type: str
    status: EscalationStatus
    created_at: Timestamp
    updated_at: Timestamp


class EscalationSummaryList(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_ESCALATION_SUMMARY_EXAMPLE]}]}
    )

    items: list[EscalationSummary]


# --- service ---------------------------------------------------------------------------


class Conversation(ApiModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_CONVERSATION_EXAMPLE]})

    id: uuid.UUID
    user_id: uuid.UUID | None
    status: ConversationStatus
    created_at: Timestamp
    updated_at: Timestamp
    message_count: int
    last_message_at: Timestamp | None


class ConversationPage(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_CONVERSATION_EXAMPLE], "next_cursor": None}]}
    )

    items: list[Conversation]
    next_cursor: str | None


class ConversationStatusUpdate(ApiModel):
    status: ConversationStatus

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "closed"}]})


class User(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b6f3c1e-2d4a-4c5b-8e9f-1a2b3c4d5e6f",
                    "email": "ada@example.org",
                    "email_verified": False,
                    "name": "Ada",
                    "phone": "+1 555 0100",
                    "created_at": "2026-11-24T09:30:00.123456+00:00",
                    "updated_at": "2026-11-24T09:35:00.000001+00:00",
                }
            ]
        }
    )

    id: uuid.UUID
    email: str | None
    email_verified: bool = Field(
        description="True only for an email the credit union's app signed; typed emails are not"
    )
    name: str | None
    phone: str | None
    created_at: Timestamp
    updated_at: Timestamp


class Escalation(EscalationSummary):
    model_config = ConfigDict(json_schema_extra={"examples": [_ESCALATION_EXAMPLE]})

    conversation_id: uuid.UUID
    original_request: str
    contact_info: dict[str, Any] | None
    conversation_context: str | None
    assignee_id: uuid.UUID | None
    first_response_at: Timestamp | None
    resolved_at: Timestamp | None


class EscalationPage(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [_ESCALATION_EXAMPLE],
                    "next_cursor": "WyIyMDI2LTExLTI0VDA5OjQwOjAwKzAwOjAwIiwgIjdhIl0",
                }
            ]
        }
    )

    items: list[Escalation]
    next_cursor: str | None


class EscalationUpdate(ApiModel):
    """Any of `status` and `assignee_id` (`null` unassigns)."""

    status: EscalationStatus | None = None
    assignee_id: uuid.UUID | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "in_progress"},
                {"assignee_id": "0d1c4a52-9d3e-4a57-9c86-5a0d2c1f7e10"},
                {"assignee_id": None},
            ]
        }
    )

    @model_validator(mode="after")
    def _something(self) -> EscalationUpdate:
        if not self.model_fields_set:
            raise ValueError("give status, assignee_id or both")
        if "status" in self.model_fields_set and self.status is None:
            raise ValueError("status cannot be null")
        return self


class AuditEntry(ApiModel):
    """One change to an escalation: who, what, from, to, when."""

    model_config = ConfigDict(json_schema_extra={"examples": [_AUDIT_EXAMPLE]})

    escalation_id: uuid.UUID
    actor: str
    action: AuditAction
    # Read from the row's attribute or from the JSON body (app.client parses it back).
    from_value: str | None = Field(
        validation_alias=AliasChoices("from_value", "from"), serialization_alias="from"
    )
    to_value: str | None = Field(
        validation_alias=AliasChoices("to_value", "to"), serialization_alias="to"
    )
    at: Timestamp


class AuditTrail(ApiModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_AUDIT_EXAMPLE]}]})

    items: list[AuditEntry]


class ConversationCounts(ApiModel):
    total: int
    active: int
    escalated: int
    closed: int
    archived: int


class MessageCounts(ApiModel):
    total: int
    user: int
    assistant: int
    staff: int


class ResponseTimes(ApiModel):
    p50: float | None
    p95: float | None


class EscalationCounts(ApiModel):
    total: int
    by_status: dict[str, int]
    by_issue_type: dict[str, int]
    first_response_seconds: ResponseTimes = Field(
        description="Opened -> first staff message, over the window's answered escalations"
    )
    resolution_seconds: ResponseTimes = Field(
        description="Opened -> resolved, over the window's resolved escalations"
    )
    oldest_open_seconds: float | None = Field(
        description="Age of the oldest unresolved escalation now (not windowed)"
    )


class SlaCounts(ApiModel):
    first_response_minutes: int
    breached: int = Field(
        description="The window's escalations unanswered past the SLA, or answered later"
    )


class ApiCounts(ApiModel):
    requests: int
    errors_5xx: int
    error_rate: float


_NOTIFICATION_EXAMPLE: dict[str, Any] = {
    "id": "5b0f1c0e-6a51-4a8e-9b7c-2f1d3e4a5b6c",
    "type": "escalation.created",
    "escalation_id": "0d6c2a57-3f0e-4f5e-8b8e-1c7d9a2b4e60",
    "message_id": None,
    "status": "failed",
    "attempts": 12,
    "last_error": "HTTP 503",
    "next_attempt_at": None,
    "created_at": "2026-11-23T09:15:02.123456+00:00",
    "delivered_at": None,
}


class Notification(ApiModel):
    """An outbox event: one webhook delivery, retried until delivered or parked as failed."""

    model_config = ConfigDict(json_schema_extra={"examples": [_NOTIFICATION_EXAMPLE]})

    id: uuid.UUID = Field(description="Also the `webhook-id` header of every attempt")
    type: NotificationType
    escalation_id: uuid.UUID | None = Field(description="Of an escalation event")
    message_id: uuid.UUID | None = Field(
        default=None, description="Of a `message.created` event (the agent webhook)"
    )
    status: NotificationStatus
    attempts: int
    last_error: str | None
    next_attempt_at: Timestamp | None = Field(
        validation_alias="available_at", description="When a pending event is next due"
    )
    created_at: Timestamp
    delivered_at: Timestamp | None

    @field_validator("next_attempt_at", mode="before")
    @classmethod
    def _only_when_pending(cls, value: Any, info: Any) -> Any:
        return value if info.data.get("status") == "pending" else None


class NotificationPage(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_NOTIFICATION_EXAMPLE], "next_cursor": None}]}
    )

    items: list[Notification]
    next_cursor: str | None


class NotificationCounts(ApiModel):
    """The outbox now (not windowed by `since`): failed ones wait for a retry by staff."""

    pending: int
    delivered: int
    failed: int
    oldest_pending_age_seconds: float | None


class Stats(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "since": "2026-11-23T00:00:00+00:00",
                    "conversations": {
                        "total": 120,
                        "active": 90,
                        "escalated": 12,
                        "closed": 15,
                        "archived": 3,
                    },
                    "messages": {"total": 1480, "user": 760, "assistant": 700, "staff": 20},
                    "escalations": {
                        "total": 14,
                        "by_status": {"pending": 4, "notified": 2, "in_progress": 3, "resolved": 5},
                        "by_issue_type": {"card": 6, "loan": 5, "fraud": 3},
                        "first_response_seconds": {"p50": 240.0, "p95": 1320.0},
                        "resolution_seconds": {"p50": 3600.0, "p95": 14400.0},
                        "oldest_open_seconds": 1800.0,
                    },
                    "sla": {"first_response_minutes": 15, "breached": 2},
                    "escalation_rate": 0.1083,
                    "response_time_seconds": {"p50": 1.8, "p95": 6.4},
                    "api": {"requests": 5210, "errors_5xx": 0, "error_rate": 0.0},
                    "notifications": {
                        "pending": 1,
                        "delivered": 27,
                        "failed": 0,
                        "oldest_pending_age_seconds": 2.5,
                    },
                }
            ]
        }
    )

    since: Timestamp | None
    conversations: ConversationCounts
    messages: MessageCounts
    escalations: EscalationCounts
    escalation_rate: float
    response_time_seconds: ResponseTimes
    sla: SlaCounts
    api: ApiCounts
    notifications: NotificationCounts


class DailyMessageCounts(ApiModel):
    user: int
    assistant: int
    staff: int


_DAY_EXAMPLE: dict[str, Any] = {
    "date": "2026-11-23",
    "conversations": 41,
    "messages": {"user": 260, "assistant": 240, "staff": 6},
    "escalations": 5,
    "escalation_rate": 0.0976,
    "response_time_seconds": {"p50": 1.7, "p95": 6.1},
}


class DailyStats(ApiModel):
    """One UTC day: what was created that day; response times of that day's questions."""

    model_config = ConfigDict(json_schema_extra={"examples": [_DAY_EXAMPLE]})

    date: dt.date
    conversations: int
    messages: DailyMessageCounts
    escalations: int
    escalation_rate: float = Field(description="Share of the day's conversations ever escalated")
    response_time_seconds: ResponseTimes


class DailyStatsList(ApiModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_DAY_EXAMPLE]}]})

    items: list[DailyStats] = Field(description="One row per UTC day, oldest first, today last")


class ErrorBody(BaseModel):
    detail: Any = Field(description="What was wrong: a sentence, or a list of field errors")
