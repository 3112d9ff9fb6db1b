"""The hot paths after their optimisation: the seq trigger, the idle-only pool ping,
and the driver-level statements of the three requests a chat backend lives on."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


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
