"""The escalation workflow: assignment, staff replies, response/resolution times, audit."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from api_support import API, escalate, open_session, send_message
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db import create_sessionmaker
from app.models import EscalationAudit, Staff
from app.repositories import conversations, escalations
from app.repositories import staff as staff_repository


async def _staff(db: AsyncSession, name: str = "Ann Lee", *, active: bool = True) -> Staff:
    account = await staff_repository.add(
        db,
        email=f"{uuid.uuid4().hex[:8]}@example.org",
        display_name=name,
        password_hash="$argon2id$not-used-here",
        role="agent",
    )
    if not active:
        await staff_repository.disable(db, email=account.email)
    return account


async def _case(client: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any]]:
    session = await open_session(client)
    assert (await send_message(client, session["session_id"], "my card is blocked")).status_code
    response = await escalate(client, session["session_id"], "card")
    assert response.status_code == 201, response.text
    return session, response.json()


async def _patch(
    client: httpx.AsyncClient, headers: dict[str, str], escalation_id: str, **body: Any
) -> httpx.Response:
    return await client.patch(f"{API}/escalations/{escalation_id}", json=body, headers=headers)


async def _trail(
    client: httpx.AsyncClient, headers: dict[str, str], escalation_id: str
) -> list[dict[str, Any]]:
    response = await client.get(f"{API}/escalations/{escalation_id}/events", headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _reply(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    conversation_id: str,
    staff_id: uuid.UUID | None,
    content: str = "Hi, this is Ann from the card team.",
    role: str = "staff",
    key: str | None = None,
) -> httpx.Response:
    extra = {"X-Staff-Id": str(staff_id)} if staff_id is not None else {}
    if key is not None:
        extra["Idempotency-Key"] = key
    return await client.post(
        f"{API}/conversations/{conversation_id}/messages",
        json={"role": role, "content": content},
        headers={**headers, **extra},
    )


async def test_assign_unassign_and_filter_the_queue_by_assignee(
    client: httpx.AsyncClient, db: AsyncSession, service_headers: dict[str, str]
) -> None:
    ann = await _staff(db)
    _, mine = await _case(client)
    _, other = await _case(client)
    assigned = await _patch(client, service_headers, mine["id"], assignee_id=str(ann.id))
    assert assigned.status_code == 200, assigned.text
    assert assigned.json()["assignee_id"] == str(ann.id)
    assert assigned.json()["status"] == "pending"  # assignment alone moves nothing

    async def queue(assignee: str) -> list[str]:
        response = await client.get(
            f"{API}/escalations", params={"assignee": assignee}, headers=service_headers
        )
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await queue(str(ann.id)) == [mine["id"]]
    assert other["id"] in await queue("none") and mine["id"] not in await queue("none")
    bad = await client.get(
        f"{API}/escalations", params={"assignee": "someone"}, headers=service_headers
    )
    assert bad.status_code == 422

    unassigned = await _patch(client, service_headers, mine["id"], assignee_id=None)
    assert unassigned.json()["assignee_id"] is None
    trail = await _trail(client, service_headers, mine["id"])
    assert [(row["action"], row["from"], row["to"]) for row in trail] == [
        ("assignment", None, str(ann.id)),
        ("assignment", str(ann.id), None),
    ]
    assert {row["actor"] for row in trail} == {"key:service"}


async def test_an_unknown_or_disabled_assignee_is_422_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncSession, service_headers: dict[str, str]
) -> None:
    gone = await _staff(db, active=False)
    _, case = await _case(client)
    for assignee in (gone.id, uuid.uuid4()):
        response = await _patch(
            client, service_headers, case["id"], status="in_progress", assignee_id=str(assignee)
        )
        assert response.status_code == 422
        assert "active staff" in response.text
    current = await client.get(f"{API}/escalations/{case['id']}", headers=service_headers)
    assert (current.json()["status"], current.json()["assignee_id"]) == ("pending", None)
    assert await _trail(client, service_headers, case["id"]) == []


@pytest.mark.parametrize("body", [{}, {"status": None}, {"assignee_id": "x"}, {"owner": None}])
async def test_a_patch_without_a_valid_change_is_422(
    client: httpx.AsyncClient, service_headers: dict[str, str], body: dict[str, Any]
) -> None:
    _, case = await _case(client)
    assert (await _patch(client, service_headers, case["id"], **body)).status_code == 422


async def test_resolved_at_is_set_on_resolve_and_cleared_on_reopen_with_an_audit_row_each(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    _, case = await _case(client)
    resolved = (await _patch(client, service_headers, case["id"], status="resolved")).json()
    assert resolved["resolved_at"] is not None
    same = await _patch(client, service_headers, case["id"], status="resolved")
    assert same.json() == resolved  # a no-op: no audit row, no timestamp change
    reopened = (await _patch(client, service_headers, case["id"], status="in_progress")).json()
    assert reopened["resolved_at"] is None
    refused = await _patch(client, service_headers, case["id"], status="pending")
    assert refused.status_code == 409
    trail = await _trail(client, service_headers, case["id"])
    assert [(row["action"], row["from"], row["to"]) for row in trail] == [
        ("status", "pending", "resolved"),
        ("status", "resolved", "in_progress"),
    ]


async def test_a_staff_reply_reaches_the_member_with_the_authors_name_only(
    client: httpx.AsyncClient, db: AsyncSession, service_headers: dict[str, str]
) -> None:
    ann = await _staff(db, "Ann Lee")
    session, case = await _case(client)
    reply = await _reply(client, service_headers, session["conversation_id"], ann.id)
    assert reply.status_code == 201, reply.text
    assert reply.json()["role"] == "staff"
    assert reply.json()["author_name"] == "Ann Lee"
    history = await client.get(f"{API}/sessions/{session['session_id']}/messages")
    member_view = history.json()["items"]
    assert [item["role"] for item in member_view] == ["user", "staff"]
    assert "author_name" not in member_view[0]
    assert member_view[1]["author_name"] == "Ann Lee"
    assert ann.email not in history.text and str(ann.id) not in history.text

    escalation = (
        await client.get(f"{API}/escalations/{case['id']}", headers=service_headers)
    ).json()
    assert escalation["first_response_at"] is not None
    [row] = await _trail(client, service_headers, case["id"])
    assert row["action"] == "staff_message"
    assert row["actor"] == f"key:service+staff:{ann.id}"
    assert row["to"] == f"message {reply.json()['seq']}"

    second = await _reply(client, service_headers, session["conversation_id"], ann.id, "More?")
    assert second.status_code == 201
    again = (await client.get(f"{API}/escalations/{case['id']}", headers=service_headers)).json()
    assert again["first_response_at"] == escalation["first_response_at"]  # the first only


async def test_a_replayed_staff_reply_is_one_message_and_one_audit_row(
    client: httpx.AsyncClient, db: AsyncSession, service_headers: dict[str, str]
) -> None:
    ann, bob = await _staff(db, "Ann"), await _staff(db, "Bob")
    session, case = await _case(client)
    conversation_id = session["conversation_id"]
    first = await _reply(client, service_headers, conversation_id, ann.id, key="reply-1")
    replay = await _reply(client, service_headers, conversation_id, ann.id, key="reply-1")
    assert (first.status_code, replay.status_code) == (201, 200)
    assert replay.json() == first.json()
    other_author = await _reply(client, service_headers, conversation_id, bob.id, key="reply-1")
    assert other_author.status_code == 422
    assert len(await _trail(client, service_headers, case["id"])) == 1


@pytest.mark.parametrize(
    ("role", "with_staff", "staff_state"),
    [
        ("staff", False, None),
        ("assistant", True, "active"),
        ("staff", True, "disabled"),
        ("staff", True, "unknown"),
    ],
)
async def test_a_staff_reply_needs_an_active_staff_id_and_only_staff_replies_take_one(
    client: httpx.AsyncClient,
    db: AsyncSession,
    service_headers: dict[str, str],
    role: str,
    with_staff: bool,
    staff_state: str | None,
) -> None:
    session, case = await _case(client)
    staff_id: uuid.UUID | None = None
    if with_staff:
        staff_id = (
            uuid.uuid4()
            if staff_state == "unknown"
            else (await _staff(db, active=staff_state == "active")).id
        )
    response = await _reply(
        client, service_headers, session["conversation_id"], staff_id, role=role
    )
    assert response.status_code == 422, response.text
    history = await client.get(f"{API}/sessions/{session['session_id']}/messages")
    assert len(history.json()["items"]) == 1
    assert await _trail(client, service_headers, case["id"]) == []


async def test_a_member_cannot_write_a_staff_message(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    response = await client.post(
        f"{API}/sessions/{session['session_id']}/messages",
        json={"content": "I am staff", "role": "staff"},
    )
    assert response.status_code == 422


async def test_concurrent_assignments_all_land_in_the_audit_trail(
    committed_engine: AsyncEngine,
) -> None:
    sessionmaker = create_sessionmaker(committed_engine)
    async with sessionmaker() as session, session.begin():
        people = [await _staff(session, f"Agent {index}") for index in range(6)]
    async with sessionmaker() as session, session.begin():
        await conversations.open_session(session, session_id="race-assign-0123456789", contact={})
    async with sessionmaker() as session, session.begin():
        case, _ = await escalations.open_escalation(
            session,
            session_id="race-assign-0123456789",
            issue_type="loan",
            original_request="x",
            contact_info=None,
        )

    async def assign(person: Staff) -> None:
        async with sessionmaker() as session, session.begin():
            await escalations.change(
                session, escalation_id=case.id, actor=f"key:agent{person.id}", assignee_id=person.id
            )

    await asyncio.gather(*(assign(person) for person in people))
    async with sessionmaker() as session:
        rows = (
            await session.scalars(
                select(EscalationAudit)
                .where(EscalationAudit.escalation_id == case.id)
                .order_by(EscalationAudit.id)
            )
        ).all()
        final = await escalations.get(session, escalation_id=case.id)
    # Applied one after the other: each row's "from" is the previous row's "to".
    assert len(rows) == len(people)
    assert rows[0].from_value is None
    assert all(rows[i].from_value == rows[i - 1].to_value for i in range(1, len(rows)))
    assert rows[-1].to_value == str(final.assignee_id)


async def test_a_failed_change_leaves_no_audit_row(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    _, case = await _case(client)
    refused = await _patch(
        client, service_headers, case["id"], status="pending", assignee_id=str(uuid.uuid4())
    )
    assert refused.status_code == 422
    moved = await _patch(client, service_headers, case["id"], status="in_progress")
    assert moved.status_code == 200
    conflict = await _patch(client, service_headers, case["id"], status="notified")
    assert conflict.status_code == 409
    assert "in_progress" in conflict.json()["detail"]
    trail = await _trail(client, service_headers, case["id"])
    assert [(row["from"], row["to"]) for row in trail] == [("pending", "in_progress")]


async def test_the_audit_trail_of_an_unknown_escalation_is_404(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.get(f"{API}/escalations/{uuid.uuid4()}/events", headers=service_headers)
    assert response.status_code == 404
