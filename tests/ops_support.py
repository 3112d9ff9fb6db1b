"""Helpers for the operations tests: the CLI as a subprocess, committed data, a live server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
from conftest import SERVICE_KEY, asyncpg_dsn
from conftest import execute as execute  # the operations tests' name for it

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "member-support")

# Variables of the service that must not leak from the developer's shell into a test.
_SERVICE_VARIABLES = {
    "DATABASE_URL",
    "DATABASE_MIGRATION_URL",
    "DB_POOLER",
    "API_KEYS",
    "AGENT_WEBHOOK_URL",
    "AGENT_WEBHOOK_SECRET",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "PROMETHEUS_MULTIPROC_DIR",
    "WORKERS",
}


def cli_environment(database_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: ours, minus service settings, plus these."""
    environment = {
        key: value for key, value in os.environ.items() if key.upper() not in _SERVICE_VARIABLES
    }
    if database_url is not None:
        environment["DATABASE_URL"] = database_url
    environment.update(extra)
    return environment


def run_cli(
    *arguments: str, database_url: str | None, cwd: Path, input: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run `member-support ...` as the shell would, in a directory without a .env file."""
    return subprocess.run(
        [CLI, *arguments],
        env=cli_environment(database_url, **extra),
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def fetch_value(database_url: str, query: str, *arguments: object) -> object:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return await connection.fetchval(query, *arguments)
    finally:
        await connection.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_server(
    database_url: str, cwd: Path, *arguments: str, **extra: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`member-support serve` in the background until ready; yields (process, base URL)."""
    port = free_port()
    environment = cli_environment(database_url, API_KEYS=SERVICE_KEY, **extra)
    log_path = cwd / f"server-{port}.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [CLI, "serve", "--port", str(port), *arguments],
            env=environment,
            cwd=cwd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield process, base_url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def server_log(cwd: Path) -> str:
    """Everything the servers started in `cwd` wrote."""
    return "\n".join(path.read_text() for path in sorted(cwd.glob("server-*.log")))


def run(coroutine: object) -> object:
    """asyncio.run for sync tests and fixtures (env.py and asyncpg need their own loop)."""
    return asyncio.run(coroutine)  # type: ignore[arg-type]
