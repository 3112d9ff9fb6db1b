"""A LangChain chat history over a conversation, read and written through the REST API.

Installed with the optional extra: `pip install 'member-support[langchain]'` (only
langchain-core is needed). Usable with `RunnableWithMessageHistory`, keyed by the
conversation id:

    service = ServiceClient(base_url, api_key=key)
    chain = RunnableWithMessageHistory(
        prompt | model,
        lambda conversation_id: ServiceChatMessageHistory(conversation_id, client=service),
        input_messages_key="question",
        history_messages_key="history",
    )

How roles map:
- `user` ⇄ `HumanMessage`.
- `assistant` ⇄ `AIMessage`.
- `staff` (a human colleague who took the conversation over) → `AIMessage` named
  `"staff"`: to the model it is the support side speaking, and the name tells it apart
  from its own replies. The author's display name rides in `response_metadata`, never
  in the prompt. Staff messages are never written through this class (they need a
  staff account).

Writing: `AIMessage`s become `assistant` messages. `HumanMessage`s are skipped by
default, because in the agent loop the member's message is already stored (the member
wrote it through the member route); pass `store_human=True` when this history is the
only writer (e.g. a frontend that talks to the agent, not to the service). Other
message types (system, tool) and AI messages with no text (a bare tool call) are not
conversation history and are skipped. With `idempotency_key` (e.g. the webhook id), the
writes carry it, so a redelivered webhook never stores a reply twice.

Sync and async methods both work, as langchain-core asks: the async ones use the given
client; the sync ones run a client of their own on a private event loop (so they also
work when called from inside a running loop), which needs a client built from a
`base_url`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
except ImportError as missing:  # pragma: no cover - the extra is installed where tested
    raise ImportError(
        "app.integrations.langchain needs the 'langchain' extra: "
        "pip install 'member-support[langchain]' (or uv sync --extra langchain)"
    ) from missing

from app.client import ServiceClient
from app.schemas import Message, Role

ResultT = TypeVar("ResultT")

STAFF_NAME = "staff"


def to_langchain(message: Message) -> BaseMessage:
    """One stored message as LangChain sees it (its id kept as the message id)."""
    metadata: dict[str, Any] = {"seq": message.seq, "role": message.role}
    if message.role == "user":
        return HumanMessage(content=message.content, id=str(message.id), response_metadata=metadata)
    if message.role == "staff":
        if message.author_name is not None:
            metadata["author_name"] = message.author_name
        return AIMessage(
            content=message.content, id=str(message.id), name=STAFF_NAME, response_metadata=metadata
        )
    return AIMessage(content=message.content, id=str(message.id), response_metadata=metadata)


class ServiceChatMessageHistory(BaseChatMessageHistory):
    """The messages of one conversation, through the service's REST API."""

    def __init__(
        self,
        conversation_id: uuid.UUID | str,
        *,
        client: ServiceClient,
        store_human: bool = False,
        idempotency_key: str | None = None,
        before: int | None = None,
    ) -> None:
        """`before`: read only messages with a smaller seq (e.g. those before the one a
        webhook announced, which the chain then gets as its input)."""
        self.conversation_id = uuid.UUID(str(conversation_id))
        self.client = client
        self.store_human = store_human
        self.idempotency_key = idempotency_key
        self.before = before
        self._written = 0

    # --- async (the client's own loop) -------------------------------------------------

    async def aget_messages(self) -> list[BaseMessage]:
        """The conversation, oldest first, read in pages of 200."""
        return await self._read(self.client)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Store AI replies as `assistant` messages (human ones as `user` if asked)."""
        await self._write(self.client, messages)

    async def aclear(self) -> None:
        """Not offered: see `clear`."""
        self.clear()

    # --- sync (a private loop and client) ----------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The conversation, oldest first (sync)."""
        return self._run_sync(self._read)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """`aadd_messages`, sync."""

        async def write(client: ServiceClient) -> None:
            await self._write(client, messages)

        self._run_sync(write)

    def clear(self) -> None:
        """The service keeps conversations: messages are erased with their member
        (`DELETE /users/{id}`) or by the retention commands, not by an agent."""
        raise NotImplementedError("a conversation's messages cannot be cleared by an agent")

    # --- the one read and the one write ------------------------------------------------

    async def _read(self, client: ServiceClient) -> list[BaseMessage]:
        found: list[BaseMessage] = []
        async for message in client.iter_messages(self.conversation_id):
            if self.before is not None and message.seq >= self.before:
                break
            found.append(to_langchain(message))
        return found

    async def _write(self, client: ServiceClient, messages: Sequence[BaseMessage]) -> None:
        for message in messages:
            role = self._role_of(message)
            if role is None:
                continue
            key = None
            if self.idempotency_key is not None:
                # The first write carries the key itself, later ones a numbered variant.
                key = self.idempotency_key
                if self._written:
                    key = f"{self.idempotency_key}:{self._written}"
            self._written += 1
            await client.write_message(
                self.conversation_id, message.text, role=role, idempotency_key=key
            )

    def _role_of(self, message: BaseMessage) -> Role | None:
        if not message.text.strip():
            return None
        if isinstance(message, AIMessage):
            return "assistant"
        if isinstance(message, HumanMessage) and self.store_human:
            return "user"
        return None

    def _run_sync(self, work: Callable[[ServiceClient], Awaitable[ResultT]]) -> ResultT:
        async def run() -> ResultT:
            async with self.client.replica() as client:
                return await work(client)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(run())
        # Called from inside a running loop: that loop must not block on itself.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, run()).result()
