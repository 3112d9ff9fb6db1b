"""Per-process request counters for /stats (`api`), kept by a pure ASGI middleware."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass
class ApiCounters:
    requests: int = 0
    errors_5xx: int = 0

    def as_dict(self) -> dict[str, float | int]:
        """The `api` block of /stats."""
        rate = self.errors_5xx / self.requests if self.requests else 0.0
        return {"requests": self.requests, "errors_5xx": self.errors_5xx, "error_rate": rate}


class CountRequests:
    """Counts every HTTP request and each 5xx answer (an unhandled error counts as 500)."""

    def __init__(self, app: ASGIApp, counters: ApiCounters) -> None:
        self.app = app
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counters = self.counters
        counters.requests += 1
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if status >= 500:
                counters.errors_5xx += 1
