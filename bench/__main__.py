"""`uv run python -m bench`: the service against a raw-asyncpg floor, side by side.

Creates and seeds its own database, starts the service (one worker) and the baseline
app, drives both from a separate load-generator process in interleaved rounds
(A, B, B, A, ...) and prints medians as ratios, which hold on a noisy shared machine.
Through the loads, `--streams` idle member streams (default 1,000; 0 skips) stay open on
the service; afterwards the commit-to-client latency across them and the worker's RSS
growth per stream are checked too (bench/streams.py). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import access_log, seed

if TYPE_CHECKING:
    from bench.streams import StreamPhase

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-service-key"
CONTENT = json.dumps({"content": "Hello, I would like to know how to raise my card limit."})


def log(message: str) -> None:
    """Progress on stderr; the report goes to stdout."""
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(port: int, path: str, process: subprocess.Popen[bytes], limit: float = 30) -> float:
    """Seconds until GET path answers 200."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as answer:
                if answer.status == 200:
                    return time.perf_counter() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.005)
    raise RuntimeError(f"server on port {port} not ready after {limit} s")


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    ready_path: str
    log_dir: Path = Path("/tmp")  # noqa: S108 - replaced by run()'s own directory
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    startup_s: float = 0.0

    def start(self) -> None:
        """Start it on a free port and wait until it is ready."""
        self.port = free_port()
        command = [part.replace("{port}", str(self.port)) for part in self.command]
        started = time.perf_counter()
        # The service logs one line per request (the default LOG_LEVEL, as shipped): to a
        # file, as in production, not to this terminal.
        with (self.log_dir / f"{self.name}.log").open("ab") as log_file:
            self.process = subprocess.Popen(  # noqa: S603
                command,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        wait_ready(self.port, self.ready_path, self.process)
        self.startup_s = time.perf_counter() - started

    def stop(self) -> None:
        """SIGINT (a graceful uvicorn shutdown), then wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def peak_rss_mb(self) -> float:
        """Peak resident set size of the process so far (VmHWM)."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024


class LoadGenerator:
    """The bench.load process: one JSON job in, one JSON result out."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.load"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one job and return its result."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the load generator died")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        """End it (closing stdin ends its loop)."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=10)


@dataclass
class Scenario:
    name: str
    label: str
    method: str
    paths: list[str]
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def median(self, target: str, key: str) -> float:
        """The median of one figure over the rounds."""
        return float(statistics.median(result[key] for result in self.results[target]))


def scenarios(plan: seed.Plan, rng: random.Random) -> list[Scenario]:
    """The requests a chat backend lives on, over the seeded data."""
    hot = [seed.session_id(k * seed.HOT_STRIDE) for k in range(1, plan.hot + 1)]
    rng.shuffle(hot)
    shallow = [
        seed.session_id(k * seed.HOT_STRIDE) for k in range(1, seed.SHALLOW_CONVERSATIONS + 1)
    ]
    medium_last = seed.SHALLOW_CONVERSATIONS + seed.MEDIUM_CONVERSATIONS
    medium = [seed.session_id(k * seed.HOT_STRIDE) for k in range(1, medium_last + 1)]
    long_session = seed.session_id(plan.long_conversation)
    base = "/api/v1/sessions/"
    postable = [sid for sid in hot if sid != long_session]

    def shuffled(paths: list[str], count: int = 5000) -> list[str]:
        return [rng.choice(paths) for _ in range(count)]

    return [
        Scenario("session", "GET session", "GET", [base + sid for sid in hot]),
        Scenario(
            "history",
            "GET history (latest 50)",
            "GET",
            shuffled([f"{base}{sid}/messages" for sid in medium]),
        ),
        Scenario(
            "deep",
            "GET history before= (100,000-message conv.)",
            "GET",
            [
                f"{base}{long_session}/messages?before={rng.randint(1_000, 2_000)}"
                for _ in range(5000)
            ],
        ),
        Scenario(
            "shallow",
            "GET history before= (100-message conv.)",
            "GET",
            [
                f"{base}{rng.choice(shallow)}/messages?before={rng.randint(51, 100)}"
                for _ in range(5000)
            ],
        ),
        Scenario("post", "POST message", "POST", [f"{base}{sid}/messages" for sid in postable]),
    ]


def measure_page_depth(
    load: LoadGenerator, port: int, cases: list[Scenario], seconds: float
) -> dict[str, Any]:
    """p50 latency of deep and shallow `before=` pages, alternated request by request on
    one connection: each deep page is timed right next to a shallow one, so whatever else
    the machine does weighs on both alike, and no queue in front of a busy worker hides
    what the page itself costs."""
    deep = next(case for case in cases if case.name == "deep").paths
    shallow = next(case for case in cases if case.name == "shallow").paths
    paths = [path for pair in zip(deep, shallow, strict=True) for path in pair]
    result = load.run(
        {
            "name": "depth",
            "host": "127.0.0.1",
            "port": port,
            "method": "GET",
            "paths": paths,
            "labels": ["deep", "shallow"] * len(deep),
            "connections": 1,
            "seconds": seconds,
            "warmup": 0.5,
        }
    )
    require_2xx(result, "depth")
    return result


def require_2xx(result: dict[str, Any], what: str) -> None:
    """A load result's figures mean nothing if any answer was an error."""
    bad = {code: n for code, n in result["statuses"].items() if code[0] != "2"}
    if bad:
        raise RuntimeError(f"{what}: non-2xx answers {bad}")


def measure_stats(port: int, samples: int = 15, path: str | None = None) -> list[float]:
    """Sequential GETs of a stats route (default /stats?since=<24h ago>), in milliseconds
    (after one warm-up call)."""
    if path is None:
        since = (datetime.now(UTC) - timedelta(hours=24)).isoformat()
        path = f"/api/v1/stats?since={urllib.parse.quote(since)}"
    url = f"http://127.0.0.1:{port}{path}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {API_KEY}"})
    timings = []
    for attempt in range(samples + 1):
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{path} answered {answer.status}")
        if attempt:
            timings.append((time.perf_counter() - started) * 1000)
    return timings


