"""DATABASE_URL as Supabase shows it, and one-line configuration errors."""

from __future__ import annotations

import ssl
import subprocess
import sys

import pytest

from app.db import connect_args
from app.settings import ConfigError, Settings, load_settings, parse_database_url

POOLER_URL = (
    "postgres://postgres.abcdefghijklmnop:s3cr%25t%40pw@"
    "aws-0-eu-central-1.pooler.supabase.com:6543/postgres"
)


def settings_for(url: str, **overrides: object) -> Settings:
    return load_settings(database_url=url, _env_file=None, **overrides)


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+asyncpg"])
def test_every_postgres_scheme_becomes_asyncpg(scheme: str) -> None:
    target = parse_database_url(f"{scheme}://user:pw@db.example.org:5432/postgres")
    assert target.url.drivername == "postgresql+asyncpg"
    assert target.url.host == "db.example.org"


def test_a_percent_encoded_password_is_decoded_once() -> None:
    target = parse_database_url(POOLER_URL)
    assert target.url.password == "s3cr%t@pw"
    assert target.url.username == "postgres.abcdefghijklmnop"


@pytest.mark.parametrize("mode", ["require", "verify-full", "disable"])
def test_sslmode_becomes_asyncpg_ssl_and_leaves_the_url(mode: str) -> None:
    settings = settings_for(f"postgresql://u:p@h:5432/db?sslmode={mode}")
    target = settings.database
    assert dict(target.url.query) == {}
    assert connect_args(settings, target, pooled=True)["ssl"] == mode


def test_sslrootcert_builds_a_verifying_context(tmp_path: object) -> None:
    certificate = ssl.get_default_verify_paths().cafile
    if certificate is None:
        pytest.skip("this machine has no default CA bundle file")
    target = parse_database_url(
        f"postgresql://u:p@h/db?sslmode=verify-full&sslrootcert={certificate}"
    )
    assert isinstance(target.ssl, ssl.SSLContext)
    assert target.ssl.check_hostname


def test_the_pooler_port_selects_transaction_mode_with_all_three_settings() -> None:
    settings = settings_for(POOLER_URL)
    assert settings.transaction_pooler
    arguments = connect_args(settings, settings.database, pooled=True)
    assert arguments["statement_cache_size"] == 0
    assert arguments["prepared_statement_cache_size"] == 0
    first = arguments["prepared_statement_name_func"]()
    assert first != arguments["prepared_statement_name_func"]()
    # Poolers refuse a statement_timeout start-up parameter.
    assert "statement_timeout" not in arguments["server_settings"]


def test_pgbouncer_true_selects_transaction_mode_and_leaves_the_url() -> None:
    settings = settings_for("postgresql://u:p@h:5432/db?pgbouncer=true")
    assert settings.transaction_pooler
    assert dict(settings.database.url.query) == {}


def test_a_supabase_pooler_host_selects_transaction_mode_on_any_port() -> None:
    assert settings_for("postgresql://u:p@aws-1-x.pooler.supabase.com:5432/db").transaction_pooler


def test_direct_mode_sends_the_statement_timeout_at_start_up() -> None:
    settings = settings_for("postgresql://u:p@db.example.org:5432/db")
    assert not settings.transaction_pooler
    arguments = connect_args(settings, settings.database, pooled=True)
    assert arguments["server_settings"]["statement_timeout"] == "5000"
    assert "prepared_statement_name_func" not in arguments


def test_db_pooler_direct_overrides_the_port_guess() -> None:
    assert not settings_for(POOLER_URL, db_pooler="direct").transaction_pooler


def test_db_pooler_transaction_forces_pooler_mode() -> None:
    settings = settings_for("postgresql://u:p@h:5432/db", db_pooler="transaction")
    assert settings.transaction_pooler


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("postgresql://u:p@h/db?connect_timeout=10", "'connect_timeout'"),
        ("postgresql://u:p@h/db?sslmode=sometimes", "sslmode='sometimes'"),
        ("mysql://u:p@h/db", "unsupported scheme"),
        ("not a url", "not a URL"),
        ("postgresql://u:p@h", "no database"),
        ("postgresql://u:p@h/db?pgbouncer=maybe", "pgbouncer"),
    ],
)
def test_a_wrong_url_fails_with_one_line_naming_the_problem(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_for(url)
    message = str(caught.value)
    assert message.startswith("DATABASE_URL")
    assert fragment in message
    assert "\n" not in message


def test_an_error_never_shows_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_for("postgresql://u:hunter2secret@h/db?options=-c%20x")
    assert "hunter2secret" not in str(caught.value)


def test_a_bad_number_names_its_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, db_pool_size=0)
    assert str(caught.value).startswith("DB_POOL_SIZE")


def test_api_keys_and_cors_origins_are_comma_separated() -> None:
    settings = load_settings(_env_file=None, api_keys=" a , b,,", cors_origins="https://x.org")
    assert settings.api_key_values == [("service", b"a"), ("service", b"b")]
    assert settings.cors_origins == ["https://x.org"]


def test_the_migration_url_defaults_to_the_database_url() -> None:
    settings = settings_for("postgresql://u:p@h/db")
    assert settings.migration_database.url == settings.database.url
    other = settings_for(
        "postgresql://u:p@h:6543/db", database_migration_url="postgresql://u:p@h:5432/db"
    )
    assert other.migration_database.url.port == 5432


def test_the_connection_budget_multiplies_workers() -> None:
    settings = load_settings(_env_file=None, workers=3, db_pool_size=4, db_max_overflow=2)
    assert settings.connection_budget == 18


def test_a_bad_setting_at_start_up_is_one_line_without_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from app.asgi import create; create()"],
        env={"DATABASE_URL": "postgresql://u:p@h/db?foo=1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: DATABASE_URL: unsupported query parameter 'foo'"


def test_the_default_pool_keeps_its_whole_budget_open_with_no_overflow() -> None:
    # Overflow connections are closed on return: as a default they churn under steady load.
    settings = load_settings(_env_file=None)
    assert (settings.db_pool_size, settings.db_max_overflow) == (20, 0)


def test_identity_secret_is_optional_and_blank_means_off() -> None:
    assert load_settings(_env_file=None).identity_secret is None
    assert load_settings(_env_file=None, identity_secret="   ").identity_secret is None


def test_a_short_identity_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, identity_secret="short-secret-value")
    assert "IDENTITY_SECRET" in str(caught.value)
    assert "short-secret-value" not in str(caught.value)


def test_the_identity_secret_never_shows_in_the_settings_repr() -> None:
    secret = "s3cret-identity-key-" + "x" * 20
    settings = load_settings(_env_file=None, identity_secret=secret)
    assert settings.identity_secret is not None
    assert settings.identity_secret.get_secret_value() == secret
    assert secret not in repr(settings) and secret not in str(settings.model_dump())
