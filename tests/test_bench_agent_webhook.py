"""`python -m bench.agent_webhook` at a small scale: it writes, delivers through 1 and 2
workers, prints each figure and the target, and drops its database. The figures mean
nothing under a test run; bench/README.md holds a real run's."""

from __future__ import annotations

import pytest

from bench import agent_webhook


def test_the_fan_out_bench_reports_every_worker_count(
    server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = agent_webhook.main(
        ["--server-url", server_url, "--messages", "30", "--conversations", "3", "--writers", "3"]
    )
    out = capsys.readouterr().out
    assert code in (0, 1)
    assert "target p99 <= 1 s" in out
    for workers in (1, 2):
        assert f"{workers} worker(s): commit -> 2xx p50" in out
