"""The agent webhook: a signed message.created per member message, in order per conversation."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import SERVICE_KEY, make_settings, started_client
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from standardwebhooks import Webhook
from webhook_receiver import Delivery, Receiver

from app.db import create_sessionmaker
from app.models import Message as MessageRow
from app.models import NotificationEvent
from app.notify import NotificationWorker
from app.repositories import staff as staff_repository
from app.settings import ConfigError, Settings, load_settings

AGENT_SECRET = "whsec_" + base64.b64encode(b"agent-webhook-secret-0123456789").decode()
STAFF_SECRET = "whsec_" + base64.b64encode(b"staff-webhook-secret-0123456789").decode()
API = "/api/v1"
SERVICE = {"Authorization": f"Bearer {SERVICE_KEY}"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    try:
        yield started
    finally:
        started.stop()


def agent_settings(database_url: str, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "agent_webhook_url": url,
        "agent_webhook_secret": AGENT_SECRET,
        "notify_backoff_base_s": 0.05,
        "notify_backoff_cap_s": 0.1,
        "notify_poll_interval_s": 0.05,
        "notify_timeout_s": 2,
        "notify_lease_s": 5,
    }
    values.update(overrides)
    return make_settings(database_url, **values)


@pytest.fixture
def sessions(committed_engine: AsyncEngine, settings: Settings) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(committed_engine, settings)


@pytest.fixture
async def service(database_url: str, receiver: Receiver) -> AsyncIterator[httpx.AsyncClient]:
    """The app as production builds it (hot paths on), with the agent webhook set."""
    async with started_client(agent_settings(database_url, receiver.url)) as http:
        yield http


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        outcome = check()
        if isinstance(outcome, Awaitable):
            outcome = await outcome
        if outcome:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def deliver_all(
    worker: NotificationWorker,
    sessions: async_sessionmaker[AsyncSession],
    types: tuple[str, ...] = ("message.created",),
) -> None:
    """Run the worker until no event of `types` is pending."""

    async def drained() -> bool:
        await worker.run_once()
        async with sessions() as session:
            pending = await session.scalar(
                select(func.count()).where(
                    NotificationEvent.status == "pending", NotificationEvent.type.in_(types)
                )
            )
        return pending == 0

    await eventually(drained)


def verified(delivery: Delivery, secret: str = AGENT_SECRET) -> dict[str, Any]:
    """The body as a receiver checks it: signature, timestamp and id verified."""
    payload: dict[str, Any] = Webhook(secret).verify(delivery.body, delivery.headers)
    return payload


async def _open(service: httpx.AsyncClient, **contact: str) -> dict[str, Any]:
    response = await service.post(f"{API}/sessions", json=contact or None)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _say(service: httpx.AsyncClient, session_id: str, content: str) -> dict[str, Any]:
    response = await service.post(
        f"{API}/sessions/{session_id}/messages", json={"content": content}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_member_message_is_announced_signed_with_no_contact_details(
    service: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    receiver: Receiver,
    database_url: str,
) -> None:
    opened = await _open(service, name="Ada Lovelace", email="ada@example.org", phone="+1 555 0100")
    asked = await _say(service, opened["session_id"], "How do I raise my card limit?")
    # The service route's user messages count too; assistant replies do not.
    conversation = opened["conversation_id"]
    by_service = await service.post(
        f"{API}/conversations/{conversation}/messages",
        json={"role": "user", "content": "Typed in by the agent backend"},
        headers=SERVICE,
    )
    reply = await service.post(
        f"{API}/conversations/{conversation}/messages",
        json={"role": "assistant", "content": "In the app."},
        headers=SERVICE,
    )
    assert by_service.status_code == reply.status_code == 201
    async with sessions() as session:
        events = list(
            await session.scalars(select(NotificationEvent).order_by(NotificationEvent.created_at))
        )
    assert [(event.type, str(event.message_id)) for event in events] == [
        ("message.created", asked["id"]),
        ("message.created", by_service.json()["id"]),
    ]

    async with NotificationWorker(sessions, agent_settings(database_url, receiver.url)) as worker:
        await deliver_all(worker, sessions)
    first = receiver.deliveries[0]
    assert first.headers["webhook-id"] == str(events[0].id)
    assert first.headers["content-type"] == "application/json"
    assert verified(first) == {
        "type": "message.created",
        "timestamp": events[0].created_at.isoformat(),
        "data": {
            "conversation_id": conversation,
            "conversation_status": "active",
            "handoff": False,
            "message": asked,
            "open_escalations": [],
        },
    }
    assert [verified(delivery)["data"]["message"]["seq"] for delivery in receiver.deliveries] == [
        1,
        2,
    ]
    raw = b"".join(delivery.body for delivery in receiver.deliveries).decode()
    for private in ("Ada Lovelace", "ada@example.org", "555 0100", opened["session_id"]):
        assert private not in raw
    # Signed with the agent's secret, not anyone else's.
    with pytest.raises(Exception):  # noqa: B017 (standardwebhooks raises its own type)
        verified(first, STAFF_SECRET)


async def test_handoff_follows_staff_messages_since_the_latest_escalation(
    service: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    receiver: Receiver,
    database_url: str,
) -> None:
    opened = await _open(service)
    session_id, conversation = opened["session_id"], opened["conversation_id"]
    escalated = await service.post(
        f"{API}/sessions/{session_id}/escalations",
        json={"issue_type": "card", "original_request": "A person please"},
    )
    assert escalated.status_code == 201
    await _say(service, session_id, "before staff")
    async with sessions() as session, session.begin():
        person = await staff_repository.add(
            session,
            email=f"{uuid.uuid4().hex[:8]}@example.org",
            display_name="Ann Lee",
            password_hash="$argon2id$not-used-here",
            role="agent",
        )
    staff_reply = await service.post(
        f"{API}/conversations/{conversation}/messages",
        json={"role": "staff", "content": "Ann here."},
        headers={**SERVICE, "X-Staff-Id": str(person.id)},
    )
    assert staff_reply.status_code == 201
    await _say(service, session_id, "after staff")
    async with NotificationWorker(sessions, agent_settings(database_url, receiver.url)) as worker:
        await deliver_all(worker, sessions)
        bodies = [verified(delivery)["data"] for delivery in receiver.deliveries]
        assert [(body["message"]["content"], body["handoff"]) for body in bodies] == [
            ("before staff", True),  # built when sent: staff had written by then
            ("after staff", True),
        ]
        assert bodies[1]["conversation_status"] == "escalated"
        # The escalation as it is now (the staff reply set its first response).
        summary = {key: value for key, value in escalated.json().items() if key != "updated_at"}
        assert [
            {key: value for key, value in item.items() if key != "updated_at"}
            for item in bodies[1]["open_escalations"]
        ] == [summary]
        # A new escalation opens: until staff write again, the agent may speak.
        again = await service.post(
            f"{API}/sessions/{session_id}/escalations",
            json={"issue_type": "loan", "original_request": "And my loan"},
        )
        assert again.status_code == 201
        await _say(service, session_id, "new question")
        await deliver_all(worker, sessions)
    last = verified(receiver.deliveries[-1])["data"]
    assert last["handoff"] is False
    assert [item["issue_type"] for item in last["open_escalations"]] == ["card", "loan"]


async def test_per_conversation_order_under_concurrent_writers_and_failing_first_attempts(
    service: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    receiver: Receiver,
    database_url: str,
) -> None:
    seen: set[str] = set()

    def fail_first_attempt_of_every_second(delivery: Delivery) -> int:
        seq = json.loads(delivery.body)["data"]["message"]["seq"]
        first = delivery.headers["webhook-id"] not in seen
        seen.add(delivery.headers["webhook-id"])
        return 500 if seq % 2 == 0 and first else 204

    receiver.answer = fail_first_attempt_of_every_second
    conversations = [await _open(service) for _ in range(2)]
    per_writer = 8

    async def writer(number: int) -> None:
        for index in range(per_writer):
            target = conversations[(number + index) % 2]
            await _say(service, target["session_id"], f"writer {number} message {index}")

    settings = agent_settings(database_url, receiver.url, notify_batch_size=5)
    async with (
        NotificationWorker(sessions, settings) as first,
        NotificationWorker(sessions, settings) as second,
    ):
        stop = asyncio.Event()
        workers = [asyncio.create_task(worker.run(stop)) for worker in (first, second)]
        await asyncio.gather(*(writer(number) for number in range(3)))
        total = 3 * per_writer

        def all_delivered() -> bool:
            return sum(1 for d in receiver.deliveries if d.status == 204) == total

        await eventually(all_delivered)
        stop.set()
        await asyncio.gather(*workers)

    attempts: dict[str, list[tuple[int, int]]] = {}
    for delivery in receiver.deliveries:
        data = verified(delivery)["data"]
        attempts.setdefault(data["conversation_id"], []).append(
            (data["message"]["seq"], delivery.status)
        )
    assert len(attempts) == 2
    for history in attempts.values():
        # Every attempt of a message comes after the earlier message's success.
        delivered: list[int] = []
        for seq, status in history:
            assert seq == len(delivered) + 1, history
            if status == 204:
                delivered.append(seq)
        assert delivered == list(range(1, len(delivered) + 1))
        # Even seqs failed once, then went through.
        assert sum(1 for _, status in history if status == 500) == len(delivered) // 2


async def test_a_parked_message_stops_holding_the_later_ones(
    service: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    receiver: Receiver,
    database_url: str,
) -> None:
    receiver.answer = lambda delivery: (
        500 if json.loads(delivery.body)["data"]["message"]["seq"] == 1 else 204
    )
    opened = await _open(service)
    for content in ("one", "two"):
        await _say(service, opened["session_id"], content)
    settings = agent_settings(database_url, receiver.url, notify_max_attempts=2)
    async with NotificationWorker(sessions, settings) as worker:
        await deliver_all(worker, sessions)
    outcomes = [
        (verified(delivery)["data"]["message"]["content"], delivery.status)
        for delivery in receiver.deliveries
    ]
    assert outcomes == [("one", 500), ("one", 500), ("two", 204)]
    parked = await service.get(f"{API}/notifications?status=failed", headers=SERVICE)
    assert [item["type"] for item in parked.json()["items"]] == ["message.created"]
    assert parked.json()["items"][0]["escalation_id"] is None


async def test_a_redelivered_webhook_with_its_id_as_idempotency_key_gives_one_reply(
    service: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    receiver: Receiver,
    database_url: str,
) -> None:
    answered: set[str] = set()

    def agent(delivery: Delivery) -> int:
        # The agent replied, but its answer was lost: the service sends the event again.
        hook_id = delivery.headers["webhook-id"]
        first = hook_id not in answered
        answered.add(hook_id)
        return 502 if first else 204

    receiver.answer = agent
    opened = await _open(service)
    await _say(service, opened["session_id"], "Hello?")
    async with NotificationWorker(sessions, agent_settings(database_url, receiver.url)) as worker:
        await deliver_all(worker, sessions)
    assert len(receiver.deliveries) == 2
    assert len({delivery.headers["webhook-id"] for delivery in receiver.deliveries}) == 1
    for delivery in receiver.deliveries:
        data = verified(delivery)["data"]
        response = await service.post(
            f"{API}/conversations/{data['conversation_id']}/messages",
            json={"role": "assistant", "content": "Hi! How can I help?"},
            headers={**SERVICE, "Idempotency-Key": delivery.headers["webhook-id"]},
        )
        assert response.status_code in (200, 201)
    async with sessions() as session:
        replies = await session.scalar(select(func.count()).where(MessageRow.role == "assistant"))
    assert replies == 1


async def test_one_worker_serves_the_staff_and_agent_webhooks_each_with_its_secret(
    service: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    receiver: Receiver,
    database_url: str,
) -> None:
    staff_receiver = Receiver().start()
    try:
        opened = await _open(service)
        await _say(service, opened["session_id"], "my card")
        response = await service.post(
            f"{API}/sessions/{opened['session_id']}/escalations",
            json={"issue_type": "card", "original_request": "Help"},
        )
        assert response.status_code == 201
        settings = agent_settings(
            database_url,
            receiver.url,
            notify_webhook_url=staff_receiver.url,
            notify_webhook_secret=STAFF_SECRET,
        )
        async with NotificationWorker(sessions, settings) as worker:
            await deliver_all(worker, sessions, ("message.created", "escalation.created"))
        assert [verified(d)["type"] for d in receiver.deliveries] == ["message.created"]
        assert [verified(d, STAFF_SECRET)["type"] for d in staff_receiver.deliveries] == [
            "escalation.created"
        ]
    finally:
        staff_receiver.stop()


async def test_without_the_agent_webhook_no_message_event_is_written(
    database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with started_client(make_settings(database_url)) as http:
        opened = await _open(http)
        await _say(http, opened["session_id"], "quiet")
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(NotificationEvent)) == 0


def test_an_agent_url_without_a_whsec_secret_fails_start_up() -> None:
    with pytest.raises(ConfigError, match="AGENT_WEBHOOK_URL: is set but AGENT_WEBHOOK_SECRET"):
        load_settings(_env_file=None, agent_webhook_url="https://agent.example.org/hook")
    with pytest.raises(ConfigError, match="AGENT_WEBHOOK_SECRET: must start with whsec_"):
        load_settings(_env_file=None, agent_webhook_secret="plain-secret-0123456789")
    with pytest.raises(ConfigError, match="AGENT_WEBHOOK_URL: must be an http"):
        load_settings(
            _env_file=None,
            agent_webhook_url="ftp://agent.example",
            agent_webhook_secret=AGENT_SECRET,
        )


@pytest.mark.parametrize("hot_paths", [True, False], ids=["hot path", "fastapi"])
async def test_the_hot_path_and_the_route_both_record_the_event(
    database_url: str,
    sessions: async_sessionmaker[AsyncSession],
    receiver: Receiver,
    hot_paths: bool,
) -> None:
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    settings = agent_settings(database_url, receiver.url).model_copy(
        update={"hot_paths": hot_paths}
    )
    application = create_app(settings)
    async with LifespanManager(application):
        if hot_paths and not settings.hot_paths_active:
            pytest.skip("no hot path behind a transaction pooler")
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            opened = await _open(http)
            asked = await _say(http, opened["session_id"], "hello")
            replay = await http.post(
                f"{API}/sessions/{opened['session_id']}/messages",
                json={"content": "keyed"},
                headers={"Idempotency-Key": "k-1"},
            )
            again = await http.post(
                f"{API}/sessions/{opened['session_id']}/messages",
                json={"content": "keyed"},
                headers={"Idempotency-Key": "k-1"},
            )
    assert (replay.status_code, again.status_code) == (201, 200)
    async with sessions() as session:
        recorded = list(await session.scalars(select(NotificationEvent.message_id)))
    # One event per stored message; the replay stored nothing and recorded nothing.
    assert sorted(map(str, recorded)) == sorted([asked["id"], replay.json()["id"]])


def test_a_plain_http_agent_url_to_another_host_is_refused() -> None:
    with pytest.raises(ConfigError, match="AGENT_WEBHOOK_URL: http:// is only accepted"):
        load_settings(
            _env_file=None,
            agent_webhook_url="http://agent.example.org/hook",
            agent_webhook_secret=AGENT_SECRET,
        )
    allowed = load_settings(
        _env_file=None,
        agent_webhook_url="http://agent.internal:8001/hook",
        agent_webhook_secret=AGENT_SECRET,
        webhook_allow_http=True,
    )
    assert allowed.agent_webhook_enabled
