"""`uv run python -m bench.redaction`: what redaction adds to each stored write.

Every message and escalation text goes through app.redact.redact() before it is
stored, on the hot path as on the FastAPI path; nothing else is added to a request,
so its cost per call is the cost per request. Measured in-process on messages built
here (seeded, no real numbers): a typical 200-character message, one holding a card,
and 8,000-character messages (the default MESSAGE_MAX_CHARS) full of digits. Exits 1
when the typical message costs more than the target.
"""

from __future__ import annotations

import argparse
import random
import statistics
import timeit

from stdnum import luhn

from app.redact import redact

TARGET_US = 50.0
MESSAGE_CHARS = 8000


def _card(rng: random.Random) -> str:
    body = "4" + "".join(rng.choice("0123456789") for _ in range(14))
    return body + luhn.calc_check_digit(body)


def _fit(text: str, size: int) -> str:
    return (text * (size // len(text) + 1))[:size]


def messages(seed: int = 1) -> dict[str, str]:
    """The measured messages, by name."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test text, not secrets
    card = _card(rng)
    grouped = " ".join(card[i : i + 4] for i in range(0, 16, 4))
    digits = "0123456789"
    return {
        "typical 200 chars, no digits": _fit(
            "Hi, I was charged twice for the same purchase last week and would like to know "
            "when the refund shows up on my statement. ",
            200,
        ),
        "typical 200 chars, amounts/dates/phone": _fit(
            "I paid $1,234.56 on 2024-03-15, called 555-123-4567 about account 123456789. ", 200
        ),
        "200 chars with one card": _fit(
            f"Please block my card {grouped}, it was stolen yesterday evening. ", 70
        )
        + _fit("Thanks for the quick help with this. ", 130),
        "8,000 digits in groups of 4": " ".join(
            "".join(rng.choice(digits) for _ in range(4)) for _ in range(MESSAGE_CHARS // 5)
        )[:MESSAGE_CHARS],
        "8,000 digits in one run": "".join(rng.choice(digits) for _ in range(MESSAGE_CHARS)),
        "8,000 chars of numbers of 1-12 digits": " ".join(
            str(rng.randrange(10 ** rng.randint(1, 12))) for _ in range(MESSAGE_CHARS // 3)
        )[:MESSAGE_CHARS],
        "8,000 chars of '4 4 4 ...' (worst case)": _fit("4 ", MESSAGE_CHARS),
    }


def per_call_us(text: str, repeats: int, budget_s: float) -> float:
    """Median over `repeats` of the mean time per call, in microseconds."""
    calls = max(1, int(budget_s / max(timeit.timeit(lambda: redact(text), number=1), 1e-7)))
    runs = timeit.repeat(lambda: redact(text), number=calls, repeat=repeats)
    return statistics.median(runs) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    """Measure and print; 1 when the typical message misses the target."""
    parser = argparse.ArgumentParser(prog="python -m bench.redaction", description=__doc__)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per message")
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per timed run")
    arguments = parser.parse_args(argv)
    figures = {
        name: (len(text), per_call_us(text, arguments.repeats, arguments.budget), redact(text)[1])
        for name, text in messages().items()
    }
    print(f"{'message':<42} {'chars':>6} {'us/call':>10}  redactions")
    for name, (chars, micros, counts) in figures.items():
        found = ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items())) or "-"
        print(f"{name:<42} {chars:>6} {micros:>10.1f}  {found}")
    typical = max(micros for name, (_, micros, _) in figures.items() if "typical" in name)
    ok = typical <= TARGET_US
    print(
        f"\n{'PASS' if ok else 'FAIL'}  typical 200-character message: redaction <= "
        f"{TARGET_US:.0f} us per request  {typical:.1f} us"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
