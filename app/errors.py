"""Domain exceptions and their one mapping to HTTP responses."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import exc as sa_exc
from starlette.requests import ClientDisconnect

log = logging.getLogger("app.errors")

# The status logged and counted for a request whose client left mid-body (never sent).
CLIENT_CLOSED_REQUEST = 499


class DomainError(Exception):
    """Base of the errors repositories raise; the message is safe to show a client."""

    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    status_code = 404


class Unauthorized(DomainError):
    """A member credential that does not check out (e.g. a wrong identity signature)."""

    status_code = 401


class Conflict(DomainError):
    status_code = 409


class Unprocessable(DomainError):
    """Well-formed input the current state refuses (e.g. an Idempotency-Key reused)."""

    status_code = 422


class TooManyRequests(DomainError):
    """A member limit is reached; the client may try again after `retry_after_s` seconds."""

    status_code = 429

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = max(1, retry_after_s)


class DatabaseUnavailable(Exception):
    """The database cannot be reached or did not answer in time."""


# SQLSTATE classes that mean "the database is not there or not answering":
# 08 connection exception, 53 insufficient resources, 57 operator intervention
# (admin shutdown, query canceled by statement_timeout), 58 system error.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57", "58")
# Integrity violations that slipped past validation: unique → 409, foreign key → 404.
_UNIQUE_VIOLATION = "23505"
_FOREIGN_KEY_VIOLATION = "23503"
_CHECK_VIOLATIONS = ("23514", "23502", "22001", "22021", "22P05", "22P02")
# Serialization failure and deadlock: the database rolled the transaction back and a
# fresh attempt may well succeed. RetryTransactionConflicts (app.db) runs the request
# once more; a second failure is answered 503, never 500.
TRANSACTION_CONFLICT_SQLSTATES = ("40001", "40P01")
TRANSACTION_CONFLICT_SCOPE_KEY = "app.transaction_conflict"


def _sqlstate(error: BaseException) -> str | None:
    original = getattr(error, "orig", None)
    for candidate in (original, getattr(original, "__cause__", None), error):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def is_transaction_conflict(error: BaseException) -> bool:
    """True for a serialization failure or a deadlock (the transaction was rolled back)."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return False
        if _sqlstate(seen) in TRANSACTION_CONFLICT_SQLSTATES:
            return True
        seen = seen.__cause__
    return False


def is_unavailable(error: BaseException) -> bool:
    """True when an exception means the database is down, unreachable or overloaded.

    The explicit cause chain is followed: SQLAlchemy's driver adapter raises its own
    error `from` asyncpg's, which is the one that tells.
    """
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return False
        if _is_unavailable_here(seen):
            return True
        seen = seen.__cause__
    return False


def _is_unavailable_here(error: BaseException) -> bool:
    if isinstance(error, DatabaseUnavailable | TimeoutError | ConnectionError | OSError):
        return True
    if isinstance(error, sa_exc.TimeoutError):  # pool exhausted for DB_POOL_TIMEOUT_S
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        code = _sqlstate(error)
        if code is not None and code.startswith(_UNAVAILABLE_SQLSTATE_CLASSES):
            return True
        if isinstance(error, sa_exc.InterfaceError | sa_exc.OperationalError) and code is None:
            return True
    if isinstance(error, asyncpg.PostgresError):  # raw driver errors (app.fastpath)
        code = getattr(error, "sqlstate", None)
        if isinstance(code, str) and code.startswith(_UNAVAILABLE_SQLSTATE_CLASSES):
            return True
    return isinstance(
        error,
        asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.CannotConnectNowError
        | asyncpg.TooManyConnectionsError,
    )


