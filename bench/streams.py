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
import time
import urllib.request
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


async def measure(port: int, pid: int, streams: int, writes: int) -> dict[str, Any]:
    session = await asyncio.to_thread(post, port, "/api/v1/sessions", {})
    session_id = session["session_id"]
    await asyncio.sleep(1)
    before = rss_kb(pid)
    watchers = [Watcher() for _ in range(streams)]
    tasks = []
    for number, watcher in enumerate(watchers):
        tasks.append(asyncio.create_task(watcher.run(port, session_id)))
        if number % 100 == 99:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in watchers)), 120)
    await asyncio.sleep(1)
    after = rss_kb(pid)
    log(f"{streams} streams open; RSS {before} KB -> {after} KB")
    sent: dict[int, float] = {}
    for _ in range(writes):
        started = time.perf_counter()
        message = await asyncio.to_thread(
            post, port, f"/api/v1/sessions/{session_id}/messages", {"content": "ping"}
        )
        sent[message["seq"]] = started
        await asyncio.sleep(0.2)
    await asyncio.sleep(5)
    latencies = [
        (watcher.arrived[seq] - started) * 1000
        for watcher in watchers
        for seq, started in sent.items()
        if seq in watcher.arrived
    ]
    missing = streams * writes - len(latencies)
    for task in tasks:
        task.cancel()
    latencies.sort()
    return {
        "streams": streams,
        "writes": writes,
        "deliveries": len(latencies),
        "missing": missing,
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1),
        "rss_before_kb": before,
        "rss_after_kb": after,
        "rss_per_stream_kb": round((after - before) / streams, 1),
    }


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
