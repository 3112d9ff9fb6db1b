"""The cost of the access log line, per request: `uv run python -m bench.access_log`.

The service writes one line per request at INFO (the default LOG_LEVEL), from
app.metrics.ObserveRequests. This times exactly that call, with the handler and
formatter `serve` installs (app.log.configure_logging), writing to /dev/null so the
terminal's speed is not measured: the CPU a line costs the worker. Compared with the
same call at LOG_LEVEL=WARNING (the line is skipped), it is the price of the access log.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from typing import Any

from app.log import actor_var, configure_logging, request_id_var

EXTRA: dict[str, Any] = {
    "request_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "method": "GET",
    "route": "/api/v1/sessions/{session_id}/messages",
    "status": 200,
    "duration_ms": 1.23,
}


def per_call_us(level: str, log_format: str, calls: int, repeats: int) -> float:
    """Median microseconds per access-log call over `repeats` timed batches."""
    with open("/dev/null", "w") as sink:
        configure_logging(level, log_format)
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(sink)
        access_log = logging.getLogger("app.access")
        token = request_id_var.set(EXTRA["request_id"])
        actor = actor_var.set(None)
        timings = []
        try:
            for _ in range(repeats):
                started = time.perf_counter()
                for _ in range(calls):
                    if access_log.isEnabledFor(logging.INFO):
                        access_log.log(logging.INFO, "request", extra=EXTRA)
                timings.append((time.perf_counter() - started) / calls * 1e6)
        finally:
            request_id_var.reset(token)
            actor_var.reset(actor)
            handler.setStream(sys.stderr)
    return float(statistics.median(timings))


def measure(calls: int = 20_000, repeats: int = 7) -> dict[str, float]:
    """us per request: the line skipped, and written in each format."""
    return {
        "skipped (LOG_LEVEL=WARNING)": per_call_us("WARNING", "console", calls, repeats),
        "console (the default)": per_call_us("INFO", "console", calls, repeats),
        "json (LOG_FORMAT=json)": per_call_us("INFO", "json", calls, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.access_log", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    arguments = parser.parse_args()
    for label, micros in measure(arguments.calls, arguments.repeats).items():
        print(f"{label:<30} {micros:7.2f} us per request")


if __name__ == "__main__":
    main()
