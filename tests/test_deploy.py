"""docker-compose.yml and Dockerfile, checked without a Docker engine: every service,
command and file they name exists, and the stack starts in the right order."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from ops_support import CLI, PROJECT_ROOT

from app.cli import build_parser

SUPABASE_POSTGRES_MAJORS = {"15", "17"}
BIN = Path(CLI).parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    return [
        line.strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _stages(dockerfile: list[str]) -> list[list[str]]:
    stages: list[list[str]] = []
    for line in dockerfile:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_compose_has_the_database_the_migration_and_the_api(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"db", "migrate", "api"}


def test_the_database_image_is_a_postgres_major_supabase_runs(compose: dict[str, Any]) -> None:
    image = compose["services"]["db"]["image"]
    name, _, tag = image.partition(":")
    assert name == "postgres"
    assert tag.split("-")[0].split(".")[0] in SUPABASE_POSTGRES_MAJORS


def test_migrate_runs_alembic_upgrade_head_once(compose: dict[str, Any]) -> None:
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["alembic", "upgrade", "head"]
    assert migrate.get("restart", "no") == "no"
    assert (BIN / "alembic").exists()
    assert (PROJECT_ROOT / "alembic.ini").is_file()
    assert (PROJECT_ROOT / "alembic" / "env.py").is_file()


def test_the_api_starts_only_after_migrate_succeeded(compose: dict[str, Any]) -> None:
    depends = compose["services"]["api"]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["db"]["condition"] == "service_healthy"
    assert compose["services"]["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"


def test_the_api_command_is_a_valid_member_support_command_line(compose: dict[str, Any]) -> None:
    command = compose["services"]["api"]["command"]
    assert command[0] == "member-support"
    assert (BIN / "member-support").exists()
    arguments = build_parser().parse_args(command[1:])
    assert arguments.command == "serve"
    assert arguments.host == "0.0.0.0"


def test_the_database_and_the_api_have_healthchecks(compose: dict[str, Any]) -> None:
    for name in ("db", "api"):
        check = compose["services"][name]["healthcheck"]
        assert check["test"][0] in {"CMD", "CMD-SHELL"}
    api_probe = compose["services"]["api"]["healthcheck"]["test"]
    assert api_probe[:3] == ["CMD", "python", "-c"]
    compile(api_probe[3], "<healthcheck>", "exec")
    assert "/readyz" in api_probe[3]
    assert "pg_isready" in compose["services"]["db"]["healthcheck"]["test"][1]


def test_every_name_compose_refers_to_exists(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose.get("volumes", {}), (name, source)
        if "build" in service:
            context = PROJECT_ROOT / service["build"]
            assert (context / "Dockerfile").is_file(), name


def test_the_api_gets_time_to_finish_requests_on_stop(compose: dict[str, Any]) -> None:
    grace = compose["services"]["api"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > 30  # uvicorn's graceful shutdown timeout


def test_the_dockerfile_builds_in_stages_with_uv(dockerfile: list[str]) -> None:
    stages = _stages(dockerfile)
    assert len(stages) >= 2
    build = " ".join(stages[0])
    assert "ghcr.io/astral-sh/uv" in build
    assert "uv sync --locked --no-dev" in build
    assert not any("uv" in shlex.split(line)[0:1] for line in stages[-1])


def test_the_image_runs_as_a_user_other_than_root(dockerfile: list[str]) -> None:
    users = [line.split()[1] for line in _stages(dockerfile)[-1] if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}


def test_every_file_the_dockerfile_copies_exists(dockerfile: list[str]) -> None:
    for line in dockerfile:
        if not line.startswith("COPY ") or "--from=" in line:
            continue
        parts = [part for part in shlex.split(line)[1:] if not part.startswith("--")]
        for source in parts[:-1]:
            assert (PROJECT_ROOT / source).exists(), source


def test_the_image_command_is_a_valid_member_support_command_line(dockerfile: list[str]) -> None:
    [command_line] = [line for line in dockerfile if line.startswith("CMD ")]
    command = yaml.safe_load(command_line[len("CMD ") :])
    assert command[0] == "member-support"
    assert build_parser().parse_args(command[1:]).command == "serve"


def test_the_docker_context_leaves_out_local_state() -> None:
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    for local in (".venv", ".git", ".env", ".member-support"):
        assert local in ignored


HTTP_LIMITS = (
    "HTTP_MAX_HEADER_BYTES",
    "HTTP_HEADER_TIMEOUT_S",
    "HTTP_KEEP_ALIVE_S",
    "HTTP_LIMIT_CONCURRENCY",
)


def _default(name: str) -> str:
    from app.settings import Settings

    value = Settings.model_fields[name.lower()].default
    return str(int(value)) if float(value).is_integer() else str(value)


def test_the_image_sets_the_http_limits_serve_applies(dockerfile: list[str]) -> None:
    environment = dict(
        re.findall(
            r'(\w+)=("[^"]*"|\S+)',
            " ".join(line[4:] for line in dockerfile if line.startswith("ENV ")),
        )
    )
    assert {name: environment.get(name) for name in HTTP_LIMITS} == {
        name: _default(name) for name in HTTP_LIMITS
    }


def test_compose_passes_the_same_http_limits_to_the_api(compose: dict[str, Any]) -> None:
    environment = compose["services"]["api"]["environment"]
    assert {name: environment.get(name) for name in HTTP_LIMITS} == {
        name: f"${{{name}:-{_default(name)}}}" for name in HTTP_LIMITS
    }
