"""Staff console sessions and failed console logins.

`console_sessions`: one row per login. The id is the SHA-256 of the random token the
browser holds (inside a signed cookie), so a copy of the table cannot be replayed as a
cookie. `csrf_token` is the session's anti-forgery token. A session works while
`ended_at` is null (logout sets it), `expires_at` is in the future (8 h after login)
and its staff account is active.

`console_login_failures`: one row per failed login, by normalised email, kept in the
database so the limit (5 in 15 minutes) holds across workers and replicas.

Both have Row Level Security enabled with no policy, like every other table.

Revision ID: 0017
Revises: 0016
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("staff_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_sessions")),
        sa.ForeignKeyConstraint(
            ["staff_id"],
            ["staff.id"],
            name=op.f("fk_console_sessions_staff_id_staff"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        op.f("ix_console_sessions_staff_id"), "console_sessions", ["staff_id"], unique=False
    )
    op.execute("ALTER TABLE console_sessions ENABLE ROW LEVEL SECURITY")
    op.create_table(
        "console_login_failures",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column(
            "failed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_login_failures")),
    )
    op.create_index(
        op.f("ix_console_login_failures_email_failed_at"),
        "console_login_failures",
        ["email", "failed_at"],
        unique=False,
    )
    op.execute("ALTER TABLE console_login_failures ENABLE ROW LEVEL SECURITY")


def downgrade() -> None:
    op.drop_table("console_login_failures")
    op.drop_table("console_sessions")
