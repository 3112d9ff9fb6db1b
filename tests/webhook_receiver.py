"""A real local HTTP receiver for webhook tests: records each POST, answers as told."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int = 0


def free_port() -> int:
    """A TCP port nothing listens on (yet)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Receiver:
    """ThreadingHTTPServer in a thread, so a slow answer never blocks the test's loop."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.deliveries: list[Delivery] = []
        self.status = 204
        # Optional: decides each answer's status from the delivery (else `status`).
        self.answer: Callable[[Delivery], int] | None = None
        self.delay_s = 0.0
        self.released = threading.Event()
        self.released.set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/escalations"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                delivery = Delivery({k.lower(): v for k, v in self.headers.items()}, body)
                with receiver._lock:
                    receiver.deliveries.append(delivery)
                    index = len(receiver.deliveries) - 1
                receiver.released.wait()
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                with receiver._lock:
                    status = receiver.answer(delivery) if receiver.answer else receiver.status
                    receiver.deliveries[index] = Delivery(delivery.headers, delivery.body, status)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            # The stdlib default backlog of 5 refuses a worker's concurrent batch.
            request_queue_size = 128

        server = Server(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self) -> list[str]:
        with self._lock:
            return [delivery.headers["webhook-id"] for delivery in self.deliveries]


@dataclass
class Exchange:
    """One POST as the dribbling receiver saw it: when it came and when the client left."""

    webhook_id: str
    body: bytes
    received_at: float
    closed_at: float | None = None


class DribblingReceiver:
    """An asyncio server on a real socket: answers fast, except for a POST whose body
    contains `slow_marker`, which gets its answer one byte a second, without end.

    Each byte arrives well within any per-read timeout, so only a deadline for the whole
    request ends such a POST.
    """

    def __init__(self, slow_marker: bytes, byte_interval_s: float = 1.0) -> None:
        self.slow_marker = slow_marker
        self.byte_interval_s = byte_interval_s
        self.exchanges: list[Exchange] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/escalations"

    async def start(self) -> DribblingReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def of(self, webhook_id: str) -> list[Exchange]:
        return [exchange for exchange in self.exchanges if exchange.webhook_id == webhook_id]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        exchange: Exchange | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (
                    line.decode("latin-1").partition(":") for line in head.split(b"\r\n")[1:]
                )
                if name
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            exchange = Exchange(headers.get("webhook-id", ""), body, time.monotonic())
            self.exchanges.append(exchange)
            if self.slow_marker not in body:
                writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                await writer.drain()
                return
            answer = b"HTTP/1.1 200 OK\r\n" + b"x-padding: " + b"." * 10_000
            for byte in answer:
                writer.write(bytes([byte]))
                await writer.drain()
                # The client hanging up shows as EOF on our side.
                try:
                    await asyncio.wait_for(reader.read(1), timeout=self.byte_interval_s)
                    break
                except TimeoutError:
                    continue
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if exchange is not None:
                exchange.closed_at = time.monotonic()
            writer.close()
