"""Member routes never return stored contact details: a leaked session id leaks no PII."""

from __future__ import annotations

import httpx
import pytest
from api_support import API, escalate

# Every test here runs with the hot-path layer on and with it off (tests/conftest.py).
pytestmark = pytest.mark.both_paths

NAME = "Adalind Privatename"
EMAIL = "adalind.private@example.org"
PHONE = "+1 555 0177"
CONTACT_INFO = {
    "name": "Contactinfo Othername",
    "email": "contactinfo.mail@example.org",
    "phone": "+1 555 0188",
    "preferred_channel": "carrier-pigeon-xyz",
}
SECRETS = [NAME, EMAIL, PHONE, "Privatename", "adalind", "555 0177", *CONTACT_INFO.values()]


def _assert_no_pii(response: httpx.Response) -> None:
    text = response.text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
    for secret in SECRETS:
        assert secret.lower() not in text.lower(), (response.request.url, secret)


async def test_no_member_response_contains_stored_contact_details(
    client: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    session_id = "privacy-walk-session-000001"
    responses: list[httpx.Response] = []

    async def call(method: str, path: str, **kwargs: object) -> httpx.Response:
        response = await client.request(method, f"{API}{path}", **kwargs)  # type: ignore[arg-type]
        responses.append(response)
        return response

    created = await call(
        "POST", "/sessions", json={"session_id": session_id, "name": NAME, "email": EMAIL}
    )
    assert created.status_code == 201
    again = await call("POST", "/sessions", json={"session_id": session_id, "phone": PHONE})
    assert again.status_code == 200
    assert (
        await call("PATCH", f"/sessions/{session_id}/contact", json={"phone": PHONE})
    ).status_code == 204
    refused = await call(
        "PATCH", f"/sessions/{session_id}/contact", json={"email": f"{EMAIL}@@", "name": NAME * 20}
    )
    assert refused.status_code == 422
    await call("GET", f"/sessions/{session_id}")
    await call("POST", f"/sessions/{session_id}/messages", json={"content": "hello"})
    await call("GET", f"/sessions/{session_id}/messages")
    first = await call(
        "POST",
        f"/sessions/{session_id}/escalations",
        json={"issue_type": "loan", "original_request": "call me", "contact_info": CONTACT_INFO},
    )
    assert first.status_code == 201
    duplicate = await call(
        "POST",
        f"/sessions/{session_id}/escalations",
        json={"issue_type": "loan", "original_request": "again", "contact_info": CONTACT_INFO},
    )
    assert duplicate.status_code == 200
    bad_contact_info = await call(
        "POST",
        f"/sessions/{session_id}/escalations",
        json={
            "issue_type": "card",
            "original_request": "x",
            "contact_info": {**CONTACT_INFO, "email": "contactinfo.mail@"},
        },
    )
    assert bad_contact_info.status_code == 422
    await call("GET", f"/sessions/{session_id}/escalations")

    for response in responses:
        _assert_no_pii(response)

    # The details were stored, so the walk above could have leaked them.
    escalation = await client.get(
        f"{API}/escalations/{first.json()['id']}", headers=service_headers
    )
    assert escalation.json()["contact_info"]["preferred_channel"] == "carrier-pigeon-xyz"
    user = await client.get(f"{API}/users", params={"email": EMAIL}, headers=service_headers)
    assert (user.json()["name"], user.json()["phone"]) == (NAME, PHONE)


async def test_validation_errors_do_not_echo_the_submitted_values(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        f"{API}/sessions", json={"email": f"{EMAIL}@@", "phone": "call adalind"}
    )
    assert response.status_code == 422
    _assert_no_pii(response)
    assert "call adalind" not in response.text


async def test_an_idempotency_mismatch_does_not_echo_either_content(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(f"{API}/sessions")
    session_id = created.json()["session_id"]
    url = f"{API}/sessions/{session_id}/messages"
    await client.post(url, json={"content": "my pin is 1234"}, headers={"Idempotency-Key": "k"})
    response = await client.post(
        url, json={"content": "my pin is 9876"}, headers={"Idempotency-Key": "k"}
    )
    assert response.status_code == 422
    assert "1234" not in response.text and "9876" not in response.text


async def test_the_escalation_summary_of_a_member_has_no_contact_or_context(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(f"{API}/sessions", json={"email": EMAIL})
    response = await escalate(client, created.json()["session_id"], contact_info=CONTACT_INFO)
    assert set(response.json()) == {"id", "issue_type", "status", "created_at", "updated_at"}
