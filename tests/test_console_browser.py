"""The staff console in a real headless browser (Debian's Chromium, via Selenium).

The server is a real uvicorn serving create_app on a free port; the member side talks
to it over HTTP as a chat frontend would. Waits are explicit conditions, never sleeps.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from browser_support import (
    LIVE_WITHIN_S,
    SCREENSHOTS,
    WAIT_S,
    ThreadServer,
    chromium,
    click_and_load,
    csp_errors,
    member_api,
    require_browser,
    run_axe,
    screenshot,
    set_viewport,
    text_at,
    text_of,
    thread_server,
    wait_for,
)
from conftest import ROOMY_LIMITS, SERVICE_KEY, make_settings
from console_support import PASSWORD
from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(database_url: str, migration_url: str) -> Iterator[ThreadServer]:
    require_browser()
    settings = make_settings(
        database_url,
        database_migration_url=migration_url,
        console_insecure_cookie=True,
        **ROOMY_LIMITS,
    )
    with thread_server(settings) as running:
        yield running


@pytest.fixture
def clean(server: ThreadServer, committed_engine: AsyncEngine) -> ThreadServer:
    """The server on empty tables (emptied again afterwards)."""
    return server


def sign_in_with_the_keyboard(driver: Any, base_url: str, email: str) -> None:
    """Sign in using only the keyboard: Tab to each field, Enter to submit."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{base_url}/console")
    wait_for(driver, lambda d: d.find_elements(By.ID, "email"))
    assert driver.current_url.endswith("/console/login")
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)  # the skip link
    driver.switch_to.active_element.send_keys(Keys.TAB)  # the email field
    assert driver.switch_to.active_element.get_attribute("id") == "email"
    driver.switch_to.active_element.send_keys(email, Keys.TAB)
    assert driver.switch_to.active_element.get_attribute("id") == "password"
    driver.switch_to.active_element.send_keys(PASSWORD, Keys.ENTER)
    wait_for(driver, lambda d: "queue" in d.title.lower())


def wait_live(driver: Any) -> None:
    """Until the page's event stream is open (a change after this reaches the page)."""
    from selenium.webdriver.common.by import By

    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "[sse-connect][data-live='open']"))


def member_escalates(
    api: httpx.Client, issue_type: str = "card", text: str = "My card was swallowed"
) -> tuple[str, str]:
    """A member opens a session, writes, asks for a person: (session id, escalation id)."""
    session = api.post("/sessions", json={"name": "Ada Member", "email": "ada@example.org"})
    assert session.status_code == 201, session.text
    session_id = session.json()["session_id"]
    assert api.post(f"/sessions/{session_id}/messages", json={"content": text}).status_code == 201
    escalation = api.post(
        f"/sessions/{session_id}/escalations",
        json={
            "issue_type": issue_type,
            "original_request": text,
            "contact_info": {"phone": "+1 555 0100"},
        },
    )
    assert escalation.status_code == 201, escalation.text
    return session_id, escalation.json()["id"]


def button(driver: Any, words: str) -> Any:
    """The button that says `words`."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.XPATH, f"//button[normalize-space()='{words}']")


def row_of(escalation_id: str) -> str:
    return f"tr[data-escalation='{escalation_id}']"


def follow_member_stream(base_url: str, session_id: str, after: int) -> queue.Queue[dict[str, Any]]:
    """Read the member's event stream in a thread; `staff` messages land in the queue."""
    found: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        url = f"{base_url}/api/v1/sessions/{session_id}/events?after={after}"
        with httpx.stream("GET", url, timeout=WAIT_S * 2) as response:
            event = None
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:") and event == "message":
                    message = json.loads(line.partition(":")[2])
                    if message["role"] == "staff":
                        found.put(message)
                        return

    threading.Thread(target=read, daemon=True).start()
    return found


def test_a_staff_member_works_a_case_from_arrival_to_resolution(clean: ThreadServer) -> None:
    from selenium.webdriver.common.by import By

    email, _ = clean.add_staff("Ann Lee")
    with chromium() as driver, member_api(clean.base_url) as api:
        sign_in_with_the_keyboard(driver, clean.base_url, email)
        wait_live(driver)
        assert "Nothing waiting" in driver.page_source

        # A member escalates over the API: the case shows up without a reload.
        driver.execute_script("window.notReloaded = true")
        session_id, escalation_id = member_escalates(api)
        started = time.monotonic()
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, row_of(escalation_id)))
        assert time.monotonic() - started < LIVE_WITHIN_S
        assert driver.execute_script("return window.notReloaded === true")
        row_text = text_at(driver, row_of(escalation_id))
        assert "Unassigned" in row_text and "New" in row_text
        assert "ada@example.org" not in driver.page_source  # contact details: case page only

        # Open it: contact details are here, but never in the URL or the title.
        link = f"{row_of(escalation_id)} a.open-case"
        click_and_load(driver, lambda d: d.find_element(By.CSS_SELECTOR, link))
        wait_for(driver, lambda d: text_of(d, "case-status") == "New")
        assert "ada@example.org" in driver.page_source
        assert "+1 555 0100" in driver.page_source
        # As written or URL-encoded (a bare "555" could be part of the case's random id).
        for private in ("ada@example.org", "ada%40example.org", "555 0100", "555%200100", "Ada"):
            assert private not in driver.current_url and private not in driver.title
        assert "My card was swallowed" in text_of(driver, "transcript")

        # Assign to me.
        click_and_load(driver, lambda d: button(d, "Assign to me"))
        wait_for(driver, lambda d: text_of(d, "case-assignee") == "Ann Lee")

        # Reply: the member's own event stream carries the staff message.
        history = api.get(f"/sessions/{session_id}/messages").json()["items"]
        heard = follow_member_stream(clean.base_url, session_id, history[-1]["seq"])
        driver.find_element(By.ID, "reply").send_keys("Hello Ada, I am on it.")
        click_and_load(driver, lambda d: button(d, "Send reply"))
        wait_for(driver, lambda d: "I am on it" in text_of(d, "transcript"))
        message = heard.get(timeout=WAIT_S)
        assert message["content"] == "Hello Ada, I am on it."
        assert message["author_name"] == "Ann Lee"
        assert "email" not in json.dumps(message)

        # The member answers: the open case page shows it live.
        wait_live(driver)
        api.post(f"/sessions/{session_id}/messages", json={"content": "Thank you!"})
        wait_for(driver, lambda d: "Thank you!" in text_of(d, "transcript"))

        # Resolve: it leaves the open queue.
        click_and_load(driver, lambda d: button(d, "Resolve"))
        wait_for(driver, lambda d: text_of(d, "case-status") == "Resolved")
        audit = driver.find_element(By.CSS_SELECTOR, "ol.audit").text
        assert "assigned it to Ann Lee" in audit and "to Resolved" in audit
        click_and_load(driver, lambda d: d.find_element(By.LINK_TEXT, "Queue"))
        wait_for(driver, lambda d: "Nothing waiting" in d.page_source)
        assert not driver.find_elements(By.CSS_SELECTOR, row_of(escalation_id))
        assert csp_errors(driver) == []

        # Sign out: the console is closed again.
        click_and_load(driver, lambda d: button(d, "Sign out"))
        wait_for(driver, lambda d: d.current_url.endswith("/console/login"))
        driver.get(f"{clean.base_url}/console/dashboard")
        wait_for(driver, lambda d: d.current_url.endswith("/console/login"))


