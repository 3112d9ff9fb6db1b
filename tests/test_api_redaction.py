"""Every write path of message and escalation text stores card numbers and SSNs redacted,
and nothing downstream (webhook, outbox, /metrics, logs) ever sees them in clear."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from conftest import make_settings, started_client
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from stdnum import luhn
from webhook_receiver import Receiver

from app.db import create_sessionmaker, get_session
from app.notify import NotificationWorker
from app.settings import Settings

BASE = "/api/v1/sessions"
# Generated here (a Visa-range prefix and its Luhn check digit), not a real card.
_BODY = "400012345678901"
CARD = _BODY + luhn.calc_check_digit(_BODY)
CARD_SPACED = " ".join(CARD[i : i + 4] for i in range(0, 16, 4))
CARD_REDACTED = f"[card ending {CARD[-4:]}]"
SSN = "536-90-4399"
SECRET = "whsec_" + base64.b64encode(b"redaction-test-secret-0123456789").decode()


def _clear(text_: str) -> bool:
    """Whether any form of the test card or SSN is in `text_`."""
    flat = text_.replace(" ", "").replace("-", "")
    return CARD in flat or SSN.replace("-", "") in flat


def redactions(kind: str) -> float:
    return REGISTRY.get_sample_value("redactions_total", {"kind": kind}) or 0.0


@pytest.fixture
async def both(app: FastAPI, committed_client: httpx.AsyncClient) -> AsyncIterator[Any]:
    """The committed client and a switch for the hot-path layer."""
    if app.state.settings.transaction_pooler:
        pytest.skip("the hot-path layer stands aside behind a transaction pooler")
    original = app.state.hot_connection

    def switch(enabled: bool) -> None:
        app.state.hot_connection = original if enabled else None

    try:
        yield committed_client, switch
    finally:
        switch(original)


async def _stored_contents(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT content FROM messages ORDER BY seq"))
        return [row.content for row in rows]


async def _no_framework() -> Iterator[None]:
    raise AssertionError("the FastAPI route was used")
    yield  # pragma: no cover


@pytest.mark.parametrize("hot", [True, False], ids=["hot-path", "framework"])
async def test_a_member_message_is_stored_redacted(
    both: Any, app: FastAPI, committed_engine: AsyncEngine, hot: bool
) -> None:
    client, switch = both
    session_id = (await client.post(BASE)).json()["session_id"]
    switch(hot)
    before = redactions("card"), redactions("ssn")
    if hot:  # proves the hot path wrote it: the framework's session would fail the test
        app.dependency_overrides[get_session] = _no_framework
    try:
        response = await client.post(
            f"{BASE}/{session_id}/messages",
            json={"content": f"card {CARD_SPACED} and ssn {SSN}, thanks"},
        )
    finally:
        app.dependency_overrides.pop(get_session, None)
    assert response.status_code == 201
    expected = f"card {CARD_REDACTED} and ssn [ssn redacted], thanks"
    assert response.json()["content"] == expected
    assert await _stored_contents(committed_engine) == [expected]
    assert (redactions("card"), redactions("ssn")) == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize("hot", [True, False], ids=["hot-path", "framework"])
async def test_a_replay_of_the_same_clear_text_is_a_replay(
    both: Any, committed_engine: AsyncEngine, hot: bool
) -> None:
    client, switch = both
    session_id = (await client.post(BASE)).json()["session_id"]
    switch(hot)
    request = {"json": {"content": f"my card {CARD}"}, "headers": {"Idempotency-Key": "k-1"}}
    first = await client.post(f"{BASE}/{session_id}/messages", **request)
    counted = redactions("card")
    again = await client.post(f"{BASE}/{session_id}/messages", **request)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert first.json()["content"] == f"my card {CARD_REDACTED}"
    assert redactions("card") == counted  # a replay stores nothing and counts nothing
    other = await client.post(
        f"{BASE}/{session_id}/messages",
        json={"content": "something else"},
        headers={"Idempotency-Key": "k-1"},
    )
    assert other.status_code == 422
    assert await _stored_contents(committed_engine) == [f"my card {CARD_REDACTED}"]


async def test_an_assistant_message_is_stored_redacted(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    conversation_id = (await client.post(BASE)).json()["conversation_id"]
    response = await client.post(
        f"/api/v1/conversations/{conversation_id}/messages",
        json={"role": "assistant", "content": f"I see the card {CARD} on file"},
        headers=service_headers,
    )
    assert response.status_code == 201
    assert response.json()["content"] == f"I see the card {CARD_REDACTED} on file"
    page = await client.get(
        f"/api/v1/conversations/{conversation_id}/messages", headers=service_headers
    )
    assert not _clear(page.text)


async def test_an_escalation_stores_its_request_and_context_redacted(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    opened = (await client.post(BASE)).json()
    session_id = opened["session_id"]
    await client.post(f"{BASE}/{session_id}/messages", json={"content": f"ssn {SSN}"})
    response = await client.post(
        f"{BASE}/{session_id}/escalations",
        json={"issue_type": "card", "original_request": f"Block {CARD_SPACED} now"},
    )
    assert response.status_code == 201
    escalation = (
        await client.get(f"/api/v1/escalations/{response.json()['id']}", headers=service_headers)
    ).json()
    assert escalation["original_request"] == f"Block {CARD_REDACTED} now"
    assert escalation["conversation_context"] == "user: ssn [ssn redacted]"


async def test_a_context_from_messages_stored_before_redaction_is_redacted(
    client: httpx.AsyncClient, service_headers: dict[str, str], connection: Any
) -> None:
    opened = (await client.post(BASE)).json()
    # A row written before redaction existed (or by hand): still in clear.
    await connection.execute(
        text("INSERT INTO messages (conversation_id, role, content) VALUES (:id, 'user', :c)"),
        {"id": opened["conversation_id"], "c": f"old card {CARD}"},
    )
    before = redactions("card")
    response = await client.post(
        f"{BASE}/{opened['session_id']}/escalations",
        json={"issue_type": "card", "original_request": "help"},
    )
    escalation = (
        await client.get(f"/api/v1/escalations/{response.json()['id']}", headers=service_headers)
    ).json()
    assert escalation["conversation_context"] == f"user: old card {CARD_REDACTED}"
    assert redactions("card") == before + 1


async def test_a_repeated_escalation_counts_nothing(client: httpx.AsyncClient) -> None:
    session_id = (await client.post(BASE)).json()["session_id"]
    body = {"issue_type": "card", "original_request": f"Block {CARD}"}
    assert (await client.post(f"{BASE}/{session_id}/escalations", json=body)).status_code == 201
    before = redactions("card")
    assert (await client.post(f"{BASE}/{session_id}/escalations", json=body)).status_code == 200
    assert redactions("card") == before


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    try:
        yield started
    finally:
        started.stop()


async def test_a_walk_through_leaks_no_clear_number_to_webhook_outbox_metrics_or_logs(
    both: Any,
    committed_engine: AsyncEngine,
    settings: Settings,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, switch = both
    headers = {"Authorization": "Bearer test-service-key-0123456789"}
    with caplog.at_level(logging.DEBUG):
        opened = (await client.post(BASE)).json()
        session_id = opened["session_id"]
        for hot in (True, False):
            switch(hot)
            sent = await client.post(
                f"{BASE}/{session_id}/messages",
                json={"content": f"card {CARD_SPACED} ssn {SSN} ({hot})"},
                headers={"Idempotency-Key": f"walk-{hot}"},
            )
            assert sent.status_code == 201
        await client.post(
            f"/api/v1/conversations/{opened['conversation_id']}/messages",
            json={"role": "assistant", "content": f"Noted {CARD}"},
            headers=headers,
        )
        escalated = await client.post(
            f"{BASE}/{session_id}/escalations",
            json={"issue_type": "fraud", "original_request": f"Someone used {CARD}, ssn {SSN}"},
        )
        assert escalated.status_code == 201
        worker_settings = make_settings(
            settings.database_url.get_secret_value() if settings.database_url else "",
            notify_webhook_url=receiver.url,
            notify_webhook_secret=SECRET,
        )
        worker = NotificationWorker(
            create_sessionmaker(committed_engine, worker_settings), worker_settings
        )
        try:
            assert await worker.run_once() == 1
        finally:
            await worker.aclose()
        metrics = (await client.get("/metrics")).text
        reads = [
            (await client.get(f"{BASE}/{session_id}/messages")).text,
            (
                await client.get(f"/api/v1/escalations/{escalated.json()['id']}", headers=headers)
            ).text,
        ]
    [delivery] = receiver.deliveries
    assert "[card ending" in delivery.body.decode()
    assert not _clear(delivery.body.decode())
    async with committed_engine.connect() as connection:
        outbox = (
            await connection.execute(text("SELECT data::text FROM notification_events"))
        ).scalars()
        stored = (
            await connection.execute(
                text(
                    "SELECT string_agg(content, ' ') FROM messages UNION ALL "
                    "SELECT string_agg(original_request || conversation_context, ' ') "
                    "FROM escalations"
                )
            )
        ).scalars()
        assert not any(_clear(value or "") for value in [*outbox, *stored])
    assert 'redactions_total{kind="card"}' in metrics
    assert not _clear(metrics)
    assert not any(_clear(read) for read in reads)
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert not _clear(logged)
    redacted = [record for record in caplog.records if record.getMessage() == "redacted"]
    assert [
        (record.table, getattr(record, "card", 0), getattr(record, "ssn", 0)) for record in redacted
    ] == [  # type: ignore[attr-defined]
        ("messages", 1, 1),
        ("messages", 1, 1),
        ("messages", 1, 0),
        ("escalations", 1, 1),
    ]


async def test_with_redact_none_text_is_stored_as_written(
    settings: Settings, committed_engine: AsyncEngine
) -> None:
    plain = settings.model_copy(update={"redact": frozenset()})
    async with started_client(plain) as client:
        session_id = (await client.post(BASE)).json()["session_id"]
        response = await client.post(f"{BASE}/{session_id}/messages", json={"content": CARD})
    assert response.json()["content"] == CARD
    assert await _stored_contents(committed_engine) == [CARD]


async def test_with_cards_only_an_ssn_is_kept(
    settings: Settings, committed_engine: AsyncEngine
) -> None:
    cards_only = settings.model_copy(update={"redact": frozenset({"card"})})
    async with started_client(cards_only) as client:
        session_id = (await client.post(BASE)).json()["session_id"]
        response = await client.post(
            f"{BASE}/{session_id}/messages", json={"content": f"{CARD} {SSN}"}
        )
    assert response.json()["content"] == f"{CARD_REDACTED} {SSN}"
