"""The staff console (/console): server-rendered pages enhanced with htmx and the
event stream; every script and style is served by the service itself."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.console.assets import Assets
from app.console.auth import LOGIN_PATH, CsrfRejected, LoginRequired, make_signer
from app.settings import Settings

# No inline script or style anywhere; the live feed is same-origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class ConsoleHeaders:
    """Security headers on every /console response; pages are never cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/console" or path.startswith("/console/")):
            await self.app(scope, receive, send)
            return
        static = path.startswith("/console/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if not static and "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, with_headers)


async def _login_required(request: Request, _: Exception) -> Response:
    if request.headers.get("HX-Request") or request.url.path == "/console/events":
        return PlainTextResponse(
            "Sign in again", status_code=401, headers={"HX-Redirect": LOGIN_PATH}
        )
    return RedirectResponse(LOGIN_PATH, status_code=303)


async def _csrf_rejected(request: Request, _: Exception) -> Response:
    return HTMLResponse(
        "<!doctype html><title>Refused</title><main><h1>Refused</h1><p>This form has "
        'expired or did not come from the console. <a href="/console">Back to the '
        "queue</a>.</p></main>",
        status_code=403,
    )


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the console on the app: routes, static files, errors, headers."""
    from app.console import pages, stream

    app.state.console_assets = Assets()
    app.state.console_signer = make_signer(settings)

    @app.get("/console/static/{digest}/{name:path}", include_in_schema=False)
    async def console_static(digest: str, name: str, request: Request) -> Response:
        assets: Assets = request.app.state.console_assets
        return assets.response(digest, name)

    app.include_router(pages.router)
    app.include_router(stream.router)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(CsrfRejected, _csrf_rejected)
    app.add_middleware(ConsoleHeaders)
