"""`uv run python -m bench.console`: the staff console's queue page over 10,000 open
escalations, rendered by the app as production builds it.

Creates its own database, migrates it, seeds OPEN escalations straight in SQL (one per
conversation: ESCALATIONS_OPEN_MAX caps what the API would let one member open), adds a
staff account and signs it in through the login form, then times GET /console (the
first page), a filtered page (unassigned, one issue type) and a page deep in the queue
(its keyset cursor), in-process through httpx's ASGI transport: the figure is the
server's own work, database included. Exits 1 when a p95 misses TARGET_MS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import time
import uuid
from typing import Any

import asyncpg
import httpx
from asgi_lifespan import LifespanManager

from app.main import create_app
from app.migrations import upgrade_to_head
from app.settings import load_settings
from app.staff import hash_password
from bench import seed

TARGET_MS = 150.0
PASSWORD = "bench console password"  # noqa: S105 - a throwaway database's account
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_NEXT = re.compile(r'href="/console\?([^"]*cursor=[^"]+)">Next page')

SEED = """
WITH new_users AS (
    INSERT INTO users (name, email)
    SELECT 'Member ' || n, 'member' || n || '@example.org' FROM generate_series(1, $1) AS n
    RETURNING id
), new_conversations AS (
    INSERT INTO conversations (user_id, session_id, status)
    SELECT id, 'console-bench-' || id, 'escalated' FROM new_users
    RETURNING id
)
INSERT INTO escalations (conversation_id, issue_type, original_request, status,
                         contact_info, created_at, assignee_id)
SELECT id,
       (ARRAY['card', 'loan', 'fraud', 'account'])[1 + floor(random() * 4)::int],
       'I need a person about my account',
       (ARRAY['pending', 'notified', 'in_progress'])[1 + floor(random() * 3)::int],
       '{"email": "member@example.org", "phone": "+1 555 0100"}'::jsonb,
       now() - random() * interval '30 days',
       CASE WHEN random() < 0.3 THEN $2::uuid END
FROM new_conversations
"""


async def seed_queue(url: str, open_escalations: int) -> uuid.UUID:
    """The staff account (its id) and OPEN escalations, a third of them assigned to it."""
    connection = await asyncpg.connect(url)
    try:
        staff_id: uuid.UUID = await connection.fetchval(
            "INSERT INTO staff (email, display_name, password_hash) "
            "VALUES ('bench@example.org', 'Bench Staff', $1) RETURNING id",
            hash_password(PASSWORD),
        )
        await connection.execute(SEED, open_escalations, staff_id)
        await connection.execute("ANALYZE")
        return staff_id
    finally:
        await connection.close()


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 1),
        "max_ms": round(ordered[-1], 1),
    }


async def time_pages(url: str, samples: int) -> dict[str, Any]:
    settings = load_settings(
        database_url=url, console_insecure_cookie=True, log_level="WARNING", _env_file=None
    )
    app = create_app(settings)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://bench"
        ) as client,
    ):
        form = await client.get("/console/login")
        token = _CSRF.search(form.text)
        assert token is not None
        login = await client.post(
            "/console/login",
            data={"email": "bench@example.org", "password": PASSWORD, "csrf_token": token[1]},
        )
        assert login.status_code == 303, login.status_code
        first = await client.get("/console")
        assert first.status_code == 200 and "data-escalation" in first.text
        # Walk 40 pages in, for a cursor deep in the queue.
        page = first.text
        for _ in range(40):
            found = _NEXT.search(page)
            assert found is not None
            deep_path = "/console?" + found[1].replace("&amp;", "&")
            page = (await client.get(deep_path)).text
        paths = {
            "first page": "/console",
            "unassigned, issue type card": "/console?assignee=unassigned&issue_type=card",
            "mine": "/console?assignee=mine",
            "page 41 (keyset cursor)": deep_path,
        }
        results: dict[str, Any] = {}
        for label, path in paths.items():
            timings = []
            for _ in range(samples):
                started = time.perf_counter()
                response = await client.get(path)
                timings.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, (label, response.status_code)
                assert response.text.count("data-escalation=") == 25, label
            results[label] = summary(timings)
        return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument(
        "--server-url",
        default=os.environ.get("BENCH_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--open-escalations", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=50)
    arguments = parser.parse_args()
    name = asyncio.run(seed.create_database(arguments.server_url))
    url = seed.database_url(arguments.server_url, name)
    try:
        upgrade_to_head(url)
        asyncio.run(seed_queue(url, arguments.open_escalations))
        results = asyncio.run(time_pages(url, arguments.samples))
    finally:
        asyncio.run(seed.drop_database(arguments.server_url, name))
    met = all(figures["p95_ms"] < TARGET_MS for figures in results.values())
    print(
        json.dumps(
            {
                "open_escalations": arguments.open_escalations,
                "target_p95_ms": TARGET_MS,
                "met": met,
                "pages": results,
            },
            indent=2,
        )
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
