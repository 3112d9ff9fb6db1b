"""The embedded PostgreSQL (pgserver) the CLI starts when no DATABASE_URL is set."""

from __future__ import annotations

import importlib
import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("app.embedded")

EMBEDDED_DIRECTORY = ".member-support"
DATABASE_NAME = "member_support"


def start(base: Path | None = None) -> tuple[Any, str]:
    """Start (or reuse) the embedded server under `.member-support/`; returns (server, URL).

    The server outlives nothing: pgserver stops it when this process exits.
    """
    root = (base or Path.cwd()) / EMBEDDED_DIRECTORY
    root.mkdir(parents=True, exist_ok=True)
    gitignore = root / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("*\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pgserver = importlib.import_module("pgserver")
        server = pgserver.get_server(root / "pgdata", cleanup_mode="stop")
    # DATABASE_NAME is our constant, not input.
    query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';"  # noqa: S608
    exists = server.psql(query).strip()
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    url: str = server.get_uri(DATABASE_NAME)
    log.info("embedded_database_started", extra={"data_directory": str(root / "pgdata")})
    return server, url