def _body(detail: Any) -> dict[str, Any]:
    return {"detail": detail}


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, database failures and anything unexpected to HTTP, in one place."""

    @app.exception_handler(DomainError)
    async def _domain(_: Request, error: DomainError) -> JSONResponse:
        return domain_error_response(error)

    @app.exception_handler(ClientDisconnect)
    async def _client_abort(request: Request, _: ClientDisconnect) -> Response:
        # The client went away before its body arrived: nothing was done, nobody is left
        # to answer. 499 (nginx's "client closed request") keeps it out of the 5xx counts.
        log.info("client_abort", extra={"path_template": _template(request)})
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
        # The offending input is echoed by FastAPI's default; it may carry PII, so drop it.
        errors = [
            {key: value for key, value in item.items() if key in {"type", "loc", "msg"}}
            for item in error.errors()
        ]
        return JSONResponse(_body(errors), status_code=422)

    @app.exception_handler(sa_exc.SQLAlchemyError)
    async def _database(request: Request, error: sa_exc.SQLAlchemyError) -> JSONResponse:
        return database_error_response(request, error)

    # A database that refuses connections raises these unwrapped. Handled here, inside
    # the middleware, rather than by the catch-all: request logs and metrics then see
    # the 503 the client gets, and the server does not log a traceback per request.
    async def _connection_failure(request: Request, error: Exception) -> JSONResponse:
        if is_unavailable(error):
            return _unavailable(request, error)
        return await _unexpected(request, error)  # pragma: no cover - all are unavailable

    for failure in (
        OSError,
        DatabaseUnavailable,
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
    ):
        app.add_exception_handler(failure, _connection_failure)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        return unexpected_error_response(request, error)


def domain_error_response(error: DomainError) -> JSONResponse:
    """A domain error (not found, conflict, a limit reached...) as its HTTP response."""
    headers = (
        {"Retry-After": str(error.retry_after_s)} if isinstance(error, TooManyRequests) else None
    )
    return JSONResponse(_body(error.detail), status_code=error.status_code, headers=headers)


def unexpected_error_response(request: Request, error: BaseException) -> JSONResponse:
    """Anything else: an outage is 503; a bug is logged once (its class and route, never
    the request) and answered 500."""
    if is_unavailable(error):
        return _unavailable(request, error)
    if _sqlstate(error) is not None:
        return database_error_response(request, error)
    log.error(
        "unhandled_error",
        extra={"error_type": type(error).__name__, "path_template": _template(request)},
        exc_info=error,
    )
    return JSONResponse(_body("Internal server error"), status_code=500)


def database_error_response(request: Request, error: BaseException) -> JSONResponse:
    """A database exception as its HTTP response: 503 for an outage, 4xx for bad input."""
    if is_unavailable(error):
        return _unavailable(request, error)
    if is_transaction_conflict(error):
        # Tells the retry layer this attempt may be repeated; if it is already the
        # repeat, the client gets this 503.
        request.scope[TRANSACTION_CONFLICT_SCOPE_KEY] = True
        log.warning(
            "transaction_conflict",
            extra={"sqlstate": _sqlstate(error), "path_template": _template(request)},
        )
        return JSONResponse(
            _body("The database was busy with a conflicting change, try again shortly"),
            status_code=503,
            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
        )
    code = _sqlstate(error)
    if code == _UNIQUE_VIOLATION:
        return JSONResponse(_body("Conflicts with an existing record"), status_code=409)
    if code == _FOREIGN_KEY_VIOLATION:
        return JSONResponse(_body("A referenced record does not exist"), status_code=404)
    if code in _CHECK_VIOLATIONS:
        return JSONResponse(_body("Value not accepted by the database"), status_code=422)
    log.error(
        "database_error",
        extra={
            "error_type": type(error).__name__,
            "sqlstate": code,
            "path_template": _template(request),
        },
    )
    return JSONResponse(_body("Internal server error"), status_code=500)


UNAVAILABLE_DETAIL = "Database unavailable, try again shortly"
UNAVAILABLE_RETRY_AFTER_S = 2


def note_unavailable(error: BaseException, path_template: str) -> None:
    """Log a database outage met by a request (type and route only, never the message)."""
    log.warning(
        "database_unavailable",
        extra={"error_type": type(error).__name__, "path_template": path_template},
    )


def _unavailable(request: Request, error: BaseException) -> JSONResponse:
    note_unavailable(error, _template(request))
    return JSONResponse(
        _body(UNAVAILABLE_DETAIL),
        status_code=503,
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
    )


def _template(request: Request) -> str:
    # The full template, from the lookup metrics and request logs use (create_app).
    return str(request.app.state.route_templates(request.scope))
