"""The console's pages: login, the queue, a case, the dashboard, and their actions.

Everything reads and writes through the repositories the REST routes use; a page is a
different rendering of the same rules, never a second copy of them.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from app import staff as passwords
from app.api.deps import SettingsDep, check_content_length
from app.api.stats import current_stats, daily_stats
from app.console import format as fmt
from app.console.auth import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    CheckedForm,
    CsrfRejected,
    StaffSession,
    begin,
    read_form,
    set_cookie,
    tokens_match,
)
from app.db import SessionDep
from app.errors import DomainError, NotFound, Unprocessable
from app.models import ESCALATION_STATUSES
from app.repositories import audit, console, escalations, messages
from app.repositories import staff as staff_accounts
from app.repositories.console import ActiveSession
from app.schemas import ISSUE_TYPE_PATTERN, MessageCreate

router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.globals.update(status_words=fmt.STATUS_WORDS, role_words=fmt.ROLE_WORDS)
templates.env.filters.update(duration=fmt.duration, percent=fmt.percent)

QUEUE_PAGE = 25
TRANSCRIPT_PAGE = 30
LIVE_TRANSCRIPT_MAX = 200
LOGIN_FAILURES_MAX = 5
DASHBOARD_WINDOWS = (
    ("24 h", timedelta(hours=24)),
    ("7 d", timedelta(days=7)),
    ("30 d", timedelta(days=30)),
)

AssigneeFilter = Literal["anyone", "mine", "unassigned"]
_dummy_hash: str | None = None


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    session: ActiveSession | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """A template with what every page needs: the asset URLs and the session's CSRF token."""
    assets = request.app.state.console_assets
    context = {
        **context,
        "asset": assets.url,
        "session": session,
        "csrf_token": session.csrf_token if session is not None else None,
    }
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _dummy_password_hash() -> str:
    # An unknown email costs the same argon2 work as a known one: timing tells nothing.
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = passwords.hash_password(secrets.token_urlsafe(16))
    return _dummy_hash


# --- login and logout -------------------------------------------------------------------


def _login_page(
    request: Request, settings: SettingsDep, error: str | None, status_code: int, email: str = ""
) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "login.html",
        {"login_token": token, "error": error, "email": email},
        status_code=status_code,
    )
    set_cookie(response, settings, LOGIN_CSRF_COOKIE, token, "/console/login")
    return response


@router.get("/login")
async def login_form(request: Request, settings: SettingsDep) -> HTMLResponse:
    """The sign-in form."""
    return _login_page(request, settings, None, 200)


@router.post("/login")
async def login(request: Request, db: SessionDep, settings: SettingsDep) -> Response:
    """Email and password -> a session cookie; 5 failures for one email in 15 min -> 429."""
    try:
        form = await read_form(request)
    except ValueError:
        raise CsrfRejected from None
    if not tokens_match(request.cookies.get(LOGIN_CSRF_COOKIE, ""), form.get(CSRF_FIELD)) or not (
        request.cookies.get(LOGIN_CSRF_COOKIE)
    ):
        raise CsrfRejected
    raw_email = form.get("email", "")[:255]
    password = form.get("password", "")
    try:
        email = passwords.normalise_email(raw_email)
    except passwords.InvalidStaffInput:
        email = raw_email.strip().lower()
    await console.hold_sign_ins(db, email=email)
    if await console.recent_failures(db, email=email) >= LOGIN_FAILURES_MAX:
        refused = _login_page(
            request,
            settings,
            "Too many failed sign-ins for this email. Try again in 15 minutes.",
            429,
            raw_email,
        )
        refused.headers["Retry-After"] = str(int(console.LOGIN_FAILURE_WINDOW.total_seconds()))
        return refused
    try:
        account = await staff_accounts.get_by_email(db, email=email)
    except NotFound:
        account = None
    verification = passwords.verify(
        account.password_hash if account is not None else _dummy_password_hash(), password
    )
    if account is None or not verification.ok or not account.active:
        await console.record_failure(db, email=email)
        return _login_page(request, settings, "Email or password is wrong.", 401, raw_email)
    if verification.new_hash is not None:
        await staff_accounts.set_password_hash(db, email=email, password_hash=verification.new_hash)
    response = RedirectResponse("/console", status_code=303)
    await begin(request, db, response, account.id, settings)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/console/login")
    return response


@router.post("/logout")
async def logout(db: SessionDep, session: StaffSession, form: CheckedForm) -> Response:
    """End the session server-side and drop its cookie."""
    await console.end(db, session_id=session.session_id)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/console")
    return response


# --- the queue ----------------------------------------------------------------------------


def _assignee(
    filter_: AssigneeFilter, session: ActiveSession
) -> uuid.UUID | Literal["none"] | None:
    return {"anyone": None, "mine": session.staff_id, "unassigned": "none"}[filter_]


# Empty (any), or what the API accepts: the statuses and the issue-type pattern, reused.
QueueStatus = Annotated[str | None, Query(pattern=f"^(|{'|'.join(ESCALATION_STATUSES)})$")]
QueueIssueType = Annotated[
    str | None, Query(pattern=f"^(|{ISSUE_TYPE_PATTERN.removeprefix('^').removesuffix('$')})$")
]
QueueCursor = Annotated[str | None, Query(max_length=512)]


