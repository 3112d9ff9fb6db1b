"""The delivery worker against a real local HTTP receiver, with real commits."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from conftest import make_settings
from prometheus_client import REGISTRY
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from standardwebhooks import Webhook
from webhook_receiver import DribblingReceiver, Receiver, free_port

from app.db import create_engine, create_sessionmaker
from app.log import configure_logging
from app.main import create_app
from app.models import Escalation, NotificationEvent
from app.notify import NotificationWorker
from app.repositories import conversations, escalations, notifications
from app.settings import Settings

SECRET = "whsec_" + base64.b64encode(b"outbox-test-secret-0123456789ab").decode()
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    try:
        yield started
    finally:
        started.stop()


def worker_settings(database_url: str, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "notify_webhook_url": url,
        "notify_webhook_secret": SECRET,
        "notify_backoff_base_s": 0.05,
        "notify_backoff_cap_s": 0.2,
        "notify_poll_interval_s": 0.05,
        "notify_timeout_s": 2,
        "notify_lease_s": 5,
    }
    values.update(overrides)
    return make_settings(database_url, **values)


@pytest.fixture
def sessions(committed_engine: AsyncEngine, settings: Settings) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(committed_engine, settings)


async def open_escalation(
    sessions: async_sessionmaker[AsyncSession], issue_type: str = "loan"
) -> tuple[uuid.UUID, str]:
    """A committed escalation (and so its created event); returns (id, session id)."""
    async with sessions() as session, session.begin():
        opened, _ = await conversations.open_session(session, session_id=None, contact={})
        escalation, _ = await escalations.open_escalation(
            session,
            session_id=opened.session_id,
            issue_type=issue_type,
            original_request="Please call me about my mortgage.",
            contact_info={"name": "Ada", "phone": "+1 555 0100"},
        )
    return escalation.id, opened.session_id


async def events(sessions: async_sessionmaker[AsyncSession]) -> list[NotificationEvent]:
    async with sessions() as session:
        return list(
            await session.scalars(
                select(NotificationEvent).order_by(
                    NotificationEvent.created_at, NotificationEvent.id
                )
            )
        )


async def escalation_status(
    sessions: async_sessionmaker[AsyncSession], escalation_id: uuid.UUID
) -> str | None:
    async with sessions() as session:
        return await session.scalar(select(Escalation.status).where(Escalation.id == escalation_id))


async def make_due(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Skip the backoff wait: every pending event is due now."""
    async with sessions() as session, session.begin():
        await session.execute(
            update(NotificationEvent)
            .where(NotificationEvent.status == "pending")
            .values(available_at=text("now()"))
        )


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
async def worker_factory(
    sessions: async_sessionmaker[AsyncSession], database_url: str
) -> AsyncIterator[Callable[..., NotificationWorker]]:
    made: list[NotificationWorker] = []

    def make(url: str, **overrides: Any) -> NotificationWorker:
        worker = NotificationWorker(sessions, worker_settings(database_url, url, **overrides))
        made.append(worker)
        return worker

    yield make
    for worker in made:
        await worker.aclose()


# --- delivery and signature ------------------------------------------------------------


