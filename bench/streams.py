"""`uv run python -m bench.streams`: event-stream latency and memory with many open streams.

Creates its own database, starts `member-support serve` (one worker), opens STREAMS
member streams on one conversation (every stream receives every message: the widest
fan-out), reads the worker's RSS before and after, then posts WRITES messages one at a
time and records, for every stream, the time from the POST being sent to the message
arriving on that stream (an upper bound of commit-to-client). Prints p50/p99 and the RSS
growth per stream. The clients are raw asyncio sockets, so the load generator costs little.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.migrations import upgrade_to_head
from bench import seed
from bench.__main__ import free_port, log, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def rss_kb(pid: int) -> int:
    """The process's resident set size in KB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - http only
        result: dict[str, Any] = json.loads(answer.read())
        return result


class Watcher:
    """One open stream; records when each message seq arrives."""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}
        self.ready = asyncio.Event()

    async def run(self, port: int, session_id: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /api/v1/sessions/{session_id}/events HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        buffer = b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                now = time.perf_counter()
                buffer += chunk
                if not self.ready.is_set() and not buffer.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"stream refused: {buffer[:200]!r}")
                if b"retry: 3000" in buffer:
                    self.ready.set()
                while b"\nid: " in buffer:
                    _, _, rest = buffer.partition(b"\nid: ")
                    line, separator, remainder = rest.partition(b"\n")
                    if not separator:
                        break
                    self.arrived[int(line.split(b"\r")[0])] = now
                    buffer = remainder
                if len(buffer) > 1 << 16:
                    buffer = buffer[-4096:]
        finally:
            writer.close()


@dataclass
class OpenStreams:
    """Streams held open by Watchers, each in its task."""

    watchers: list[Watcher]
    tasks: list[asyncio.Task[None]]

    async def close(self) -> None:
        """Close every stream."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def open_watchers(port: int, session_id: str, count: int) -> OpenStreams:
    """Open `count` member streams on the session; returns once every one has started."""
    watchers = [Watcher() for _ in range(count)]
    tasks = []
    for number, watcher in enumerate(watchers):
        tasks.append(asyncio.create_task(watcher.run(port, session_id)))
        if number % 100 == 99:
            await asyncio.sleep(0.05)
    streams = OpenStreams(watchers, tasks)
    deadline = time.perf_counter() + 120
    while not all(watcher.ready.is_set() for watcher in watchers):
        failed = [task for task in tasks if task.done()]
        if failed or time.perf_counter() > deadline:
            await streams.close()
            if failed:
                failed[0].result()  # a refused stream raises here
            raise RuntimeError("a stream closed before it started, or not all started in 120 s")
        await asyncio.sleep(0.05)
    return streams


async def time_writes(
    port: int, session_id: str, streams: OpenStreams, writes: int
) -> dict[str, Any]:
    """Post `writes` messages, 200 ms apart; per stream and message, POST sent to arrival."""
    watchers = streams.watchers
    open_before = sum(not task.done() for task in streams.tasks)
    sent: dict[int, float] = {}
    for _ in range(writes):
        started = time.perf_counter()
        message = await asyncio.to_thread(
            post, port, f"/api/v1/sessions/{session_id}/messages", {"content": "ping"}
        )
        sent[message["seq"]] = started
        await asyncio.sleep(0.2)
    deadline = time.perf_counter() + 5
    while time.perf_counter() < deadline and any(  # noqa: ASYNC110
        seq not in watcher.arrived for watcher in watchers for seq in sent
    ):
        await asyncio.sleep(0.05)
    latencies = sorted(
        (watcher.arrived[seq] - started) * 1000
        for watcher in watchers
        for seq, started in sent.items()
        if seq in watcher.arrived
    )
    return {
        "streams": len(watchers),
        "writes": writes,
        "deliveries": len(latencies),
        "missing": len(watchers) * writes - len(latencies),
        "open_before_writes": open_before,
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(latencies[max(int(len(latencies) * 0.99) - 1, 0)], 1)
        if latencies
        else None,
    }


WARM_UP_STREAMS = 20


async def warm_up(port: int) -> str:
    """A new session, with a few streams opened, sent a message and closed on it, so that
    what the worker sets up once (the first stream, the first fan-out) is not counted
    per stream; returns the session id."""
    session_id: str = (await asyncio.to_thread(post, port, "/api/v1/sessions", {}))["session_id"]
    opened = await open_watchers(port, session_id, WARM_UP_STREAMS)
    try:
        await time_writes(port, session_id, opened, 1)
    finally:
        await opened.close()
    await asyncio.sleep(1)
    return session_id


async def measure(port: int, pid: int, streams: int, writes: int) -> dict[str, Any]:
    """Open the streams, read the worker's RSS around it, then time the writes."""
    session_id = await warm_up(port)
    before = rss_kb(pid)
    opened = await open_watchers(port, session_id, streams)
    await asyncio.sleep(1)
    after = rss_kb(pid)
    log(f"{streams} streams open; RSS {before} KB -> {after} KB")
    try:
        result = await time_writes(port, session_id, opened, writes)
    finally:
        await opened.close()
    return {**result, **rss_figures(before, after, streams)}


