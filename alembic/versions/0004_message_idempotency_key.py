"""messages.idempotency_key, unique per conversation when present.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("idempotency_key", sa.String(255), nullable=True))
    op.create_index(
        "uq_messages_conversation_id_idempotency_key",
        "messages",
        ["conversation_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_messages_conversation_id_idempotency_key", table_name="messages")
    op.drop_column("messages", "idempotency_key")
