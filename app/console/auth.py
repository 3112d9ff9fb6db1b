"""Console login sessions: the signed cookie, the server-side session, CSRF, logout.

The browser holds a random token inside a cookie signed with itsdangerous (HttpOnly,
SameSite=Strict, Secure unless CONSOLE_INSECURE_COOKIE). The database holds only the
token's SHA-256 (app.repositories.console), so a session works only while its row says
so: not ended (logout), not expired (8 h), and its staff account active — checked on
every request. Every POST carries the session's CSRF token (form field or header).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import Depends, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from app.db import SessionDep
from app.repositories import console
from app.repositories.console import SESSION_LIFETIME, ActiveSession
from app.settings import Settings

log = logging.getLogger("app.console")

SESSION_COOKIE = "console_session"
LOGIN_CSRF_COOKIE = "console_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
LOGIN_PATH = "/console/login"
MAX_FORM_FIELDS = 20


class LoginRequired(Exception):
    """No working console session: browsers go to the login page."""


class CsrfRejected(Exception):
    """A console POST without the right CSRF token (403)."""


def make_signer(settings: Settings) -> URLSafeTimedSerializer:
    """The cookie signer: CONSOLE_SECRET_KEY, else a key of this process only."""
    if settings.console_secret_key is not None:
        key = settings.console_secret_key.get_secret_value()
    else:
        log.warning(
            "console_secret_key_unset: console sessions end when this process restarts and "
            "need a single worker; set CONSOLE_SECRET_KEY for more"
        )
        key = secrets.token_hex(32)
    return URLSafeTimedSerializer(key, salt="console-session")


def _signer(request: Request) -> URLSafeTimedSerializer:
    signer: URLSafeTimedSerializer = request.app.state.console_signer
    return signer


def session_id_of(token: str) -> str:
    """What the database keeps of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


def set_cookie(response: Response, settings: Settings, name: str, value: str, path: str) -> None:
    """A console cookie: HttpOnly, SameSite=Strict, Secure unless told otherwise."""
    response.set_cookie(
        name,
        value,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path=path,
        httponly=True,
        samesite="strict",
        secure=not settings.console_insecure_cookie,
    )


async def begin(
    request: Request, db: SessionDep, response: Response, staff_id: object, settings: Settings
) -> None:
    """Start a session for this account and put its signed cookie on the response."""
    token = secrets.token_urlsafe(32)
    await console.start(
        db,
        session_id=session_id_of(token),
        staff_id=staff_id,  # type: ignore[arg-type]
        csrf_token=secrets.token_urlsafe(32),
    )
    set_cookie(response, settings, SESSION_COOKIE, _signer(request).dumps(token), "/console")


def _token_from_cookie(request: Request) -> str | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    try:
        token = _signer(request).loads(raw, max_age=int(SESSION_LIFETIME.total_seconds()))
    except BadSignature:  # forged, tampered with, or older than 8 h (SignatureExpired)
        return None
    return token if isinstance(token, str) else None


async def current_session(request: Request, db: SessionDep) -> ActiveSession:
    """The working session of this request; LoginRequired otherwise."""
    token = _token_from_cookie(request)
    if token is None:
        raise LoginRequired
    active = await console.find_active(db, session_id=session_id_of(token))
    if active is None:
        raise LoginRequired
    request.state.actor = f"console+staff:{active.staff_id}"
    return active


StaffSession = Annotated[ActiveSession, Depends(current_session)]


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form body (console forms are small; the body limit applies)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    fields = parse_qsl(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    return dict(fields)


def tokens_match(expected: str, presented: str | None) -> bool:
    """Constant-time comparison of a CSRF token."""
    return presented is not None and hmac.compare_digest(expected.encode(), presented.encode())


async def checked_form(request: Request, session: StaffSession) -> dict[str, str]:
    """The POSTed form of a logged-in staff member, once its CSRF token checks out."""
    try:
        form = await read_form(request)
    except ValueError:
        raise CsrfRejected from None
    presented = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if not tokens_match(session.csrf_token, presented):
        raise CsrfRejected
    return form


CheckedForm = Annotated[dict[str, str], Depends(checked_form)]
