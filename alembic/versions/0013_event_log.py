"""The event log behind the realtime streams, filled by triggers in the writing transaction.

Every message insert, conversation status change and escalation insert or status change
adds a row to `event_log` and a `pg_notify` on the channel `member_support_events`
(payload: the conversation id only), inside the transaction that made the change. A
row starts without a `position`; the sequencer in app/events.py hands positions out
later, once no transaction that could still add an earlier row is running (the
sequencer in app/repositories/events.py). `event_sequencer` holds the last position given.

Triggers rather than calls in each repository function: every writer (the API, the hot
path, the CLI, plain SQL in the dashboard) records its events the same way, and a
message cannot be stored without its event.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


class _Xid8(sa.types.UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (SQLAlchemy has no type for it)."""

    cache_ok = True

    def get_col_spec(self, **_: object) -> str:
        return "xid8"


def upgrade() -> None:
    op.create_table(
        "event_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=True),
        sa.Column(
            "xid",
            _Xid8(),
            server_default=sa.text("pg_current_xact_id()"),
            nullable=False,
        ),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("conversation_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("subject_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("status", sa.String(50), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_event_log"),
        sa.UniqueConstraint("position", name="uq_event_log_position"),
        sa.CheckConstraint(
            "type IN ('message.created', 'conversation.updated', "
            "'escalation.created', 'escalation.updated')",
            name=op.f("ck_event_log_type"),
        ),
    )
    # The sequencer's work list: rows still waiting for a position, in (xid, id) order.
    op.create_index(
        "ix_event_log_xid_id_unsequenced",
        "event_log",
        ["xid", "id"],
        postgresql_where=sa.text("position IS NULL"),
    )
    # Retention: the purge deletes the oldest rows in batches.
    op.create_index("ix_event_log_created_at", "event_log", ["created_at"])
    op.create_table(
        "event_sequencer",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_position", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_event_sequencer"),
        sa.CheckConstraint("id = 1", name=op.f("ck_event_sequencer_single_row")),
    )
    op.execute("INSERT INTO event_sequencer (id, last_position) VALUES (1, 0)")
    # Like every table: RLS on, no policy, so Supabase's anon and authenticated roles see nothing.
    op.execute("ALTER TABLE event_log ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE event_sequencer ENABLE ROW LEVEL SECURITY")
    op.execute(
        """
        CREATE FUNCTION event_log_record() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            kind text;
            conversation uuid;
            subject uuid;
            new_status text;
        BEGIN
            IF TG_TABLE_NAME = 'messages' THEN
                kind := 'message.created';
                conversation := NEW.conversation_id;
                subject := NEW.id;
            ELSIF TG_TABLE_NAME = 'conversations' THEN
                kind := 'conversation.updated';
                conversation := NEW.id;
                new_status := NEW.status;
            ELSE
                kind := CASE TG_OP WHEN 'INSERT' THEN 'escalation.created'
                                   ELSE 'escalation.updated' END;
                conversation := NEW.conversation_id;
                subject := NEW.id;
                new_status := NEW.status;
            END IF;
            IF conversation IS NULL THEN
                RETURN NULL;  -- a message without a conversation belongs to no stream
            END IF;
            INSERT INTO event_log (type, conversation_id, subject_id, status)
            VALUES (kind, conversation, subject, new_status);
            -- Ids only: a listener reads what it may show from the tables.
            PERFORM pg_notify('member_support_events', conversation::text);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER messages_record_event AFTER INSERT ON messages "
        "FOR EACH ROW EXECUTE FUNCTION event_log_record()"
    )
    op.execute(
        "CREATE TRIGGER conversations_record_event AFTER UPDATE OF status ON conversations "
        "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
        "EXECUTE FUNCTION event_log_record()"
    )
    op.execute(
        "CREATE TRIGGER escalations_record_created AFTER INSERT ON escalations "
        "FOR EACH ROW EXECUTE FUNCTION event_log_record()"
    )
    op.execute(
        "CREATE TRIGGER escalations_record_updated AFTER UPDATE OF status ON escalations "
        "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
        "EXECUTE FUNCTION event_log_record()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER escalations_record_updated ON escalations")
    op.execute("DROP TRIGGER escalations_record_created ON escalations")
    op.execute("DROP TRIGGER conversations_record_event ON conversations")
    op.execute("DROP TRIGGER messages_record_event ON messages")
    op.execute("DROP FUNCTION event_log_record()")
    op.drop_table("event_sequencer")
    op.drop_index("ix_event_log_created_at", table_name="event_log")
    op.drop_index("ix_event_log_xid_id_unsequenced", table_name="event_log")
    op.drop_table("event_log")
