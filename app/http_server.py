"""What one HTTP client may hold of a worker: header size and header time, bounded.

uvicorn's httptools protocol buffers request headers without a size limit (the h11
option `h11_max_incomplete_event_size` bounds only the h11 parser) and has no timeout
for receiving them: its keep-alive timer is cancelled by the first byte of a request,
so a client sending a byte now and then holds the connection for ever. This protocol
is uvicorn's httptools one with both bounds added:

- the bytes of an unfinished request head (request line and headers) are counted as
  they arrive; past `max_header_bytes` the client gets 431 and the connection closes,
  so memory per connection stays about that size plus one socket read;
- the head must be complete within `header_timeout_s` of the connection opening or of
  the request's first byte (for the next request on a kept-alive connection); if not,
  the client gets 408 and the connection closes.

Once the head is complete neither applies: body size is the application's limit, and
a response may take as long as the application does.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("app.http")


@dataclass(frozen=True)
class HttpLimits:
    """The bounds applied to every connection of a worker."""

    max_header_bytes: int
    header_timeout_s: float


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-head size limit and read deadline."""

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._awaiting_head = True
        self._head_bytes = 0
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Counted after parsing: a chunk that completes the head (and carries the start
        # of the body) is not head bytes; one that leaves it unfinished is.
        if self._awaiting_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_header_bytes:
                log.info("http_header_too_large", extra={"limit": self._limits.max_header_bytes})
                self._refuse(b"431 Request Header Fields Too Large", b"Request headers too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_head = True
        self._head_bytes = 0
        if self._head_deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(
            self._limits.header_timeout_s, self._head_timed_out
        )

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self._awaiting_head and not self.transport.is_closing():
            log.info("http_header_timeout", extra={"timeout_s": self._limits.header_timeout_s})
            self._refuse(b"408 Request Timeout", b"Request headers not received in time")

    def _refuse(self, status: bytes, message: bytes) -> None:
        """Answer (unless a response is under way on this connection) and close."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(
                b"HTTP/1.1 "
                + status
                + b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: "
                + str(len(message)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + message
            )
        self._awaiting_head = False
        self._disarm()
        self.transport.close()
