"""`python -m bench.request_cpu` and `python -m bench.access_log` run end to end and
print every figure. The figures mean nothing under a test run; bench/README.md holds a
real run's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ops_support import asyncpg_dsn

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(os.environ.get("TEST_POOLER_URL")),
        reason="the bench runs its app on a direct connection; the direct pass covers it",
    ),
]


def _run(*arguments: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_cpu_bench_measures_both_paths(server_url: str) -> None:
    out = _run(
        "bench.request_cpu",
        "--server-url",
        asyncpg_dsn(server_url),
        "--requests",
        "20",
        "--repeats",
        "1",
    )
    assert "HOT_PATHS=on" in out and "HOT_PATHS=off" in out
    for kind in ("GET session", "GET history (latest 50)", "POST message"):
        line = next(line for line in out.splitlines() if line.startswith(kind))
        assert line.count(" us") == 3, line


def test_the_access_log_bench_prints_each_format() -> None:
    out = _run("bench.access_log", "--calls", "200", "--repeats", "1")
    for label in ("skipped (LOG_LEVEL=WARNING)", "console (the default)", "json (LOG_FORMAT=json)"):
        assert label in out
