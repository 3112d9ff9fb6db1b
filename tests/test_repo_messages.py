"""Messages: seq, idempotency keys, history pages, the activity bump."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.errors import Conflict, NotFound, Unprocessable
from app.models import Message
from app.repositories import conversations, messages
from tests.helpers import add_messages, new_session_id, open_session


async def test_seq_counts_up_per_conversation_from_one(db: AsyncSession) -> None:
    first = await open_session(db)
    second = await open_session(db)
    a = await add_messages(db, first.conversation_id, "a1", "a2", "a3")
    b = await add_messages(db, second.conversation_id, "b1")
    assert [row.seq for row in a] == [1, 2, 3]
    assert [row.seq for row in b] == [1]


async def test_seq_follows_insertion_order_within_one_transaction_and_statement(
    db: AsyncSession,
) -> None:
    row = await open_session(db)
    await db.execute(
        text(
            "INSERT INTO messages (conversation_id, role, content) "
            "SELECT :c, 'user', 'bulk ' || n FROM generate_series(1, 5) AS n ORDER BY n"
        ),
        {"c": row.conversation_id},
    )
    await db.execute(
        text("INSERT INTO messages (conversation_id, role, content) VALUES (:c, 'assistant', 'x')"),
        {"c": row.conversation_id},
    )
    rows = (
        await db.execute(
            select(Message.seq, Message.content)
            .where(Message.conversation_id == row.conversation_id)
            .order_by(Message.seq)
        )
    ).all()
    assert [seq for seq, _ in rows] == [1, 2, 3, 4, 5, 6]
    assert [content for _, content in rows] == [f"bulk {n}" for n in range(1, 6)] + ["x"]


async def test_a_message_by_plain_sql_bumps_the_conversation_activity(db: AsyncSession) -> None:
    row = await open_session(db)
    await db.execute(
        text("UPDATE conversations SET updated_at = '2000-01-01' WHERE id = :id"),
        {"id": row.conversation_id},
    )
    await db.execute(
        text("INSERT INTO messages (conversation_id, role, content) VALUES (:c, 'user', 'hi')"),
        {"c": row.conversation_id},
    )
    updated_at, now = (
        await db.execute(
            text("SELECT updated_at, now() FROM conversations WHERE id = :id"),
            {"id": row.conversation_id},
        )
    ).one()
    assert updated_at == now


async def test_appending_by_session_id_returns_the_stored_message(db: AsyncSession) -> None:
    session = await open_session(db)
    row, created = await messages.append(
        db, session_id=session.session_id, role="user", content="hello"
    )
    assert created
    assert (row.conversation_id, row.seq, row.role, row.content) == (
        session.conversation_id,
        1,
        "user",
        "hello",
    )
    assert row.created_at is not None


async def test_appending_to_an_unknown_conversation_is_not_found(db: AsyncSession) -> None:
    with pytest.raises(NotFound):
        await messages.append(db, session_id=new_session_id(), role="user", content="x")
    with pytest.raises(NotFound):
        await messages.append(db, conversation_id=uuid.uuid4(), role="user", content="x")


async def test_a_repeated_idempotency_key_returns_the_original(db: AsyncSession) -> None:
    session = await open_session(db)
    first, created = await messages.append(
        db, conversation_id=session.conversation_id, role="user", content="hi", idempotency_key="k1"
    )
    again, created_again = await messages.append(
        db, conversation_id=session.conversation_id, role="user", content="hi", idempotency_key="k1"
    )
    assert (created, created_again) == (True, False)
    assert again.id == first.id
    stored = (
        await db.execute(
            select(Message.id).where(Message.conversation_id == session.conversation_id)
        )
    ).all()
    assert len(stored) == 1


async def test_a_reused_key_with_other_content_is_refused(db: AsyncSession) -> None:
    session = await open_session(db)
    await messages.append(
        db, conversation_id=session.conversation_id, role="user", content="hi", idempotency_key="k"
    )
    with pytest.raises(Unprocessable):
        await messages.append(
            db,
            conversation_id=session.conversation_id,
            role="user",
            content="other",
            idempotency_key="k",
        )
    with pytest.raises(Unprocessable):
        await messages.append(
            db,
            conversation_id=session.conversation_id,
            role="assistant",
            content="hi",
            idempotency_key="k",
        )


async def test_the_same_key_in_two_conversations_is_two_messages(db: AsyncSession) -> None:
    first = await open_session(db)
    second = await open_session(db)
    one, _ = await messages.append(
        db, conversation_id=first.conversation_id, role="user", content="x", idempotency_key="k"
    )
    two, created = await messages.append(
        db, conversation_id=second.conversation_id, role="user", content="x", idempotency_key="k"
    )
    assert created
    assert one.id != two.id


async def test_an_archived_conversation_takes_no_messages(db: AsyncSession) -> None:
    session = await open_session(db)
    await conversations.set_status(db, conversation_id=session.conversation_id, status="archived")
    with pytest.raises(Conflict):
        await messages.append(db, session_id=session.session_id, role="user", content="late")


async def test_a_replay_is_still_answered_after_archiving(db: AsyncSession) -> None:
    session = await open_session(db)
    first, _ = await messages.append(
        db, session_id=session.session_id, role="user", content="hi", idempotency_key="r"
    )
    await conversations.set_status(db, conversation_id=session.conversation_id, status="archived")
    again, created = await messages.append(
        db, session_id=session.session_id, role="user", content="hi", idempotency_key="r"
    )
    assert (again.id, created) == (first.id, False)


async def test_the_database_refuses_an_unknown_role(db: AsyncSession) -> None:
    session = await open_session(db)
    with pytest.raises(IntegrityError):
        async with db.begin_nested():
            await db.execute(
                text(
                    "INSERT INTO messages (conversation_id, role, content) VALUES (:c, 'bot', 'x')"
                ),
                {"c": session.conversation_id},
            )


async def test_a_message_needs_an_existing_conversation(db: AsyncSession) -> None:
    with pytest.raises(IntegrityError):
        async with db.begin_nested():
            await db.execute(
                text(
                    "INSERT INTO messages (conversation_id, role, content) VALUES (:c, 'user', 'x')"
                ),
                {"c": uuid.uuid4()},
            )


async def _history(db: AsyncSession, count: int) -> uuid.UUID:
    session = await open_session(db)
    await db.execute(
        text(
            "INSERT INTO messages (conversation_id, role, content) "
            "SELECT :c, 'user', 'm' || n FROM generate_series(1, :count) AS n ORDER BY n"
        ),
        {"c": session.conversation_id, "count": count},
    )
    return session.conversation_id


async def test_the_latest_page_is_returned_oldest_first(db: AsyncSession) -> None:
    conversation_id = await _history(db, 10)
    items, has_more = await messages.page(db, conversation_id=conversation_id, limit=4)
    assert [item.seq for item in items] == [7, 8, 9, 10]
    assert has_more


async def test_before_pages_back_and_after_pages_forward(db: AsyncSession) -> None:
    conversation_id = await _history(db, 10)
    older, more_older = await messages.page(db, conversation_id=conversation_id, limit=4, before=7)
    assert [item.seq for item in older] == [3, 4, 5, 6]
    assert more_older
    oldest, none_older = await messages.page(db, conversation_id=conversation_id, limit=4, before=3)
    assert [item.seq for item in oldest] == [1, 2]
    assert not none_older
    newer, more_newer = await messages.page(db, conversation_id=conversation_id, limit=4, after=2)
    assert [item.seq for item in newer] == [3, 4, 5, 6]
    assert more_newer
    newest, none_newer = await messages.page(db, conversation_id=conversation_id, limit=4, after=6)
    assert [item.seq for item in newest] == [7, 8, 9, 10]
    assert not none_newer


async def test_an_empty_conversation_has_an_empty_page(db: AsyncSession) -> None:
    session = await open_session(db)
    items, has_more = await messages.page(db, session_id=session.session_id, limit=50)
    assert (items, has_more) == ([], False)


async def test_paging_an_unknown_session_is_not_found(db: AsyncSession) -> None:
    with pytest.raises(NotFound):
        await messages.page(db, session_id=new_session_id(), limit=5)


async def test_the_transcript_keeps_the_last_messages_oldest_first(db: AsyncSession) -> None:
    conversation_id = await _history(db, 25)
    transcript, _ = await messages.recent_transcript(
        db, conversation_id=conversation_id, messages=20, max_bytes=16384
    )
    lines = transcript.split("\n")
    assert lines[0] == "user: m6"
    assert lines[-1] == "user: m25"
    assert len(lines) == 20


async def test_a_long_transcript_loses_its_oldest_text_first(db: AsyncSession) -> None:
    session = await open_session(db)
    await add_messages(db, session.conversation_id, "é" * 5000, "newest words")
    transcript, _ = await messages.recent_transcript(
        db, conversation_id=session.conversation_id, messages=20, max_bytes=101
    )
    assert len(transcript.encode()) <= 101
    assert transcript.endswith("user: newest words")
    assert transcript.startswith("é")  # a split character is dropped whole


async def _open(db: AsyncSession, session_id: str) -> None:
    await conversations.open_session(
        db, session_id=session_id, contact={"name": None, "email": None, "phone": None}
    )


async def test_seq_trigger_probes_the_conversation_index_not_the_whole_table(
    connection: AsyncConnection,
) -> None:
    body = await connection.scalar(
        text("SELECT prosrc FROM pg_proc WHERE proname = 'messages_assign_seq'")
    )
    assert "IS NOT DISTINCT FROM" not in body
    assert "conversation_id = NEW.conversation_id" in body


async def test_messages_without_a_conversation_get_their_own_sequence(
    connection: AsyncConnection,
) -> None:
    seqs = (
        await connection.execute(
            text(
                "INSERT INTO messages (conversation_id, role, content) "
                "VALUES (NULL, 'user', 'a'), (NULL, 'user', 'b') RETURNING seq"
            )
        )
    ).scalars()
    first, second = sorted(seqs)
    assert second == first + 1


async def test_seq_keeps_counting_per_conversation(db: AsyncSession) -> None:
    await _open(db, "hot-path-seq-0000001")
    await _open(db, "hot-path-seq-0000002")
    for session_id in ("hot-path-seq-0000001", "hot-path-seq-0000002", "hot-path-seq-0000001"):
        await messages.append(db, session_id=session_id, role="user", content="hi")
    items, _ = await messages.page(db, session_id="hot-path-seq-0000001", limit=10)
    assert [item.seq for item in items] == [1, 2]


async def test_history_by_conversation_id_reads_the_same_messages(db: AsyncSession) -> None:
    await _open(db, "hot-path-byid-000001")
    created, _ = await messages.append(
        db, session_id="hot-path-byid-000001", role="user", content="hello"
    )
    items, has_more = await messages.page(db, conversation_id=created.conversation_id, limit=5)
    assert ([item.id for item in items], has_more) == ([created.id], False)


def _index_scans(plan: dict[str, Any], index: str) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan that scans `index`."""
    found = [plan] if plan.get("Index Name") == index else []
    for child in plan.get("Plans", []):
        found += _index_scans(child, index)
    return found


async def test_a_member_append_looks_its_key_up_within_the_conversation_whatever_the_stats(
    db: AsyncSession,
) -> None:
    # Statistics taken while no message had a key say the keys' index is empty. A plan
    # that trusted them scanned the whole index by key on every member message (and got
    # slower with every keyed message stored); the lookup must always be by the pair.
    row = await open_session(db)
    other = await open_session(db)
    await db.execute(
        text(
            "INSERT INTO messages (conversation_id, role, content) "
            "SELECT :c, 'user', 'filler' FROM generate_series(1, 2000)"
        ),
        {"c": other.conversation_id},
    )
    await db.execute(text("ANALYZE messages"))
    await add_messages(db, row.conversation_id, "one")
    raw = await (await db.connection()).get_raw_connection()
    explained = await raw.driver_connection.fetchval(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + messages.APPEND_BY_SESSION,
        row.session_id,
        "user",
        "hello",
        "key-1",
        30,
        False,
    )
    plan = (json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"]
    lookups = _index_scans(plan, "uq_messages_conversation_id_idempotency_key")
    assert lookups, "the replay check reads the (conversation, key) index"
    for scan in lookups:
        assert "conversation_id" in scan["Index Cond"], scan["Index Cond"]
