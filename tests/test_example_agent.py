"""End to end over loopback: the service (uvicorn), the example agent (uvicorn), a member."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("langchain_core")

from conftest import SERVICE_KEY, fresh_database
from ops_support import fetch_value, free_port, run, running_server

from app.migrations import upgrade_to_head

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + base64.b64encode(b"example-agent-secret-0123456789").decode()
ANSWER = "Thanks for your message! Happy to help with that."
SERVICE = {"Authorization": f"Bearer {SERVICE_KEY}"}


@pytest.fixture
def served_database(server_url: str) -> Iterator[str]:
    """A database of the test's own (a live server commits; nothing leaks into others)."""
    with fresh_database(server_url) as url:
        upgrade_to_head(url)
        yield url


@contextlib.contextmanager
def running_agent(port: int, service_url: str, cwd: Path) -> Iterator[str]:
    """examples/agent under uvicorn until it answers /healthz."""
    environment = {
        **os.environ,
        "SERVICE_URL": service_url,
        "SERVICE_API_KEY": SERVICE_KEY,
        "AGENT_WEBHOOK_SECRET": SECRET,
        "AGENT_MODEL": "fake",
        "AGENT_FAKE_RESPONSES": ANSWER,
    }
    log_path = cwd / "agent.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "agent:app",
                "--app-dir",
                str(PROJECT_ROOT / "examples" / "agent"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=environment,
            cwd=cwd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"agent exited early:\n{log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent not ready:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _history(service_url: str, session_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{service_url}/api/v1/sessions/{session_id}/messages?limit=200")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _first_reply_on_the_stream(
    service_url: str, session_id: str, after: int, timeout_s: float
) -> dict[str, Any]:
    """The first assistant message the member's event stream sends after seq `after`."""
    event = None
    with httpx.stream(
        "GET",
        f"{service_url}/api/v1/sessions/{session_id}/events",
        params={"after": after},
        timeout=httpx.Timeout(5, read=timeout_s),
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:") and event == "message":
                message: dict[str, Any] = json.loads(line.partition(":")[2])
                if message["role"] == "assistant":
                    return message
    raise AssertionError("the stream ended without a reply")


def _say(service_url: str, session_id: str, content: str) -> dict[str, Any]:
    response = httpx.post(
        f"{service_url}/api/v1/sessions/{session_id}/messages", json={"content": content}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _delivered(service_url: str, message_id: str) -> bool:
    response = httpx.get(
        f"{service_url}/api/v1/notifications?status=delivered&limit=200", headers=SERVICE
    )
    return any(item["message_id"] == message_id for item in response.json()["items"])


def _wait(check: Any, timeout_s: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_member_gets_the_agents_answer_and_the_agent_steps_back_at_handoff(
    served_database: str, tmp_path: Path
) -> None:
    database_url = served_database
    agent_port = free_port()
    with (
        running_server(
            database_url,
            tmp_path,
            AGENT_WEBHOOK_URL=f"http://127.0.0.1:{agent_port}/webhook",
            AGENT_WEBHOOK_SECRET=SECRET,
            NOTIFY_WORKER="true",
            NOTIFY_POLL_INTERVAL_S="0.05",
        ) as (_, service_url),
        running_agent(agent_port, service_url, tmp_path) as agent_url,
    ):
        session = httpx.post(f"{service_url}/api/v1/sessions", json={}).json()
        session_id = session["session_id"]

        # Webhook mode: the member posts to the service and listens on their event
        # stream (resuming after their own message); the reply arrives within 2 s.
        started = time.monotonic()
        asked = _say(service_url, session_id, "Hello, can I raise my card limit?")
        reply = _first_reply_on_the_stream(service_url, session_id, asked["seq"], 2.0)
        assert time.monotonic() - started <= 2.0
        assert (reply["role"], reply["content"], reply["seq"]) == (
            "assistant",
            ANSWER,
            asked["seq"] + 1,
        )
        assert [(m["role"], m["content"]) for m in _history(service_url, session_id)] == [
            ("user", "Hello, can I raise my card limit?"),
            ("assistant", ANSWER),
        ]

        # The synchronous protocol of existing frontends, on the same session.
        chatted = httpx.post(
            f"{agent_url}/chat",
            json={"message": "And my loan?", "session_id": session_id},
            timeout=10,
        )
        assert chatted.status_code == 200
        assert chatted.json()["status"] == "success"
        assert chatted.json()["response"] == ANSWER
        asked_by_chat = _history(service_url, session_id)[-2]
        _wait(lambda: _delivered(service_url, asked_by_chat["id"]), 5)
        # The webhook of the message /chat posted found it answered: one reply.
        assert [m["role"] for m in _history(service_url, session_id)] == [
            "user",
            "assistant",
            "user",
            "assistant",
        ]

        # Handoff: a staff member writes; the agent stays quiet from then on.
        staff_id = run(
            fetch_value(
                database_url,
                "INSERT INTO staff (email, display_name, password_hash) "
                "VALUES ($1, 'Ann Lee', 'x') RETURNING id",
                f"{uuid.uuid4().hex[:8]}@example.org",
            )
        )
        staff_reply = httpx.post(
            f"{service_url}/api/v1/conversations/{session['conversation_id']}/messages",
            json={"role": "staff", "content": "Ann here, I will take it from here."},
            headers={**SERVICE, "X-Staff-Id": str(staff_id)},
        )
        assert staff_reply.status_code == 201, staff_reply.text
        quiet = _say(service_url, session_id, "Thanks Ann")
        _wait(lambda: _delivered(service_url, quiet["id"]), 5)
        assert _history(service_url, session_id)[-1]["id"] == quiet["id"]
        in_handoff = httpx.post(
            f"{agent_url}/chat",
            json={"message": "Still there?", "session_id": session_id},
            timeout=10,
        )
        assert in_handoff.json()["status"] == "handoff"
        assert _history(service_url, session_id)[-1]["content"] == "Still there?"

        # A bad signature is refused.
        forged = httpx.post(f"{agent_url}/webhook", content=b"{}", headers={})
        assert forged.status_code == 401
