"""Member message rate limit: one counter row per conversation and one-minute window,
kept in the database so the limit holds across workers and replicas. RLS enabled like
every table (no policy: Supabase's anon and authenticated roles see nothing).

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "member_message_windows",
        sa.Column("conversation_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", name="pk_member_message_windows"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_member_message_windows_conversation_id_conversations",
            ondelete="CASCADE",
        ),
    )
    op.execute("ALTER TABLE member_message_windows ENABLE ROW LEVEL SECURITY")


def downgrade() -> None:
    op.drop_table("member_message_windows")
