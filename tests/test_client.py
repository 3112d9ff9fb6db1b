"""app.client against the running app: every route, every error class, retries on 503."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from conftest import SERVICE_KEY, make_settings
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from app import client as service_client
from app.client import ServiceClient
from app.main import create_app
from app.repositories import staff as staff_repository
from app.schemas import Conversation, Escalation, Message, MessagePage, User

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/member_support"


@pytest.fixture
async def service(client: httpx.AsyncClient) -> AsyncIterator[ServiceClient]:
    """The client over the test app, inside the test's transaction."""
    async with ServiceClient(http=client, api_key=SERVICE_KEY, retries=0) as service:
        yield service


async def _conversation_with_messages(service: ServiceClient, count: int) -> Message:
    session = await service.open_session()
    last: Message | None = None
    for number in range(1, count + 1):
        last = await service.send_member_message(session.session_id, f"question {number}")
    assert last is not None
    return last


async def test_messages_round_trip_with_the_services_own_models(service: ServiceClient) -> None:
    session = await service.open_session()
    assert (await service.session(session.session_id)) == session
    asked = await service.send_member_message(session.session_id, "How do I raise my limit?")
    assert isinstance(asked, Message) and asked.role == "user"
    reply = await service.write_message(session.conversation_id, "In the app, under Cards.")
    assert reply.role == "assistant" and reply.seq > asked.seq
    page = await service.messages(session.conversation_id)
    assert isinstance(page, MessagePage)
    assert [item.id for item in page.items] == [asked.id, reply.id]
    assert (await service.member_messages(session.session_id)).items == page.items
    assert (await service.messages(session.conversation_id, after=asked.seq)).items == [reply]
    assert (await service.messages(session.conversation_id, before=reply.seq)).items == [asked]


async def test_an_idempotency_key_gives_one_reply(service: ServiceClient) -> None:
    asked = await _conversation_with_messages(service, 1)
    first = await service.write_message(asked.conversation_id, "Answer", idempotency_key="hook-1")
    again = await service.write_message(asked.conversation_id, "Answer", idempotency_key="hook-1")
    assert first == again
    assert len((await service.messages(asked.conversation_id)).items) == 2
    # The same key with other content is refused.
    with pytest.raises(service_client.ValidationError) as refused:
        await service.write_message(asked.conversation_id, "Other", idempotency_key="hook-1")
    assert refused.value.status_code == 422


async def test_all_messages_pages_past_200(service: ServiceClient, db: AsyncSession) -> None:
    from helpers import add_messages, open_session

    session = await open_session(db)
    await add_messages(db, session.conversation_id, *(f"m{number}" for number in range(450)))
    messages = await service.all_messages(session.conversation_id)
    assert [message.content for message in messages] == [f"m{number}" for number in range(450)]
    assert [message.seq for message in messages] == sorted(message.seq for message in messages)
    assert len(messages) == 450 and len({message.id for message in messages}) == 450


async def test_conversations_users_and_erasure(service: ServiceClient) -> None:
    asked = await _conversation_with_messages(service, 2)
    found = await service.conversation(asked.conversation_id)
    assert isinstance(found, Conversation) and found.message_count == 2
    page = await service.conversations(status="active", user_id=found.user_id, limit=5)
    assert [item.id for item in page.items] == [found.id] and page.next_cursor is None
    closed = await service.set_conversation_status(found.id, "closed")
    assert closed.status == "closed"
    assert found.user_id is not None
    user = await service.user(found.user_id)
    assert isinstance(user, User) and user.email is None
    await service.erase_user(found.user_id)
    with pytest.raises(service_client.NotFound):
        await service.conversation(found.id)
    with pytest.raises(service_client.NotFound):
        await service.user_by_email("nobody-here@example.org")


