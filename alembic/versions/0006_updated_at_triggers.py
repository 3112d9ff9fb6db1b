"""updated_at maintained by the database, for edits made outside the service too.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("users", "conversations", "escalations")


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION set_updated_at() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            -- An UPDATE that changes nothing leaves the timestamp alone.
            IF ROW(NEW.*) IS DISTINCT FROM ROW(OLD.*) THEN
                NEW.updated_at = now();
            END IF;
            RETURN NEW;
        END
        $$
        """
    )
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_set_updated_at BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION set_updated_at()"
        )


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TRIGGER {table}_set_updated_at ON {table}")
    op.execute("DROP FUNCTION set_updated_at()")
