"""The LangChain chat history against the service: round trips, paging, roles, sync use."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("langchain_core")
# langchain-core 1.x marks RunnableWithMessageHistory deprecated (LangGraph's persistence is
# its successor) but still ships it; the history class serves both.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

from conftest import SERVICE_KEY, fresh_database  # noqa: E402
from helpers import add_messages, open_session  # noqa: E402
from langchain_core.language_models.fake_chat_models import FakeListChatModel  # noqa: E402
from langchain_core.messages import (  # noqa: E402
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompt_values import PromptValue  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402
from langchain_core.runnables.history import RunnableWithMessageHistory  # noqa: E402
from ops_support import running_server  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402

from app.client import ServiceClient  # noqa: E402
from app.integrations.langchain import ServiceChatMessageHistory  # noqa: E402
from app.migrations import upgrade_to_head  # noqa: E402
from app.repositories import staff as staff_repository  # noqa: E402


@pytest.fixture
def served_database(server_url: str) -> Iterator[str]:
    """A database of the test's own (a live server commits; nothing leaks into others)."""
    with fresh_database(server_url) as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture
async def service(client: httpx.AsyncClient) -> ServiceClient:
    return ServiceClient(http=client, api_key=SERVICE_KEY, retries=0)


def _chain(
    service: ServiceClient, answers: list[str], prompts: list[list[BaseMessage]], **options: Any
) -> RunnableWithMessageHistory:
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You answer a credit union's members."),
            MessagesPlaceholder("history"),
            ("human", "{question}"),
        ]
    )

    def seen(value: PromptValue) -> PromptValue:
        prompts.append(value.to_messages())
        return value

    model = FakeListChatModel(responses=answers)
    return RunnableWithMessageHistory(
        prompt | RunnableLambda(seen) | model,
        lambda conversation_id: ServiceChatMessageHistory(
            conversation_id, client=service, **options
        ),
        input_messages_key="question",
        history_messages_key="history",
    )


async def test_a_chain_keyed_by_conversation_round_trips_through_the_service(
    service: ServiceClient,
) -> None:
    session = await service.open_session()
    prompts: list[list[BaseMessage]] = []
    chain = _chain(service, ["Hello! How can I help?", "Under Cards."], prompts, store_human=True)
    config: Any = {"configurable": {"session_id": str(session.conversation_id)}}
    first = await chain.ainvoke({"question": "Hi"}, config)
    assert first.content == "Hello! How can I help?"
    second = await chain.ainvoke({"question": "Where is my limit?"}, config)
    assert second.content == "Under Cards."
    # The second prompt carries the first exchange, read back through the service.
    assert [(type(m).__name__, m.text) for m in prompts[1]] == [
        ("SystemMessage", "You answer a credit union's members."),
        ("HumanMessage", "Hi"),
        ("AIMessage", "Hello! How can I help?"),
        ("HumanMessage", "Where is my limit?"),
    ]
    stored = await service.all_messages(session.conversation_id)
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Hi"),
        ("assistant", "Hello! How can I help?"),
        ("user", "Where is my limit?"),
        ("assistant", "Under Cards."),
    ]


async def test_by_default_the_members_message_is_not_written_twice(
    service: ServiceClient,
) -> None:
    session = await service.open_session()
    asked = await service.send_member_message(session.session_id, "Can I raise my limit?")
    prompts: list[list[BaseMessage]] = []
    # As the agent does: history before the announced message, that message as input.
    chain = _chain(service, ["Yes, in the app."], prompts, before=asked.seq)
    config: Any = {"configurable": {"session_id": str(session.conversation_id)}}
    await chain.ainvoke({"question": asked.content}, config)
    assert [m.text for m in prompts[0]][1:] == ["Can I raise my limit?"]
    stored = await service.all_messages(session.conversation_id)
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Can I raise my limit?"),
        ("assistant", "Yes, in the app."),
    ]


async def test_reading_pages_past_200(service: ServiceClient, db: AsyncSession) -> None:
    session = await open_session(db)
    contents = [f"line {number}" for number in range(430)]
    await add_messages(db, session.conversation_id, *contents)
    history = ServiceChatMessageHistory(session.conversation_id, client=service)
    messages = await history.aget_messages()
    assert [message.text for message in messages] == contents
    assert all(isinstance(message, HumanMessage) for message in messages)
    before = ServiceChatMessageHistory(session.conversation_id, client=service, before=6)
    assert [message.text for message in await before.aget_messages()] == contents[:5]


async def test_roles_map_both_ways(service: ServiceClient, db: AsyncSession) -> None:
    session = await service.open_session()
    await service.send_member_message(session.session_id, "my card is blocked")
    await service.member_escalate(session.session_id, "card", "Unblock it")
    person = await staff_repository.add(
        db,
        email=f"{uuid.uuid4().hex[:8]}@example.org",
        display_name="Ann Lee",
        password_hash="$argon2id$not-used-here",
        role="agent",
    )
    await service.write_message(
        session.conversation_id, "Ann here.", role="staff", staff_id=person.id
    )
    history = ServiceChatMessageHistory(
        session.conversation_id, client=service, idempotency_key="hook-7"
    )
    await history.aadd_messages(
        [
            SystemMessage("not history"),
            HumanMessage("skipped: the member route stored it"),
            AIMessage(""),  # a bare tool call has no text
            ToolMessage("tool output", tool_call_id="call-1"),
            AIMessage("I am the assistant."),
        ]
    )
    read = await history.aget_messages()
    assert [(type(m).__name__, m.name, m.text) for m in read] == [
        ("HumanMessage", None, "my card is blocked"),
        ("AIMessage", "staff", "Ann here."),
        ("AIMessage", None, "I am the assistant."),
    ]
    assert read[1].response_metadata["author_name"] == "Ann Lee"
    assert read[0].id is not None and read[0].response_metadata["role"] == "user"
    # A redelivered webhook's write, with the same key, stores nothing more.
    again = ServiceChatMessageHistory(
        session.conversation_id, client=service, idempotency_key="hook-7"
    )
    await again.aadd_messages([AIMessage("I am the assistant.")])
    assert len(await history.aget_messages()) == 3
    with pytest.raises(NotImplementedError):
        await history.aclear()


def test_the_sync_methods_against_a_running_service(served_database: str, tmp_path: Path) -> None:
    with running_server(served_database, tmp_path) as (_, base_url):
        service = ServiceClient(base_url, api_key=SERVICE_KEY)
        opened = httpx.post(f"{base_url}/api/v1/sessions", json={})
        conversation_id = opened.json()["conversation_id"]
        history = ServiceChatMessageHistory(conversation_id, client=service, store_human=True)
        history.add_messages([HumanMessage("Hi"), AIMessage("Hello!")])
        assert [(type(m).__name__, m.text) for m in history.messages] == [
            ("HumanMessage", "Hi"),
            ("AIMessage", "Hello!"),
        ]
        prompts: list[list[BaseMessage]] = []
        chain = _chain(service, ["Sync answer."], prompts, store_human=True)
        answer = chain.invoke(
            {"question": "And sync?"}, {"configurable": {"session_id": conversation_id}}
        )
        assert answer.content == "Sync answer."
        assert [m.text for m in history.messages][-2:] == ["And sync?", "Sync answer."]


async def test_sync_methods_need_a_client_of_their_own(service: ServiceClient) -> None:
    history = ServiceChatMessageHistory(uuid.uuid4(), client=service)
    with pytest.raises(RuntimeError, match="cannot be replicated"):
        _ = history.messages