def compile_bytecode() -> None:
    """Bytecode for the service and its packages, as a deployed image has it (the
    Dockerfile's UV_COMPILE_BYTECODE=1). Where PYTHONDONTWRITEBYTECODE is set, Python
    never caches it, and every start-up would compile the whole stack from source first:
    twice the start-up time, none of it the service's. Files already compiled are skipped.
    """
    started = time.perf_counter()
    targets = [str(ROOT / "app"), sysconfig.get_paths()["purelib"]]
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "compileall", "-q", "-j", "0", *targets],
        check=False,
        stdout=subprocess.DEVNULL,
    )
    # A stray file that does not compile (say, a package's Python 2 fixture) only costs
    # that file; the measurement goes on.
    note = "" if done.returncode == 0 else f" (compileall exited {done.returncode})"
    log(f"  bytecode compiled in {time.perf_counter() - started:.1f} s{note}")


def run(arguments: argparse.Namespace) -> int:
    """The whole bench; returns the exit code (1 when a target is missed)."""
    server_url = arguments.server_url
    plan = seed.Plan(conversations=arguments.conversations, filler=arguments.filler)
    rng = random.Random(arguments.seed)  # noqa: S311 - reproducible load, not secrets
    run_started = time.perf_counter()
    name = asyncio.run(seed.create_database(server_url))
    url = seed.database_url(server_url, name)
    log(f"bench database {name}")
    servers: list[Server] = []
    load: LoadGenerator | None = None
    streams: StreamPhase | None = None
    try:
        from app.migrations import upgrade_to_head

        started = time.perf_counter()
        upgrade_to_head(url)
        log(f"  migrated in {time.perf_counter() - started:.1f} s")
        seed_started = time.perf_counter()
        asyncio.run(seed.seed(url, plan, log))
        seed_seconds = time.perf_counter() - seed_started
        rows = asyncio.run(seed.counts(url))
        log(f"  rows: {rows}")

        # The shipped defaults: pool, log level and format, hot paths on.
        service_env = {
            "DATABASE_URL": url,
            "API_KEYS": API_KEY,
            # Room for the stream phase's connections over the default cap (512).
            "HTTP_LIMIT_CONCURRENCY": str(arguments.streams + 512),
            **dict(item.split("=", 1) for item in arguments.service_env),
        }
        log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
        log(f"  the servers' logs: {log_dir}")
        bin_dir = Path(sys.executable).parent
        service = Server(
            "service",
            [str(bin_dir / "member-support"), "serve", "--port", "{port}", "--workers", "1"],
            service_env,
            "/readyz",
            log_dir,
        )
        # The same service with HOT_PATHS=off: every request through FastAPI.
        framework = Server(
            "fastapi", service.command, {**service_env, "HOT_PATHS": "off"}, "/readyz", log_dir
        )
        baseline = Server(
            "baseline",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.baseline:app",
                "--port",
                "{port}",
                "--no-access-log",
                "--log-level",
                "warning",
                "--no-server-header",
            ],
            {"BASELINE_DSN": url},
            "/readyz",
            log_dir,
        )
        servers = [service, framework, baseline]
        compile_bytecode()
        startups = []
        for _ in range(3):
            service.start()
            startups.append(service.startup_s)
            service.stop()
        service.start()
        framework.start()
        baseline.start()
        log(
            f"  service start-up {[round(s, 2) for s in startups]} s; "
            f"baseline {baseline.startup_s:.2f} s"
        )

        streams = stream_phase(service, arguments.streams)
        load = LoadGenerator()
        cases = scenarios(plan, rng)
        for round_number in range(arguments.rounds):
            order = servers[round_number % 3 :] + servers[: round_number % 3]
            for case in cases:
                for server in order:
                    result = load.run(
                        {
                            "name": case.name,
                            "host": "127.0.0.1",
                            "port": server.port,
                            "method": case.method,
                            "paths": case.paths,
                            "body": CONTENT,
                            "connections": arguments.connections,
                            "seconds": arguments.seconds,
                            "warmup": arguments.warmup,
                        }
                    )
                    require_2xx(result, f"{server.name} {case.name}")
                    case.results.setdefault(server.name, []).append(result)
            log(f"  round {round_number + 1}/{arguments.rounds} done")
        peak_rss = {server.name: server.peak_rss_mb() for server in servers}
        depth = {
            server.name: measure_page_depth(load, server.port, cases, arguments.depth_seconds)
            for server in (service, baseline)
        }
        access_log_us = access_log.measure()
        stats_ms = measure_stats(service.port)
        daily_ms = measure_stats(service.port, path="/api/v1/stats/daily?days=30")
        stream_figures = streams.finish(arguments.stream_writes) if streams else None
        report = Report(
            cases=cases,
            startups=startups,
            peak_rss=peak_rss,
            stats_ms=stats_ms,
            daily_ms=daily_ms,
            depth=depth,
            rows=rows,
            seed_seconds=seed_seconds,
            arguments=arguments,
            access_log_us=access_log_us,
            streams=stream_figures,
        )
        passed = report.print()
        if arguments.json:
            Path(arguments.json).write_text(json.dumps(report.as_dict(), indent=2))
        log(f"bench took {time.perf_counter() - run_started:.0f} s")
        return 0 if passed else 1
    finally:
        if streams is not None:
            streams.close()
        if load is not None:
            load.close()
        for server in servers:
            server.stop()
        if arguments.keep:
            log(f"kept database {name}: {url}")
        else:
            asyncio.run(seed.drop_database(server_url, name))


