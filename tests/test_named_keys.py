"""Named service keys (`API_KEYS=name:key`): the name is who acted, in the logs; never the key."""

from __future__ import annotations

import logging
import uuid

import pytest
from conftest import make_settings, started_client

from app.settings import ConfigError, load_settings, split_api_key

OPS_KEY = "ops-key-0123456789abcdef"
BARE_KEY = "bare-key-0123456789abcdef"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (f"agent-bot:{OPS_KEY}", ("agent-bot", OPS_KEY)),
        (BARE_KEY, ("service", BARE_KEY)),
        ("tools.v2:with:colons", ("tools.v2", "with:colons")),
    ],
)
def test_an_entry_is_a_name_and_a_key_and_a_bare_key_is_named_service(
    entry: str, expected: tuple[str, str]
) -> None:
    assert split_api_key(entry) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (f"bad name:{OPS_KEY}", "key name"),
        (f":{OPS_KEY}", "key name"),
        ("lonely:", "is empty"),
        (f"ops:{OPS_KEY},tools:{OPS_KEY}", "same key"),
    ],
)
def test_a_malformed_key_list_stops_start_up_without_showing_a_key(
    value: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as error:
        load_settings(api_keys=value, _env_file=None)
    assert OPS_KEY not in str(error.value)
    assert str(error.value).startswith("API_KEYS")


async def test_a_named_key_is_admitted_and_its_name_not_the_key_is_logged(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(database_url, api_keys=f"agent-bot:{OPS_KEY}, {BARE_KEY}")
    async with started_client(settings) as http:
        for key, name in ((OPS_KEY, "agent-bot"), (BARE_KEY, "service")):
            caplog.clear()
            response = await http.get(
                f"/api/v1/escalations/{uuid.uuid4()}", headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == 404
            [access] = [record for record in caplog.records if record.name == "app.access"]
            assert access.actor == name  # type: ignore[attr-defined]
        caplog.clear()
        refused = await http.get(
            f"/api/v1/escalations/{uuid.uuid4()}", headers={"Authorization": "Bearer agent-bot"}
        )
        assert refused.status_code == 401
        [access] = [record for record in caplog.records if record.name == "app.access"]
        assert not hasattr(access, "actor")
        member = await http.post("/api/v1/sessions")
        assert member.status_code == 201
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert OPS_KEY not in logged and BARE_KEY not in logged


def test_one_name_may_carry_two_keys_while_one_is_rotated_out() -> None:
    settings = load_settings(api_keys=f"ops:{OPS_KEY},ops:{BARE_KEY}", _env_file=None)
    assert settings.api_key_values == [("ops", OPS_KEY.encode()), ("ops", BARE_KEY.encode())]
