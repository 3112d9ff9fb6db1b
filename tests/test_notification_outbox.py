"""The outbox: an event is written if and only if the escalation change commits."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import make_settings
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db import create_sessionmaker
from app.errors import Conflict
from app.models import NotificationEvent
from app.notify import backoff_seconds
from app.repositories import conversations, escalations
from app.settings import ConfigError, Settings, load_settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + base64.b64encode(b"outbox-test-secret-0123456789ab").decode()


async def open_escalation(session: AsyncSession, issue_type: str = "loan") -> Any:
    opened, _ = await conversations.open_session(session, session_id=None, contact={})
    escalation, _ = await escalations.open_escalation(
        session,
        session_id=opened.session_id,
        issue_type=issue_type,
        original_request="My card was declined.",
        contact_info=None,
    )
    return escalation


async def outbox(session: AsyncSession) -> list[tuple[str, dict[str, Any]]]:
    rows = await session.execute(
        select(NotificationEvent.type, NotificationEvent.data).order_by(
            NotificationEvent.created_at, NotificationEvent.id
        )
    )
    return [(row.type, row.data) for row in rows]


async def test_opening_an_escalation_writes_one_created_event(db: AsyncSession) -> None:
    escalation = await open_escalation(db)

    assert await outbox(db) == [("escalation.created", {"status": "pending"})]
    assert (await db.scalar(select(NotificationEvent.escalation_id))) == escalation.id


async def test_returning_the_open_duplicate_writes_no_event(db: AsyncSession) -> None:
    escalation = await open_escalation(db)
    opened = await conversations.get(db, conversation_id=escalation.conversation_id)
    session_id = await db.scalar(
        text("SELECT session_id FROM conversations WHERE id = :id"), {"id": opened.id}
    )

    _, created = await escalations.open_escalation(
        db, session_id=session_id, issue_type="loan", original_request="Again", contact_info=None
    )

    assert created is False
    assert len(await outbox(db)) == 1


async def test_a_rolled_back_escalation_leaves_no_event(
    committed_engine: AsyncEngine, settings: Settings
) -> None:
    sessions = create_sessionmaker(committed_engine, settings)
    async with sessions() as session:
        async with session.begin():
            opened, _ = await conversations.open_session(session, session_id=None, contact={})
        transaction = await session.begin()
        await escalations.open_escalation(
            session,
            session_id=opened.session_id,
            issue_type="loan",
            original_request="Roll me back",
            contact_info=None,
        )
        await transaction.rollback()

    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(NotificationEvent)) == 0


async def test_a_committed_escalation_is_in_the_outbox_for_other_connections(
    committed_engine: AsyncEngine, settings: Settings
) -> None:
    sessions = create_sessionmaker(committed_engine, settings)
    async with sessions() as session, session.begin():
        await open_escalation(session)

    async with sessions() as session:
        assert [kind for kind, _ in await outbox(session)] == ["escalation.created"]


async def test_a_status_change_writes_an_event_with_both_statuses(db: AsyncSession) -> None:
    escalation = await open_escalation(db)

    await escalations.transition(db, escalation_id=escalation.id, status="in_progress")

    # One transaction: both rows share now(), so compare without an order.
    assert sorted(await outbox(db)) == [
        ("escalation.created", {"status": "pending"}),
        ("escalation.status_changed", {"previous_status": "pending", "status": "in_progress"}),
    ]


async def test_a_same_status_update_writes_no_event(db: AsyncSession) -> None:
    escalation = await open_escalation(db)

    await escalations.transition(db, escalation_id=escalation.id, status="pending")

    assert len(await outbox(db)) == 1


async def test_a_refused_move_writes_no_event(db: AsyncSession) -> None:
    escalation = await open_escalation(db)
    await escalations.transition(db, escalation_id=escalation.id, status="resolved")

    with pytest.raises(Conflict):
        await escalations.transition(db, escalation_id=escalation.id, status="notified")

    assert len(await outbox(db)) == 2


async def test_a_patch_through_the_api_writes_a_status_changed_event(
    client: httpx.AsyncClient, service_headers: dict[str, str], db: AsyncSession
) -> None:
    escalation = await open_escalation(db)

    response = await client.patch(
        f"/api/v1/escalations/{escalation.id}", json={"status": "resolved"}, headers=service_headers
    )

    assert response.status_code == 200
    assert sorted(kind for kind, _ in await outbox(db)) == [
        "escalation.created",
        "escalation.status_changed",
    ]


async def test_erasing_a_user_removes_their_queued_events(
    client: httpx.AsyncClient, service_headers: dict[str, str], db: AsyncSession
) -> None:
    escalation = await open_escalation(db)
    user_id = await db.scalar(
        text("SELECT user_id FROM conversations WHERE id = :id"),
        {"id": escalation.conversation_id},
    )

    response = await client.delete(f"/api/v1/users/{user_id}", headers=service_headers)

    assert response.status_code == 204
    assert await outbox(db) == []


async def test_the_outbox_table_has_row_level_security_enabled(db: AsyncSession) -> None:
    enabled = await db.scalar(
        text("SELECT relrowsecurity FROM pg_class WHERE relname = 'notification_events'")
    )
    assert enabled is True


# --- the staff routes ---------------------------------------------------------------------


async def test_listing_notifications_needs_a_service_key(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/notifications")
    assert response.status_code == 401


async def test_pending_notifications_are_listed_oldest_first_with_a_cursor(
    client: httpx.AsyncClient, service_headers: dict[str, str], db: AsyncSession
) -> None:
    second = await open_escalation(db, "card")
    first = await open_escalation(db, "loan")
    # One transaction shares one now(): age the first event by hand.
    await db.execute(
        text(
            "UPDATE notification_events SET created_at = now() - interval '1 minute' "
            "WHERE escalation_id = :id"
        ),
        {"id": first.id},
    )

    page = await client.get(
        "/api/v1/notifications",
        params={"status": "pending", "limit": 1},
        headers=service_headers,
    )
    rest = await client.get(
        "/api/v1/notifications",
        params={"status": "pending", "cursor": page.json()["next_cursor"]},
        headers=service_headers,
    )

    assert [item["escalation_id"] for item in page.json()["items"]] == [str(first.id)]
    assert [item["escalation_id"] for item in rest.json()["items"]] == [str(second.id)]
    assert rest.json()["next_cursor"] is None
    assert page.json()["items"][0]["next_attempt_at"] is not None


async def test_an_unknown_notification_status_filter_is_refused(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.get(
        "/api/v1/notifications", params={"status": "lost"}, headers=service_headers
    )
    assert response.status_code == 422


async def test_retrying_an_unknown_notification_is_not_found(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    response = await client.post(
        f"/api/v1/notifications/{uuid.uuid4()}/retry", headers=service_headers
    )
    assert response.status_code == 404


async def test_retrying_a_pending_notification_leaves_it_unchanged(
    client: httpx.AsyncClient, service_headers: dict[str, str], db: AsyncSession
) -> None:
    await open_escalation(db)
    event_id = await db.scalar(select(NotificationEvent.id))

    response = await client.post(f"/api/v1/notifications/{event_id}/retry", headers=service_headers)

    assert response.status_code == 200
    assert (response.json()["status"], response.json()["attempts"]) == ("pending", 0)


async def test_stats_show_the_pending_notifications_and_the_oldest_age(
    client: httpx.AsyncClient, service_headers: dict[str, str], db: AsyncSession
) -> None:
    await open_escalation(db)

    response = await client.get("/api/v1/stats", headers=service_headers)

    block = response.json()["notifications"]
    assert (block["pending"], block["delivered"], block["failed"]) == (1, 0, 0)
    assert block["oldest_pending_age_seconds"] >= 0


# --- settings and backoff -------------------------------------------------------------------


def test_a_webhook_secret_without_the_whsec_prefix_is_refused() -> None:
    with pytest.raises(ConfigError, match="NOTIFY_WEBHOOK_SECRET: must start with whsec_"):
        load_settings(_env_file=None, notify_webhook_secret="c2VjcmV0LXNlY3JldC1zZWNyZXQ=")


def test_a_webhook_secret_that_is_not_base64_is_refused() -> None:
    with pytest.raises(ConfigError, match="NOTIFY_WEBHOOK_SECRET: whsec_ must be followed"):
        load_settings(_env_file=None, notify_webhook_secret="whsec_not base64!")


def test_a_short_webhook_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        load_settings(_env_file=None, notify_webhook_secret="whsec_c2hvcnQ=")


def test_a_webhook_url_without_a_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="NOTIFY_WEBHOOK_SECRET is not"):
        load_settings(_env_file=None, notify_webhook_url="https://hooks.example.com/x")


@pytest.mark.parametrize(
    "url", ["ftp://example.com", "https://", "http://[::1", "hooks.example.com"]
)
def test_a_webhook_url_that_is_not_an_http_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="NOTIFY_WEBHOOK_URL: must be an http"):
        load_settings(_env_file=None, notify_webhook_url=url, notify_webhook_secret=SECRET)


def test_a_lease_shorter_than_two_timeouts_is_refused() -> None:
    with pytest.raises(ConfigError, match="NOTIFY_LEASE_S"):
        load_settings(_env_file=None, notify_timeout_s=10, notify_lease_s=15)


def test_the_lease_must_outlast_the_deadline_even_when_left_at_its_default() -> None:
    # NOTIFY_LEASE_S defaults to 60: a 40 s deadline would let a second worker take an
    # event over while its first POST is still allowed to run.
    with pytest.raises(ConfigError, match="NOTIFY_LEASE_S: must be more than twice"):
        load_settings(_env_file=None, notify_timeout_s=40)


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/escalations",
        "http://10.0.0.7:8080/hook",
        "http://[2001:db8::1]/hook",
        "http://localhost.example.com/hook",
        "http://128.0.0.1/hook",
    ],
)
def test_a_plain_http_webhook_to_another_host_is_refused_at_start_up(url: str) -> None:
    with pytest.raises(ConfigError, match="NOTIFY_WEBHOOK_URL: http:// is only accepted"):
        load_settings(_env_file=None, notify_webhook_url=url, notify_webhook_secret=SECRET)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hook",
        "http://127.8.9.10/hook",
        "http://localhost:9000/hook",
        "http://LOCALHOST/hook",
        "http://[::1]:9000/hook",
        "https://hooks.example.com/escalations",
    ],
)
def test_https_or_a_loopback_http_webhook_is_accepted(url: str) -> None:
    settings = load_settings(_env_file=None, notify_webhook_url=url, notify_webhook_secret=SECRET)
    assert settings.notify_webhook_url is not None


def test_webhook_allow_http_accepts_plain_http_to_another_host() -> None:
    settings = load_settings(
        _env_file=None,
        notify_webhook_url="http://hooks.internal:8080/escalations",
        notify_webhook_secret=SECRET,
        webhook_allow_http=True,
    )
    assert settings.notify_webhook_url is not None


def test_the_commands_refuse_to_start_with_a_plain_http_webhook_to_another_host() -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("NOTIFY_")}
    environment.pop("WEBHOOK_ALLOW_HTTP", None)
    refused = subprocess.run(
        [sys.executable, "-m", "app.cli", "notify"],
        cwd=PROJECT_ROOT,
        env={
            **environment,
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/unused",
            "NOTIFY_WEBHOOK_URL": "http://hooks.example.com/t0ken",
            "NOTIFY_WEBHOOK_SECRET": SECRET,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert refused.returncode == 1
    assert refused.stderr.startswith("error: NOTIFY_WEBHOOK_URL: http:// is only accepted")
    assert "Traceback" not in refused.stderr
    assert "t0ken" not in refused.stderr


def test_webhook_settings_keep_the_url_and_secret_secret(database_url: str) -> None:
    settings = make_settings(
        database_url,
        notify_webhook_url="https://hooks.example.com/t0ken",
        notify_webhook_secret=SECRET,
    )
    assert "t0ken" not in repr(settings)
    assert SECRET not in repr(settings)


def test_backoff_doubles_per_attempt_with_jitter_and_stops_at_the_cap() -> None:
    waits = {attempt: backoff_seconds(attempt, base_s=2, cap_s=60) for attempt in (1, 3, 10, 99)}

    assert 1 <= waits[1] <= 2
    assert 4 <= waits[3] <= 8
    assert 30 <= waits[10] <= 60
    assert 30 <= waits[99] <= 60
