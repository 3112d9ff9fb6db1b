"""The hot paths after their optimisation: the seq trigger, the idle-only pool ping,
and the driver-level statements of the three requests a chat backend lives on."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app import db as db_module
from app.db import create_engine
from app.errors import Conflict, NotFound, Unprocessable
from app.repositories import conversations, messages
from app.settings import Settings


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


async def test_session_read_returns_the_member_view(db: AsyncSession) -> None:
    await _open(db, "hot-path-read-000001")
    row = await conversations.get_session(db, session_id="hot-path-read-000001")
    assert (row.session_id, row.status) == ("hot-path-read-000001", "active")
    assert row.created_at.tzinfo is not None


async def test_session_read_of_an_unknown_id_is_not_found(db: AsyncSession) -> None:
    with pytest.raises(NotFound):
        await conversations.get_session(db, session_id="hot-path-missing-0001")


async def test_history_pages_go_back_with_before_and_forward_with_after(db: AsyncSession) -> None:
    await _open(db, "hot-path-page-000001")
    for number in range(1, 8):
        await messages.append(
            db, session_id="hot-path-page-000001", role="user", content=f"m{number}"
        )
    latest, more_latest = await messages.page(db, session_id="hot-path-page-000001", limit=3)
    older, more_older = await messages.page(
        db, session_id="hot-path-page-000001", limit=3, before=2
    )
    newer, more_newer = await messages.page(db, session_id="hot-path-page-000001", limit=3, after=5)
    assert ([m.seq for m in latest], more_latest) == ([5, 6, 7], True)
    assert ([m.seq for m in older], more_older) == ([1], False)
    assert ([m.seq for m in newer], more_newer) == ([6, 7], False)


async def test_history_by_conversation_id_reads_the_same_messages(db: AsyncSession) -> None:
    await _open(db, "hot-path-byid-000001")
    created, _ = await messages.append(
        db, session_id="hot-path-byid-000001", role="user", content="hello"
    )
    items, has_more = await messages.page(db, conversation_id=created.conversation_id, limit=5)
    assert ([item.id for item in items], has_more) == ([created.id], False)


async def test_an_idempotent_repeat_returns_the_original_message(db: AsyncSession) -> None:
    await _open(db, "hot-path-idem-000001")
    first, created = await messages.append(
        db, session_id="hot-path-idem-000001", role="user", content="once", idempotency_key="k1"
    )
    again, created_again = await messages.append(
        db, session_id="hot-path-idem-000001", role="user", content="once", idempotency_key="k1"
    )
    assert (created, created_again, again.id, again.seq) == (True, False, first.id, first.seq)


async def test_an_idempotency_key_reused_for_other_content_is_unprocessable(
    db: AsyncSession,
) -> None:
    await _open(db, "hot-path-idem-000002")
    await messages.append(
        db, session_id="hot-path-idem-000002", role="user", content="one", idempotency_key="k"
    )
    with pytest.raises(Unprocessable):
        await messages.append(
            db, session_id="hot-path-idem-000002", role="user", content="two", idempotency_key="k"
        )


async def test_appending_to_an_archived_conversation_conflicts(db: AsyncSession) -> None:
    await _open(db, "hot-path-archived-01")
    await db.execute(
        text("UPDATE conversations SET status = 'archived' WHERE session_id = :s"),
        {"s": "hot-path-archived-01"},
    )
    with pytest.raises(Conflict):
        await messages.append(db, session_id="hot-path-archived-01", role="user", content="x")


async def test_appending_to_an_unknown_session_is_not_found(db: AsyncSession) -> None:
    with pytest.raises(NotFound):
        await messages.append(db, session_id="hot-path-missing-0002", role="user", content="x")


async def _backend_pid(engine_connection: AsyncConnection) -> int:
    return int(await engine_connection.scalar(text("SELECT pg_backend_pid()")))


async def test_an_idle_pooled_connection_killed_by_the_server_is_replaced_before_use(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    if settings.transaction_pooler:
        pytest.skip("behind a pooler a client connection is not one server backend")
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_S", 0.0)
    pooled = create_engine(settings)
    admin = create_engine(settings, pooled=False)
    try:
        async with pooled.connect() as first:
            killed = await _backend_pid(first)
        async with admin.connect() as admin_connection:
            await admin_connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": killed})
        async with pooled.connect() as again:
            assert await _backend_pid(again) != killed
    finally:
        await admin.dispose()
        await pooled.dispose()


async def test_a_recently_used_connection_is_not_pinged(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    pooled = create_engine(settings)
    pings: list[object] = []
    monkeypatch.setattr(
        type(pooled.sync_engine.dialect), "do_ping", lambda self, connection: pings.append(1)
    )
    try:
        for _ in range(3):
            async with pooled.connect() as connection:
                await connection.execute(text("SELECT 1"))
        assert pings == []
    finally:
        await pooled.dispose()
