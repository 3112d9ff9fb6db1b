"""A PostgreSQL server a test owns and may stop: initdb + pg_ctl in a temporary folder.

Never the machine's shared server. As root the server runs as the `postgres` user
(PostgreSQL refuses root); it listens on 127.0.0.1 on a free port of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SEARCH_PATHS = tuple(f"/usr/lib/postgresql/{major}/bin" for major in (17, 16, 15))


def _binary(name: str) -> str | None:
    for directory in SEARCH_PATHS:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


def available() -> bool:
    """Whether initdb and pg_ctl are installed (and a non-root user exists when root)."""
    if _binary("initdb") is None or _binary("pg_ctl") is None:
        return False
    if os.geteuid() == 0:
        return shutil.which("runuser") is not None and _user_exists("postgres")
    return True


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class OwnPostgres:
    """initdb once, then start/stop at will; `url` is a postgresql:// URL for user postgres."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="member-support-own-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.directory, user="postgres")
            self.directory.chmod(0o700)

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*prefix, *command], check=True, capture_output=True, cwd=self.directory, timeout=60
        )

    def init(self) -> None:
        """Create the cluster (trust auth on loopback, fsync on: durability is under test)."""
        self._run(
            _binary("initdb") or "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-instructions",
        )
        settings = (
            f"port = {self.port}\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.directory}'\n"
            "max_connections = 200\n"
            "shared_buffers = 32MB\n"
        )
        with (self.data / "postgresql.conf").open("a") as config:
            config.write(settings)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(
            _binary("pg_ctl") or "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "server.log"),
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends sessions cleanly, `immediate` is a crash."""
        self._run(_binary("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    async def start_async(self) -> None:
        """start() without blocking the event loop."""
        await asyncio.to_thread(self.start)

    async def stop_async(self, mode: str = "fast") -> None:
        """stop() without blocking the event loop."""
        await asyncio.to_thread(self.stop, mode)

    def destroy(self) -> None:
        """Stop the server if it runs and remove its files."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
