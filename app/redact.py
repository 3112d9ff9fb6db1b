"""Card numbers and SSNs out of stored text: one function for every write path.

Members paste payment card numbers and Social Security numbers into chats. A card
number (PAN) must be unreadable wherever it is stored (PCI DSS requirement 3), so
before a message or an escalation is written every such number is replaced:

* a card number, 13 to 19 digits written plain or grouped by single spaces or dashes,
  Luhn-valid (`stdnum.luhn`) and within a known card network's prefix and lengths,
  becomes ``[card ending 1234]`` (the last four digits kept, as PCI DSS allows);
* an SSN written ``AAA-GG-SSSS`` or ``AAA GG SSSS``, valid per `stdnum.us.ssn`
  (area 000, 666 and 9xx, group 00 and serial 0000 are never issued), becomes
  ``[ssn redacted]``.

Everything else stays byte for byte: a number is only ever replaced whole. Candidates
are maximal "runs": digit groups joined by single spaces or dashes. A card is a whole
run, or consecutive whole groups of one ("4111 1111 1111 1111 12/26" keeps the "12"),
never part of a group, so a digit string longer than 19 is left alone. An SSN is a
whole run of exactly three groups of 3, 2 and 4 digits with the same separator.

python-stdnum has no card-network (IIN) rules, so the prefixes and lengths below are
the published ones of the networks a US credit union's members carry (ISO/IEC 7812
issuer identification numbers as each network announces them). Kept deliberately
short: every prefix added is more text that can be mistaken for a card.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from itertools import accumulate

from stdnum import luhn
from stdnum.us import ssn

log = logging.getLogger("app.redact")

CARD = "card"
SSN = "ssn"
KINDS = (CARD, SSN)
ALL_KINDS: frozenset[str] = frozenset(KINDS)
NO_KINDS: frozenset[str] = frozenset()

SSN_REPLACEMENT = "[ssn redacted]"

# (network, prefixes: single values or inclusive ranges of the same width, lengths)
_NETWORKS: tuple[tuple[str, tuple[str | tuple[str, str], ...], tuple[int, ...]], ...] = (
    ("visa", ("4",), (13, 16, 19)),
    ("mastercard", (("51", "55"), ("2221", "2720")), (16,)),
    ("amex", ("34", "37"), (15,)),
    ("discover", ("6011", ("644", "649"), "65", ("622126", "622925")), (16, 17, 18, 19)),
    ("diners", (("300", "305"), "3095", "36", "38", "39"), (14, 15, 16, 17, 18, 19)),
    ("jcb", (("3528", "3589"),), (16, 17, 18, 19)),
    ("unionpay", ("62", "81"), (16, 17, 18, 19)),
    (
        "maestro",
        ("5018", "5020", "5038", "5893", "6304", "6759", "6761", "6762", "6763"),
        (13, 14, 15, 16, 17, 18, 19),
    ),
    ("mir", (("2200", "2204"),), (16, 17, 18, 19)),
)


def _prefix_table() -> dict[str, frozenset[int]]:
    table: dict[str, set[int]] = {}
    for _network, prefixes, lengths in _NETWORKS:
        for prefix in prefixes:
            first, last = (prefix, prefix) if isinstance(prefix, str) else prefix
            for number in range(int(first), int(last) + 1):
                table.setdefault(str(number).zfill(len(first)), set()).update(lengths)
    return {prefix: frozenset(lengths) for prefix, lengths in table.items()}


# Prefix (1 to 6 digits) → card lengths a network issues under it.
CARD_PREFIXES = _prefix_table()
_PREFIX_WIDTHS = sorted({len(prefix) for prefix in CARD_PREFIXES})

MIN_CARD_DIGITS, MAX_CARD_DIGITS = 13, 19
# Fewest digits anything redacted has (an SSN): shorter text is not even scanned.
_MIN_DIGITS = 9

# A maximal run of at least 9 digits in groups joined by single spaces or dashes. The
# look-behinds (after the first digit, which lets the engine skip to digits quickly)
# stop a match from starting inside a run; greediness ends it at the run's end. ASCII
# digits only, as card numbers and SSNs are written.
_RUN = re.compile(r"[0-9](?<![0-9]{2})(?<![0-9][ -][0-9])(?:[ -]?[0-9]){8,}")
_SEPARATOR = re.compile(r"[ -]")
_DIGIT_COUNT = str.maketrans("", "", "0123456789")
# Each digit d as the digit sum of 2d, for a quick Luhn screen before stdnum's own.
_DOUBLED = str.maketrans("0123456789", "0246813579")
NO_LENGTHS: frozenset[int] = frozenset()
_NO_NETWORK_STARTS = frozenset("0123456789") - {prefix[0] for prefix in CARD_PREFIXES}


def _network_lengths(digits: str) -> frozenset[int]:
    """The card lengths networks issue under this number's prefix (empty: no network)."""
    if digits[0] in _NO_NETWORK_STARTS:
        return NO_LENGTHS
    lengths = NO_LENGTHS
    for width in _PREFIX_WIDTHS:
        more = CARD_PREFIXES.get(digits[:width])
        if more is not None:
            lengths = lengths | more
    return lengths


def _luhn_valid(digits: str) -> bool:
    # A screen computing the same sum in C, then stdnum's checksum decides.
    screen = digits[-1::-2] + digits[-2::-2].translate(_DOUBLED)
    return sum(map(int, screen)) % 10 == 0 and luhn.is_valid(digits)


def is_card_number(digits: str) -> bool:
    """Whether a digit string is a payment card number: length, network prefix, Luhn."""
    return (
        MIN_CARD_DIGITS <= len(digits) <= MAX_CARD_DIGITS
        and len(digits) in _network_lengths(digits)
        and _luhn_valid(digits)
    )


