"""`python -m bench.redaction` measures every message it names and states the target.
The figures mean nothing under a test run; bench/README.md holds a real run's."""

from __future__ import annotations

import pytest

from app.redact import redact
from bench import redaction


def test_the_measured_messages_are_what_their_names_say() -> None:
    measured = redaction.messages()
    assert all(len(text) == 200 for name, text in measured.items() if "200" in name)
    assert all(len(text) >= 7999 for name, text in measured.items() if "8,000" in name)
    assert redact(measured["200 chars with one card"])[1] == {"card": 1}
    assert redact(measured["typical 200 chars, amounts/dates/phone"])[1] == {}


def test_the_redaction_bench_prints_every_figure_and_the_target(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = redaction.main(["--repeats", "1", "--budget", "0.001"])
    out = capsys.readouterr().out
    assert code in (0, 1)
    for name in redaction.messages():
        assert name in out
    assert "typical 200-character message: redaction <= 50 us per request" in out