def stream_phase(service: Server, count: int) -> StreamPhase | None:
    """Open `count` idle member streams on the service (bench/streams.py); None for 0."""
    if count <= 0:
        return None
    from bench.streams import StreamPhase

    assert service.process is not None
    phase = StreamPhase(service.port, service.process.pid, count)
    try:
        phase.open()
    except BaseException:
        phase.close()
        raise
    return phase


@dataclass
class Report:
    cases: list[Scenario]
    startups: list[float]
    peak_rss: dict[str, float]
    stats_ms: list[float]
    daily_ms: list[float]
    depth: dict[str, dict[str, Any]]
    rows: dict[str, int]
    seed_seconds: float
    arguments: argparse.Namespace
    access_log_us: dict[str, float]
    streams: dict[str, Any] | None = None
    checks: list[tuple[str, str, bool]] = field(default_factory=list)

    def case(self, name: str) -> Scenario:
        """A scenario by name."""
        return next(case for case in self.cases if case.name == name)

    def check(self, label: str, figure: str, ok: bool) -> None:
        """Record one target."""
        self.checks.append((label, figure, ok))

    def print(self) -> bool:
        """Print the report; True when every target is met."""
        out: Callable[[str], None] = print
        rows = ", ".join(f"{n:,} {table}" for table, n in self.rows.items())
        out(f"\nData: {rows} (seeded in {self.seed_seconds:.0f} s)")
        out(
            f"Load: {self.arguments.connections} connections, {self.arguments.rounds} interleaved "
            f"rounds of {self.arguments.seconds:g} s per request kind and server; "
            "medians over rounds\n"
        )
        out(
            f"{'request':<46}{'service req/s':>14}{'baseline req/s':>15}{'ratio':>7}"
            f"{'p50 ms':>8}{'p99 ms':>8}{'p99/p50':>8}{'base p50':>9}"
            f"{'fastapi req/s':>14}{'ratio':>7}{'+us/req':>8}"
        )
        for case in self.cases:
            service = case.median("service", "rps")
            baseline = case.median("baseline", "rps")
            framework = case.median("fastapi", "rps")
            p50 = case.median("service", "p50_ms")
            p99 = case.median("service", "p99_ms")
            # One worker, saturated: the time per request is the inverse of its rate, so
            # the difference is what the framework path adds to each request.
            extra_us = (1 / framework - 1 / service) * 1e6
            out(
                f"{case.label:<46}{service:>14.0f}{baseline:>15.0f}{service / baseline:>7.2f}"
                f"{p50:>8.2f}{p99:>8.2f}{p99 / p50:>8.2f}{case.median('baseline', 'p50_ms'):>9.2f}"
                f"{framework:>14.0f}{framework / baseline:>7.2f}{extra_us:>8.0f}"
            )
        out(
            "(service: as shipped, hot paths on; fastapi: HOT_PATHS=off; +us/req: what the "
            "FastAPI path costs a request over the hot path)"
        )
        out("")
        out("Access log line per request (bench.access_log, in-process, to /dev/null):")
        for label, micros in self.access_log_us.items():
            out(f"  {label:<30} {micros:6.2f} us")
        out("")
        for name, floor in (("session", 0.7), ("history", 0.8), ("post", 0.8)):
            case = self.case(name)
            ratio = case.median("service", "rps") / case.median("baseline", "rps")
            rounds = [
                mine["rps"] / theirs["rps"]
                for mine, theirs in zip(
                    case.results["service"], case.results["baseline"], strict=True
                )
            ]
            met = sum(value >= floor for value in rounds)
            needed = math.ceil(0.8 * len(rounds))  # 4 of 5
            self.check(
                f"{case.label}: service/baseline req/s >= {floor} "
                "(median; the last round and 4 of 5)",
                f"{ratio:.2f}; rounds {' '.join(f'{value:.2f}' for value in rounds)}",
                ratio >= floor and rounds[-1] >= floor and met >= needed,
            )
        pages = self.depth["service"]["by_label"]
        deep, shallow = pages["deep"]["p50_ms"], pages["shallow"]["p50_ms"]
        base = self.depth["baseline"]["by_label"]

        def loaded(target: str) -> float:
            return self.case("deep").median(target, "p50_ms") / self.case("shallow").median(
                target, "p50_ms"
            )

        self.check(
            "deep before= page p50 <= 1.1 x 100-message page p50",
            f"{deep / shallow:.2f} ({deep:.2f} / {shallow:.2f} ms alternated on one "
            f"connection; baseline {base['deep']['p50_ms'] / base['shallow']['p50_ms']:.2f}. "
            f"Under load {loaded('service'):.2f}, baseline {loaded('baseline'):.2f})",
            deep / shallow <= 1.1,
        )
        stats_median = statistics.median(self.stats_ms)
        self.check(
            f"/stats?since=<24h ago> with {self.rows['conversations']:,} conversations < 100 ms",
            f"median {stats_median:.1f} ms, max {max(self.stats_ms):.1f} ms",
            stats_median < 100,
        )
        daily_median = statistics.median(self.daily_ms)
        self.check(
            f"/stats/daily?days=30 with {self.rows['conversations']:,} conversations < 150 ms",
            f"median {daily_median:.1f} ms, max {max(self.daily_ms):.1f} ms",
            daily_median < 150,
        )
        for case in self.cases:
            if case.name in ("deep", "shallow"):
                continue
            spread = case.median("service", "p99_ms") / case.median("service", "p50_ms")
            self.check(
                f"{case.label}: p99 <= 3 x p50 at {self.arguments.connections} connections",
                f"{spread:.2f}",
                spread <= 3,
            )
        startup = statistics.median(self.startups)
        self.check(
            "start-up (spawn to /readyz 200) < 1.5 s", f"median {startup:.2f} s", startup < 1.5
        )
        rss = self.peak_rss["service"]
        self.check(
            "peak RSS of the worker under load < 150 MB",
            f"{rss:.0f} MB (baseline {self.peak_rss['baseline']:.0f} MB)",
            rss < 150,
        )
        if self.streams is not None:
            from bench.streams import checks as stream_checks

            for target in stream_checks(self.streams):
                self.check(*target)
        width = max(len(label) for label, _, _ in self.checks)
        for label, figure, ok in self.checks:
            out(f"{'PASS' if ok else 'FAIL'}  {label:<{width}}  {figure}")
        return all(ok for _, _, ok in self.checks)

    def as_dict(self) -> dict[str, Any]:
        """Everything measured, for --json."""
        return {
            "rows": self.rows,
            "startups_s": self.startups,
            "peak_rss_mb": self.peak_rss,
            "stats_ms": self.stats_ms,
            "daily_ms": self.daily_ms,
            "depth": self.depth,
            "cases": {case.name: case.results for case in self.cases},
            "access_log_us": self.access_log_us,
            "streams": self.streams,
            "checks": [{"target": t, "figure": f, "ok": ok} for t, f, ok in self.checks],
        }


def main() -> None:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--server-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="PostgreSQL server to create the bench database on (BENCH_DATABASE_URL)",
    )
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument(
        "--filler", type=int, default=88, help="messages in each other hot conversation"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--depth-seconds",
        type=float,
        default=5.0,
        help="seconds of deep and shallow pages alternated on one connection",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the service (repeatable), e.g. DB_POOL_PRE_PING=true",
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=1000,
        help="idle member streams held open on the service through the loads, then timed "
        "(0 skips the stream phase)",
    )
    parser.add_argument(
        "--stream-writes", type=int, default=20, help="messages timed across the open streams"
    )
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    raise SystemExit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
