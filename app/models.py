"""The ORM tables: users, conversations, messages, escalations, the outbox, the member
message windows, staff and the escalation audit trail (SQLAlchemy 2)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    FetchedValue,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.dialects.postgresql import base as postgresql_base
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

# One naming convention for models and migrations, so autogenerate finds no drift.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

CONVERSATION_STATUSES = ("active", "escalated", "closed", "archived")
ESCALATION_STATUSES = ("pending", "notified", "in_progress", "resolved")
MESSAGE_ROLES = ("user", "assistant", "staff")
AUDIT_ACTIONS = ("status", "assignment", "staff_message")
NOTIFICATION_TYPES = ("escalation.created", "escalation.status_changed", "message.created")
# The agent webhook's event: one per member message; the others go to the staff webhook.
MESSAGE_CREATED = "message.created"
NOTIFICATION_STATUSES = ("pending", "delivered", "failed")
STAFF_ROLES = ("agent", "admin")
# What an outbox event is about: a member message, or else an escalation.
SUBJECT_CHECK = (
    "CASE WHEN type = 'message.created' "
    "THEN message_id IS NOT NULL AND conversation_id IS NOT NULL AND escalation_id IS NULL "
    "ELSE escalation_id IS NOT NULL AND message_id IS NULL AND conversation_id IS NULL END"
)


def _in_list(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )


def _created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=text("now()"))


def _updated_at() -> Mapped[datetime]:
    # The database trigger keeps it true; FetchedValue makes the ORM read it back.
    return mapped_column(
        DateTime(timezone=True), server_default=text("now()"), server_onupdate=FetchedValue()
    )


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = _uuid_pk()
    email: Mapped[str | None] = mapped_column(String(255))
    # True only for an email the credit union's app signed (identity verification);
    # an email a member types is never verified.
    email_verified: Mapped[bool] = mapped_column(Boolean, server_default=false())
    name: Mapped[str | None] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(50))
    created_at: Mapped[datetime | None] = _created_at()
    updated_at: Mapped[datetime | None] = _updated_at()

    __table_args__ = (
        # Only verified users are unique by email; typed emails may repeat.
        Index(
            "uq_users_email_verified",
            "email",
            unique=True,
            postgresql_where=text("email_verified"),
        ),
        # The service's look-up by email, verified or not.
        Index("ix_users_email", "email"),
    )


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    session_id: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str | None] = mapped_column(String(50), server_default=text("'active'"))
    created_at: Mapped[datetime | None] = _created_at()
    updated_at: Mapped[datetime | None] = _updated_at()

    __table_args__ = (
        CheckConstraint(_in_list("status", CONVERSATION_STATUSES), name="status"),
        # Staff list and archiving walk conversations by last activity.
        Index("ix_conversations_updated_at_id", "updated_at", "id"),
        Index("ix_conversations_status_updated_at_id", "status", "updated_at", "id"),
        # /stats windows conversations by creation time.
        Index("ix_conversations_created_at", "created_at"),
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[uuid.UUID] = _uuid_pk()
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("conversations.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime | None] = _created_at()
    # Assigned by a BEFORE INSERT trigger: per-conversation, gapless, in commit order.
    seq: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue())
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # The staff member who wrote a `staff` message.
    author_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey("staff.id"))

    __table_args__ = (
        CheckConstraint(_in_list("role", MESSAGE_ROLES), name="role"),
        # History paging; also serves the foreign key's cascade.
        Index("uq_messages_conversation_id_seq", "conversation_id", "seq", unique=True),
        Index(
            "uq_messages_conversation_id_idempotency_key",
            "conversation_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index("ix_messages_created_at", "created_at"),
        # /stats response times start from the window's assistant replies.
        Index(
            "ix_messages_assistant_created_at",
            "created_at",
            postgresql_where=text("role = 'assistant'"),
        ),
    )


class Escalation(Base):
    __tablename__ = "escalations"

    id: Mapped[uuid.UUID] = _uuid_pk()
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("conversations.id", ondelete="CASCADE")
    )
    issue_type: Mapped[str] = mapped_column(String(50))
    original_request: Mapped[str] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(String(50), server_default=text("'pending'"))
    contact_info: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    conversation_context: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime | None] = _created_at()
    updated_at: Mapped[datetime | None] = _updated_at()
    assignee_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("staff.id")
    )
    first_response_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_in_list("status", ESCALATION_STATUSES), name="status"),
        Index(
            "ix_escalations_assignee_id",
            "assignee_id",
            postgresql_where=text("assignee_id IS NOT NULL"),
        ),
        # The member's list and the foreign key's cascade.
        Index("ix_escalations_conversation_id_created_at", "conversation_id", "created_at"),
        # At most one unresolved escalation per issue type and conversation.
        Index(
            "uq_escalations_conversation_id_issue_type_open",
            "conversation_id",
            "issue_type",
            unique=True,
            postgresql_where=text("status <> 'resolved'"),
        ),
        # The staff queue, oldest first, with and without a status filter; /stats windows.
        Index("ix_escalations_status_created_at_id", "status", "created_at", "id"),
        Index("ix_escalations_created_at_id", "created_at", "id"),
    )


class NotificationEvent(Base):
    """The transactional outbox: one row per escalation event (staff webhook) or member
    message (agent webhook), written with the change."""

    __tablename__ = "notification_events"

    id: Mapped[uuid.UUID] = _uuid_pk()
    escalation_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("escalations.id", ondelete="CASCADE"), index=True
    )
    # message.created only: the member's message and its conversation (delivery order).
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    message_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("messages.id", ondelete="CASCADE"), unique=True
    )
    type: Mapped[str] = mapped_column(String(50))
    # Facts fixed at the moment of the event (the statuses); no PII, which stays in escalations.
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    status: Mapped[str] = mapped_column(String(20), server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # When a pending event is next due: now, after a backoff, or when a worker's lease ends.
    available_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_in_list("type", NOTIFICATION_TYPES), name="type"),
        CheckConstraint(SUBJECT_CHECK, name="subject"),
        CheckConstraint(_in_list("status", NOTIFICATION_STATUSES), name="status"),
        # The worker's claim: due pending events, oldest due first.
        Index(
            "ix_notification_events_available_at_pending",
            "available_at",
            postgresql_where=text("status = 'pending'"),
        ),
        # The staff list by status, oldest first, and /stats' oldest pending event.
        Index("ix_notification_events_status_created_at_id", "status", "created_at", "id"),
    )


class Staff(Base):
    """A person who works escalations; disabled, never deleted."""

    __tablename__ = "staff"

    id: Mapped[uuid.UUID] = _uuid_pk()
    email: Mapped[str] = mapped_column(String(255), unique=True)
    display_name: Mapped[str] = mapped_column(String(255))
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(10), server_default="agent")
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime | None] = _created_at()
    updated_at: Mapped[datetime | None] = _updated_at()

    __table_args__ = (CheckConstraint(_in_list("role", STAFF_ROLES), name="role"),)


class EscalationAudit(Base):
    """Who did what to an escalation; written in the transaction that did it."""

    __tablename__ = "escalation_audit"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    escalation_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("escalations.id", ondelete="CASCADE")
    )
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(20))
    from_value: Mapped[str | None] = mapped_column(Text)
    to_value: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))

    __table_args__ = (
        CheckConstraint(_in_list("action", AUDIT_ACTIONS), name="action"),
        Index("ix_escalation_audit_escalation_id_id", "escalation_id", "id"),
    )


class ConsoleSession(Base):
    """A staff console login (app.console): valid while not ended, not expired and its
    account is active. `id` is the SHA-256 of the token the browser holds."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    staff_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("staff.id", ondelete="CASCADE"), index=True
    )
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConsoleLoginFailure(Base):
    """One failed console login, by normalised email (the login rate limit)."""

    __tablename__ = "console_login_failures"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    email: Mapped[str] = mapped_column(String(255))
    failed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )

    __table_args__ = (Index("ix_console_login_failures_email_failed_at", "email", "failed_at"),)


