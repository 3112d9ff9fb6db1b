"""users.email_verified; an email is unique among verified users only.

An email typed into the chat proves nothing, so it no longer identifies anyone: two
members (or a member and someone who merely knows their address) may carry the same
unverified email. Only an email the credit union's own app signed is verified, and
only verified emails stay unique, through a partial unique index. A plain index on
email keeps serving the service's look-up by email.

Existing rows: every user becomes unverified. Before this revision a conversation
moved to whichever user already had the email a member typed, so a user with several
conversations may have been joined by a stranger who only knew the address. Nothing
recorded which session was the owner and which a stranger, so none of those links can
be trusted, and a shared unverified user would let each session rewrite the details
the other's escalations carry to staff. Each such user is therefore split: the user
stays with its oldest conversation, and every later conversation gets a user of its
own holding a copy of the same email, name and phone and the same timestamps, so the
details staff saw for each conversation are unchanged and neither session can edit
the other's from now on. The conversations' own updated_at is left as it was.

Downgrade: the old schema demands one user per email. When several users now share
an email (a split above, or members who typed the same address since) the downgrade
stops with an error instead of merging or deleting anyone's records; resolve those
users first (e.g. DELETE /users/{id}).

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERIFIED_INDEX = "uq_users_email_verified"
EMAIL_INDEX = "ix_users_email"


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("email_verified", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    # The copies below repeat emails: the old constraint goes first.
    op.drop_constraint("uq_users_email", "users", type_="unique")
    _split_users_shared_by_several_conversations()
    op.create_index(EMAIL_INDEX, "users", ["email"])
    op.create_index(
        VERIFIED_INDEX,
        "users",
        ["email"],
        unique=True,
        postgresql_where=sa.text("email_verified"),
    )


def _split_users_shared_by_several_conversations() -> None:
    # Moving a conversation is bookkeeping, not activity: keep its updated_at.
    op.execute("ALTER TABLE conversations DISABLE TRIGGER conversations_set_updated_at")
    op.execute(
        """
        WITH later AS MATERIALIZED (
            SELECT id AS conversation_id, user_id, gen_random_uuid() AS new_user_id
            FROM (
                SELECT id, user_id,
                       row_number() OVER (PARTITION BY user_id ORDER BY created_at, id) AS n
                FROM conversations WHERE user_id IS NOT NULL
            ) ranked
            WHERE n > 1
        ), copies AS (
            INSERT INTO users (id, email, name, phone, created_at, updated_at)
            SELECT later.new_user_id, users.email, users.name, users.phone,
                   users.created_at, users.updated_at
            FROM later JOIN users ON users.id = later.user_id
            RETURNING id
        )
        UPDATE conversations SET user_id = later.new_user_id
        FROM later
        WHERE conversations.id = later.conversation_id
          AND later.new_user_id IN (SELECT id FROM copies)
        """
    )
    op.execute("ALTER TABLE conversations ENABLE TRIGGER conversations_set_updated_at")


def downgrade() -> None:
    shared = op.get_bind().scalar(
        sa.text(
            "SELECT count(*) FROM (SELECT email FROM users WHERE email IS NOT NULL "
            "GROUP BY email HAVING count(*) > 1) AS duplicates"
        )
    )
    if shared:
        # The count only: the addresses themselves are personal data.
        raise RuntimeError(
            f"Cannot downgrade below 0011: {shared} email address(es) are held by more "
            "than one user, and the earlier schema requires each email to be unique. "
            "Erase or edit those users first; nothing was changed."
        )
    op.drop_index(VERIFIED_INDEX, table_name="users")
    op.drop_index(EMAIL_INDEX, table_name="users")
    op.create_unique_constraint("uq_users_email", "users", ["email"])
    op.drop_column("users", "email_verified")
