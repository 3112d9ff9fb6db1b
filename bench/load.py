"""A closed-loop HTTP/1.1 load generator, run as its own process by the bench.

It reads one JSON job per line on stdin, drives the target with `connections` keep-alive
connections for `seconds`, and writes one JSON result per line on stdout. Requests are
pre-rendered bytes and responses are parsed only as far as the status line and
Content-Length, so one core of it outruns a one-worker Python service many times over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from typing import Any


def render(method: str, path: str, body: bytes | None, headers: dict[str, str]) -> bytes:
    """One request as bytes, ready to write."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def build_requests(job: dict[str, Any]) -> list[bytes] | None:
    """GET jobs come as a list of paths; POST jobs are rendered fresh (each needs its own key)."""
    if job["method"] == "GET":
        return [render("GET", path, None, {}) for path in job["paths"]]
    return None


def post_request(job: dict[str, Any], index: int) -> bytes:
    """A POST to one of the job's paths, with a new Idempotency-Key as a real client sends."""
    paths = job["paths"]
    body = job["body"].encode()
    return render("POST", paths[index % len(paths)], body, {"Idempotency-Key": uuid.uuid4().hex})


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; returns its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
            break
    if length:
        await reader.readexactly(length)
    return status


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Drive one target with one kind of request; latencies in milliseconds."""
    prepared = build_requests(job)
    deadline_warmup = time.perf_counter() + job.get("warmup", 1.0)
    deadline = deadline_warmup + job["seconds"]
    latencies: list[float] = []
    # A job may tag its paths (`labels`, one per path): latencies are then also kept per
    # tag, so two kinds of request interleaved on one connection compare like for like.
    labels: list[str] | None = job.get("labels")
    tagged: dict[str, list[float]] = {label: [] for label in labels or []}
    statuses: dict[int, int] = {}
    counter = iter(range(10**12))

    async def connection(offset: int) -> None:
        reader, writer = await asyncio.open_connection(job["host"], job["port"])
        try:
            while True:
                index = next(counter) + offset
                data = (
                    prepared[index % len(prepared)]
                    if prepared is not None
                    else post_request(job, index)
                )
                started = time.perf_counter()
                if started >= deadline:
                    return
                writer.write(data)
                status = await read_response(reader)
                finished = time.perf_counter()
                if started >= deadline_warmup:
                    latencies.append((finished - started) * 1000)
                    if labels is not None:
                        tagged[labels[index % len(labels)]].append(latencies[-1])
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    await asyncio.gather(*(connection(n * 7919) for n in range(job["connections"])))
    count = len(latencies)
    return {
        "name": job.get("name"),
        "requests": count,
        "rps": count / job["seconds"],
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "by_label": {
            label: {"requests": len(values), "p50_ms": percentile(values, 0.50)}
            for label, values in tagged.items()
        },
    }


def percentile(values: list[float], share: float) -> float | None:
    """The value below which `share` of them fall (nearest rank); None when empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else None


async def main() -> None:
    """Serve jobs from stdin until it closes."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        result = await run_job(json.loads(line))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(main())
