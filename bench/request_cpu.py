"""CPU per request, both paths: `uv run python -m bench.request_cpu`.

The HTTP bench (`python -m bench`) measures throughput, which on a shared machine moves
with whatever else runs. This counts the worker's own CPU time (`time.process_time`) per
request instead, through the whole app as `create_app` builds it (middleware, hot-path
layer, FastAPI, the access log at the default INFO level, written to /dev/null) but
without an HTTP server: ASGI calls in-process, on a database of its own. CPU time is
what a saturated worker spends per request, so the difference between HOT_PATHS=on and
off is what the FastAPI path costs. The POST figure includes the event hub's work for
each message (its NOTIFY is handled in the same process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from typing import Any

from asgi_lifespan import LifespanManager

from app.log import configure_logging
from app.main import create_app
from app.migrations import upgrade_to_head
from app.settings import Settings
from bench import seed

JSON = [(b"content-type", b"application/json")]
Call = tuple[str, str, bytes]


async def _call(app: Any, method: str, path: str, body: bytes = b"") -> dict[str, Any]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), *JSON],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    answer: dict[str, Any] = {"body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return answer


async def measure(url: str, hot_paths: bool, requests: int, repeats: int) -> dict[str, float]:
    """The lowest of `repeats` timed batches, in us of CPU per request, per request kind."""
    settings = Settings(
        database_url=url,
        hot_paths=hot_paths,
        member_messages_per_minute=10_000,
        _env_file=None,
    )
    app = create_app(settings)
    figures: dict[str, float] = {}
    async with LifespanManager(app):
        opened = await _call(app, "POST", "/api/v1/sessions", b"{}")
        session = f"/api/v1/sessions/{json.loads(opened['body'])['session_id']}"
        message = b'{"content": "How do I raise my card limit?"}'
        for _ in range(50):
            await _call(app, "POST", f"{session}/messages", message)
        calls: dict[str, Call] = {
            "GET session": ("GET", session, b""),
            "GET history (latest 50)": ("GET", f"{session}/messages", b""),
            "POST message": ("POST", f"{session}/messages", message),
        }
        for name, (method, path, body) in calls.items():
            for _ in range(requests // 5):  # warm-up
                await _call(app, method, path, body)
            batches = []
            for _ in range(repeats):
                started = time.process_time()
                for _ in range(requests):
                    answer = await _call(app, method, path, body)
                batches.append((time.process_time() - started) / requests * 1e6)
                if answer["status"] not in (200, 201):
                    raise RuntimeError(f"{name}: {answer}")
            figures[name] = min(batches)
    return figures


def _log_to_devnull() -> None:
    """The shipped default, an access line per request at INFO, written nowhere."""
    configure_logging("INFO", "console")
    sink = open(os.devnull, "w")  # noqa: SIM115 - open for the process's life
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sink)


async def run(server_url: str, requests: int, repeats: int) -> dict[str, dict[str, float]]:
    name = await seed.create_database(server_url)
    url = seed.database_url(server_url, name)
    try:
        await asyncio.to_thread(upgrade_to_head, url)
        _log_to_devnull()
        return {
            "on": await measure(url, True, requests, repeats),
            "off": await measure(url, False, requests, repeats),
        }
    finally:
        await seed.drop_database(server_url, name)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.request_cpu", description=__doc__)
    parser.add_argument(
        "--server-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--requests", type=int, default=1000, help="per timed batch")
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    figures = asyncio.run(run(arguments.server_url, arguments.requests, arguments.repeats))
    print(f"{'request':<26}{'HOT_PATHS=on':>14}{'HOT_PATHS=off':>15}{'FastAPI adds':>14}")
    for kind, on in figures["on"].items():
        off = figures["off"][kind]
        print(f"{kind:<26}{on:>11.0f} us{off:>12.0f} us{off - on:>11.0f} us")


if __name__ == "__main__":
    main()