async def test_a_new_escalation_is_posted_with_a_signature_standard_webhooks_verifies(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    escalation_id, _ = await open_escalation(sessions)

    assert await worker_factory(receiver.url).run_once() == 1

    [delivery] = receiver.deliveries
    payload = Webhook(SECRET).verify(delivery.body, delivery.headers)
    assert payload["type"] == "escalation.created"
    assert payload["data"]["escalation_id"] == str(escalation_id)
    assert delivery.headers["webhook-id"] == str((await events(sessions))[0].id)


async def test_the_signature_verifies_with_plain_hmac_as_the_readme_shows(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    await open_escalation(sessions)
    await worker_factory(receiver.url).run_once()

    [delivery] = receiver.deliveries
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = (
        f"{delivery.headers['webhook-id']}.{delivery.headers['webhook-timestamp']}.".encode()
        + delivery.body
    )
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert f"v1,{expected}" in delivery.headers["webhook-signature"].split(" ")
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 60


async def test_a_tampered_body_fails_verification(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    await open_escalation(sessions)
    await worker_factory(receiver.url).run_once()

    [delivery] = receiver.deliveries
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(delivery.body.replace(b"loan", b"card"), delivery.headers)


async def test_the_created_payload_carries_what_staff_need_to_act(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    escalation_id, _ = await open_escalation(sessions)
    await worker_factory(receiver.url).run_once()

    payload = json.loads(receiver.deliveries[0].body)
    data = payload["data"]
    async with sessions() as session:
        escalation = await escalations.get(session, escalation_id=escalation_id)
    assert data == {
        "escalation_id": str(escalation_id),
        "conversation_id": str(escalation.conversation_id),
        "issue_type": "loan",
        "original_request": "Please call me about my mortgage.",
        "contact_info": {"name": "Ada", "phone": "+1 555 0100"},
        "status": "pending",
        "escalation_created_at": escalation.created_at.isoformat(),
    }
    assert payload["timestamp"] == (await events(sessions))[0].created_at.isoformat()


async def test_the_payload_never_carries_the_session_id(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    _, session_id = await open_escalation(sessions)
    await worker_factory(receiver.url).run_once()

    [delivery] = receiver.deliveries
    assert session_id.encode() not in delivery.body
    assert all(session_id not in value for value in delivery.headers.values())


async def test_delivering_the_created_event_moves_the_escalation_to_notified(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    escalation_id, _ = await open_escalation(sessions)
    await worker_factory(receiver.url).run_once()

    assert await escalation_status(sessions, escalation_id) == "notified"
    [event] = await events(sessions)
    assert (event.status, event.attempts, event.last_error) == ("delivered", 1, None)
    assert event.delivered_at is not None


async def test_the_move_to_notified_emits_no_status_changed_event(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    await open_escalation(sessions)
    worker = worker_factory(receiver.url)
    await worker.run_once()

    assert await worker.run_once() == 0
    assert [event.type for event in await events(sessions)] == ["escalation.created"]


async def test_a_delivery_leaves_an_escalation_staff_already_moved_on_alone(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    escalation_id, _ = await open_escalation(sessions)
    async with sessions() as session, session.begin():
        await escalations.transition(session, escalation_id=escalation_id, status="in_progress")

    await worker_factory(receiver.url).run_once()

    assert await escalation_status(sessions, escalation_id) == "in_progress"
    assert {event.status for event in await events(sessions)} == {"delivered"}


async def test_a_status_change_is_posted_with_the_previous_and_new_status(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    escalation_id, _ = await open_escalation(sessions)
    worker = worker_factory(receiver.url)
    await worker.run_once()
    async with sessions() as session, session.begin():
        await escalations.transition(session, escalation_id=escalation_id, status="resolved")

    assert await worker.run_once() == 1

    payload = Webhook(SECRET).verify(receiver.deliveries[1].body, receiver.deliveries[1].headers)
    assert payload["type"] == "escalation.status_changed"
    assert (payload["data"]["previous_status"], payload["data"]["status"]) == (
        "notified",
        "resolved",
    )


# --- retries, parking, re-queueing ------------------------------------------------------


async def test_a_receiver_that_is_down_gets_the_event_once_it_is_up(
    sessions: async_sessionmaker[AsyncSession], worker_factory: Any
) -> None:
    escalation_id, _ = await open_escalation(sessions)
    down = Receiver(free_port())
    worker = worker_factory(down.url)

    await worker.run_once()
    [event] = await events(sessions)
    assert (event.status, event.attempts, event.last_error) == ("pending", 1, "ConnectError")
    up = down.start()
    try:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))

        async def delivered() -> bool:
            return [e.status for e in await events(sessions)] == ["delivered"]

        await eventually(delivered)
        stop.set()
        await task
    finally:
        up.stop()
    assert len(up.deliveries) == 1
    assert await escalation_status(sessions, escalation_id) == "notified"


async def test_a_failed_attempt_is_due_again_only_after_a_backoff(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    await open_escalation(sessions)
    receiver.status = 503
    worker = worker_factory(receiver.url, notify_backoff_base_s=30, notify_backoff_cap_s=60)

    await worker.run_once()

    assert await worker.run_once() == 0
    [event] = await events(sessions)
    async with sessions() as session:
        wait = await session.scalar(
            select(text("extract(epoch FROM available_at - now())")).select_from(NotificationEvent)
        )
    # Equal jitter: between half and all of base * 2^0.
    assert 14 <= float(wait) <= 30
    assert event.last_error == "HTTP 503"


async def test_an_event_failing_every_attempt_is_parked_with_the_last_error(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    escalation_id, _ = await open_escalation(sessions)
    receiver.status = 500
    worker = worker_factory(receiver.url, notify_max_attempts=3)

    for _ in range(3):
        assert await worker.run_once() == 1
        await make_due(sessions)

    assert await worker.run_once() == 0
    [event] = await events(sessions)
    assert (event.status, event.attempts, event.last_error) == ("failed", 3, "HTTP 500")
    assert len(receiver.deliveries) == 3
    assert await escalation_status(sessions, escalation_id) == "pending"


async def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    await open_escalation(sessions)
    receiver.status = 307

    await worker_factory(receiver.url).run_once()

    [event] = await events(sessions)
    assert (event.status, event.last_error) == ("pending", "HTTP 307")


async def park_one(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> NotificationEvent:
    await open_escalation(sessions)
    receiver.status = 500
    await worker_factory(receiver.url, notify_max_attempts=1).run_once()
    [event] = await events(sessions)
    assert event.status == "failed"
    return event


async def test_failed_notifications_are_listed_for_staff(
    sessions: async_sessionmaker[AsyncSession],
    receiver: Receiver,
    worker_factory: Any,
    committed_client: httpx.AsyncClient,
    service_headers: dict[str, str],
) -> None:
    parked = await park_one(sessions, receiver, worker_factory)

    response = await committed_client.get(
        "/api/v1/notifications", params={"status": "failed"}, headers=service_headers
    )

    assert response.status_code == 200
    [item] = response.json()["items"]
    assert item["id"] == str(parked.id)
    assert (item["status"], item["attempts"], item["last_error"]) == ("failed", 1, "HTTP 500")
    assert item["next_attempt_at"] is None


async def test_stats_count_failed_notifications(
    sessions: async_sessionmaker[AsyncSession],
    receiver: Receiver,
    worker_factory: Any,
    committed_client: httpx.AsyncClient,
    service_headers: dict[str, str],
) -> None:
    await park_one(sessions, receiver, worker_factory)

    response = await committed_client.get("/api/v1/stats", headers=service_headers)

    assert response.status_code == 200
    assert response.json()["notifications"] == {
        "pending": 0,
        "delivered": 0,
        "failed": 1,
        "oldest_pending_age_seconds": None,
    }


async def test_a_requeued_failed_event_is_delivered(
    sessions: async_sessionmaker[AsyncSession],
    receiver: Receiver,
    worker_factory: Any,
    committed_client: httpx.AsyncClient,
    service_headers: dict[str, str],
) -> None:
    parked = await park_one(sessions, receiver, worker_factory)
    receiver.status = 200

    response = await committed_client.post(
        f"/api/v1/notifications/{parked.id}/retry", headers=service_headers
    )
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["attempts"]) == ("pending", 0)
    await worker_factory(receiver.url, notify_max_attempts=1).run_once()

    [event] = await events(sessions)
    assert event.status == "delivered"
    assert receiver.ids() == [str(parked.id), str(parked.id)]


async def test_retrying_a_delivered_notification_is_a_conflict(
    sessions: async_sessionmaker[AsyncSession],
    receiver: Receiver,
    worker_factory: Any,
    committed_client: httpx.AsyncClient,
    service_headers: dict[str, str],
) -> None:
    await open_escalation(sessions)
    await worker_factory(receiver.url).run_once()
    [event] = await events(sessions)

    response = await committed_client.post(
        f"/api/v1/notifications/{event.id}/retry", headers=service_headers
    )

    assert response.status_code == 409


# --- concurrency and crashes ------------------------------------------------------------


async def test_two_workers_over_one_backlog_deliver_every_event_exactly_once(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    escalation_ids = [(await open_escalation(sessions, f"topic_{n}"))[0] for n in range(40)]
    receiver.delay_s = 0.01
    workers = [worker_factory(receiver.url, notify_batch_size=5) for _ in range(2)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop)) for worker in workers]

    async def all_delivered() -> bool:
        return all(event.status == "delivered" for event in await events(sessions))

    await eventually(all_delivered)
    stop.set()
    await asyncio.gather(*tasks)

    counts = Counter(receiver.ids())
    assert len(counts) == 40
    assert set(counts.values()) == {1}
    assert {await escalation_status(sessions, i) for i in escalation_ids} == {"notified"}


async def test_a_worker_whose_lease_ran_out_cannot_record_over_the_new_owner(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await open_escalation(sessions)
    async with sessions() as session, session.begin():
        [first] = await notifications.claim(session, batch_size=5, lease_s=30)
    await make_due(sessions)  # as if the lease had run out
    async with sessions() as session, session.begin():
        [second] = await notifications.claim(session, batch_size=5, lease_s=30)

    async with sessions() as session, session.begin():
        stale = await notifications.mark_delivered(
            session, event_id=first.id, attempt=first.attempt
        )
        current = await notifications.mark_delivered(
            session, event_id=second.id, attempt=second.attempt
        )

    assert (stale, current) == (False, True)


async def test_a_worker_killed_mid_batch_loses_nothing(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, database_url: str
) -> None:
    escalation_ids = [(await open_escalation(sessions, f"topic_{n}"))[0] for n in range(5)]
    receiver.released.clear()  # hold every request: the batch stays in flight
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DB_POOLER": os.environ.get("TEST_DB_POOLER", "auto"),  # as make_settings does
        "NOTIFY_WEBHOOK_URL": receiver.url,
        "NOTIFY_WEBHOOK_SECRET": SECRET,
        "NOTIFY_BATCH_SIZE": "5",
        "NOTIFY_TIMEOUT_S": "1",
        "NOTIFY_LEASE_S": "3",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "notify",
        cwd=PROJECT_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        async def whole_batch_in_flight() -> bool:
            return len(receiver.deliveries) == 5

        await eventually(whole_batch_in_flight)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    leased = await events(sessions)
    assert {(event.status, event.attempts) for event in leased} == {("pending", 1)}

    receiver.released.set()
    worker = NotificationWorker(sessions, worker_settings(database_url, receiver.url))
    async with worker:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))

        async def all_delivered() -> bool:
            return all(event.status == "delivered" for event in await events(sessions))

        await eventually(all_delivered)
        stop.set()
        await task

    assert Counter(receiver.ids()) == Counter({str(event.id): 2 for event in leased})
    assert {await escalation_status(sessions, i) for i in escalation_ids} == {"notified"}


async def test_delivery_logs_carry_neither_the_webhook_url_nor_the_members_details(
    sessions: async_sessionmaker[AsyncSession],
    receiver: Receiver,
    worker_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await open_escalation(sessions, "first")
    await open_escalation(sessions, "second")
    receiver.status = 500
    token_url = receiver.url + "?token=t0ken-in-the-url"
    # Logging as the service sets it up (DEBUG, JSON), into a buffer.
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging("DEBUG", "json")
    try:
        worker = worker_factory(token_url, notify_batch_size=1)
        await worker.run_once()  # a failure, retried
        receiver.status = 204
        await worker.run_once()  # a delivery
        await worker_factory("http://127.0.0.1:9/down?token=t0ken-in-the-url").run_once()
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)

    logged = buffer.getvalue()
    assert "notification_retry_scheduled" in logged
    assert "notification_delivered" in logged
    for secret in ("t0ken-in-the-url", "+1 555 0100", "Ada", "mortgage", "127.0.0.1:"):
        assert secret not in logged


# --- a receiver that answers a byte a second --------------------------------------------

SLOW_TIMEOUT_S = 2.0
GAUGE = "member_support_notifications_oldest_pending_age_seconds"


@pytest.fixture
async def dribbler() -> AsyncIterator[DribblingReceiver]:
    receiver = await DribblingReceiver(slow_marker=b"slow_lane").start()
    try:
        yield receiver
    finally:
        await receiver.stop()


async def event_of(
    sessions: async_sessionmaker[AsyncSession], escalation_id: uuid.UUID
) -> NotificationEvent:
    async with sessions() as session:
        event = await session.scalar(
            select(NotificationEvent).where(NotificationEvent.escalation_id == escalation_id)
        )
    assert event is not None
    return event


async def test_a_receiver_dribbling_its_answer_is_cut_at_the_deadline_without_holding_back_others(
    sessions: async_sessionmaker[AsyncSession],
    dribbler: DribblingReceiver,
    worker_factory: Any,
) -> None:
    slow_id, _ = await open_escalation(sessions, "slow_lane")
    worker = worker_factory(
        dribbler.url,
        notify_timeout_s=SLOW_TIMEOUT_S,
        notify_lease_s=5,
        notify_backoff_base_s=60,
        notify_backoff_cap_s=60,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        slow_event = await event_of(sessions, slow_id)

        async def slow_post_received() -> bool:
            return bool(dribbler.of(str(slow_event.id)))

        await eventually(slow_post_received)
        await asyncio.sleep(0.3)
        # While the slow POST is in flight: an unrelated escalation is delivered at once,
        gauge_before = metric(GAUGE)
        opened = time.monotonic()
        fast_id, _ = await open_escalation(sessions, "card_lost")

        async def fast_notified() -> bool:
            return await escalation_status(sessions, fast_id) == "notified"

        await eventually(fast_notified, timeout_s=SLOW_TIMEOUT_S)
        fast_took_s = time.monotonic() - opened
        [slow_exchange] = dribbler.of(str(slow_event.id))
        assert slow_exchange.closed_at is None  # the slow one is still being answered
        # and the backlog gauge keeps moving (the slow event is still pending, older).
        await asyncio.sleep(0.6)
        gauge_during = metric(GAUGE)
        assert slow_exchange.closed_at is None

        async def slow_recorded() -> bool:
            return (await event_of(sessions, slow_id)).last_error is not None

        await eventually(slow_recorded, timeout_s=4 * SLOW_TIMEOUT_S)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=4 * SLOW_TIMEOUT_S)

    assert fast_took_s < 1.0
    assert gauge_during >= gauge_before + 0.5
    assert slow_exchange.closed_at is not None
    held_s = slow_exchange.closed_at - slow_exchange.received_at
    assert SLOW_TIMEOUT_S - 0.5 <= held_s <= SLOW_TIMEOUT_S + 1.0
    recorded = await event_of(sessions, slow_id)
    assert (recorded.status, recorded.attempts, recorded.last_error) == (
        "pending",
        1,
        "deadline exceeded",
    )
    assert await escalation_status(sessions, slow_id) == "pending"


async def test_two_workers_never_deliver_an_event_twice_while_a_slow_post_is_in_flight(
    sessions: async_sessionmaker[AsyncSession],
    dribbler: DribblingReceiver,
    worker_factory: Any,
) -> None:
    slow_id, _ = await open_escalation(sessions, "slow_lane")
    lease_s = 2 * SLOW_TIMEOUT_S + 0.5
    workers = [
        worker_factory(
            dribbler.url,
            notify_timeout_s=SLOW_TIMEOUT_S,
            notify_lease_s=lease_s,
            notify_backoff_base_s=60,
            notify_backoff_cap_s=60,
        )
        for _ in range(2)
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop)) for worker in workers]
    try:
        # Long past the lease: a POST still in flight then would be taken over.
        await asyncio.sleep(lease_s + 2)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=4 * SLOW_TIMEOUT_S)

    event = await event_of(sessions, slow_id)
    exchanges = dribbler.of(str(event.id))
    assert len(exchanges) == 1
    assert exchanges[0].closed_at is not None
    assert exchanges[0].closed_at - exchanges[0].received_at < lease_s
    assert (event.attempts, event.last_error) == (1, "deadline exceeded")


# --- configuration, metrics, serve --------------------------------------------------------


async def test_without_a_webhook_url_the_worker_does_nothing_and_says_so_once(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await open_escalation(sessions)
    worker = NotificationWorker(sessions, settings)
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="app.notify"):
        task = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(0.3)
        stop.set()
        await task
    await worker.aclose()

    assert [record.message.split(":")[0] for record in caplog.records] == ["notify_disabled"]
    assert [event.status for event in await events(sessions)] == ["pending"]
    assert await worker.run_once() == 0


async def test_metrics_count_deliveries_retries_and_failures(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    before = {
        name: metric(f"member_support_notifications_{name}_total")
        for name in ("delivered", "retried", "failed")
    }
    await open_escalation(sessions, "first")
    await open_escalation(sessions, "second")
    receiver.status = 500
    worker = worker_factory(receiver.url, notify_max_attempts=2, notify_batch_size=1)
    await worker.run_once()  # first: retried
    await worker.run_once()  # second: retried
    await make_due(sessions)
    await worker.run_once()  # first: failed
    receiver.status = 200
    await worker.run_once()  # second: delivered

    after = {
        name: metric(f"member_support_notifications_{name}_total")
        for name in ("delivered", "retried", "failed")
    }
    assert {name: after[name] - before[name] for name in after} == {
        "delivered": 1,
        "retried": 2,
        "failed": 1,
    }


async def test_the_oldest_pending_age_gauge_follows_the_queue(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, worker_factory: Any
) -> None:
    await open_escalation(sessions)
    async with sessions() as session, session.begin():
        await session.execute(
            update(NotificationEvent).values(created_at=text("now() - interval '90 seconds'"))
        )
    receiver.status = 503
    worker = worker_factory(receiver.url)

    await worker.update_gauge()
    assert metric("member_support_notifications_oldest_pending_age_seconds") >= 90
    receiver.status = 204
    await worker.run_once()
    await worker.update_gauge()
    assert metric("member_support_notifications_oldest_pending_age_seconds") == 0


async def test_serve_with_notify_delivers_from_the_api_process(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, database_url: str
) -> None:
    escalation_id, _ = await open_escalation(sessions)
    application = create_app(worker_settings(database_url, receiver.url, notify_worker=True))

    async with LifespanManager(application):

        async def notified() -> bool:
            return await escalation_status(sessions, escalation_id) == "notified"

        await eventually(notified)

    assert len(receiver.deliveries) == 1


async def test_a_worker_keeps_polling_while_the_database_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    settings = worker_settings(unreachable, "http://127.0.0.1:9/unused")
    engine = create_engine(settings)
    worker = NotificationWorker(create_sessionmaker(engine, settings), settings)
    stop = asyncio.Event()
    try:
        with caplog.at_level(logging.WARNING, logger="app.notify"):
            task = asyncio.create_task(worker.run(stop))
            await asyncio.sleep(0.5)
            assert not task.done()
            stop.set()
            await task
    finally:
        await worker.aclose()
        await engine.dispose()

    messages = [record.message for record in caplog.records]
    assert messages.count("notify_database_unavailable") >= 2


async def test_the_notify_command_without_a_webhook_says_so_once_and_stops_on_sigterm(
    database_url: str,
) -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("NOTIFY_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "notify",
        cwd=PROJECT_ROOT,
        env={
            **environment,
            "DATABASE_URL": database_url,
            "DB_POOLER": os.environ.get("TEST_DB_POOLER", "auto"),
            "NOTIFY_POLL_INTERVAL_S": "0.05",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    first = await asyncio.wait_for(process.stderr.readline(), timeout=30)
    await asyncio.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    rest = await asyncio.wait_for(process.stderr.read(), timeout=30)

    assert await process.wait() == 0
    output = (first + rest).decode()
    assert output.count("notify_disabled") == 1
