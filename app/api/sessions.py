"""Member routes: the session id is the credential; no stored contact details ever leave."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app import identity
from app.api import answers
from app.api.deps import (
    HistoryQueryDep,
    IdempotencyKey,
    SessionIdDep,
    SettingsDep,
    StrictJSONRoute,
    check_content_length,
    check_issue_type,
    error_responses,
)
from app.db import ReadSessionDep, SessionDep
from app.repositories import conversations, escalations, users
from app.schemas import (
    ContactUpdate,
    EscalationCreate,
    EscalationSummary,
    EscalationSummaryList,
    IdentityAttach,
    Message,
    MessageCreate,
    MessagePage,
    Session,
    SessionCreate,
)
from app.serialize import SESSION, JSONBytes

router = APIRouter(prefix="/sessions", tags=["member"], route_class=StrictJSONRoute)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": Session, "description": "The session already existed"},
        **error_responses(401),
    },
    summary="Open a session (or resume one by id)",
    response_model=Session,
)
async def open_session(
    db: SessionDep, settings: SettingsDep, body: SessionCreate | None = None
) -> Response:
    """Create an anonymous user and a conversation; an existing `session_id` → 200, unchanged.

    With a valid `identity` the conversation belongs to that member's verified user
    (a wrong signature → 401 and nothing is created)."""
    request = body or SessionCreate()
    email = identity.verified_email(settings, request.identity) if request.identity else None
    contact = {"name": request.name, "email": request.email, "phone": request.phone}
    row, created = await conversations.open_session(
        db, session_id=request.session_id, contact=contact, verified_email=email
    )
    return JSONBytes(SESSION.json(row), status_code=201 if created else 200)


@router.get(
    "/{session_id}",
    responses=error_responses(404),
    summary="Read a session",
    response_model=Session,
)
async def read_session(db: ReadSessionDep, session_id: SessionIdDep) -> Response:
    """The session's conversation and its status."""
    return await answers.read_session(db, session_id=session_id)


@router.patch(
    "/{session_id}/contact",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
    summary="Leave or change contact details",
)
async def update_contact(db: SessionDep, session_id: SessionIdDep, body: ContactUpdate) -> None:
    """Set any of name, email, phone (`null` clears) on this session's own user only.

    A typed email is unverified and may be one another member also has: nothing of
    theirs is read or changed. A verified email cannot be changed here (409)."""
    conversation_id = await conversations.get_id_by_session(db, session_id=session_id)
    await users.apply_contact(db, conversation_id=conversation_id, changes=body.changes())


@router.post(
    "/{session_id}/identity",
    responses=error_responses(401, 404),
    summary="Verify the member's identity",
    response_model=Session,
)
async def verify_identity(
    db: SessionDep, settings: SettingsDep, session_id: SessionIdDep, body: IdentityAttach
) -> Response:
    """Attach this conversation to the verified user of a signed email (created if new).

    Nothing of that user is returned. A wrong signature → 401 and nothing changes;
    no IDENTITY_SECRET configured → 422."""
    email = identity.verified_email(settings, body.identity)
    conversation_id = await conversations.get_id_by_session(db, session_id=session_id)
    await users.attach_verified(db, conversation_id=conversation_id, email=email)
    return JSONBytes(SESSION.json(await conversations.get_session(db, session_id=session_id)))


@router.post(
    "/{session_id}/messages",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": Message, "description": "Idempotent replay of the original message"},
        **error_responses(404, 409, 429),
    },
    summary="Send a member message",
    response_model=Message,
)
async def send_message(
    db: SessionDep,
    settings: SettingsDep,
    session_id: SessionIdDep,
    body: MessageCreate,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Append a `user` message. Archived conversations refuse new messages (409); more
    than MEMBER_MESSAGES_PER_MINUTE in a minute → 429 (a replay does not count)."""
    check_content_length(settings, body.content)
    return await answers.send_member_message(
        db,
        settings,
        session_id=session_id,
        content=body.content,
        idempotency_key=idempotency_key,
    )


@router.get(
    "/{session_id}/messages",
    responses=error_responses(404),
    summary="Read message history",
    response_model=MessagePage,
)
async def read_messages(
    db: ReadSessionDep, session_id: SessionIdDep, query: HistoryQueryDep
) -> Response:
    """Oldest first. No cursor: the latest `limit`; `before=S`: older than S; `after=S`: newer."""
    return await answers.read_history(db, query, session_id=session_id)


@router.post(
    "/{session_id}/escalations",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": EscalationSummary, "description": "The open escalation already existed"},
        **error_responses(404, 409, 429),
    },
    summary="Ask for a human",
)
async def escalate(
    db: SessionDep,
    settings: SettingsDep,
    session_id: SessionIdDep,
    body: EscalationCreate,
    response: Response,
) -> EscalationSummary:
    """Hand the case to staff; the same unresolved issue type again returns the first (200).
    At most ESCALATIONS_OPEN_MAX unresolved at once (429 beyond); with
    ESCALATION_ISSUE_TYPES set, only those issue types."""
    check_content_length(settings, body.original_request, "original_request")
    check_issue_type(settings, body.issue_type)
    contact = body.contact_info.model_dump(exclude_none=True) if body.contact_info else None
    escalation, created = await escalations.open_escalation(
        db,
        session_id=session_id,
        issue_type=body.issue_type,
        original_request=body.original_request,
        contact_info=contact,
        redact_kinds=settings.redact,
        open_max=settings.escalations_open_max,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return EscalationSummary.model_validate(escalation)


@router.get(
    "/{session_id}/escalations",
    responses=error_responses(404),
    summary="List this session's escalations",
)
async def list_escalations(db: SessionDep, session_id: SessionIdDep) -> EscalationSummaryList:
    """Oldest first, without contact details."""
    items = await escalations.list_for_session(db, session_id=session_id)
    return EscalationSummaryList(items=[EscalationSummary.model_validate(item) for item in items])
