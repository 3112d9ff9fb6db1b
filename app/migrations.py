"""Alembic from inside the service: the head revision, and upgrading to it."""

from __future__ import annotations

import asyncio
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str | None = None) -> Config:
    """Alembic's config for this project; the URL travels as an attribute, not via the ini."""
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    if database_url is not None:
        config.attributes["database_url"] = database_url
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision in alembic/versions."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no Alembic revisions found")
    return head


def upgrade_to_head(database_url: str | None = None) -> None:
    """Run `alembic upgrade head` (env.py runs its own event loop)."""
    command.upgrade(alembic_config(database_url), "head")


async def upgrade_to_head_async(database_url: str | None = None) -> None:
    """upgrade_to_head from async code: in a thread, since env.py calls asyncio.run."""
    await asyncio.to_thread(upgrade_to_head, database_url)
