"""Redaction rules over a generated corpus: every card and SSN goes, nothing else moves.

The corpus is built here with stdnum's Luhn check digit and a seeded random generator:
no real number is kept in the repository.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable

import pytest
from stdnum import luhn
from stdnum.us import ssn

from app.redact import (
    ALL_KINDS,
    CARD_PREFIXES,
    NO_KINDS,
    is_card_number,
    merge,
    parse_kinds,
    redact,
)
from app.settings import ConfigError, load_settings

SEED = 15
CARD_CORPUS_MIN = 2000
NEAR_MISS_MIN = 2000

# (prefix, length) per network and length it issues, for the generator.
CARD_SHAPES = [
    ("4", 13),
    ("4", 16),
    ("4", 19),
    ("51", 16),
    ("55", 16),
    ("2221", 16),
    ("2720", 16),
    ("34", 15),
    ("37", 15),
    ("6011", 16),
    ("644", 17),
    ("65", 19),
    ("622126", 16),
    ("300", 14),
    ("3095", 16),
    ("36", 14),
    ("38", 19),
    ("3528", 16),
    ("3589", 19),
    ("62", 17),
    ("81", 16),
    ("5018", 13),
    ("6759", 19),
    ("6304", 16),
    ("2200", 16),
    ("2204", 18),
]

SENTENCES = [
    "my card is {} thanks",
    "{} is the card",
    "Card number: {}.",
    "please check ({}) for me",
    "it's {}, expires 12/26",
    "charged twice on {}!",
    "card={};cvv later",
    '"{}"',
    "{}",
    "line one\n{}\nline two",
]


def _card(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return body + luhn.calc_check_digit(body)


def _grouped(digits: str, separator: str, size: int = 4) -> str:
    return separator.join(digits[i : i + size] for i in range(0, len(digits), size))


def _written(rng: random.Random, digits: str) -> str:
    style = rng.randrange(4)
    if style == 0:
        return digits
    if style == 1:
        return _grouped(digits, " ")
    if style == 2:
        return _grouped(digits, "-")
    if len(digits) == 15:  # American Express as printed: 4-6-5
        return f"{digits[:4]} {digits[4:10]} {digits[10:]}"
    return _grouped(digits, rng.choice(" -"))


def card_corpus() -> list[tuple[str, list[str]]]:
    """(message, its card numbers in order) for at least CARD_CORPUS_MIN cards."""
    rng = random.Random(SEED)
    corpus: list[tuple[str, list[str]]] = []
    while sum(len(lasts) for _, lasts in corpus) < CARD_CORPUS_MIN:
        for prefix, length in CARD_SHAPES:
            digits = _card(rng, prefix, length)
            sentence = rng.choice(SENTENCES)
            corpus.append((sentence.format(_written(rng, digits)), [digits]))
        # Two in one message.
        first = _card(rng, *rng.choice(CARD_SHAPES))
        second = _card(rng, *rng.choice(CARD_SHAPES))
        message = f"old {_written(rng, first)} and new {_written(rng, second)}."
        corpus.append((message, [first, second]))
    return corpus


def _luhn_invalid(rng: random.Random, prefix: str, length: int) -> str:
    digits = _card(rng, prefix, length)
    wrong = str((int(digits[-1]) + rng.randrange(1, 10)) % 10)
    return digits[:-1] + wrong


def _invalid_ssn(rng: random.Random) -> str:
    area = f"{rng.randrange(1, 900):03d}"
    group = f"{rng.randrange(1, 100):02d}"
    serial = f"{rng.randrange(1, 10000):04d}"
    broken = rng.randrange(5)
    if broken == 0:
        area = "000"
    elif broken == 1:
        area = "666"
    elif broken == 2:
        area = f"9{rng.randrange(100):02d}"
    elif broken == 3:
        group = "00"
    else:
        serial = "0000"
    return rng.choice(["{}-{}-{}", "{} {} {}"]).format(area, group, serial)


def _phone(rng: random.Random) -> str:
    def d(count: int) -> str:
        return "".join(rng.choice("0123456789") for _ in range(count))

    formats = [
        lambda: f"{d(3)}-{d(3)}-{d(4)}",
        lambda: f"({d(3)}) {d(3)}-{d(4)}",
        lambda: f"+1 {d(3)} {d(3)} {d(4)}",
        lambda: f"1-{d(3)}-{d(3)}-{d(4)}",
        lambda: f"{d(3)}.{d(3)}.{d(4)}",
        lambda: f"+44 20 {d(4)} {d(4)}",
        lambda: f"{d(10)}",
        lambda: f"+1{d(10)}",
    ]
    return rng.choice(formats)()


def near_miss_corpus() -> dict[str, list[str]]:
    """Messages that must stay byte for byte, by kind, NEAR_MISS_MIN in all or more."""
    rng = random.Random(SEED + 1)
    kinds: dict[str, Callable[[], str]] = {
        "luhn-invalid 16-digit": lambda: _written(rng, _luhn_invalid(rng, "4", 16)),
        "luhn-invalid other networks": lambda: _luhn_invalid(rng, *rng.choice(CARD_SHAPES)),
        "phone number": lambda: f"call me at {_phone(rng)} after 5",
        "date": lambda: (
            rng.choice(["{}-{:02d}-{:02d}", "{}/{:02d}/{:02d}", "{} {:02d} {:02d}"]).format(
                rng.randrange(1990, 2031), rng.randrange(1, 13), rng.randrange(1, 29)
            )
            + " was the day"
        ),
        "amount": lambda: (
            f"I paid ${rng.randrange(10**6):,}.{rng.randrange(100):02d} "
            f"and {rng.randrange(10**9)}.{rng.randrange(100):02d} EUR"
        ),
        "9-digit account": lambda: (
            f"member {rng.randrange(10**8, 10**9)} account {rng.randrange(10**8, 10**9)}"
        ),
        "invalid ssn": lambda: f"ssn {_invalid_ssn(rng)} maybe",
        "digit run over 19": lambda: (
            "ref "
            + _card(rng, "4", 16)
            + "".join(rng.choice("0123456789") for _ in range(rng.randrange(4, 30)))
        ),
        "valid card glued into a longer run": lambda: (
            "x" + str(rng.randrange(1, 10)) + _card(rng, *rng.choice(CARD_SHAPES))
        ),
        "no network": lambda: _card(rng, rng.choice(["1", "7", "9", "0", "80", "20"]), 16),
        "wrong length for its network": lambda: _card(rng, "34", 16),
    }
    return {kind: [make() for _ in range(250)] for kind, make in kinds.items()}


def test_every_card_of_the_corpus_is_redacted_with_its_last_four_kept() -> None:
    corpus = card_corpus()
    cards = sum(len(numbers) for _, numbers in corpus)
    assert cards >= CARD_CORPUS_MIN
    missed = []
    for message, numbers in corpus:
        redacted, counts = redact(message)
        expected = [f"[card ending {number[-4:]}]" for number in numbers]
        positions = [redacted.find(placeholder) for placeholder in expected]
        digits_left = "".join(ch for ch in redacted if ch.isdigit())
        if (
            counts != {"card": len(numbers)}
            or -1 in positions
            or positions != sorted(positions)
            or any(number[:-4] in digits_left for number in numbers)
        ):
            missed.append((message, redacted))
    print(f"card corpus: {len(corpus)} messages, {cards} cards, {len(missed)} missed")
    assert missed == []


def test_the_card_corpus_spans_every_network_and_length() -> None:
    for prefix, length in CARD_SHAPES:
        assert is_card_number(_card(random.Random(0), prefix, length)), (prefix, length)
    lengths = {length for _, length in CARD_SHAPES}
    assert lengths == set(range(13, 20))


def test_no_near_miss_changes_a_byte() -> None:
    corpus = near_miss_corpus()
    size = sum(len(messages) for messages in corpus.values())
    assert size >= NEAR_MISS_MIN
    false_positives = [
        (kind, message)
        for kind, messages in corpus.items()
        for message in messages
        if redact(message) != (message, {})
    ]
    print(f"near misses: {size} messages, {len(false_positives)} false positives")
    assert false_positives == []


def test_the_near_miss_ssns_are_invalid_per_stdnum_and_the_valid_ones_redacted() -> None:
    rng = random.Random(SEED + 2)
    for _ in range(500):
        assert not ssn.is_valid(_invalid_ssn(rng).replace(" ", "-"))
    redacted = 0
    for _ in range(500):
        area, group, serial = rng.randrange(1, 666), rng.randrange(1, 100), rng.randrange(1, 10**4)
        number = f"{area:03d}-{group:02d}-{serial:04d}"
        if not ssn.is_valid(number):
            continue
        for written in (number, number.replace("-", " ")):
            assert redact(f"my ssn is {written}.") == ("my ssn is [ssn redacted].", {"ssn": 1})
            redacted += 1
    assert redacted > 900


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4111 1111 1111 1111 12/26", "[card ending 1111] 12/26"),
        ("4111111111111111 123", "[card ending 1111] 123"),
        ("12 4111-1111-1111-1111", "12 [card ending 1111]"),
        ("3782 822463 10005", "[card ending 0005]"),
        ("5555555555554444,4111111111111111", "[card ending 4444],[card ending 1111]"),
        ("536-90-4399 and 4111111111111111", "[ssn redacted] and [card ending 1111]"),
    ],
)
def test_a_card_is_whole_groups_of_a_longer_grouped_run(text: str, expected: str) -> None:
    assert redact(text)[0] == expected


@pytest.mark.parametrize(
    "text",
    [
        "41111111111111111",  # 17 digits: Luhn fails
        "4111111111111111 1",  # the 17-digit run: the card inside is still found below
        "536-90 4399",  # mixed separators are not an SSN
        "536-90-4399-1",  # inside a longer run
        "1 536 90 4399",
        "4111  1111  1111  1111",  # double spaces: not one number
        "4111_1111_1111_1111",
        "078-05-1120",  # stdnum's list of numbers known to be invalid (published samples)
    ],
)
def test_what_is_not_one_number_stays(text: str) -> None:
    if text == "4111111111111111 1":
        assert redact(text) == ("[card ending 1111] 1", {"card": 1})
        return
    assert redact(text) == (text, {})


def test_redacting_twice_changes_nothing_more() -> None:
    for message, _ in card_corpus()[:300]:
        once, _ = redact(message)
        assert redact(once) == (once, {})


def test_kinds_choose_what_is_redacted() -> None:
    text = "card 4111111111111111 ssn 536-90-4399"
    only_cards = ("card [card ending 1111] ssn 536-90-4399", {"card": 1})
    assert redact(text, frozenset({"card"})) == only_cards
    only_ssns = ("card 4111111111111111 ssn [ssn redacted]", {"ssn": 1})
    assert redact(text, frozenset({"ssn"})) == only_ssns
    assert redact(text, NO_KINDS) == (text, {})
    assert redact("4111 1111 1111 1111", frozenset({"ssn"})) == ("4111 1111 1111 1111", {})
    assert redact("536 90 4399", frozenset({"card"})) == ("536 90 4399", {})
    assert redact(text, ALL_KINDS)[1] == {"card": 1, "ssn": 1}


def test_text_without_a_match_comes_back_as_the_same_object() -> None:
    text = "order 12345 of 2024-01-02 for $1,234.56, call 555-123-4567"
    assert redact(text)[0] is text


def test_counts_merge() -> None:
    assert merge({"card": 1}, {}, {"card": 2, "ssn": 1}) == {"card": 3, "ssn": 1}


def test_the_prefix_table_holds_only_digit_prefixes_of_at_most_six() -> None:
    assert all(prefix.isdigit() and 1 <= len(prefix) <= 6 for prefix in CARD_PREFIXES)
    assert all(13 <= length <= 19 for lengths in CARD_PREFIXES.values() for length in lengths)


# --- the REDACT setting -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kinds"),
    [("card,ssn", {"card", "ssn"}), (" SSN ", {"ssn"}), ("card", {"card"}), ("none", set())],
)
def test_redact_takes_a_comma_list_or_none(value: str, kinds: set[str]) -> None:
    assert load_settings(_env_file=None, redact=value).redact == kinds
    assert parse_kinds(value) == kinds


def test_redact_defaults_to_cards_and_ssns() -> None:
    assert load_settings(_env_file=None).redact == {"card", "ssn"}


@pytest.mark.parametrize("value", ["cards", "card,none", "", "pan", ","])
def test_a_bad_redact_value_fails_with_one_line_naming_it(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, redact=value)
    assert str(caught.value).startswith("REDACT: ")
    assert "\n" not in str(caught.value)


def test_a_bad_redact_value_stops_the_service_at_start_up() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from app.asgi import create; create()"],
        env={"REDACT": "cards", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: REDACT: must be a comma list")
