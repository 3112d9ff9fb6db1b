"""The agent webhook's events in the outbox: `message.created`, one per member message.

notification_events gains `conversation_id` and `message_id` (both cascading with
their rows; one event per message at most), `escalation_id` becomes nullable, and a
check says what each event is about: a message.created event names a message and its
conversation and no escalation; every other event names an escalation only. Going
down deletes the message.created events first (the earlier schema cannot hold them).

Revision ID: 0016
Revises: 0015
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "notification_events"
SUBJECT_CHECK = (
    "CASE WHEN type = 'message.created' "
    "THEN message_id IS NOT NULL AND conversation_id IS NOT NULL AND escalation_id IS NULL "
    "ELSE escalation_id IS NOT NULL AND message_id IS NULL AND conversation_id IS NULL END"
)


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("conversation_id", postgresql.UUID(as_uuid=True)))
    op.add_column(TABLE, sa.Column("message_id", postgresql.UUID(as_uuid=True)))
    op.create_foreign_key(
        op.f("fk_notification_events_conversation_id_conversations"),
        TABLE,
        "conversations",
        ["conversation_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_foreign_key(
        op.f("fk_notification_events_message_id_messages"),
        TABLE,
        "messages",
        ["message_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_index(op.f("ix_notification_events_conversation_id"), TABLE, ["conversation_id"])
    op.create_unique_constraint(op.f("uq_notification_events_message_id"), TABLE, ["message_id"])
    op.alter_column(TABLE, "escalation_id", nullable=True)
    op.drop_constraint(op.f("ck_notification_events_type"), TABLE, type_="check")
    op.create_check_constraint(
        op.f("ck_notification_events_type"),
        TABLE,
        "type IN ('escalation.created', 'escalation.status_changed', 'message.created')",
    )
    op.create_check_constraint(op.f("ck_notification_events_subject"), TABLE, SUBJECT_CHECK)


def downgrade() -> None:
    op.execute(f"DELETE FROM {TABLE} WHERE type = 'message.created'")
    op.drop_constraint(op.f("ck_notification_events_subject"), TABLE, type_="check")
    op.drop_constraint(op.f("ck_notification_events_type"), TABLE, type_="check")
    op.create_check_constraint(
        op.f("ck_notification_events_type"),
        TABLE,
        "type IN ('escalation.created', 'escalation.status_changed')",
    )
    op.alter_column(TABLE, "escalation_id", nullable=False)
    op.drop_constraint(op.f("uq_notification_events_message_id"), TABLE, type_="unique")
    op.drop_index(op.f("ix_notification_events_conversation_id"), table_name=TABLE)
    op.drop_constraint(
        op.f("fk_notification_events_message_id_messages"), TABLE, type_="foreignkey"
    )
    op.drop_constraint(
        op.f("fk_notification_events_conversation_id_conversations"), TABLE, type_="foreignkey"
    )
    op.drop_column(TABLE, "message_id")
    op.drop_column(TABLE, "conversation_id")
