"""Browser tests of the staff console: the app under a real uvicorn in a thread of its
own (Selenium blocks the caller), Debian's Chromium driven through chromedriver.

Selenium rather than Playwright: Debian ships `chromium-driver` built from the same
source as its `chromium`, so the pair always matches; Playwright pins the browser build
its protocol client expects and would want to download one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import threading
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from console_support import PASSWORD
from fastapi import FastAPI
from ops_support import free_port
from sqlalchemy import text

from app.main import create_app
from app.repositories import staff as staff_repository
from app.settings import Settings
from app.staff import hash_password

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = PROJECT_ROOT / "artifacts" / "screenshots"
AXE = PROJECT_ROOT / "tests" / "vendor" / "axe-core-4.14.1" / "axe.min.js"
# SPEC §8: a new escalation appears in the queue within 2 s.
LIVE_WITHIN_S = 2.0
WAIT_S = 15.0

T = TypeVar("T")


def require_browser() -> None:
    """Skip, saying why, where Debian's chromium or chromedriver is not installed."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.skip(
            f"browser tests need Debian's chromium and chromium-driver ({', '.join(missing)} "
            "missing): apt-get install -y chromium chromium-driver"
        )


@dataclass
class ThreadServer:
    """The app under uvicorn, in a thread with its own event loop."""

    app: FastAPI
    base_url: str
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = WAIT_S) -> T:
        """Run a coroutine on the server's loop (its engine lives there) and wait."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def add_staff(self, name: str) -> tuple[str, uuid.UUID]:
        """(email, id) of a new active account with the test password."""
        email = f"{uuid.uuid4().hex[:8]}@example.org"

        async def add() -> uuid.UUID:
            async with self.app.state.sessionmaker() as session, session.begin():
                account = await staff_repository.add(
                    session,
                    email=email,
                    display_name=name,
                    password_hash=hash_password(PASSWORD),
                    role="agent",
                )
                return account.id

        return email, self.run(add())

    async def backdate_escalation(self, escalation_id: str, minutes: int) -> None:
        """Make an escalation `minutes` older (an SLA breach, for the pictures)."""
        async with self.app.state.sessionmaker() as session, session.begin():
            await session.execute(
                text(
                    "UPDATE escalations SET created_at = created_at - make_interval(mins => :m) "
                    "WHERE id = :id"
                ),
                {"m": minutes, "id": uuid.UUID(escalation_id)},
            )


@contextlib.contextmanager
def thread_server(settings: Settings) -> Iterator[ThreadServer]:
    """create_app as production builds it, served on a free port until the block ends."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            task = asyncio.create_task(server.serve())
            while not server.started:
                if task.done():
                    break
                await asyncio.sleep(0.01)
            started.set()
            await task

        loop.run_until_complete(main())

    thread = threading.Thread(target=serve, name="console-test-server", daemon=True)
    thread.start()
    if not started.wait(30) or not server.started:
        raise RuntimeError("the test server did not start")
    try:
        yield ThreadServer(app=app, base_url=f"http://127.0.0.1:{port}", loop=loop)
    finally:
        server.should_exit = True
        thread.join(15)
        # Tasks sse-starlette leaves behind (its shutdown watcher) end with the loop.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()

        async def drain() -> None:
            await asyncio.gather(*pending, return_exceptions=True)

        if pending:
            loop.run_until_complete(drain())
        loop.close()


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, driven by chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="console-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, condition: Any, timeout: float = WAIT_S) -> Any:
    """Poll a condition until it holds (explicit waits only, never a fixed sleep)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # A form POST reloads the page: elements found a moment ago may be gone.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    wait = WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=ignored)
    return wait.until(condition)


def click_and_load(driver: Any, find: Any) -> None:
    """Click the link or button `find(driver)` returns and wait until the next page has
    loaded. Found and clicked again while a live swap replaces it between the two (the
    driver then says the node no longer belongs to the document)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    def clicked(current: Any) -> Any:
        element = find(current)
        element.click()
        return element

    retry = WebDriverWait(
        driver, WAIT_S, poll_frequency=0.05, ignored_exceptions=(WebDriverException,)
    )
    element = retry.until(clicked)
    wait_for(driver, expected_conditions.staleness_of(element))
    wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete")


def text_of(driver: Any, element_id: str) -> str:
    """The text of an element by id, read in the page ("" while it is not there)."""
    return text_at(driver, f"#{element_id}")


def text_at(driver: Any, selector: str) -> str:
    """The text of the first element matching a CSS selector ("" while there is none);
    read in the page, so a live swap between finding and reading cannot get in the way."""
    text = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''",
        selector,
    )
    return str(text)


def run_axe(driver: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the current page."""
    driver.execute_script(AXE.read_text())
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done(JSON.stringify(r.violations)))"
        ".catch(e => done(JSON.stringify("
        "[{id: 'axe-error', impact: 'critical', help: String(e)}])));"
    )
    violations: list[dict[str, Any]] = json.loads(result)
    return [
        {
            "id": item["id"],
            "impact": item["impact"],
            "help": item.get("help"),
            "nodes": [node.get("target") for node in item.get("nodes", [])][:5],
        }
        for item in violations
        if item.get("impact") in {"serious", "critical"}
    ]


def csp_errors(driver: Any) -> list[str]:
    """Console messages from the page that report a Content-Security-Policy refusal."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if "Content Security Policy" in entry.get("message", "")
    ]


def set_viewport(driver: Any, width: int, height: int = 900) -> None:
    """Lay the page out as on a screen `width` CSS pixels wide."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def screenshot(driver: Any, name: str, width: int) -> Path:
    """Save the whole page, `width` wide, as artifacts/screenshots/<name>-<width>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    set_viewport(driver, width)
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    set_viewport(driver, width, min(max(height, 600), 4000))
    path = SCREENSHOTS / f"{name}-{width}.png"
    driver.save_screenshot(str(path))
    set_viewport(driver, width)
    return path


def member_api(base_url: str) -> httpx.Client:
    """A member's (or the service's) HTTP client on the live server."""
    return httpx.Client(base_url=f"{base_url}/api/v1", timeout=WAIT_S)
