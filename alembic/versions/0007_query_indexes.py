"""Indexes for the API's queries: activity lists, the escalation queue, /stats windows,
and at most one unresolved escalation per issue type and conversation.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_conversations_updated_at_id", "conversations", ["updated_at", "id"])
    op.create_index(
        "ix_conversations_status_updated_at_id", "conversations", ["status", "updated_at", "id"]
    )
    op.create_index("ix_conversations_created_at", "conversations", ["created_at"])
    op.create_index("ix_messages_created_at", "messages", ["created_at"])
    op.create_index(
        "uq_escalations_conversation_id_issue_type_open",
        "escalations",
        ["conversation_id", "issue_type"],
        unique=True,
        postgresql_where=sa.text("status <> 'resolved'"),
    )
    op.create_index(
        "ix_escalations_status_created_at_id", "escalations", ["status", "created_at", "id"]
    )
    op.create_index("ix_escalations_created_at_id", "escalations", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_escalations_created_at_id", table_name="escalations")
    op.drop_index("ix_escalations_status_created_at_id", table_name="escalations")
    op.drop_index("uq_escalations_conversation_id_issue_type_open", table_name="escalations")
    op.drop_index("ix_messages_created_at", table_name="messages")
    op.drop_index("ix_conversations_created_at", table_name="conversations")
    op.drop_index("ix_conversations_status_updated_at_id", table_name="conversations")
    op.drop_index("ix_conversations_updated_at_id", table_name="conversations")
