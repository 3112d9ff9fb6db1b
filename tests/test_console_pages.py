"""The console's pages over HTTP: queue filters and paging, the case page's parts, the
actions' refusals, the dashboard (the browser tests cover the live behaviour)."""

from __future__ import annotations

import re

import httpx
import pytest
from console_support import add_staff, csrf_of, sign_in
from helpers import add_messages, escalate, open_session
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.console.format import age, duration
from app.models import Staff


@pytest.fixture
async def browser(client: httpx.AsyncClient) -> httpx.AsyncClient:
    client.base_url = httpx.URL("https://test")
    return client


async def _signed_in(browser: httpx.AsyncClient, db: AsyncSession) -> Staff:
    account = await add_staff(db)
    assert (await sign_in(browser, account.email)).status_code == 303
    return account


def _rows(html: str) -> list[str]:
    return re.findall(r'data-escalation="([0-9a-f-]+)"', html)


async def test_the_queue_shows_open_cases_oldest_first_without_contact_details(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    await _signed_in(browser, db)
    first = await escalate(db, (await open_session(db)).session_id, "card", email="a@example.org")
    second = await escalate(db, (await open_session(db)).session_id, "loan")
    resolved = await escalate(db, (await open_session(db)).session_id, "fraud")
    await db.execute(
        text("UPDATE escalations SET status = 'resolved' WHERE id = :id"), {"id": resolved.id}
    )
    await db.execute(
        text("UPDATE escalations SET created_at = now() - interval '40 minutes' WHERE id = :id"),
        {"id": first.id},
    )
    page = await browser.get("/console")
    assert _rows(page.text) == [str(first.id), str(second.id)]
    assert "a@example.org" not in page.text
    assert "40 min" in page.text and "SLA breached" in page.text
    only_resolved = await browser.get("/console?status=resolved")
    assert _rows(only_resolved.text) == [str(resolved.id)]
    by_type = await browser.get("/console?issue_type=loan")
    assert _rows(by_type.text) == [str(second.id)]


async def test_the_assignee_filter_takes_mine_unassigned_and_anyone(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    account = await _signed_in(browser, db)
    mine = await escalate(db, (await open_session(db)).session_id, "card")
    nobody = await escalate(db, (await open_session(db)).session_id, "loan")
    await db.execute(
        text("UPDATE escalations SET assignee_id = :staff WHERE id = :id"),
        {"staff": account.id, "id": mine.id},
    )
    assert _rows((await browser.get("/console?assignee=mine")).text) == [str(mine.id)]
    assert _rows((await browser.get("/console?assignee=unassigned")).text) == [str(nobody.id)]
    assert len(_rows((await browser.get("/console?assignee=anyone")).text)) == 2
    rows = await browser.get("/console/queue/rows?assignee=mine")
    assert _rows(rows.text) == [str(mine.id)] and "<html" not in rows.text


async def test_an_empty_queue_says_what_to_do_and_bad_filters_are_422(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    await _signed_in(browser, db)
    page = await browser.get("/console?assignee=mine")
    assert "Nothing waiting" in page.text and "clear the filters" in page.text
    for query in ("status=open", "issue_type=Not-A-Slug", "assignee=everyone", "cursor=@@"):
        assert (await browser.get(f"/console?{query}")).status_code == 422, query


async def test_the_queue_pages_25_at_a_time_with_a_keyset_cursor(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    await _signed_in(browser, db)
    for _ in range(27):
        await escalate(db, (await open_session(db)).session_id, "card")
    first = await browser.get("/console")
    assert len(_rows(first.text)) == 25
    found = re.search(r'href="/console\?([^"]*cursor=[^"]+)">Next page', first.text)
    assert found is not None
    second = await browser.get("/console?" + found[1].replace("&amp;", "&"))
    assert len(_rows(second.text)) == 2
    assert not set(_rows(first.text)) & set(_rows(second.text))
    assert "First page" in second.text and "Next page" not in second.text


async def test_the_case_page_shows_contact_request_transcript_moves_and_older_pages(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    await _signed_in(browser, db)
    session = await open_session(db)
    await add_messages(db, session.conversation_id, *(f"message {n}" for n in range(1, 36)))
    escalation = await escalate(db, session.session_id, "card", email="ann@example.org")
    page = await browser.get(f"/console/cases/{escalation.id}")
    assert page.status_code == 200
    assert "ann@example.org" in page.text and "Please call me" in page.text
    assert "<title>Case · card · Staff console</title>" in page.text
    assert "message 35" in page.text and "message 5<" not in page.text
    assert "Show older messages" in page.text
    for word in ("Mark notified", "Mark in progress", "Resolve", "Assign to me"):
        assert word in page.text
    older = await browser.get(f"/console/cases/{escalation.id}/transcript/older?before=6")
    assert "message 5<" in older.text and "message 1<" in older.text
    assert "Show older messages" not in older.text
    live = await browser.get(f"/console/cases/{escalation.id}/transcript?from_seq=34")
    assert "message 34" in live.text and "message 35" in live.text
    assert "message 33" not in live.text
    unknown = await browser.get("/console/cases/00000000-0000-0000-0000-000000000000")
    assert unknown.status_code == 404


async def test_refused_actions_say_why_and_change_nothing(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    await _signed_in(browser, db)
    escalation = await escalate(db, (await open_session(db)).session_id, "card")
    page = await browser.get(f"/console/cases/{escalation.id}")
    csrf = csrf_of(page.text)
    base = f"/console/cases/{escalation.id}"
    resolved = await browser.post(f"{base}/status", data={"status": "resolved", "csrf_token": csrf})
    assert resolved.status_code == 303
    backwards = await browser.post(
        f"{base}/status", data={"status": "notified", "csrf_token": csrf}
    )
    assert backwards.status_code == 409 and "allowed: in_progress" in backwards.text
    bogus = await browser.post(f"{base}/status", data={"status": "done", "csrf_token": csrf})
    assert bogus.status_code == 422
    nobody = await browser.post(f"{base}/assignee", data={"to": "boss", "csrf_token": csrf})
    assert nobody.status_code == 422
    blank = await browser.post(f"{base}/reply", data={"content": "   ", "csrf_token": csrf})
    assert blank.status_code == 422 and "Write 1 to 8000 characters" in blank.text
    long = await browser.post(f"{base}/reply", data={"content": "x" * 8001, "csrf_token": csrf})
    assert long.status_code == 422
    count = await db.scalar(
        text("SELECT count(*) FROM messages WHERE conversation_id = :c"),
        {"c": escalation.conversation_id},
    )
    assert count == 0


async def test_a_reply_from_the_console_is_a_staff_message_with_an_audit_row(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    account = await _signed_in(browser, db)
    escalation = await escalate(db, (await open_session(db)).session_id, "card")
    csrf = csrf_of((await browser.get(f"/console/cases/{escalation.id}")).text)
    response = await browser.post(
        f"/console/cases/{escalation.id}/reply",
        data={"content": "Hello, Ann here.", "csrf_token": csrf},
    )
    assert response.status_code == 303
    row = (
        await db.execute(
            text("SELECT role, author_id FROM messages WHERE conversation_id = :c"),
            {"c": escalation.conversation_id},
        )
    ).one()
    assert (row.role, row.author_id) == ("staff", account.id)
    actor = await db.scalar(
        text("SELECT actor FROM escalation_audit WHERE escalation_id = :e"), {"e": escalation.id}
    )
    assert actor == f"console+staff:{account.id}"
    page = await browser.get(f"/console/cases/{escalation.id}")
    assert "Ann Lee" in page.text and "replied" in page.text


async def test_the_dashboard_shows_three_windows_and_thirty_days(
    browser: httpx.AsyncClient, db: AsyncSession
) -> None:
    await _signed_in(browser, db)
    await escalate(db, (await open_session(db)).session_id, "card")
    page = await browser.get("/console/dashboard")
    assert page.status_code == 200
    for label in ("Last 24 h", "Last 7 d", "Last 30 d", "Escalation rate", "SLA breaches"):
        assert label in page.text
    assert page.text.count('<th scope="row">20') == 30  # one row per UTC day
    assert 'id="daily-series"' in page.text


def test_ages_and_durations_read_as_people_say_them() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert age(now - timedelta(seconds=30), now) == "just now"
    assert age(now - timedelta(minutes=12), now) == "12 min"
    assert age(now - timedelta(hours=3, minutes=5), now) == "3 h 5 min"
    assert age(now - timedelta(hours=2), now) == "2 h"
    assert age(now - timedelta(days=2, hours=4), now) == "2 d 4 h"
    assert age(now - timedelta(days=3), now) == "3 d"
    assert age(None, now) == ""
    assert duration(None) == "n/a" and duration(12.34) == "12.3 s" and duration(720) == "12 min"
