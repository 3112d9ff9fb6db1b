"""Helpers for the staff console tests: accounts, sign-in, CSRF tokens from pages."""

from __future__ import annotations

import re
import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

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
