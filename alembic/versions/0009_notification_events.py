"""Notification outbox: escalation events written in the same transaction as the change,
delivered to the staff webhook by `member-support notify`. RLS enabled like every table.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notification_events",
        sa.Column(
            "id",
            postgresql.UUID(as_uuid=True),
            server_default=sa.text("gen_random_uuid()"),
            nullable=False,
        ),
        sa.Column("escalation_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("type", sa.String(50), nullable=False),
        sa.Column(
            "data", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("status", sa.String(20), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "available_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_error", sa.String(500)),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_notification_events"),
        sa.ForeignKeyConstraint(
            ["escalation_id"],
            ["escalations.id"],
            name="fk_notification_events_escalation_id_escalations",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "type IN ('escalation.created', 'escalation.status_changed')",
            name=op.f("ck_notification_events_type"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')",
            name=op.f("ck_notification_events_status"),
        ),
    )
    op.create_index(
        "ix_notification_events_escalation_id", "notification_events", ["escalation_id"]
    )
    op.create_index(
        "ix_notification_events_available_at_pending",
        "notification_events",
        ["available_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_notification_events_status_created_at_id",
        "notification_events",
        ["status", "created_at", "id"],
    )
    # Like 0008: no policy, so Supabase's anon and authenticated roles see nothing.
    op.execute("ALTER TABLE notification_events ENABLE ROW LEVEL SECURITY")


def downgrade() -> None:
    op.drop_table("notification_events")