async def test_user_by_email(service: ServiceClient, client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/sessions", json={"email": "ada.client@example.org"})
    assert response.status_code == 201
    user = await service.user_by_email("Ada.Client@example.org")
    assert user.email == "ada.client@example.org"


async def test_the_escalation_workflow(service: ServiceClient, db: AsyncSession) -> None:
    session = await service.open_session()
    await service.send_member_message(session.session_id, "my card is blocked")
    summary = await service.member_escalate(
        session.session_id, "card", "Unblock my card", contact_info={"phone": "+1 555 0100"}
    )
    assert (await service.member_escalations(session.session_id)).items == [summary]
    escalation = await service.escalation(summary.id)
    assert isinstance(escalation, Escalation) and escalation.contact_info == {
        "phone": "+1 555 0100"
    }
    queue = await service.escalations(status="pending", issue_type="card", assignee="none")
    assert summary.id in {item.id for item in queue.items}

    person = await staff_repository.add(
        db,
        email=f"{uuid.uuid4().hex[:8]}@example.org",
        display_name="Ann Lee",
        password_hash="$argon2id$not-used-here",
        role="agent",
    )
    assigned = await service.update_escalation(summary.id, assignee_id=person.id)
    assert assigned.assignee_id == person.id and assigned.status == "pending"
    moved = await service.update_escalation(summary.id, status="in_progress")
    assert moved.assignee_id == person.id and moved.status == "in_progress"
    reply = await service.write_message(
        session.conversation_id, "Ann here.", role="staff", staff_id=person.id
    )
    assert reply.role == "staff" and reply.author_name == "Ann Lee"
    unassigned = await service.update_escalation(summary.id, assignee_id=None)
    assert unassigned.assignee_id is None
    with pytest.raises(service_client.Conflict) as refused:
        await service.update_escalation(summary.id, status="pending")
    assert refused.value.status_code == 409 and "in_progress" in str(refused.value.detail)
    actions = [entry.action for entry in (await service.escalation_events(summary.id)).items]
    assert actions == ["assignment", "status", "staff_message", "assignment"]


async def test_notifications_and_stats(service: ServiceClient) -> None:
    page = await service.notifications(status="failed", limit=10)
    assert page.items == [] or all(item.status == "failed" for item in page.items)
    with pytest.raises(service_client.NotFound):
        await service.retry_notification(uuid.uuid4())
    await _conversation_with_messages(service, 1)
    stats = await service.stats(since=datetime.now(UTC) - timedelta(minutes=5))
    assert stats.messages.user >= 1
    daily = await service.daily_stats(days=3)
    assert len(daily.items) == 3


async def test_error_classes(service: ServiceClient, app: FastAPI) -> None:
    with pytest.raises(service_client.NotFound) as missing:
        await service.messages(uuid.uuid4())
    assert missing.value.status_code == 404
    with pytest.raises(service_client.ValidationError):
        await service.messages(uuid.uuid4(), limit=500)
    with pytest.raises(service_client.ValidationError):
        await service.conversations(cursor="not-a-cursor")
    transport = httpx.ASGITransport(app=app)
    async with ServiceClient("http://test", api_key="wrong", transport=transport) as stranger:
        with pytest.raises(service_client.Unauthorized) as refused:
            await stranger.conversations()
    assert refused.value.status_code == 401
    assert isinstance(refused.value, service_client.ServiceError)


async def _unreachable_app() -> AsyncIterator[FastAPI]:
    from asgi_lifespan import LifespanManager

    application = create_app(make_settings(UNREACHABLE))
    async with LifespanManager(application):
        yield application


async def test_unavailable_honours_retry_after_a_bounded_number_of_times() -> None:
    sent: list[float] = []

    async def note(request: httpx.Request) -> None:
        sent.append(time.monotonic())

    async for application in _unreachable_app():
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application),
            base_url="http://test",
            event_hooks={"request": [note]},
        )
        async with http, ServiceClient(http=http, api_key=SERVICE_KEY, retries=1) as service:
            with pytest.raises(service_client.Unavailable) as down:
                await service.conversation(uuid.uuid4())
            assert down.value.status_code == 503 and down.value.retry_after == 2
            # One retry, after the two seconds the service asked for.
            assert len(sent) == 2 and sent[1] - sent[0] >= 1.9
            sent.clear()
            # A wait longer than the client allows is not waited for.
            impatient = ServiceClient(http=http, api_key=SERVICE_KEY, max_retry_wait_s=1)
            with pytest.raises(service_client.Unavailable):
                await impatient.conversation(uuid.uuid4())
            assert len(sent) == 1


def test_error_for_reads_a_body_without_json() -> None:
    response = httpx.Response(502, text="bad gateway", headers={"retry-after": "soon"})
    error = service_client.error_for(response)
    assert type(error) is service_client.ServiceError
    assert error.detail == "bad gateway" and error.retry_after is None
    limited = service_client.error_for(
        httpx.Response(429, json={"detail": "slow down"}, headers={"retry-after": "3"})
    )
    assert isinstance(limited, service_client.RateLimited) and limited.retry_after == 3