class MemberMessageWindow(Base):
    """The member message rate limit: how many messages a conversation's member sent in
    the window that opened at `window_start` (app.repositories.messages)."""

    __tablename__ = "member_message_windows"

    conversation_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        primary_key=True,
    )
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    messages: Mapped[int] = mapped_column(Integer)


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (SQLAlchemy has no type for it)."""

    cache_ok = True

    def get_col_spec(self, **_: object) -> str:
        return "xid8"


# Reflection (autogenerate's comparison) then knows the type too.
postgresql_base.ischema_names["xid8"] = Xid8

EVENT_TYPES = (
    "message.created",
    "conversation.updated",
    "escalation.created",
    "escalation.updated",
)


class EventLog(Base):
    """What happened, for the realtime streams: written by triggers in the writing
    transaction, numbered later by the sequencer (app.repositories.events)."""

    __tablename__ = "event_log"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    # Null until the sequencer numbers the row; then unique and increasing in the order
    # readers can see rows.
    position: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    xid: Mapped[int] = mapped_column(Xid8, server_default=text("pg_current_xact_id()"))
    type: Mapped[str] = mapped_column(String(40))
    conversation_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    # The message or escalation the event is about; null for a conversation's own change.
    subject_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # The status the conversation or escalation moved to, fixed at the moment of the event.
    status: Mapped[str | None] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )

    __table_args__ = (
        CheckConstraint(_in_list("type", EVENT_TYPES), name="type"),
        Index(
            "ix_event_log_xid_id_unsequenced",
            "xid",
            "id",
            postgresql_where=text("position IS NULL"),
        ),
        Index("ix_event_log_created_at", "created_at"),
    )


class EventSequencer(Base):
    """One row: the last position the sequencer handed out (survives the retention purge)."""

    __tablename__ = "event_sequencer"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_position: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)
