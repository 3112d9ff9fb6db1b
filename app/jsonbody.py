"""Request JSON, parsed in one place for both the API routes and the hot-path layer.

Strict (orjson: no NaN or Infinity, valid UTF-8, no lone surrogates) and shallow: no
request of this API nests more than a few levels, while a deeply nested one would make
the recursive code behind it (validation, error rendering) fail with RecursionError.
The depth is measured without recursion, and only over containers.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_DEPTH = 32


class JSONInvalid(ValueError):
    """The body is not JSON."""


class JSONTooDeep(ValueError):
    """The body nests arrays and objects more than MAX_DEPTH levels deep."""


def _depth_exceeds(value: Any, limit: int) -> bool:
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                if depth >= limit:
                    return True
                pending.append((child, depth + 1))
    return False


def loads(body: bytes) -> Any:
    """The parsed body; JSONInvalid or JSONTooDeep when it is not acceptable."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        # orjson stops at its own depth limit (1024) before reading the rest.
        if str(error).startswith("depth limit exceeded"):
            raise JSONTooDeep from None
        raise JSONInvalid from None
    if isinstance(value, dict | list) and _depth_exceeds(value, MAX_DEPTH):
        raise JSONTooDeep
    return value


def is_json(content_types: list[str]) -> bool:
    """Exactly one Content-Type, and a JSON one (application/json or any +json type)."""
    if len(content_types) != 1:
        return False
    media_type = content_types[0].split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")
