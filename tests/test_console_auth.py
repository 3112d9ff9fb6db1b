"""Staff console sign-in, session cookie, CSRF, rate limit, logout (docs/SECURITY.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from conftest import SERVICE_KEY
from console_support import PASSWORD, add_staff, csrf_of, sign_in
from fastapi import FastAPI
from itsdangerous import URLSafeTimedSerializer
from ops_support import run_cli
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.repositories import staff as staff_repository


@pytest.fixture
async def browser(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The test-transaction client over https, as a browser would send Secure cookies."""
    client.base_url = httpx.URL("https://test")
    return client


async def test_a_console_url_without_a_session_redirects_to_the_login_page(
    browser: httpx.AsyncClient,
) -> None:
    for path in (
        "/console",
        "/console/dashboard",
        "/console/cases/" + "0" * 8 + "-0000-0000-0000-" + "0" * 12,
    ):
        response = await browser.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/console/login"


async def test_signing_in_sets_a_strict_httponly_secure_cookie_and_opens_the_queue(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    account = await add_staff(db)
    response = await sign_in(browser, account.email)
    assert response.status_code == 303
    assert response.headers["location"] == "/console"
    cookie = next(
        value
        for name, value in response.headers.multi_items()
        if name == "set-cookie" and value.startswith("console_session=")
    ).lower()
    for attribute in ("httponly", "samesite=strict", "secure", "path=/console", "max-age=28800"):
        assert attribute in cookie
    queue = await browser.get("/console")
    assert queue.status_code == 200
    assert "Escalation queue" in queue.text
    assert account.display_name in queue.text


async def test_a_wrong_password_is_refused_with_401_and_no_session(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    account = await add_staff(db)
    response = await sign_in(browser, account.email, "not the password at all")
    assert response.status_code == 401
    assert "Email or password is wrong" in response.text
    assert "console_session" not in browser.cookies
    assert (await browser.get("/console")).status_code == 303


async def test_the_sixth_attempt_within_15_minutes_is_429_even_with_the_right_password(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    account = await add_staff(db)
    for _ in range(5):
        assert (await sign_in(browser, account.email, "wrong password 123")).status_code == 401
    sixth = await sign_in(browser, account.email, PASSWORD)
    assert sixth.status_code == 429
    assert sixth.headers["retry-after"] == "900"
    # Another email is not held back by this one's failures.
    other = await add_staff(db, "Bo Chen")
    assert (await sign_in(browser, other.email)).status_code == 303


async def test_failures_older_than_15_minutes_no_longer_count(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    account = await add_staff(db)
    for _ in range(5):
        await sign_in(browser, account.email, "wrong password 123")
    await db.execute(
        text("UPDATE console_login_failures SET failed_at = now() - interval '16 minutes'")
    )
    assert (await sign_in(browser, account.email)).status_code == 303


async def test_a_login_post_without_its_csrf_token_is_403(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    account = await add_staff(db)
    await browser.get("/console/login")
    response = await browser.post(
        "/console/login", data={"email": account.email, "password": PASSWORD}
    )
    assert response.status_code == 403
    wrong = await browser.post(
        "/console/login",
        data={"email": account.email, "password": PASSWORD, "csrf_token": "forged"},
    )
    assert wrong.status_code == 403


async def _signed_in_case(browser: httpx.AsyncClient, db: AsyncSession) -> tuple[str, str]:
    """(escalation id, the session's CSRF token) for a fresh case, signed in."""
    from helpers import escalate, open_session

    account = await add_staff(db)
    assert (await sign_in(browser, account.email)).status_code == 303
    session = await open_session(db)
    escalation = await escalate(db, session.session_id, "card", email="m@example.org")
    page = await browser.get(f"/console/cases/{escalation.id}")
    assert page.status_code == 200
    return str(escalation.id), csrf_of(page.text)


async def test_a_post_with_a_missing_or_wrong_csrf_token_is_403_and_changes_nothing(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    escalation_id, csrf = await _signed_in_case(browser, db)
    url = f"/console/cases/{escalation_id}/status"
    assert (await browser.post(url, data={"status": "resolved"})).status_code == 403
    forged = {"status": "resolved", "csrf_token": csrf[:-2] + "xx"}
    assert (await browser.post(url, data=forged)).status_code == 403
    assert (await browser.post("/console/logout", data={})).status_code == 403
    status = await db.scalar(
        text("SELECT status FROM escalations WHERE id = :id"), {"id": escalation_id}
    )
    assert status == "pending"
    ok = await browser.post(url, data={"status": "resolved", "csrf_token": csrf})
    assert ok.status_code == 303


async def test_a_forged_cookie_is_no_session(browser: httpx.AsyncClient, db: AsyncSession) -> None:
    account = await add_staff(db)
    await sign_in(browser, account.email)
    real = browser.cookies["console_session"]
    browser.cookies.clear()
    browser.cookies.set("console_session", real, path="/console")
    assert (await browser.get("/console")).status_code == 200  # the cookie set this way works
    browser.cookies.clear()
    browser.cookies.set("console_session", real[:-4] + "AAAA", path="/console")
    assert (await browser.get("/console")).status_code == 303
    other_key = URLSafeTimedSerializer("another-key-" + "x" * 32, salt="console-session")
    browser.cookies.clear()
    browser.cookies.set("console_session", other_key.dumps("any-token"), path="/console")
    assert (await browser.get("/console")).status_code == 303


async def test_an_expired_session_is_no_session(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    account = await add_staff(db)
    await sign_in(browser, account.email)
    assert (await browser.get("/console")).status_code == 200
    await db.execute(text("UPDATE console_sessions SET expires_at = now() - interval '1 second'"))
    assert (await browser.get("/console")).status_code == 303


async def test_a_disabled_account_s_sessions_stop_working_at_once(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    account = await add_staff(db)
    await sign_in(browser, account.email)
    assert (await browser.get("/console")).status_code == 200
    await staff_repository.disable(db, email=account.email)
    assert (await browser.get("/console")).status_code == 303
    assert (await sign_in(browser, account.email)).status_code == 401


async def test_logout_ends_the_session_server_side(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    account = await add_staff(db)
    await sign_in(browser, account.email)
    cookie = browser.cookies["console_session"]
    page = await browser.get("/console")
    response = await browser.post("/console/logout", data={"csrf_token": csrf_of(page.text)})
    assert response.status_code == 303
    assert response.headers["location"] == "/console/login"
    # The old cookie, replayed, no longer opens anything.
    browser.cookies.clear()
    browser.cookies.set("console_session", cookie, path="/console")
    assert (await browser.get("/console")).status_code == 303


async def test_the_service_key_is_not_a_console_login(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
    assert (await browser.get("/console", headers=headers)).status_code == 303
    events = await browser.get("/console/events", headers=headers)
    assert events.status_code == 401
    form = await browser.get("/console/login")
    response = await browser.post(
        "/console/login",
        data={"email": "service", "password": SERVICE_KEY, "csrf_token": csrf_of(form.text)},
    )
    assert response.status_code == 401


async def test_console_responses_carry_a_strict_csp_and_no_framing(
    browser: httpx.AsyncClient,
) -> None:
    response = await browser.get("/console/login")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "connect-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert "<script>" not in response.text
    assert " style=" not in response.text


async def test_static_assets_are_served_immutable_under_their_content_hash(
    browser: httpx.AsyncClient, app: FastAPI
) -> None:
    url = app.state.console_assets.url("vendor/htmx.org-2.0.11/htmx.min.js")
    response = await browser.get(url)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["content-type"].startswith("text/javascript")
    stale = url.replace(url.split("/")[3], "0" * 16)
    assert (await browser.get(stale)).status_code == 404


def test_staff_add_without_a_database_url_uses_the_embedded_database_serve_uses(
    tmp_path: Path,
) -> None:
    # README, "Staff console": `staff add`, then `serve`, is all a first try takes.
    result = run_cli(
        "staff",
        "add",
        "ann@example.org",
        "--name",
        "Ann Lee",
        "--password-stdin",
        database_url=None,
        cwd=tmp_path,
        input=PASSWORD + "\n",
    )
    assert result.returncode == 0, result.stderr
    assert "added agent ann@example.org" in result.stdout
    assert (tmp_path / ".member-support" / "pgdata").is_dir()
    # The embedded server stops with the command.
    assert not (tmp_path / ".member-support" / "pgdata" / "postmaster.pid").exists()


async def test_signing_in_replaces_a_hash_made_with_older_parameters(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    from argon2 import PasswordHasher

    account = await add_staff(db)
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    await staff_repository.set_password_hash(db, email=account.email, password_hash=weak)
    assert (await sign_in(browser, account.email)).status_code == 303
    stored = await db.scalar(
        text("SELECT password_hash FROM staff WHERE id = :id"), {"id": account.id}
    )
    assert stored != weak and stored.startswith("$argon2id$")


def test_a_short_console_secret_key_stops_start_up_naming_the_variable() -> None:
    from app.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"^CONSOLE_SECRET_KEY: must be at least 32 bytes"):
        load_settings(console_secret_key="too short", _env_file=None)
    key = "k" * 32
    settings = load_settings(console_secret_key=key, _env_file=None)
    assert settings.console_secret_key is not None
    assert key not in repr(settings)


async def test_concurrent_wrong_passwords_for_one_email_record_exactly_five_failures(
    app: FastAPI, committed_engine: AsyncEngine
) -> None:
    async with (
        AsyncSession(committed_engine, expire_on_commit=False) as session,
        session.begin(),
    ):
        account = await add_staff(session)

    async def attempt() -> int:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://test"
        ) as http:
            return (await sign_in(http, account.email, "wrong password 123")).status_code

    statuses = await asyncio.gather(*(attempt() for _ in range(8)))
    assert sorted(statuses) == [401] * 5 + [429] * 3
    async with committed_engine.connect() as connection:
        recorded = await connection.scalar(text("SELECT count(*) FROM console_login_failures"))
    assert recorded == 5
