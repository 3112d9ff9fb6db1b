"""The backup drill of the README: populate, pg_dump, pg_restore into an empty database,
and read the same data back through the API."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SERVICE_KEY, fresh_database, make_settings, started_client
from ops_support import asyncpg_dsn, run

from app.migrations import upgrade_to_head

pytestmark = pytest.mark.slow


def _major(binary: str) -> int:
    output = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return int(output.split()[-1].split(".")[0])


def _tool_for(name: str, server_major: int) -> str | None:
    """A pg_dump/pg_restore at least as new as the server (older ones refuse to dump)."""
    import pgserver

    candidates = [
        shutil.which(name),
        str(Path(f"/usr/lib/postgresql/{server_major}/bin/{name}")),
        str(Path(pgserver.__file__).parent / "pginstall" / "bin" / name),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and _major(candidate) >= server_major:
            return candidate
    return None


def _server_major(url: str) -> int:
    async def read() -> int:
        import asyncpg

        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            return int(await connection.fetchval("SHOW server_version_num")) // 10000
        finally:
            await connection.close()

    return int(run(read()))


HEADERS = {"Authorization": f"Bearer {SERVICE_KEY}"}


async def _populate(http: httpx.AsyncClient) -> tuple[str, str]:
    created = await http.post(
        "/api/v1/sessions", json={"name": "Grace Hopper", "email": "grace@example.org"}
    )
    session_id, conversation_id = created.json()["session_id"], created.json()["conversation_id"]
    for content in ("my loan payment bounced", "and I was charged a fee"):
        await http.post(f"/api/v1/sessions/{session_id}/messages", json={"content": content})
    await http.post(
        f"/api/v1/conversations/{conversation_id}/messages",
        json={"role": "assistant", "content": "I can hand this to a person."},
        headers=HEADERS,
    )
    await http.post(
        f"/api/v1/sessions/{session_id}/escalations",
        json={"issue_type": "loan", "original_request": "refund the fee"},
    )
    return session_id, conversation_id


async def _read_everything(
    http: httpx.AsyncClient, session_id: str, conversation_id: str
) -> dict[str, Any]:
    paths = {
        "session": (f"/api/v1/sessions/{session_id}", {}),
        "history": (f"/api/v1/sessions/{session_id}/messages", {}),
        "conversation": (f"/api/v1/conversations/{conversation_id}", HEADERS),
        "escalations": ("/api/v1/escalations", HEADERS),
        "user": ("/api/v1/users?email=grace@example.org", HEADERS),
    }
    read = {}
    for name, (path, headers) in paths.items():
        response = await http.get(path, headers=headers)
        assert response.status_code == 200, (name, response.text)
        read[name] = response.json()
    return read


def test_a_dump_restored_into_an_empty_database_serves_the_same_data(
    server_url: str, tmp_path: Path
) -> None:
    server_major = _server_major(server_url)
    pg_dump, pg_restore = _tool_for("pg_dump", server_major), _tool_for("pg_restore", server_major)
    if pg_dump is None or pg_restore is None:
        pytest.skip(f"no pg_dump/pg_restore for PostgreSQL {server_major} on this machine")
    dump = tmp_path / "member-support.dump"
    with fresh_database(server_url) as source_url:
        upgrade_to_head(source_url)

        async def before() -> tuple[str, str, dict[str, Any]]:
            async with started_client(make_settings(source_url)) as http:
                session_id, conversation_id = await _populate(http)
                return (
                    session_id,
                    conversation_id,
                    await _read_everything(http, session_id, conversation_id),
                )

        result = run(before())
        assert isinstance(result, tuple)
        session_id, conversation_id, original = result
        subprocess.run(
            [
                pg_dump,
                "--format=custom",
                "--no-owner",
                "--no-privileges",
                f"--file={dump}",
                asyncpg_dsn(source_url),
            ],
            check=True,
            capture_output=True,
        )

    with fresh_database(server_url) as restored_url:
        restored = subprocess.run(
            [
                pg_restore,
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                f"--dbname={asyncpg_dsn(restored_url)}",
                str(dump),
            ],
            capture_output=True,
            text=True,
        )
        assert restored.returncode == 0, restored.stderr

        async def after() -> tuple[dict[str, Any], int, httpx.Response]:
            async with started_client(make_settings(restored_url)) as http:
                read = await _read_everything(http, session_id, conversation_id)
                ready = await http.get("/readyz")
                # The seq trigger came back too: a new message continues the sequence.
                sent = await http.post(
                    f"/api/v1/sessions/{session_id}/messages", json={"content": "still there?"}
                )
                return read, ready.status_code, sent

        result_after = run(after())
        assert isinstance(result_after, tuple)
        read, ready_status, sent = result_after

    assert read == original
    assert ready_status == 200
    assert sent.status_code == 201
    assert sent.json()["seq"] == len(original["history"]["items"]) + 1