def rss_figures(before: int, after: int, streams: int) -> dict[str, Any]:
    """The worker's RSS before and after opening the streams, and the growth per stream."""
    return {
        "rss_before_kb": before,
        "rss_after_kb": after,
        "rss_per_stream_kb": round((after - before) / streams, 1),
    }


P99_TARGET_MS = 250
RSS_TARGET_KB = 40


def checks(figures: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The issue's two targets for the streams, as (target, figure, met)."""
    streams = figures["streams"]
    p99 = figures["p99_ms"]
    delivered = f"{figures['deliveries']:,} of {streams * figures['writes']:,} delivered"
    return [
        (
            f"commit-to-client p99 <= {P99_TARGET_MS} ms with {streams:,} open member streams",
            f"p50 {figures['p50_ms']} ms, p99 {p99} ms ({delivered})",
            p99 is not None and p99 <= P99_TARGET_MS and figures["missing"] == 0,
        ),
        (
            f"worker RSS growth <= {RSS_TARGET_KB} KB per idle stream",
            f"{figures['rss_per_stream_kb']} KB ({figures['rss_before_kb'] // 1024} MB -> "
            f"{figures['rss_after_kb'] // 1024} MB)",
            figures["rss_per_stream_kb"] <= RSS_TARGET_KB,
        ),
    ]


class StreamPhase:
    """`python -m bench`'s stream phase: idle member streams held open on the running
    service (from a thread with its own event loop) while the other loads run, then the
    write latency measured across them."""

    def __init__(self, port: int, pid: int, count: int) -> None:
        self.port = port
        self.pid = pid
        self.count = count
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.streams: OpenStreams | None = None
        self.session_id = ""
        self.rss: dict[str, Any] = {}

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def open(self) -> None:
        """Open the streams; the worker's RSS is read before and after."""
        self.session_id = self._call(warm_up(self.port))
        before = rss_kb(self.pid)
        self.streams = self._call(open_watchers(self.port, self.session_id, self.count))
        time.sleep(1)
        self.rss = rss_figures(before, rss_kb(self.pid), self.count)
        log(f"  {self.count} member streams open: RSS {before} KB -> {self.rss['rss_after_kb']} KB")

    def finish(self, writes: int) -> dict[str, Any]:
        """Time `writes` messages across the open streams, then close them."""
        assert self.streams is not None
        try:
            result: dict[str, Any] = self._call(
                time_writes(self.port, self.session_id, self.streams, writes)
            )
        finally:
            self.close()
        return {**result, **self.rss}

    def close(self) -> None:
        """Close the streams and stop the thread (idempotent)."""
        if not self.thread.is_alive():
            return
        if self.streams is not None:
            self._call(self.streams.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__)
    parser.add_argument(
        "--server-url",
        default=os.environ.get("BENCH_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=20)
    arguments = parser.parse_args()
    name = asyncio.run(seed.create_database(arguments.server_url))
    url = seed.database_url(arguments.server_url, name)
    process = None
    try:
        upgrade_to_head(url)
        port = free_port()
        environment = {
            **os.environ,
            "DATABASE_URL": url,
            "LOG_LEVEL": "WARNING",
            # Every stream is a connection: uvicorn's cap (HTTP_LIMIT_CONCURRENCY, 512 by
            # default) must leave room for them and the writes.
            "HTTP_LIMIT_CONCURRENCY": str(arguments.streams + 100),
        }
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env=environment,
            cwd=ROOT,
        )
        wait_ready(port, "/readyz", process)
        result = asyncio.run(measure(port, process.pid, arguments.streams, arguments.writes))
        print(json.dumps(result, indent=2))
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        asyncio.run(seed.drop_database(arguments.server_url, name))


if __name__ == "__main__":
    main()
