"""One JSON serializer per response model, derived from the model's own fields.

The hot responses (a session, a message, a page of history) are written straight from
database rows with orjson: pydantic's validate-then-dump of a 50-message page costs
about ten times as much. The field list, and which fields are left out when empty, are
read once from the pydantic model, so the model stays the one definition of the shape
(and of the OpenAPI schema); a field added to it appears on every path.
tests/test_serialize.py checks each against the model's own `model_dump_json`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, get_args, get_origin

import orjson
from pydantic import BaseModel
from starlette.responses import Response

from app.repositories import Fields
from app.schemas import Message, MessagePage, Session


class JSONBytes(Response):
    """A JSON body already serialized (by a RowShape): FastAPI sends it as is."""

    media_type = "application/json"


def dumps(value: Any) -> bytes:
    """JSON as the API writes it. asyncpg's UUID type is its own: orjson writes only
    uuid.UUID natively, so others go through str(); datetimes come out as
    `isoformat()` does (an explicit "+00:00"), as the models' Timestamp serializer."""
    return orjson.dumps(value, default=str)


class RowShape:
    """The fields of a response model, read from a row (or a dict) by name."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model
        # (name, the shape of its items when it is a list of models), in the model's order.
        self._fields: list[tuple[str, RowShape | None]] = []
        self._omit: dict[str, Callable[[Any], bool]] = {}
        for name, field in model.model_fields.items():
            if field.alias not in (None, name):  # pragma: no cover - a guard for new models
                raise TypeError(f"{model.__name__}.{name}: aliases are not supported here")
            if field.exclude_if is not None:
                self._omit[name] = field.exclude_if
            annotation = field.annotation
            item = get_args(annotation)[0] if get_origin(annotation) is list else None
            nested = isinstance(item, type) and issubclass(item, BaseModel)
            self._fields.append((name, RowShape(item) if nested else None))  # type: ignore[arg-type]
        self._flat = all(shape is None for _, shape in self._fields)
        self._names = [name for name, _ in self._fields]

    def fields(self, row: Fields) -> dict[str, Any]:
        """The response object for one row."""
        if self._flat:
            out = {name: row[name] for name in self._names}
        else:
            out = {
                name: row[name] if shape is None else [shape.fields(item) for item in row[name]]
                for name, shape in self._fields
            }
        for name, excluded in self._omit.items():
            if excluded(out[name]):
                del out[name]
        return out

    def json(self, row: Fields) -> bytes:
        return dumps(self.fields(row))


SESSION = RowShape(Session)
MESSAGE = RowShape(Message)
MESSAGE_PAGE = RowShape(MessagePage)


def message_page(items: Iterable[Fields], has_more: bool) -> bytes:
    """A page of history as JSON."""
    return MESSAGE_PAGE.json({"items": list(items), "has_more": has_more})
