"""Request metrics: per-process counters for /stats (`api`) and Prometheus for /metrics.

Prometheus metrics live in prometheus_client's default REGISTRY. With
PROMETHEUS_MULTIPROC_DIR set (`member-support serve --workers N` sets it), every
worker writes its values to files there and /metrics merges them, so a scrape
that lands on any one worker reports the whole server.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

try:
    from fastapi.routing import iter_route_contexts
except ImportError:  # FastAPI before 0.16x flattened included routes: their path is full
    iter_route_contexts = None  # type: ignore[assignment]

from app.log import actor_var, request_id_var

# prometheus_client itself reads this variable when it is imported and decides then
# where values go, so /metrics must follow the very same variable (not Settings).
MULTIPROCESS_DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

UNMATCHED_ROUTE = "unmatched"
REQUEST_ID_HEADER = b"x-request-id"
# A caller's request id is echoed and logged only when it looks like an id; anything
# else (too long, spaces, quotes, control characters) is replaced by a fresh one.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time from request start to the end of the response body, by route template, "
    "method and status code.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_IN_FLIGHT = Gauge(
    "http_requests_in_flight",
    "HTTP requests being handled right now.",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "db_pool_size",
    "Connections the database pool keeps (DB_POOL_SIZE; more may open up to DB_MAX_OVERFLOW).",
    multiprocess_mode="livesum",
)
DB_POOL_CHECKED_OUT = Gauge(
    "db_pool_checked_out_connections",
    "Database connections lent to a request or task right now.",
    multiprocess_mode="livesum",
)

access_log = logging.getLogger("app.access")


def multiprocess_directory() -> str | None:
    """The directory of multiprocess mode, or None when this process reports alone."""
    return os.environ.get(MULTIPROCESS_DIRECTORY_VARIABLE) or None


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of every metric, merged across workers."""
    directory = multiprocess_directory()
    if directory is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


def observe_pool(engine: AsyncEngine) -> None:
    """Report the engine's pool in db_pool_* gauges.

    One process alone refreshes them when scraped (update_pool_gauges), which costs
    requests nothing. In multiprocess mode a scrape sees the other workers only through
    their files, so each worker also updates the gauge on every checkout and checkin.
    """
    pool = engine.sync_engine.pool
    if not isinstance(pool, QueuePool):
        return
    DB_POOL_SIZE.set(pool.size())
    DB_POOL_CHECKED_OUT.set(0)
    if multiprocess_directory() is None:
        return

    def refresh(*_: Any) -> None:
        DB_POOL_CHECKED_OUT.set(pool.checkedout())

    event.listen(pool, "checkout", refresh)
    event.listen(pool, "checkin", refresh)


def update_pool_gauges(engine: AsyncEngine) -> None:
    """Set the db_pool_* gauges from the pool as it is now."""
    pool = engine.sync_engine.pool
    if isinstance(pool, QueuePool):
        DB_POOL_SIZE.set(pool.size())
        DB_POOL_CHECKED_OUT.set(pool.checkedout())


def forget_pool() -> None:
    """On shutdown: this process holds no pool any more."""
    DB_POOL_SIZE.set(0)
    DB_POOL_CHECKED_OUT.set(0)
    directory = multiprocess_directory()
    if directory is not None:
        # Drops this worker's live gauges (in flight, pool) from the merged view.
        multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


@dataclass
class ApiCounters:
    requests: int = 0
    errors_5xx: int = 0

    def as_dict(self) -> dict[str, float | int]:
        """The `api` block of /stats."""
        rate = self.errors_5xx / self.requests if self.requests else 0.0
        return {"requests": self.requests, "errors_5xx": self.errors_5xx, "error_rate": rate}


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if _REQUEST_ID.fullmatch(value):
                return bytes(value)
            break
    return os.urandom(16).hex().encode()


class RouteTemplates:
    """The full template of the route a request matched (`/api/v1/sessions/{session_id}`),
    never the raw path: raw paths carry session ids and would make one time series per
    conversation.

    FastAPI (0.16x) keeps an included router's routes as they were declared, so the
    matched route knows only its own part (`/sessions/{session_id}`); the prefix is
    looked up once per route from the app's route contexts.
    """

    def __init__(self) -> None:
        self._full_paths: dict[int, str] = {}
        self._known_routes = -1

    def __call__(self, scope: Scope) -> str:
        # FastAPI marks API routes in scope["route"]; its own plain routes (/docs,
        # /openapi.json) leave only their endpoint behind.
        served_below_the_framework = scope.get("route_template")  # app.fastpath
        if served_below_the_framework is not None:
            return str(served_below_the_framework)
        route = scope.get("route") or scope.get("endpoint")
        if route is None:
            return UNMATCHED_ROUTE
        full_path = self._full_paths.get(id(route))
        if full_path is None:
            full_path = self._learn(scope, route)
        return full_path

    def _learn(self, scope: Scope, route: Any) -> str:
        app = scope.get("app")
        routes = getattr(app, "routes", None)
        if (
            iter_route_contexts is not None
            and routes is not None
            and len(routes) != self._known_routes
        ):
            self._known_routes = len(routes)
            for context in iter_route_contexts(routes):
                if isinstance(context.path, str):
                    self._full_paths.setdefault(id(context.original_route), context.path)
                    endpoint = getattr(context.original_route, "endpoint", None)
                    if endpoint is not None:
                        self._full_paths.setdefault(id(endpoint), context.path)
        path = self._full_paths.get(id(route), getattr(route, "path", None))
        return path if isinstance(path, str) else UNMATCHED_ROUTE


class ObserveRequests:
    """Request id, Prometheus metrics and one log line per HTTP request.

    The request id comes from X-Request-ID when it looks like one, else it is generated;
    it is echoed in the response and attached to every log line of the request.
    """

    def __init__(self, app: ASGIApp, counters: ApiCounters, routes: RouteTemplates) -> None:
        self.app = app
        self.counters = counters  # the `api` block of /stats
        self.route_template = routes
        # labels() takes a lock and builds keys on every call; the children are cached.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        self.counters.requests += 1
        request_id = _request_id(scope)
        token = request_id_var.set(request_id.decode())
        actor_token = actor_var.set(None)  # set by the service-key check, if it runs
        status = 500

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, observing_send)
        finally:
            HTTP_IN_FLIGHT.dec()
            if status >= 500:  # an unhandled error counts as 500
                self.counters.errors_5xx += 1
            elapsed = time.perf_counter() - started
            route = self.route_template(scope)
            method = scope["method"]
            if method not in _METHODS:  # client-chosen: keep the label set bounded
                method = "OTHER"
            series = self._series.get((route, method, status))
            if series is None:
                labels = (route, method, str(status))
                series = (HTTP_REQUESTS.labels(*labels), HTTP_LATENCY.labels(*labels))
                self._series[(route, method, status)] = series
            series[0].inc()
            series[1].observe(elapsed)
            level = logging.INFO if status < 500 else logging.WARNING
            if access_log.isEnabledFor(level):
                extra = {
                    "request_id": request_id_var.get(),
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                }
                actor = actor_var.get()
                if actor is not None:
                    extra["actor"] = actor
                access_log.log(level, "request", extra=extra)
            request_id_var.reset(token)
            actor_var.reset(actor_token)


REDACTIONS = Counter(
    "redactions_total",
    "Card numbers and SSNs replaced before a write was stored, by kind.",
    ["kind"],
)
for _kind in ("card", "ssn"):
    REDACTIONS.labels(_kind)