def _card_replacement(digits: str) -> str:
    return f"[card ending {digits[-4:]}]"


def parse_kinds(value: str | Iterable[str]) -> frozenset[str]:
    """`card,ssn` (any order), one of them, or `none`; ValueError for anything else."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [item.strip().lower() for item in items if item.strip()]
    if names == ["none"]:
        return NO_KINDS
    unknown = sorted(set(names) - ALL_KINDS)
    if unknown or not names:
        raise ValueError("a comma list of card, ssn, or none")
    return frozenset(names)


def redact(text: str, kinds: frozenset[str] = ALL_KINDS) -> tuple[str, dict[str, int]]:
    """`text` with every card number and SSN of `kinds` replaced, and the count per kind.

    The counts hold only kinds found; `text` comes back as the same object when nothing
    matched.
    """
    if not kinds or len(text) - len(text.translate(_DIGIT_COUNT)) < _MIN_DIGITS:
        return text, {}
    counts: dict[str, int] = {}
    pieces: list[str] = []
    kept = 0
    for match in _RUN.finditer(text):
        run = match.group()
        replaced = _redact_run(run, kinds, counts)
        if replaced is not None:
            pieces.append(text[kept : match.start()])
            pieces.append(replaced)
            kept = match.end()
    if not pieces:
        return text, {}
    pieces.append(text[kept:])
    return "".join(pieces), counts


def _redact_run(run: str, kinds: frozenset[str], counts: dict[str, int]) -> str | None:
    """The run with its card numbers or SSN replaced; None when nothing matched."""
    if run.isdigit():  # one group: a card whole, or nothing
        if CARD in kinds and is_card_number(run):
            counts[CARD] = counts.get(CARD, 0) + 1
            return _card_replacement(run)
        return None
    groups = _SEPARATOR.split(run)
    if SSN in kinds and len(groups) == 3 and [len(group) for group in groups] == [3, 2, 4]:
        separators = run[3], run[6]
        if separators[0] == separators[1] and ssn.is_valid("".join(groups)):
            counts[SSN] = counts.get(SSN, 0) + 1
            return SSN_REPLACEMENT
    if CARD in kinds:
        return _redact_grouped_cards(run, groups, counts)
    return None


def _redact_grouped_cards(run: str, groups: list[str], counts: dict[str, int]) -> str | None:
    """Cards made of consecutive whole groups, leftmost first and longest at each start."""
    digits = "".join(groups)
    if len(digits) < MIN_CARD_DIGITS:
        return None
    if len(digits) <= MAX_CARD_DIGITS and is_card_number(digits):  # the usual case
        counts[CARD] = counts.get(CARD, 0) + 1
        return _card_replacement(digits)
    # before[i]: digits in the groups before group i; group i starts at before[i] + i in
    # `run` (separators are one character each).
    before = [0, *accumulate(len(group) for group in groups)]
    # Luhn sums of any span in constant time: prefix sums of the digits with every
    # other one doubled, one for each parity of the span's last digit (never doubled).
    plain = list(map(int, digits))
    doubled = list(map(int, digits.translate(_DOUBLED)))
    odd_doubled, even_doubled = plain[:], doubled[:]
    odd_doubled[1::2] = doubled[1::2]
    even_doubled[1::2] = plain[1::2]
    luhn_sums = ([0, *accumulate(odd_doubled)], [0, *accumulate(even_doubled)])
    # Where a span may end: the digit offset of each group boundary → the group after it.
    boundaries = {offset: index for index, offset in enumerate(before)}
    # Card lengths for a prefix, longest first; long runs repeat prefixes.
    lengths_by_prefix: dict[str, tuple[int, ...]] = {}
    pieces: list[str] = []
    kept = 0
    first = 0
    while first < len(groups):
        start = before[first]
        after = 0  # the group after the longest card starting here, if any
        if digits[start] not in _NO_NETWORK_STARTS:
            prefix = digits[start : start + 6]
            lengths = lengths_by_prefix.get(prefix)
            if lengths is None:
                lengths = tuple(sorted(_network_lengths(prefix), reverse=True))
                lengths_by_prefix[prefix] = lengths
            for length in lengths:
                end = start + length
                sums = luhn_sums[(end - 1) % 2]
                if (
                    end in boundaries
                    and (sums[end] - sums[start]) % 10 == 0
                    and luhn.is_valid(digits[start:end])
                ):
                    after = boundaries[end]
                    break
        if not after:
            first += 1
            continue
        pieces.append(run[kept : start + first])
        pieces.append(_card_replacement(digits[start : before[after]]))
        kept = before[after] + after - 1
        counts[CARD] = counts.get(CARD, 0) + 1
        first = after
    if not pieces:
        return None
    pieces.append(run[kept:])
    return "".join(pieces)


def report(counts: dict[str, int], *, table: str) -> None:
    """Count a stored write's redactions in /metrics and log them: kinds and counts only."""
    if not counts:
        return
    # Not at import: Settings imports this module, and prometheus_client must not be
    # imported before the CLI has set up its multiprocess directory.
    from app.metrics import REDACTIONS

    for kind, count in counts.items():
        REDACTIONS.labels(kind).inc(count)
    log.info("redacted", extra={"table": table, **{kind: counts[kind] for kind in sorted(counts)}})


def merge(*counts: dict[str, int]) -> dict[str, int]:
    """The sum of several count dicts."""
    total: dict[str, int] = {}
    for part in counts:
        for kind, count in part.items():
            total[kind] = total.get(kind, 0) + count
    return total
