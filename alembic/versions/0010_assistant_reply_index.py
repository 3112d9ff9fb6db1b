"""/stats response times: a partial index of assistant messages by creation time.

The response-time query starts from the window's assistant replies and walks back to
the user messages each one answers, so user messages that are still waiting (on a busy
day, most of the window) are never read. The index holds assistant rows only, so member
messages pay nothing for it.

Built CONCURRENTLY, outside the migration's transaction: messages is the largest table,
and a plain CREATE INDEX would hold off every insert for the length of the build.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_messages_assistant_created_at"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # A build interrupted earlier leaves an INVALID index of this name behind.
        op.execute(
            sa.text(
                f"""
                DO $$ BEGIN
                    IF EXISTS (SELECT FROM pg_index WHERE indexrelid =
                               to_regclass('{INDEX}') AND NOT indisvalid) THEN
                        DROP INDEX {INDEX};
                    END IF;
                END $$
                """
            )
        )
        op.create_index(
            INDEX,
            "messages",
            ["created_at"],
            postgresql_where=sa.text("role = 'assistant'"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(INDEX, table_name="messages", postgresql_concurrently=True, if_exists=True)
