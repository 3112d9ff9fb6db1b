"""Escalations: member create/list, the staff queue, status moves and their effects."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from api_support import (
    API,
    conversation,
    escalate,
    open_session,
    send_message,
    set_escalation_status,
)

SUMMARY_FIELDS = {"id", "issue_type", "status", "created_at", "updated_at"}
ESCALATION_FIELDS = SUMMARY_FIELDS | {
    "conversation_id",
    "original_request",
    "contact_info",
    "conversation_context",
    "assignee_id",
    "first_response_at",
    "resolved_at",
}
ALL_MOVES = [
    (source, target)
    for source in ("pending", "notified", "in_progress", "resolved")
    for target in ("pending", "notified", "in_progress", "resolved")
    if source != target
]
ALLOWED = {
    ("pending", "notified"),
    ("pending", "in_progress"),
    ("pending", "resolved"),
    ("notified", "in_progress"),
    ("notified", "resolved"),
    ("in_progress", "resolved"),
    ("resolved", "in_progress"),
}
# A path from pending to each status using allowed moves only.
PATH_TO = {
    "pending": [],
    "notified": ["notified"],
    "in_progress": ["in_progress"],
    "resolved": ["resolved"],
}


async def _escalation(
    client: httpx.AsyncClient, headers: dict[str, str], escalation_id: str
) -> dict[str, Any]:
    response = await client.get(f"{API}/escalations/{escalation_id}", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _open(client: httpx.AsyncClient, **kwargs: Any) -> tuple[dict[str, Any], str]:
    session = await open_session(client)
    response = await escalate(client, session["session_id"], **kwargs)
    assert response.status_code == 201, response.text
    return session, response.json()["id"]


# --- member: create ------------------------------------------------------------------------


async def test_escalating_answers_201_with_a_pending_summary(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    response = await escalate(client, session["session_id"], issue_type="card")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == SUMMARY_FIELDS
    assert (body["issue_type"], body["status"]) == ("card", "pending")
    uuid.UUID(body["id"])
    assert datetime.fromisoformat(body["created_at"]).utcoffset() is not None


async def test_escalating_marks_the_conversation_escalated(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    await escalate(client, session["session_id"])
    current = await client.get(f"{API}/sessions/{session['session_id']}")
    assert current.json()["status"] == "escalated"


async def test_a_second_open_escalation_of_the_same_issue_type_answers_200_with_the_first(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    first = await escalate(client, session["session_id"], issue_type="loan")
    again = await escalate(client, session["session_id"], issue_type="loan", original_request="x")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    listed = await client.get(
        f"{API}/escalations", params={"issue_type": "loan"}, headers=service_headers
    )
    assert len(listed.json()["items"]) == 1


async def test_another_issue_type_opens_a_separate_escalation(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    loan = await escalate(client, session["session_id"], issue_type="loan")
    card = await escalate(client, session["session_id"], issue_type="card")
    assert (loan.status_code, card.status_code) == (201, 201)
    assert loan.json()["id"] != card.json()["id"]


async def test_after_resolution_the_same_issue_type_opens_a_new_escalation(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session, first_id = await _open(client, issue_type="fraud")
    await set_escalation_status(client, service_headers, first_id, "resolved")
    again = await escalate(client, session["session_id"], issue_type="fraud")
    assert again.status_code == 201
    assert again.json()["id"] != first_id


@pytest.mark.parametrize("issue_type", ["a", "loan", "card_2", "a" * 50])
async def test_lower_case_slugs_are_accepted_as_issue_types(
    client: httpx.AsyncClient, issue_type: str
) -> None:
    session = await open_session(client)
    assert (await escalate(client, session["session_id"], issue_type=issue_type)).status_code == 201


@pytest.mark.parametrize(
    "issue_type", ["", "Loan", "1loan", "_loan", "loan-card", "loan card", "a" * 51, "prêt", 7]
)
async def test_issue_types_that_are_not_lower_case_slugs_are_422(
    client: httpx.AsyncClient, issue_type: Any
) -> None:
    session = await open_session(client)
    assert (await escalate(client, session["session_id"], issue_type=issue_type)).status_code == 422


@pytest.mark.parametrize("original_request", ["", "   ", "\n\t", "nul\u0000byte"])
async def test_a_blank_or_nul_original_request_is_422(
    client: httpx.AsyncClient, original_request: str
) -> None:
    session = await open_session(client)
    response = await escalate(client, session["session_id"], original_request=original_request)
    assert response.status_code == 422


async def test_contact_info_is_merged_with_the_known_contact_the_request_winning(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client, name="Ada", email="ada@example.org")
    response = await escalate(
        client,
        session["session_id"],
        contact_info={"name": "Ada Lovelace", "phone": "+1 555 0100", "preferred_channel": "phone"},
    )
    stored = await _escalation(client, service_headers, response.json()["id"])
    assert stored["contact_info"] == {
        "name": "Ada Lovelace",
        "email": "ada@example.org",
        "email_verified": False,
        "phone": "+1 555 0100",
        "preferred_channel": "phone",
    }


async def test_contact_info_defaults_to_the_known_contact(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client, phone="+1 555 0100")
    response = await escalate(client, session["session_id"])
    stored = await _escalation(client, service_headers, response.json()["id"])
    assert stored["contact_info"] == {"phone": "+1 555 0100"}


async def test_contact_info_email_is_normalised(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    response = await escalate(
        client, session["session_id"], contact_info={"email": " Ada@Example.ORG "}
    )
    stored = await _escalation(client, service_headers, response.json()["id"])
    assert stored["contact_info"] == {"email": "ada@example.org", "email_verified": False}


@pytest.mark.parametrize(
    "contact_info",
    [
        {"email": "not-an-email"},
        {"address": "1 Main St"},
        {"name": "x" * 5000},
        {"preferred_channel": "é" * 2100},
        {"name": "Ada", "notes": ["x" * 100] * 50},
        "ada@example.org",
        ["ada@example.org"],
    ],
)
async def test_invalid_or_oversized_contact_info_is_422(
    client: httpx.AsyncClient, contact_info: Any
) -> None:
    session = await open_session(client)
    response = await escalate(client, session["session_id"], contact_info=contact_info)
    assert response.status_code == 422


async def test_contact_info_over_4_kb_is_refused_by_size(client: httpx.AsyncClient) -> None:
    session = await open_session(client)
    contact_info = {"name": "é" * 2100}  # 2100 characters, 4200+ bytes of UTF-8
    assert len(json.dumps(contact_info, ensure_ascii=False).encode()) > 4096
    response = await escalate(client, session["session_id"], contact_info=contact_info)
    assert response.status_code == 422
    assert "4096" in response.text


async def test_conversation_context_is_a_transcript_of_the_last_20_messages(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    for number in range(1, 26):
        await send_message(client, session["session_id"], f"message #{number:02d}")
    response = await escalate(client, session["session_id"])
    context = (await _escalation(client, service_headers, response.json()["id"]))[
        "conversation_context"
    ]
    for number in range(1, 6):
        assert f"message #{number:02d}" not in context
    positions = [context.index(f"message #{number:02d}") for number in range(6, 26)]
    assert positions == sorted(positions)


async def test_conversation_context_is_cut_to_16_kb_dropping_the_oldest_text(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    for number in range(1, 21):
        # 3000 characters of 2-byte UTF-8: 20 of them are far over 16 KB.
        await send_message(client, session["session_id"], f"<{number:02d}>" + "é" * 2996)
    response = await escalate(client, session["session_id"])
    context = (await _escalation(client, service_headers, response.json()["id"]))[
        "conversation_context"
    ]
    assert len(context.encode("utf-8")) <= 16 * 1024
    assert len(context.encode("utf-8")) > 15 * 1024
    assert "<20>" in context and context.endswith("é")
    assert "<01>" not in context and "<15>" not in context


async def test_conversation_context_of_a_silent_conversation_is_empty(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    _, escalation_id = await _open(client)
    context = (await _escalation(client, service_headers, escalation_id))["conversation_context"]
    assert not context


async def test_escalating_an_archived_conversation_is_409(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    await client.patch(
        f"{API}/conversations/{session['conversation_id']}",
        json={"status": "archived"},
        headers=service_headers,
    )
    assert (await escalate(client, session["session_id"])).status_code == 409


# --- member: list --------------------------------------------------------------------------


async def test_the_member_list_holds_the_sessions_escalations_oldest_first(
    client: httpx.AsyncClient,
) -> None:
    session = await open_session(client)
    ids = [
        (await escalate(client, session["session_id"], issue_type=kind)).json()["id"]
        for kind in ("loan", "card", "fraud")
    ]
    other = await open_session(client)
    await escalate(client, other["session_id"], issue_type="loan")
    response = await client.get(f"{API}/sessions/{session['session_id']}/escalations")
    assert response.status_code == 200
    items = response.json()["items"]
    assert all(set(item) == SUMMARY_FIELDS for item in items)
    assert sorted(item["id"] for item in items) == sorted(ids)
    assert [item["created_at"] for item in items] == sorted(item["created_at"] for item in items)


async def test_the_member_list_of_a_session_without_escalations_is_empty(
    client: httpx.AsyncClient,
) -> None:
    session = await open_session(client)
    response = await client.get(f"{API}/sessions/{session['session_id']}/escalations")
    assert response.json() == {"items": []}


# --- service: read and queue ---------------------------------------------------------------


async def test_reading_an_escalation_returns_every_field(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session, escalation_id = await _open(client, original_request="Refinance my loan")
    body = await _escalation(client, service_headers, escalation_id)
    assert set(body) == ESCALATION_FIELDS
    assert body["conversation_id"] == session["conversation_id"]
    assert body["original_request"] == "Refinance my loan"


async def test_reading_an_unknown_escalation_is_404(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.get(f"{API}/escalations/{uuid.uuid4()}", headers=service_headers)
    assert response.status_code == 404


async def test_the_queue_is_oldest_first_across_statuses(
    committed_client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    ids = []
    for kind in ("loan", "card", "fraud"):
        _, escalation_id = await _open(committed_client, issue_type=kind)
        ids.append(escalation_id)
    await set_escalation_status(committed_client, service_headers, ids[0], "resolved")
    response = await committed_client.get(f"{API}/escalations", headers=service_headers)
    assert response.status_code == 200
    assert [item["id"] for item in response.json()["items"]] == ids
    assert response.json()["next_cursor"] is None


async def test_the_queue_filters_by_status_and_issue_type(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    _, loan = await _open(client, issue_type="loan")
    _, card = await _open(client, issue_type="card")
    _, resolved_loan = await _open(client, issue_type="loan")
    await set_escalation_status(client, service_headers, resolved_loan, "resolved")

    async def ids(**params: str) -> set[str]:
        response = await client.get(f"{API}/escalations", params=params, headers=service_headers)
        assert response.status_code == 200
        return {item["id"] for item in response.json()["items"]}

    assert await ids(status="pending") == {loan, card}
    assert await ids(issue_type="loan") == {loan, resolved_loan}
    assert await ids(status="resolved", issue_type="loan") == {resolved_loan}
    assert await ids(issue_type="mortgage") == set()


async def test_the_queue_cursor_walks_every_escalation_once(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    expected = set()
    for _ in range(7):
        expected.add((await _open(client))[1])
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    pages = 0
    while True:
        response = await client.get(f"{API}/escalations", params=params, headers=service_headers)
        assert response.status_code == 200
        body = response.json()
        seen += [item["id"] for item in body["items"]]
        pages += 1
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert pages == 3
    assert len(seen) == len(set(seen)) == 7
    assert set(seen) == expected


@pytest.mark.parametrize(
    "params",
    [
        {"status": "open"},
        {"issue_type": "Loan"},
        {"limit": 0},
        {"limit": 201},
        {"cursor": "not-a-cursor"},
        {"cursor": "W10"},
        {"cursor": "x" * 600},
        # base64 of ["9999-12-31T23:59:59-14:00", <uuid>]: a timestamp past the end of UTC
        {
            "cursor": "WyI5OTk5LTEyLTMxVDIzOjU5OjU5LTE0OjAwIiwgIjAwMDAwMDAwLTAwMDAtMDAwMC0w"
            "MDAwLTAwMDAwMDAwMDAwMCJd"
        },
    ],
)
async def test_bad_queue_parameters_are_422(
    client: httpx.AsyncClient, service_headers: dict[str, str], params: dict[str, Any]
) -> None:
    response = await client.get(f"{API}/escalations", params=params, headers=service_headers)
    assert response.status_code == 422


# --- service: status moves -----------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), ALL_MOVES)
async def test_status_moves_follow_the_allowed_graph(
    client: httpx.AsyncClient, service_headers: dict[str, str], source: str, target: str
) -> None:
    _, escalation_id = await _open(client)
    for step in PATH_TO[source]:
        assert (
            await set_escalation_status(client, service_headers, escalation_id, step)
        ).status_code == 200
    response = await set_escalation_status(client, service_headers, escalation_id, target)
    if (source, target) in ALLOWED:
        assert response.status_code == 200
        assert response.json()["status"] == target
        assert set(response.json()) == ESCALATION_FIELDS
    else:
        assert response.status_code == 409
        detail = response.json()["detail"]
        allowed_targets = [to for (frm, to) in ALLOWED if frm == source]
        assert all(name in detail for name in allowed_targets)
        unchanged = await _escalation(client, service_headers, escalation_id)
        assert unchanged["status"] == source


async def test_the_same_status_is_a_no_op_that_leaves_updated_at_alone(
    committed_client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    _, escalation_id = await _open(committed_client)
    moved = await set_escalation_status(
        committed_client, service_headers, escalation_id, "notified"
    )
    again = await set_escalation_status(
        committed_client, service_headers, escalation_id, "notified"
    )
    assert again.status_code == 200
    assert again.json() == moved.json()
    # A real move does change it, so the check above could fail.
    later = await set_escalation_status(
        committed_client, service_headers, escalation_id, "resolved"
    )
    assert later.json()["updated_at"] > moved.json()["updated_at"]


async def test_a_status_move_refreshes_updated_at(
    committed_client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    _, escalation_id = await _open(committed_client)
    before = await _escalation(committed_client, service_headers, escalation_id)
    after = await set_escalation_status(
        committed_client, service_headers, escalation_id, "notified"
    )
    assert datetime.fromisoformat(after.json()["updated_at"]) > datetime.fromisoformat(
        before["updated_at"]
    )


async def test_resolving_the_last_open_escalation_makes_the_conversation_active(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session, escalation_id = await _open(client)
    await set_escalation_status(client, service_headers, escalation_id, "resolved")
    assert (await conversation(client, service_headers, session["conversation_id"]))[
        "status"
    ] == "active"


async def test_resolving_one_of_two_open_escalations_keeps_the_conversation_escalated(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session = await open_session(client)
    loan = (await escalate(client, session["session_id"], issue_type="loan")).json()["id"]
    await escalate(client, session["session_id"], issue_type="card")
    await set_escalation_status(client, service_headers, loan, "resolved")
    assert (await conversation(client, service_headers, session["conversation_id"]))[
        "status"
    ] == "escalated"


async def test_reopening_a_resolved_escalation_makes_the_conversation_escalated_again(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session, escalation_id = await _open(client)
    await set_escalation_status(client, service_headers, escalation_id, "resolved")
    reopened = await set_escalation_status(client, service_headers, escalation_id, "in_progress")
    assert reopened.status_code == 200
    assert (await conversation(client, service_headers, session["conversation_id"]))[
        "status"
    ] == "escalated"


async def test_patching_an_unknown_escalation_is_404(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await set_escalation_status(client, service_headers, str(uuid.uuid4()), "resolved")
    assert response.status_code == 404


@pytest.mark.parametrize(
    "body", [{"status": "closed"}, {"status": None}, {}, {"status": "resolved", "x": 1}]
)
async def test_patching_with_an_unknown_status_is_422(
    client: httpx.AsyncClient, service_headers: dict[str, str], body: Any
) -> None:
    _, escalation_id = await _open(client)
    response = await client.patch(
        f"{API}/escalations/{escalation_id}", json=body, headers=service_headers
    )
    assert response.status_code == 422


async def test_many_escalations_in_a_row_on_one_connection_all_succeed(
    client: httpx.AsyncClient,
) -> None:
    # PostgreSQL plans a prepared statement generically from its 6th run on a connection.
    statuses = []
    for _ in range(8):
        session = await open_session(client)
        statuses.append((await escalate(client, session["session_id"])).status_code)
    assert statuses == [201] * 8
