"""messages_assign_seq finds max(seq) through the (conversation_id, seq) index.

0003 looked it up with `conversation_id IS NOT DISTINCT FROM NEW.conversation_id`,
which no b-tree index serves: every insert scanned the whole messages table (about
1.2 s per message at a million rows). The same rule with `=` (and an explicit branch
for a message without a conversation) is one backward index probe. Locking, seq
order and the activity bump are unchanged.

Revision ID: 0010
Revises: 0008 (rebase onto 0009 where the outbox revision exists: one head only)
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION messages_assign_seq() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            -- Locks the conversation row: concurrent inserts into one conversation
            -- queue here, and every message bumps the conversation's activity.
            UPDATE conversations SET updated_at = now() WHERE id = NEW.conversation_id;
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


def downgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION messages_assign_seq() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            -- Locks the conversation row: concurrent inserts into one conversation
            -- queue here, and every message bumps the conversation's activity.
            UPDATE conversations SET updated_at = now() WHERE id = NEW.conversation_id;
            SELECT coalesce(max(seq), 0) + 1 INTO NEW.seq
            FROM messages
            WHERE conversation_id IS NOT DISTINCT FROM NEW.conversation_id;
            RETURN NEW;
        END
        $$
        """
    )
