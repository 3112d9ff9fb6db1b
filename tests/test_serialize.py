"""The RowShapes write exactly what the pydantic models would (app.serialize)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from app.schemas import Message, MessagePage, Session
from app.serialize import MESSAGE, SESSION, message_page


def _message(**changes: Any) -> dict[str, Any]:
    row = {
        "id": uuid.uuid4(),
        "conversation_id": uuid.uuid4(),
        "seq": 7,
        "role": "user",
        "content": 'quotes " and ✓ and \\ and\nnewlines',
        "created_at": datetime(2026, 12, 2, 9, 30, 0, 123456, tzinfo=UTC),
        "author_name": None,
    }
    row.update(changes)
    return row


@pytest.mark.parametrize(
    "row",
    [
        _message(),
        _message(role="staff", author_name="Dana"),
        _message(created_at=datetime(2026, 12, 2, 9, 30, tzinfo=UTC)),  # no microseconds
        _message(role="assistant", seq=2**62),
    ],
)
def test_a_message_row_is_written_as_the_model_writes_it(row: dict[str, Any]) -> None:
    expected = json.loads(Message.model_validate(row).model_dump_json())
    assert json.loads(MESSAGE.json(row)) == expected
    assert MESSAGE.json(row) == Message.model_validate(row).model_dump_json().encode()


def test_a_page_is_written_as_the_model_writes_it() -> None:
    rows = [_message(seq=1), _message(seq=2, role="staff", author_name="Dana")]
    expected = MessagePage(items=[Message.model_validate(row) for row in rows], has_more=True)
    assert message_page(rows, True) == expected.model_dump_json().encode()


def test_a_session_row_is_written_as_the_model_writes_it() -> None:
    row = {
        "session_id": "k3Jq9_xV2mTz8RbN4cWd0PfYhL6sAeGu1oQiE5nU7y",
        "conversation_id": uuid.uuid4(),
        "status": "active",
        "created_at": datetime(2026, 12, 2, 9, 30, 0, 5, tzinfo=UTC),
        "updated_at": datetime(2026, 12, 2, 9, 31, tzinfo=UTC),
        "user_id": uuid.uuid4(),  # a column the row has and the response must not
    }
    expected = Session.model_validate({k: v for k, v in row.items() if k != "user_id"})
    assert SESSION.json(row) == expected.model_dump_json().encode()
