"""Helpers for the staff console tests: accounts, sign-in, CSRF tokens from pages."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db import get_session
from app.models import Staff
from app.repositories import staff as staff_repository
from app.staff import hash_password

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def add_staff(db: AsyncSession, name: str = "Ann Lee", password: str = PASSWORD) -> Staff:
    """An active staff account with a real argon2 hash."""
    return await staff_repository.add(
        db,
        email=f"{uuid.uuid4().hex[:8]}@example.org",
        display_name=name,
        password_hash=hash_password(password),
        role="agent",
    )


def csrf_of(html: str) -> str:
    """The CSRF token a console page carries in its forms."""
    found = _CSRF.search(html)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


async def sign_in(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD
) -> httpx.Response:
    """GET the login form (its CSRF cookie and token), then POST the credentials."""
    form = await client.get("/console/login")
    assert form.status_code == 200
    return await client.post(
        "/console/login",
        data={"email": email, "password": password, "csrf_token": csrf_of(form.text)},
    )


@contextlib.asynccontextmanager
async def console_client(
    app: FastAPI, connection: AsyncConnection
) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client (https, so Secure cookies come back) whose requests run in
    the test's transaction."""

    async def joined_session() -> AsyncIterator[AsyncSession]:
        session = AsyncSession(
            bind=connection,
            join_transaction_mode="create_savepoint",
            expire_on_commit=False,
            autoflush=False,
        )
        try:
            async with session.begin():
                yield session
        finally:
            await session.close()

    app.dependency_overrides[get_session] = joined_session
    app.state.hot_paths = False
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="https://test",
        ) as http:
            yield http
    finally:
        app.dependency_overrides.pop(get_session, None)
        app.state.hot_paths = not app.state.settings.transaction_pooler
