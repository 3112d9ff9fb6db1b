"""The escalation workflow: assignment, response and resolution times, staff messages, audit.

- escalations gain `assignee_id` (a staff account), `first_response_at` (the first staff
  message in the conversation after the escalation opened) and `resolved_at`. Rows
  already resolved get `resolved_at` from their `updated_at`: the last change of a
  resolved escalation is, as far as anything recorded says, its resolution.
- messages gain the role `staff` and `author_id`. Going down refuses while staff
  messages exist (the narrower role check could not hold them); delete or re-role them
  first.
- `escalation_audit`: who did what to an escalation (status, assignment, staff message),
  written in the same transaction as the change. RLS enabled, as on every table.
- The event log's escalation trigger fires on an assignment too (`escalation.updated`
  with the assignee on the service stream).

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("escalations", sa.Column("assignee_id", postgresql.UUID(as_uuid=True)))
    op.add_column("escalations", sa.Column("first_response_at", sa.DateTime(timezone=True)))
    op.add_column("escalations", sa.Column("resolved_at", sa.DateTime(timezone=True)))
    op.create_foreign_key(
        op.f("fk_escalations_assignee_id_staff"), "escalations", "staff", ["assignee_id"], ["id"]
    )
    op.create_index(
        op.f("ix_escalations_assignee_id"),
        "escalations",
        ["assignee_id"],
        postgresql_where=sa.text("assignee_id IS NOT NULL"),
    )
    # Backfill without touching updated_at: the trigger only bumps it on a real change of
    # the row, and this is one, so switch it off for the statement.
    op.execute("ALTER TABLE escalations DISABLE TRIGGER escalations_set_updated_at")
    op.execute("UPDATE escalations SET resolved_at = updated_at WHERE status = 'resolved'")
    op.execute("ALTER TABLE escalations ENABLE TRIGGER escalations_set_updated_at")

    op.add_column("messages", sa.Column("author_id", postgresql.UUID(as_uuid=True)))
    op.create_foreign_key(
        op.f("fk_messages_author_id_staff"), "messages", "staff", ["author_id"], ["id"]
    )
    op.drop_constraint(op.f("ck_messages_role"), "messages", type_="check")
    op.create_check_constraint(
        op.f("ck_messages_role"), "messages", "role IN ('user', 'assistant', 'staff')"
    )

    op.create_table(
        "escalation_audit",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("escalation_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("from_value", sa.Text()),
        sa.Column("to_value", sa.Text()),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint(
            "action IN ('status', 'assignment', 'staff_message')",
            name=op.f("ck_escalation_audit_action"),
        ),
        sa.ForeignKeyConstraint(
            ["escalation_id"],
            ["escalations.id"],
            name=op.f("fk_escalation_audit_escalation_id_escalations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_escalation_audit")),
    )
    op.create_index(
        op.f("ix_escalation_audit_escalation_id_id"), "escalation_audit", ["escalation_id", "id"]
    )
    op.execute("ALTER TABLE escalation_audit ENABLE ROW LEVEL SECURITY")
    # An assignment is an `escalation.updated` event too (the event log's trigger).
    op.execute("DROP TRIGGER escalations_record_updated ON escalations")
    op.execute(
        "CREATE TRIGGER escalations_record_updated AFTER UPDATE OF status, assignee_id "
        "ON escalations FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status "
        "OR OLD.assignee_id IS DISTINCT FROM NEW.assignee_id) "
        "EXECUTE FUNCTION event_log_record()"
    )


def downgrade() -> None:
    staff_messages = op.get_bind().scalar(
        sa.text("SELECT count(*) FROM messages WHERE role = 'staff'")
    )
    if staff_messages:
        raise RuntimeError(
            f"{staff_messages} staff message(s) exist; the earlier schema cannot hold them. "
            "Delete them or change their role before downgrading past 0015."
        )
    op.execute("DROP TRIGGER escalations_record_updated ON escalations")
    op.execute(
        "CREATE TRIGGER escalations_record_updated AFTER UPDATE OF status ON escalations "
        "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
        "EXECUTE FUNCTION event_log_record()"
    )
    op.drop_table("escalation_audit")
    op.drop_constraint(op.f("ck_messages_role"), "messages", type_="check")
    op.create_check_constraint(
        op.f("ck_messages_role"), "messages", "role IN ('user', 'assistant')"
    )
    op.drop_constraint(op.f("fk_messages_author_id_staff"), "messages", type_="foreignkey")
    op.drop_column("messages", "author_id")
    op.drop_index(op.f("ix_escalations_assignee_id"), table_name="escalations")
    op.drop_constraint(op.f("fk_escalations_assignee_id_staff"), "escalations", type_="foreignkey")
    op.drop_column("escalations", "resolved_at")
    op.drop_column("escalations", "first_response_at")
    op.drop_column("escalations", "assignee_id")
