"""`uv run python -m bench.agent_webhook`: agent webhook fan-out, commit to receiver's 2xx.

Member messages (default 1,000 over 100 conversations) are written by concurrent
writers through messages.append with the agent webhook on, as the API writes them, and
delivered by 1 and then 2 notification workers (in this process, each with its own
client) to a local receiver (a process of its own) that answers 2xx after 20 ms. For
each message: the time from its commit to the receiver's answer. Prints p50/p99 and
throughput per worker count; exits 1 when a p99 is over the target. Runs on a fresh
database it creates on the server (`--server-url`, default TEST_DATABASE_URL) and drops
afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import queue
import secrets
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from app.db import create_engine, create_sessionmaker
from app.migrations import upgrade_to_head
from app.notify import NotificationWorker
from app.repositories import conversations, messages
from app.settings import Settings

TARGET_P99_S = 1.0
SECRET = "whsec_" + base64.b64encode(b"bench-agent-webhook-secret-0123").decode()


def _serve(port: int, delay_s: float, answers: Any) -> None:  # pragma: no cover - child
    """The receiver process: answers 204 after `delay_s`, reports (message id, time)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            time.sleep(delay_s)
            answers.put((json.loads(body)["data"]["message"]["id"], time.time()))
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 256
        daemon_threads = True

    Server(("127.0.0.1", port), Handler).serve_forever(0.05)


class _Receiver:
    """A threaded HTTP receiver in a process of its own (so it does not share the
    workers' interpreter), noting when it answered each message's webhook."""

    def __init__(self, delay_s: float, total: int) -> None:
        self.answered: dict[str, float] = {}
        self.all_answered = asyncio.Event()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        self.url = f"http://127.0.0.1:{port}/webhook"
        context = multiprocessing.get_context("spawn")
        self._answers = context.Queue()
        self._process = context.Process(
            target=_serve, args=(port, delay_s, self._answers), daemon=True
        )
        self._process.start()
        loop = asyncio.get_running_loop()

        def collect() -> None:
            while len(self.answered) < total:
                try:
                    message_id, at = self._answers.get(timeout=0.5)
                except queue.Empty:
                    if not self._process.is_alive():
                        return
                    continue
                self.answered.setdefault(message_id, at)
            loop.call_soon_threadsafe(self.all_answered.set)

        threading.Thread(target=collect, daemon=True).start()
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(5)


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new migrated database on the server, dropped afterwards."""
    name = f"member_support_bench_{secrets.token_hex(4)}"
    dsn = make_url(server_url).set(drivername="postgresql").render_as_string(False)

    async def execute(statement: str) -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(False)
    try:
        upgrade_to_head(url)
        yield url
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def run_once(
    database_url: str,
    *,
    workers: int,
    total: int,
    conversation_count: int,
    writers: int,
    delay_s: float,
    batch_size: int,
) -> dict[str, float]:
    """One measured round; the figures."""
    receiver = _Receiver(delay_s, total)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        agent_webhook_url=receiver.url,
        agent_webhook_secret=SECRET,
        notify_poll_interval_s=0.05,
        notify_batch_size=batch_size,
    )
    engine = create_engine(settings)
    sessions = create_sessionmaker(engine, settings)
    committed: dict[str, float] = {}
    try:
        async with sessions() as session, session.begin():
            opened = [
                (await conversations.open_session(session, session_id=None, contact={}))[0]
                for _ in range(conversation_count)
            ]
        numbers: asyncio.Queue[int] = asyncio.Queue()
        for number in range(total):
            numbers.put_nowait(number)

        async def writer() -> None:
            while not numbers.empty():
                number = numbers.get_nowait()
                async with sessions() as session, session.begin():
                    row, _ = await messages.append(
                        session,
                        conversation_id=opened[number % conversation_count]["conversation_id"],
                        role="user",
                        content=f"member question {number}",
                        agent_events=True,
                    )
                committed[str(row["id"])] = time.time()

        stop = asyncio.Event()
        running = [NotificationWorker(sessions, settings) for _ in range(workers)]
        tasks = [asyncio.create_task(worker.run(stop)) for worker in running]
        started = time.time()
        await asyncio.gather(*(writer() for _ in range(writers)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver.all_answered.wait(), timeout=120)
        stop.set()
        await asyncio.gather(*tasks)
        for worker in running:
            await worker.aclose()
    finally:
        await engine.dispose()
        receiver.stop()
    latencies = sorted(
        receiver.answered[key] - committed[key] for key in committed if key in receiver.answered
    )
    if len(latencies) < total:
        raise RuntimeError(f"only {len(latencies)} of {total} webhooks were answered")
    finished = max(receiver.answered.values())
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "p50_s": statistics.median(latencies),
        "p99_s": cuts[98],
        "throughput_per_s": total / (finished - started),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_webhook")
    parser.add_argument("--server-url", default=os.environ.get("TEST_DATABASE_URL"))
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--writers", type=int, default=10)
    parser.add_argument("--receiver-ms", type=float, default=20)
    # NOTIFY_BATCH_SIZE: deliveries in flight per worker, at most one per conversation,
    # so a burst over many conversations needs many slots (README: the agent webhook).
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    if not args.server_url:
        parser.error("give --server-url (a PostgreSQL server URL) or set TEST_DATABASE_URL")
    print(
        f"agent webhook fan-out: {args.messages} member messages over {args.conversations} "
        f"conversations, {args.writers} writers, receiver answers in {args.receiver_ms:g} ms, "
        f"batch {args.batch_size}; target p99 <= {TARGET_P99_S:g} s"
    )
    worst = 0.0
    for workers in args.workers:
        with fresh_database(args.server_url) as url:
            figures = asyncio.run(
                run_once(
                    url,
                    workers=workers,
                    total=args.messages,
                    conversation_count=args.conversations,
                    writers=args.writers,
                    delay_s=args.receiver_ms / 1000,
                    batch_size=args.batch_size,
                )
            )
        worst = max(worst, figures["p99_s"])
        print(
            f"{workers} worker(s): commit -> 2xx p50 {figures['p50_s'] * 1000:.0f} ms, "
            f"p99 {figures['p99_s'] * 1000:.0f} ms, {figures['throughput_per_s']:.0f} webhooks/s"
        )
    return 0 if worst <= TARGET_P99_S else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