async def queue_context(
    db: SessionDep,
    settings: SettingsDep,
    session: StaffSession,
    status: QueueStatus = None,
    issue_type: QueueIssueType = None,
    assignee: AssigneeFilter = "anyone",
    cursor: QueueCursor = None,
) -> dict[str, Any]:
    """One page of the queue as the filters in the query string ask, ready to render."""
    rows, next_cursor = await escalations.list_queue(
        db,
        status=status or None,
        issue_type=issue_type or None,
        limit=QUEUE_PAGE,
        cursor=cursor,
        assignee=_assignee(assignee, session),
        open_only=not status,
    )
    names = await console.display_names(
        db, staff_ids={row.assignee_id for row in rows if row.assignee_id is not None}
    )
    now = datetime.now(UTC)
    sla = settings.sla_first_response_minutes
    items = [
        {
            "escalation": row,
            "age": fmt.age(row.created_at, now),
            "breached": fmt.sla_breached(row, now, sla),
            "assignee": names.get(row.assignee_id) if row.assignee_id else None,
        }
        for row in rows
    ]
    filters = {"status": status or "", "issue_type": issue_type or "", "assignee": assignee}
    return {
        "items": items,
        "next_cursor": next_cursor,
        "filters": filters,
        "first_page": cursor is None,
        "cursor_now": cursor,
        "sla_minutes": sla,
        "statuses": ESCALATION_STATUSES,
        "issue_types": settings.escalation_issue_types,
    }


QueueContext = Annotated[dict[str, Any], Depends(queue_context)]


@router.get("")
async def queue_page(request: Request, session: StaffSession, queue: QueueContext) -> HTMLResponse:
    """Open escalations, oldest first, a page at a time, live."""
    return render(request, "queue.html", queue, session)


@router.get("/queue/rows")
async def queue_rows(request: Request, session: StaffSession, queue: QueueContext) -> HTMLResponse:
    """The queue's table alone: what the live update swaps in."""
    return render(request, "_queue_table.html", queue, session)


# --- a case -------------------------------------------------------------------------------


def _actor_ids(actors: list[str]) -> dict[str, uuid.UUID]:
    """`...+staff:<id>` or `staff:<id>` actors -> the staff member's id."""
    ids: dict[str, uuid.UUID] = {}
    for actor in actors:
        _, found, tail = actor.rpartition("staff:")
        if found:
            try:
                ids[actor] = uuid.UUID(tail)
            except ValueError:
                continue
    return ids


async def _case(
    db: SessionDep, settings: SettingsDep, session: ActiveSession, escalation_id: uuid.UUID
) -> dict[str, Any]:
    escalation = await escalations.get(db, escalation_id=escalation_id)
    items, has_more = await messages.page(
        db, conversation_id=escalation.conversation_id, limit=TRANSCRIPT_PAGE
    )
    trail = list(await audit.trail(db, escalation_id=escalation_id))
    actor_ids = _actor_ids([row.actor for row in trail])
    assignee_ids = {escalation.assignee_id} if escalation.assignee_id else set()
    for row in trail:
        for value in (row.from_value, row.to_value):
            if row.action == "assignment" and value:
                assignee_ids.add(uuid.UUID(value))
    # One lookup for everyone the page names: assignees and the trail's actors.
    people = await console.display_names(db, staff_ids=assignee_ids | set(actor_ids.values()))
    names = {actor: people[staff_id] for actor, staff_id in actor_ids.items() if staff_id in people}
    now = datetime.now(UTC)
    start_seq = items[0]["seq"] if items else None
    return {
        "escalation": escalation,
        "messages": items,
        "has_older": has_more,
        "start_seq": start_seq,
        "trail": trail,
        "actor_names": names,
        "people": {str(key): value for key, value in people.items()},
        "assignee": people.get(escalation.assignee_id) if escalation.assignee_id else None,
        "moves": escalations.ALLOWED_MOVES.get(escalation.status or "", ()),
        "age": fmt.age(escalation.created_at, now),
        "breached": fmt.sla_breached(escalation, now, settings.sla_first_response_minutes),
        "max_chars": settings.message_max_chars,
    }


@router.get("/cases/{escalation_id}")
async def case_page(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    session: StaffSession,
    escalation_id: uuid.UUID,
) -> HTMLResponse:
    """One escalation: contact details, request, transcript, moves, reply, audit trail."""
    context = await _case(db, settings, session, escalation_id)
    return render(request, "case.html", context, session)


@router.get("/cases/{escalation_id}/transcript")
async def transcript_since(
    request: Request,
    db: SessionDep,
    session: StaffSession,
    escalation_id: uuid.UUID,
    from_seq: Annotated[int, Query(ge=0)] = 0,
) -> HTMLResponse:
    """The transcript from `from_seq` on (what the live update swaps in)."""
    escalation = await escalations.get(db, escalation_id=escalation_id)
    items, _ = await messages.page(
        db,
        conversation_id=escalation.conversation_id,
        limit=LIVE_TRANSCRIPT_MAX,
        after=from_seq - 1 if from_seq else None,
    )
    return render(request, "_messages.html", {"messages": items}, session)


