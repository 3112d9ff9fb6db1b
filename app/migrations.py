"""Alembic from inside the service: the head revision, and upgrading to it."""

from __future__ import annotations

import asyncio
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported where it is used: the API process needs only the head revision,
# once, and importing it up front would add to every start-up.

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str | None = None) -> Config:
    """Alembic's config for this project; the URL travels as an attribute, not via the ini."""
    from alembic.config import Config

    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    if database_url is not None:
        config.attributes["database_url"] = database_url
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision in alembic/versions."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no Alembic revisions found")
    return head


def revisions_between(current: str | None, head: str) -> int:
    """How many revisions an upgrade from `current` (None: empty database) to `head` applies."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    count = 0
    for revision in script.walk_revisions(base="base", head=head):
        if revision.revision == current:
            break
        count += 1
    return count


def upgrade_to_head(database_url: str | None = None) -> None:
    """Run `alembic upgrade head` (env.py runs its own event loop)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), "head")


async def upgrade_to_head_async(database_url: str | None = None) -> None:
    """upgrade_to_head from async code: in a thread, since env.py calls asyncio.run."""
    await asyncio.to_thread(upgrade_to_head, database_url)
