"""`member-support serve` with nothing set: embedded PostgreSQL, migrated, answering."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.migrations import head_revision


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def serve_without_database(tmp_path: Path):
    port = _free_port()
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "DB_", "API_KEYS", "TEST_"))
    }
    environment["LOG_LEVEL"] = "WARNING"
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env={**environment, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process, port, started, tmp_path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_serve_with_nothing_set_answers_on_an_embedded_database(serve_without_database) -> None:
    process, port, started, folder = serve_without_database
    deadline = started + 60
    response = None
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            response = httpx.post(f"http://127.0.0.1:{port}/api/v1/sessions", timeout=2)
            break
        except httpx.TransportError:
            time.sleep(0.2)
    assert response is not None, "the service never answered"
    assert response.status_code == 201
    assert (folder / ".member-support" / "pgdata").is_dir()
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert head_revision()  # the embedded database was migrated to head by serve
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    # The embedded server stopped with the service.
    assert not (folder / ".member-support" / "pgdata" / "postmaster.pid").exists()
