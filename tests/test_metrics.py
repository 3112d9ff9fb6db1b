"""/metrics: Prometheus text by route template, in-flight requests, pool gauges, workers."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from conftest import fresh_database
from fastapi import FastAPI
from ops_support import running_server

from app import cli
from app.main import create_app
from app.metrics import MULTIPROCESS_DIRECTORY_VARIABLE
from app.migrations import upgrade_to_head
from app.settings import Settings, load_settings


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, None when absent."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(match.group(3))
    return None


@pytest.fixture
async def own_app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application):
        yield application


def _plain_client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_metrics_are_prometheus_text(own_app: FastAPI) -> None:
    async with _plain_client(own_app) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE http_requests_total counter" in response.text
    assert "# TYPE http_request_duration_seconds histogram" in response.text


async def test_requests_are_counted_by_route_template_not_raw_path(own_app: FastAPI) -> None:
    async with _plain_client(own_app) as http:
        session_id = (await http.post("/api/v1/sessions")).json()["session_id"]
        labels = {"route": "/api/v1/sessions/{session_id}", "method": "GET", "status": "200"}
        before = _sample((await http.get("/metrics")).text, "http_requests_total", **labels) or 0.0
        await http.get(f"/api/v1/sessions/{session_id}")
        await http.get(f"/api/v1/sessions/{session_id}")
        text = (await http.get("/metrics")).text
    assert _sample(text, "http_requests_total", **labels) == before + 2
    assert session_id not in text


async def test_latency_histogram_has_buckets_by_route_method_and_status(own_app: FastAPI) -> None:
    async with _plain_client(own_app) as http:
        await http.get("/api/v1/sessions/no-such-session-0123456789")
        text = (await http.get("/metrics")).text
    labels = {"route": "/api/v1/sessions/{session_id}", "method": "GET", "status": "404"}
    count = _sample(text, "http_request_duration_seconds_count", **labels)
    assert count is not None and count >= 1
    assert _sample(text, "http_request_duration_seconds_bucket", le="+Inf", **labels) == count
    assert (_sample(text, "http_request_duration_seconds_sum", **labels) or 0) > 0


async def test_unknown_paths_share_one_unmatched_series(own_app: FastAPI) -> None:
    async with _plain_client(own_app) as http:
        await http.get("/wp-admin/secret-thing-1")
        await http.get("/another/random/path")
        text = (await http.get("/metrics")).text
    assert (_sample(text, "http_requests_total", route="unmatched", status="404") or 0) >= 2
    assert "wp-admin" not in text


async def test_a_method_not_allowed_is_counted_under_its_route(own_app: FastAPI) -> None:
    labels = {"route": "/api/v1/stats", "method": "DELETE"}
    async with _plain_client(own_app) as http:
        # The registry is per process: other tests (the fuzzer) may have counted here too.
        before = _sample((await http.get("/metrics")).text, "http_requests_total", **labels) or 0
        response = await http.delete("/api/v1/stats", headers={"Authorization": "Bearer x"})
        text = (await http.get("/metrics")).text
    assert response.status_code == 405
    assert _sample(text, "http_requests_total", **labels) == before + 1


async def test_in_flight_gauge_counts_requests_still_running(settings: Settings) -> None:
    application = create_app(settings)
    release = asyncio.Event()

    @application.get("/test-slow")
    async def slow() -> dict[str, str]:
        await release.wait()
        return {}

    async with LifespanManager(application), _plain_client(application) as http:
        idle = _sample((await http.get("/metrics")).text, "http_requests_in_flight")
        slow_requests = [asyncio.create_task(http.get("/test-slow")) for _ in range(3)]
        await asyncio.sleep(0.05)
        busy = _sample((await http.get("/metrics")).text, "http_requests_in_flight")
        release.set()
        await asyncio.gather(*slow_requests)
        after = _sample((await http.get("/metrics")).text, "http_requests_in_flight")
    # The scrape is itself in flight.
    assert idle == after == 1
    assert busy == 4


async def test_pool_gauges_show_size_and_connections_checked_out(own_app: FastAPI) -> None:
    # The event hub's first run (at start-up) borrows a connection briefly.
    pool = own_app.state.engine.sync_engine.pool
    for _ in range(500):
        if own_app.state.event_hub.position is not None and pool.checkedout() == 0:
            break
        await asyncio.sleep(0.01)
    async with _plain_client(own_app) as http:
        idle = (await http.get("/metrics")).text
        async with own_app.state.engine.connect(), own_app.state.engine.connect():
            busy = (await http.get("/metrics")).text
    assert _sample(idle, "db_pool_size") == own_app.state.settings.db_pool_size
    assert _sample(idle, "db_pool_checked_out_connections") == 0
    assert _sample(busy, "db_pool_checked_out_connections") == 2


# --- several workers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_database(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        upgrade_to_head(url)
        yield url


def test_metrics_add_up_across_workers(served_database: str, tmp_path: Path) -> None:
    requests = 40
    with running_server(served_database, tmp_path, "--workers", "2", LOG_LEVEL="WARNING") as (
        _,
        base_url,
    ):
        for _ in range(requests):
            # A new connection each time, so the requests spread over both workers.
            response = httpx.get(f"{base_url}/healthz", headers={"Connection": "close"})
            assert response.status_code == 200
        scrapes = [
            httpx.get(f"{base_url}/metrics", headers={"Connection": "close"}).text for _ in range(6)
        ]
    labels = {"route": "/healthz", "method": "GET", "status": "200"}
    # Whichever worker answers a scrape reports the whole server.
    assert {_sample(text, "http_requests_total", **labels) for text in scrapes} == {requests}
    # Both workers' pools (the default size each) are in the sum.
    default_pool = load_settings(_env_file=None).db_pool_size
    assert {_sample(text, "db_pool_size") for text in scrapes} == {2 * default_pool}


def test_serve_with_several_workers_makes_a_fresh_metrics_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # setenv first, so that monkeypatch restores the variable's absence afterwards.
    monkeypatch.setenv(MULTIPROCESS_DIRECTORY_VARIABLE, "")
    monkeypatch.delenv(MULTIPROCESS_DIRECTORY_VARIABLE)
    created = cli._prepare_metrics_directory(workers=3)
    try:
        assert created is not None and created.is_dir()
        assert list(created.iterdir()) == []
        assert os.environ[MULTIPROCESS_DIRECTORY_VARIABLE] == str(created)
    finally:
        if created is not None:
            created.rmdir()


def test_serve_with_one_worker_stays_in_single_process_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(MULTIPROCESS_DIRECTORY_VARIABLE, "")
    monkeypatch.delenv(MULTIPROCESS_DIRECTORY_VARIABLE)
    assert cli._prepare_metrics_directory(workers=1) is None
    assert MULTIPROCESS_DIRECTORY_VARIABLE not in os.environ


def test_serve_empties_a_configured_metrics_directory_of_an_earlier_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_12345.db").write_bytes(b"left over")
    (directory / "notes.txt").write_text("not ours")
    monkeypatch.setenv(MULTIPROCESS_DIRECTORY_VARIABLE, str(directory))
    assert cli._prepare_metrics_directory(workers=2) is None
    assert sorted(path.name for path in directory.iterdir()) == ["notes.txt"]


def test_serve_creates_a_configured_metrics_directory_that_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = tmp_path / "not-yet" / "prometheus"
    monkeypatch.setenv(MULTIPROCESS_DIRECTORY_VARIABLE, str(directory))
    assert cli._prepare_metrics_directory(workers=4) is None
    assert directory.is_dir()


async def test_made_up_methods_share_one_series(own_app: FastAPI) -> None:
    labels = {"route": "/healthz", "method": "OTHER"}
    async with _plain_client(own_app) as http:
        before = _sample((await http.get("/metrics")).text, "http_requests_total", **labels) or 0
        for method in ("BREW", "WHEN", "FETCHX"):
            await http.request(method, "/healthz")
        text = (await http.get("/metrics")).text
    assert _sample(text, "http_requests_total", **labels) == before + 3
    assert "BREW" not in text
