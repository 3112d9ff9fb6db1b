"""messages.seq: a per-conversation sequence assigned by the database.

A BEFORE INSERT trigger locks the conversation row (bumping its activity time)
and takes max(seq) + 1. Inserts into one conversation therefore serialise, so
seq order is also commit order and an `after=` poller never skips a message
that commits late. It holds for plain SQL and for several rows in one
transaction or statement, since a row trigger sees the rows inserted before it.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.execute(
        """
        UPDATE messages AS m SET seq = numbered.seq
        FROM (
            SELECT id, row_number() OVER (
                PARTITION BY conversation_id ORDER BY created_at, id
            ) AS seq
            FROM messages
        ) AS numbered
        WHERE numbered.id = m.id
        """
    )
    op.alter_column("messages", "seq", nullable=False)
    op.create_index(
        "uq_messages_conversation_id_seq", "messages", ["conversation_id", "seq"], unique=True
    )
    # The new unique index leads with conversation_id: the old one is now redundant.
    op.drop_index("ix_messages_conversation_id", table_name="messages")
    op.execute(
        """
        CREATE FUNCTION messages_assign_seq() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            -- Locks the conversation row: concurrent inserts into one conversation
            -- queue here, and every message bumps the conversation's activity.
            UPDATE conversations SET updated_at = now() WHERE id = NEW.conversation_id;
            -- An equality match, so the (conversation_id, seq) index
            -- answers max(seq) with one backward probe instead of a table scan.
            IF NEW.conversation_id IS NULL THEN
                SELECT coalesce(max(seq), 0) + 1 INTO NEW.seq
                FROM messages WHERE conversation_id IS NULL;
            ELSE
                SELECT coalesce(max(seq), 0) + 1 INTO NEW.seq
                FROM messages WHERE conversation_id = NEW.conversation_id;
            END IF;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER messages_assign_seq BEFORE INSERT ON messages
        FOR EACH ROW EXECUTE FUNCTION messages_assign_seq()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER messages_assign_seq ON messages")
    op.execute("DROP FUNCTION messages_assign_seq()")
    op.create_index("ix_messages_conversation_id", "messages", ["conversation_id"])
    op.drop_index("uq_messages_conversation_id_seq", table_name="messages")
    op.drop_column("messages", "seq")