def test_a_second_staff_member_sees_the_assignment_live(clean: ThreadServer) -> None:
    from selenium.webdriver.common.by import By

    ann, _ = clean.add_staff("Ann Lee")
    bo, _ = clean.add_staff("Bo Chen")
    with chromium() as first, chromium() as second, member_api(clean.base_url) as api:
        sign_in_with_the_keyboard(first, clean.base_url, ann)
        sign_in_with_the_keyboard(second, clean.base_url, bo)
        wait_live(second)
        second.execute_script("window.notReloaded = true")
        _, escalation_id = member_escalates(api, "loan", "I need a bigger loan")
        wait_for(second, lambda d: d.find_elements(By.CSS_SELECTOR, row_of(escalation_id)))

        first.get(f"{clean.base_url}/console/cases/{escalation_id}")
        wait_for(first, lambda d: text_of(d, "case-status") == "New")
        click_and_load(first, lambda d: button(d, "Assign to me"))
        wait_for(first, lambda d: text_of(d, "case-assignee") == "Ann Lee")

        wait_for(
            second,
            lambda d: "Ann Lee" in text_at(d, row_of(escalation_id)),
        )
        assert second.execute_script("return window.notReloaded === true")


def test_every_page_passes_axe_fits_360_px_and_is_photographed(clean: ThreadServer) -> None:
    from selenium.webdriver.common.by import By

    email, ann = clean.add_staff("Ann Lee")
    with chromium() as driver, member_api(clean.base_url) as api:
        pages = {"login": f"{clean.base_url}/console/login"}
        sign_in_with_the_keyboard(driver, clean.base_url, email)
        # Pages with something on them: states, an assignee, an SLA breach, replies.
        headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
        cases = [member_escalates(api, kind, f"Help with my {kind}") for kind in ("card", "loan")]
        session_id, case_id = member_escalates(api, "fraud", "Someone used my card abroad")
        for number in range(3):
            api.post(f"/sessions/{session_id}/messages", json={"content": f"More detail {number}"})
        for member_session, _ in [*cases, (session_id, case_id)]:
            conversation = api.get(f"/sessions/{member_session}").json()["conversation_id"]
            api.post(
                f"/conversations/{conversation}/messages",
                json={"role": "assistant", "content": "A person will answer shortly."},
                headers=headers,
            )
        patch = {"status": "in_progress", "assignee_id": str(ann)}
        api.patch(f"/escalations/{cases[0][1]}", json=patch, headers=headers)
        clean.run(clean.backdate_escalation(cases[1][1], minutes=42))
        pages.update(
            queue=f"{clean.base_url}/console",
            case=f"{clean.base_url}/console/cases/{case_id}",
            dashboard=f"{clean.base_url}/console/dashboard",
        )
        saved = []
        for name, url in pages.items():
            if name == "login":
                continue
            driver.get(url)
            wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete")
            if name == "dashboard":
                wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-volume canvas"))
            for width in (1280, 360):
                set_viewport(driver, width)
                assert run_axe(driver) == [], f"{name} at {width} px"
                overflow = driver.execute_script(
                    "return document.documentElement.scrollWidth - window.innerWidth"
                )
                widest = driver.execute_script(
                    "return [...document.querySelectorAll('body *')]"
                    ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)"
                    ".map(e => e.tagName + '.' + e.className).slice(0, 5)"
                )
                assert overflow <= 1, f"{name} scrolls sideways at {width} px: {widest}"
                saved.append(screenshot(driver, name, width))
        assert csp_errors(driver) == []
        print(f"screenshots saved in {SCREENSHOTS}: {', '.join(path.name for path in saved)}")


def test_the_login_page_passes_axe(server: ThreadServer) -> None:
    with chromium() as driver:
        driver.get(f"{server.base_url}/console/login")
        for width in (1280, 360):
            set_viewport(driver, width)
            assert run_axe(driver) == [], f"login at {width} px"
        assert csp_errors(driver) == []
