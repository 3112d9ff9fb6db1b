"""Escalations table (the guide's second migration).

Revision ID: 0002
Revises: 0001
Create Date: 2025-07-06 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "escalations",
        sa.Column(
            "id",
            postgresql.UUID(as_uuid=True),
            server_default=sa.text("gen_random_uuid()"),
            nullable=False,
        ),
        sa.Column("conversation_id", postgresql.UUID(as_uuid=True)),
        sa.Column("issue_type", sa.String(50), nullable=False),
        sa.Column("original_request", sa.Text(), nullable=False),
        sa.Column("status", sa.String(50), server_default=sa.text("'pending'")),
        sa.Column("contact_info", postgresql.JSONB()),
        sa.Column("conversation_context", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()")),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("id", name="pk_escalations"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_escalations_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'notified', 'in_progress', 'resolved')",
            name=op.f("ck_escalations_status"),
        ),
    )
    op.create_index(
        "ix_escalations_conversation_id_created_at",
        "escalations",
        ["conversation_id", "created_at"],
    )


def downgrade() -> None:
    op.drop_table("escalations")
