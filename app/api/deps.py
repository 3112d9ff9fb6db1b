"""Dependencies shared by the routers: service-key auth, path and body checks, strict JSON."""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, StringConstraints, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from app import jsonbody
from app.errors import NotFound
from app.log import actor_var
from app.schemas import SESSION_ID_PATTERN, ErrorBody
from app.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="A service key from API_KEYS")
_session_id = re.compile(SESSION_ID_PATTERN)


def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def require_service_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Admit a request only with `Authorization: Bearer <one of API_KEYS>`."""
    if getattr(request.state, "actor", None) is not None:  # checked by StrictJSONRoute
        return
    if credentials is None:
        raise _unauthorized("Missing bearer token")
    keys: list[tuple[str, bytes]] = request.app.state.api_keys
    presented = credentials.credentials.encode("utf-8", errors="replace")
    # Compare against every key, always, so timing tells nothing about which was close.
    actor: str | None = None
    for name, key in keys:
        if hmac.compare_digest(presented, key):
            actor = name
    if actor is None:
        raise _unauthorized("Invalid bearer token")
    # The key's name (never the key) is who did it: in the log lines and audit rows.
    request.state.actor = actor
    actor_var.set(actor)


def request_actor(request: Request) -> str:
    """Who is acting, for the audit trail: `key:<name of the service key>`."""
    return f"key:{getattr(request.state, 'actor', 'service')}"


ActorDep = Annotated[str, Depends(request_actor)]


def session_id_path(
    session_id: Annotated[str, Path(description="The member's session id")],
) -> str:
    """A session id from the path; one that could never exist is simply not found."""
    if not _session_id.fullmatch(session_id):
        raise NotFound("Session not found")
    return session_id


SessionIdDep = Annotated[str, Depends(session_id_path)]


def check_content_length(settings: Settings, content: str, field: str = "content") -> None:
    """Refuse content longer than MESSAGE_MAX_CHARS, as a validation error."""
    if len(content) > settings.message_max_chars:
        raise RequestValidationError(
            [
                {
                    "type": "string_too_long",
                    "loc": ("body", field),
                    "msg": f"must be at most {settings.message_max_chars} characters",
                }
            ]
        )


def check_issue_type(settings: Settings, issue_type: str) -> None:
    """With ESCALATION_ISSUE_TYPES set, refuse any other issue type, naming the allowed ones."""
    allowed = settings.escalation_issue_types
    if allowed and issue_type not in allowed:
        raise RequestValidationError(
            [
                {
                    "type": "enum",
                    "loc": ("body", "issue_type"),
                    "msg": f"must be one of: {', '.join(allowed)}",
                }
            ]
        )


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error codes a route can answer."""
    descriptions = {
        401: "Missing or invalid service key",
        404: "Unknown resource",
        409: "The resource's state does not allow it",
        413: "Body larger than 64 KB",
        415: "Body is not JSON",
        422: "Invalid input",
        429: "A member limit is reached; see Retry-After",
        503: "Database unavailable",
    }
    return {
        code: {"model": ErrorBody, "description": descriptions[code]} for code in (*codes, 422, 503)
    }


class StrictJSONRequest(Request):
    """A request whose JSON body was already parsed by StrictJSONRoute's rules.

    FastAPI reads a JSON body through `Request.json()`; overriding it (the custom
    Request class pattern of FastAPI's documentation) hands it the strict parse."""

    parsed: Any = None

    async def json(self) -> Any:
        return self.parsed


class StrictJSONRoute(APIRoute):
    """Parses JSON bodies strictly (app.jsonbody: no NaN/Infinity, valid UTF-8, at most
    32 levels deep) under exactly one JSON Content-Type."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        guarded = any(
            getattr(depends, "dependency", None) is require_service_key
            for depends in self.dependencies
        )

        async def strict_handler(request: Request) -> Response:
            strict = StrictJSONRequest(request.scope, request.receive)
            if guarded:
                # The key first: a caller without one learns nothing about body rules (401,
                # not 415/422), as for every other service request.
                await require_service_key(strict, await _bearer(strict))
            body = await strict.body()
            if body:
                if not jsonbody.is_json(strict.headers.getlist("content-type")):
                    # One Content-Type, JSON: two would be read differently by
                    # different layers (first or last), so neither is trusted.
                    raise HTTPException(
                        status_code=415, detail="Send the body as application/json, once"
                    )
                try:
                    strict.parsed = jsonbody.loads(body)
                except jsonbody.JSONInvalid:
                    raise RequestValidationError(
                        [{"type": "json_invalid", "loc": ("body",), "msg": "Invalid JSON"}]
                    ) from None
                except jsonbody.JSONTooDeep:
                    raise RequestValidationError(
                        [
                            {
                                "type": "json_too_deep",
                                "loc": ("body",),
                                "msg": f"JSON nested more than {jsonbody.MAX_DEPTH} levels",
                            }
                        ]
                    ) from None
            return await handler(strict)

        return strict_handler


# The parameters several routes share, declared once.
IdempotencyKeyValue = Annotated[str, StringConstraints(min_length=1, max_length=255)]
IdempotencyKey = Annotated[
    IdempotencyKeyValue | None,
    Header(
        alias="Idempotency-Key",
        description="Retry-safe sends: a repeat with the same key and content returns the "
        "original message with 200 and stores nothing.",
    ),
]
Limit = Annotated[int, Query(ge=1, le=200, description="Page size")]


class HistoryQuery(BaseModel):
    """The query of a page of message history, for the FastAPI routes and the hot-path
    layer alike (which validates the same query string with it)."""

    limit: int = Field(default=50, ge=1, le=200, description="Page size")
    before: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="Only messages with a smaller seq"
    )
    after: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="Only messages with a larger seq"
    )

    @field_validator("after")
    @classmethod
    def _one_direction(cls, after: int | None, info: ValidationInfo) -> int | None:
        # `before` and `after` page in opposite directions; both at once is a client error.
        if after is not None and info.data.get("before") is not None:
            raise PydanticCustomError("value_error", "give at most one of before, after")
        return after


HistoryQueryDep = Annotated[HistoryQuery, Query()]
