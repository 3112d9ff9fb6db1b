"""An example agent for the Member Support Service: a small Starlette app.

- `POST /webhook`: the service's `message.created` webhook. The signature is verified
  (Standard Webhooks, AGENT_WEBHOOK_SECRET); a conversation a staff member took over
  (`handoff`) gets no answer; otherwise the history is read through the LangChain
  integration, the chat model answers, and the reply is posted with the webhook id as
  its Idempotency-Key, so a redelivered webhook never yields a second reply. An error
  answers 500, and the service delivers the webhook again later.
- `POST /chat {message, session_id}` → `{response, status}`: the synchronous protocol
  of existing chat frontends. It opens (or reuses) the member's session through the
  service, posts the member's message, answers, stores the reply and returns it;
  `status` is `success`, `handoff` (staff are on it: no bot answer) or `error` with a
  polite text.
- `GET /healthz`.

Configuration (environment):
  SERVICE_URL           where the service answers (default http://127.0.0.1:8000)
  SERVICE_API_KEY       a key from the service's API_KEYS
  AGENT_WEBHOOK_SECRET  the service's AGENT_WEBHOOK_SECRET (whsec_...)
  AGENT_MODEL           `fake` (langchain-core's FakeListChatModel; the default), or
                        `provider:model` for LangChain's init_chat_model (needs the
                        `langchain` package and the provider's, e.g. langchain-openai)
  AGENT_FAKE_RESPONSES  the fake model's answers, separated by `|`, used in turn
  AGENT_SYSTEM_PROMPT   the system prompt

Run: `uvicorn agent:app --app-dir examples/agent --port 8001` (README beside this file).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.client import ServiceClient
from app.integrations.langchain import ServiceChatMessageHistory
from app.schemas import SESSION_ID_PATTERN

log = logging.getLogger("agent")

DEFAULT_SYSTEM_PROMPT = (
    "You are the member support assistant of a credit union. Answer briefly and kindly. "
    "Never ask for card numbers or passwords."
)
DEFAULT_FAKE_RESPONSES = "Thanks for your message! Happy to help with that."
SORRY = "Sorry, something went wrong on our side. Please try again in a moment."
HANDOFF_TEXT = "A member of our team is looking after this conversation and will answer here."


def make_model(name: str) -> BaseChatModel:
    """The chat model AGENT_MODEL names."""
    if name == "fake":
        answers = os.environ.get("AGENT_FAKE_RESPONSES", DEFAULT_FAKE_RESPONSES).split("|")
        return FakeListChatModel(responses=answers)
    from langchain.chat_models import init_chat_model  # the `langchain` package

    model: BaseChatModel = init_chat_model(name)
    return model


class Agent:
    """The state of the running agent: the service client, the model, the verifier."""

    def __init__(self) -> None:
        self.service = ServiceClient(
            os.environ.get("SERVICE_URL", "http://127.0.0.1:8000"),
            api_key=os.environ.get("SERVICE_API_KEY"),
        )
        self.model = make_model(os.environ.get("AGENT_MODEL", "fake"))
        self.webhook = Webhook(os.environ["AGENT_WEBHOOK_SECRET"])
        self.system_prompt = os.environ.get("AGENT_SYSTEM_PROMPT", DEFAULT_SYSTEM_PROMPT)
        # One answer at a time per conversation in this process: /chat and the webhook
        # of the message /chat posted must not both answer it.
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, conversation_id: str) -> asyncio.Lock:
        return self._locks.setdefault(conversation_id, asyncio.Lock())

    async def answer(
        self, conversation_id: str, question: str, seq: int, idempotency_key: str
    ) -> str | None:
        """Answer the member's message `seq`, unless it was answered already; the text."""
        history = ServiceChatMessageHistory(
            conversation_id, client=self.service, idempotency_key=idempotency_key
        )
        messages = await history.aget_messages()
        earlier = [m for m in messages if m.response_metadata["seq"] < seq]
        if any(m.response_metadata["seq"] > seq and isinstance(m, AIMessage) for m in messages):
            return None  # a reply (or a staff message) already followed it
        prompt: list[BaseMessage] = [
            SystemMessage(self.system_prompt),
            *earlier,
            HumanMessage(question),
        ]
        reply = await self.model.ainvoke(prompt)
        await history.aadd_messages([reply])
        return reply.text


async def webhook(request: Request) -> Response:
    agent: Agent = request.app.state.agent
    body = await request.body()
    try:
        event: dict[str, Any] = agent.webhook.verify(body, dict(request.headers))
    except WebhookVerificationError:
        return JSONResponse({"detail": "bad signature"}, status_code=401)
    if event.get("type") != "message.created":
        return Response(status_code=204)
    data = event["data"]
    message = data["message"]
    if data["handoff"] or message["role"] != "user":
        return Response(status_code=204)  # staff took over: stay quiet
    try:
        async with agent.lock(data["conversation_id"]):
            await agent.answer(
                data["conversation_id"],
                message["content"],
                message["seq"],
                request.headers["webhook-id"],
            )
    except Exception:
        log.exception("webhook_answer_failed")
        return JSONResponse({"detail": "answer failed"}, status_code=500)
    return Response(status_code=204)


async def chat(request: Request) -> JSONResponse:
    agent: Agent = request.app.state.agent
    try:
        body = await request.json()
        text = body["message"]
        session_id = body.get("session_id") or secrets.token_urlsafe(24)
        if not isinstance(text, str) or not isinstance(session_id, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"response": SORRY, "status": "error"}, status_code=400)
    try:
        session = await agent.service.open_session(service_session_id(session_id))
        conversation_id = str(session.conversation_id)
        async with agent.lock(conversation_id):
            asked = await agent.service.send_member_message(session.session_id, text)
            recent = await agent.service.messages(conversation_id, limit=50)
            if _in_handoff(recent.items):
                return JSONResponse(
                    {"response": HANDOFF_TEXT, "status": "handoff", "session_id": session_id}
                )
            answer = await agent.answer(conversation_id, text, asked.seq, f"chat:{asked.id}")
    except Exception:  # the service down, a refused message, the model failing
        log.exception("chat_failed")
        return JSONResponse({"response": SORRY, "status": "error"}, status_code=200)
    return JSONResponse({"response": answer or "", "status": "success", "session_id": session_id})


def service_session_id(session_id: str) -> str:
    """The frontend's session id as the service takes it: as is when it fits the
    service's rule (16-255 of A-Z a-z 0-9 _ -), else a digest of it."""
    if re.fullmatch(SESSION_ID_PATTERN, session_id):
        return session_id
    return "chat_" + hashlib.sha256(session_id.encode()).hexdigest()


def _in_handoff(messages: list[Any]) -> bool:
    """/chat has no webhook body: staff are on it when they wrote after the bot last did."""
    for message in reversed(messages):
        if message.role == "staff":
            return True
        if message.role == "assistant":
            return False
    return False


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.agent = Agent()
    try:
        yield
    finally:
        await app.state.agent.service.aclose()


app = Starlette(
    routes=[
        Route("/webhook", webhook, methods=["POST"]),
        Route("/chat", chat, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ],
    lifespan=lifespan,
)