@router.get("/cases/{escalation_id}/transcript/older")
async def transcript_older(
    request: Request,
    db: SessionDep,
    session: StaffSession,
    escalation_id: uuid.UUID,
    before: Annotated[int, Query(ge=1)],
) -> HTMLResponse:
    """The page of messages before `before`, with a button for the one before it."""
    escalation = await escalations.get(db, escalation_id=escalation_id)
    items, has_more = await messages.page(
        db, conversation_id=escalation.conversation_id, limit=TRANSCRIPT_PAGE, before=before
    )
    context = {
        "escalation": escalation,
        "messages": items,
        "has_older": has_more,
        "start_seq": items[0]["seq"] if items else before,
    }
    return render(request, "_older.html", context, session)


def _refused(
    request: Request, session: ActiveSession, error: DomainError, back: str
) -> HTMLResponse:
    return render(
        request,
        "refused.html",
        {"detail": error.detail, "back": back},
        session,
        status_code=error.status_code,
    )


async def _change(
    request: Request,
    db: SessionDep,
    session: ActiveSession,
    escalation_id: uuid.UUID,
    **change: Any,
) -> Response:
    """escalations.change by the signed-in staff member, then back to the case (or a
    page saying why not)."""
    back = f"/console/cases/{escalation_id}"
    try:
        await escalations.change(
            db, escalation_id=escalation_id, actor=f"console+staff:{session.staff_id}", **change
        )
    except DomainError as error:
        return _refused(request, session, error, back)
    return RedirectResponse(back, status_code=303)


@router.post("/cases/{escalation_id}/status")
async def move_status(
    request: Request,
    db: SessionDep,
    session: StaffSession,
    form: CheckedForm,
    escalation_id: uuid.UUID,
) -> Response:
    """One of the allowed status moves (as PATCH /escalations/{id} makes it)."""
    status = form.get("status", "")
    if status not in ESCALATION_STATUSES:
        error = Unprocessable("Unknown status")
        return _refused(request, session, error, f"/console/cases/{escalation_id}")
    return await _change(request, db, session, escalation_id, status=status)


@router.post("/cases/{escalation_id}/assignee")
async def assign(
    request: Request,
    db: SessionDep,
    session: StaffSession,
    form: CheckedForm,
    escalation_id: uuid.UUID,
) -> Response:
    """Assign the case to me (`to=me`) or unassign it (`to=nobody`)."""
    target = {"me": session.staff_id, "nobody": None}.get(form.get("to", ""), escalations.UNCHANGED)
    if target is escalations.UNCHANGED:
        error = Unprocessable("Choose me or nobody")
        return _refused(request, session, error, f"/console/cases/{escalation_id}")
    return await _change(request, db, session, escalation_id, assignee_id=target)


@router.post("/cases/{escalation_id}/reply")
async def reply(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    session: StaffSession,
    form: CheckedForm,
    escalation_id: uuid.UUID,
) -> Response:
    """A `staff` message in the case's conversation; the member's stream carries it."""
    back = f"/console/cases/{escalation_id}"
    try:  # the API's own rules for a message body
        content = MessageCreate.model_validate({"content": form.get("content", "")}).content
        check_content_length(settings, content)
    except (ValidationError, RequestValidationError):
        error = Unprocessable(
            f"Write 1 to {settings.message_max_chars} characters (not only spaces) to reply."
        )
        return _refused(request, session, error, back)
    try:
        escalation = await escalations.get(db, escalation_id=escalation_id)
        if escalation.conversation_id is None:
            raise NotFound("Conversation not found")
        await escalations.append_message(
            db,
            conversation_id=escalation.conversation_id,
            role="staff",
            content=content,
            actor="console",
            staff_id=session.staff_id,
            redact_kinds=settings.redact,
            agent_events=settings.agent_webhook_enabled,
        )
    except DomainError as error:
        return _refused(request, session, error, back)
    return RedirectResponse(back, status_code=303)


# --- the dashboard ------------------------------------------------------------------------


@router.get("/dashboard")
async def dashboard(request: Request, db: SessionDep, session: StaffSession) -> HTMLResponse:
    """/stats for 24 h, 7 d and 30 d, and the daily figures of the last 30 days as charts."""
    now = datetime.now(UTC)
    windows = [
        (label, await current_stats(request, db, since=now - span))
        for label, span in DASHBOARD_WINDOWS
    ]
    days = (await daily_stats(request, db, days=30)).items
    series = {
        "dates": [day.date.isoformat() for day in days],
        "conversations": [day.conversations for day in days],
        "escalations": [day.escalations for day in days],
        "escalation_rate": [round(day.escalation_rate * 100, 2) for day in days],
        "response_p50": [day.response_time_seconds.p50 for day in days],
        "response_p95": [day.response_time_seconds.p95 for day in days],
    }
    return render(
        request, "dashboard.html", {"windows": windows, "days": days, "series": series}, session
    )
