"""conversations.status is one of active, escalated, closed, archived.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_check_constraint(
        op.f("ck_conversations_status"),
        "conversations",
        "status IN ('active', 'escalated', 'closed', 'archived')",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_conversations_status"), "conversations", type_="check")
