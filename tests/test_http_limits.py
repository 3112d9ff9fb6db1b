"""What one client may hold of a worker: `serve` against real sockets, as an attacker would."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import make_settings
from ops_support import running_server

from app.cli import uvicorn_options
from app.http_server import BoundedHttpToolsProtocol, HttpLimits
from app.settings import Settings

HEADER_TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 16_384
CONCURRENCY = 6


@pytest.fixture(scope="module")
def server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, int]]:
    """One `member-support serve` for the module: (process id, port)."""
    folder = tmp_path_factory.mktemp("http-limits")
    with running_server(
        database_url,
        folder,
        HTTP_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        HTTP_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        HTTP_LIMIT_CONCURRENCY=str(CONCURRENCY),
        LOG_LEVEL="WARNING",
        DB_POOLER=os.environ.get("TEST_DB_POOLER", "auto"),  # as make_settings does
    ) as (process, base_url):
        port = urlsplit(base_url).port
        assert port is not None
        yield process.pid, port


def connect(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def read_until_closed(connection: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends until it closes; fails if it is still open at timeout."""
    connection.settimeout(timeout_s)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def resident_kib(process_id: int) -> int:
    for line in Path(f"/proc/{process_id}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_serve_runs_uvicorn_with_the_configured_limits(database_url: str) -> None:
    settings = make_settings(
        database_url,
        http_max_header_bytes=8192,
        http_header_timeout_s=3,
        http_keep_alive_s=7,
        http_limit_concurrency=64,
    )
    options = uvicorn_options(settings)

    protocol = options["http"]
    assert isinstance(protocol, partial)
    assert protocol.func is BoundedHttpToolsProtocol
    assert protocol.keywords == {"limits": HttpLimits(max_header_bytes=8192, header_timeout_s=3)}
    assert options["h11_max_incomplete_event_size"] == 8192
    assert options["timeout_keep_alive"] == 7
    assert options["limit_concurrency"] == 64


def test_the_limits_have_bounded_defaults() -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]

    assert (
        defaults.http_max_header_bytes,
        defaults.http_header_timeout_s,
        defaults.http_keep_alive_s,
        defaults.http_limit_concurrency,
    ) == (16_384, 10, 5, 1536)
    # A worker holds its most open event streams and requests beside them.
    assert defaults.http_limit_concurrency >= defaults.sse_max_streams + 512


def _response(connection: socket.socket) -> bytes:
    """One whole response: the head, then as many body bytes as Content-Length says
    (a loaded machine may hand them over in several pieces)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = connection.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_request_within_the_limits_is_served_and_kept_alive(server: tuple[int, int]) -> None:
    _, port = server
    request = b"GET /healthz HTTP/1.1\r\nhost: test\r\nx-fill: " + b"a" * 8000 + b"\r\n\r\n"
    with connect(port) as connection:
        connection.sendall(request)
        assert _response(connection).startswith(b"HTTP/1.1 200")
        # Idle between requests for longer than the header time: keep-alive governs that.
        time.sleep(HEADER_TIMEOUT_S + 0.5)
        connection.sendall(request)
        assert _response(connection).startswith(b"HTTP/1.1 200")


def test_unterminated_huge_headers_are_refused_and_do_not_grow_the_worker(
    server: tuple[int, int],
) -> None:
    process_id, port = server
    before = resident_kib(process_id)
    chunk = b"a" * 65536
    accepted = []
    for _ in range(3):
        with connect(port) as connection:
            sent = 0
            try:
                connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: test\r\nx-big: ")
                while sent < 30 * 1024 * 1024:
                    connection.sendall(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            except TimeoutError:
                pass  # the server stopped reading: nothing more gets in either
            accepted.append(sent)
    grown_mib = (resident_kib(process_id) - before) / 1024

    # The server hung up long before 30 MB (what got in is the kernel's buffers).
    assert max(accepted) < 8 * 1024 * 1024
    assert grown_mib < 20


def test_headers_over_the_limit_get_431_and_a_closed_connection(server: tuple[int, int]) -> None:
    _, port = server
    with connect(port) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nx-big: " + b"a" * (MAX_HEADER_BYTES + 100))
        answer = read_until_closed(connection, timeout_s=5)

    assert answer.startswith(b"HTTP/1.1 431 ")


def test_headers_dribbled_past_the_header_time_get_408_and_a_closed_connection(
    server: tuple[int, int],
) -> None:
    _, port = server
    with connect(port) as connection:
        started = time.monotonic()
        connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: test\r\n")
        answer = b""
        try:
            # A header line every 0.2 s, each well within any per-read timeout.
            for _ in range(50):
                connection.sendall(b"x-slow: 1\r\n")
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_until_closed(connection, timeout_s=5)
        held_s = time.monotonic() - started

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert held_s < HEADER_TIMEOUT_S + 1.5


def test_a_connection_that_sends_nothing_is_closed_after_the_header_time(
    server: tuple[int, int],
) -> None:
    _, port = server
    with connect(port) as connection:
        started = time.monotonic()
        answer = read_until_closed(connection, timeout_s=HEADER_TIMEOUT_S + 3)
        held_s = time.monotonic() - started

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert held_s < HEADER_TIMEOUT_S + 1.5


def test_past_the_concurrency_limit_new_requests_get_503(server: tuple[int, int]) -> None:
    _, port = server
    held = [connect(port) for _ in range(CONCURRENCY)]
    try:
        with connect(port) as connection:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
            answer = read_until_closed(connection, timeout_s=5)
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.2)
    with connect(port) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
        after = connection.recv(65536)

    assert answer.startswith(b"HTTP/1.1 503 ")
    assert after.startswith(b"HTTP/1.1 200 ")
