"""Row Level Security on every table of the schema, alembic_version included.

No policy is created: Supabase's anon and authenticated roles (the key that ships
in every frontend) see and change nothing through the Data API. The service
connects as the table owner, which RLS does not restrict unless FORCEd (it is not).
Nothing here names those roles, so plain PostgreSQL runs it too.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("users", "conversations", "messages", "escalations", "alembic_version")


def upgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
