"""A staff walk-through logs no password, password hash or service key anywhere."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import fresh_database, make_settings, started_client
from ops_support import fetch_value, run_cli

from app.migrations import upgrade_to_head

PASSWORD = "walk-through passphrase 42"
KEY = "console-key-5f0e9c2b7a1d4e38"


@pytest.fixture(scope="module")
def walk_database(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        upgrade_to_head(url)
        yield url


async def test_a_staff_walk_through_logs_no_password_hash_or_key(
    walk_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    added = run_cli(
        *("staff", "add", "walker@example.org", "--name", "Walker", "--password-stdin"),
        database_url=walk_database,
        cwd=tmp_path,
        input=PASSWORD + "\n",
        LOG_LEVEL="DEBUG",
    )
    assert added.returncode == 0, added.stderr
    staff_id = str(
        await fetch_value(walk_database, "SELECT id FROM staff WHERE email = 'walker@example.org'")
    )
    password_hash = str(
        await fetch_value(
            walk_database, "SELECT password_hash FROM staff WHERE id = $1::uuid", staff_id
        )
    )
    auth = {"Authorization": f"Bearer {KEY}"}
    settings = make_settings(walk_database, api_keys=f"console:{KEY}")
    async with started_client(settings) as http:
        session = (await http.post("/api/v1/sessions")).json()
        await http.post(
            f"/api/v1/sessions/{session['session_id']}/messages", json={"content": "help"}
        )
        case = (
            await http.post(
                f"/api/v1/sessions/{session['session_id']}/escalations",
                json={"issue_type": "card", "original_request": "my card"},
            )
        ).json()
        responses: list[httpx.Response] = [
            await http.patch(
                f"/api/v1/escalations/{case['id']}",
                json={"assignee_id": staff_id, "status": "in_progress"},
                headers=auth,
            ),
            await http.post(
                f"/api/v1/conversations/{session['conversation_id']}/messages",
                json={"role": "staff", "content": "Hello, Walker here."},
                headers={**auth, "X-Staff-Id": staff_id},
            ),
            await http.get(f"/api/v1/escalations/{case['id']}/events", headers=auth),
            await http.get("/api/v1/stats", headers=auth),
            await http.get("/api/v1/stats/daily", headers=auth),
            await http.get("/api/v1/escalations", headers={"Authorization": "Bearer wrong"}),
            await http.get("/metrics"),
        ]
    assert [response.status_code for response in responses] == [200, 201, 200, 200, 200, 401, 200]
    [assigned] = [
        r
        for r in caplog.records
        if getattr(r, "route", "") == "/api/v1/escalations/{escalation_id}"
        and getattr(r, "method", "") == "PATCH"
    ]
    assert assigned.actor == "console"  # type: ignore[attr-defined]
    everything = "\n".join(
        [
            added.stdout,
            added.stderr,
            *(f"{record.getMessage()} {record.__dict__}" for record in caplog.records),
            *(response.text for response in responses),
        ]
    )
    for secret in (PASSWORD, password_hash, KEY):
        assert secret not in everything
