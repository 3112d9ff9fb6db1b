"""Settings read once from the environment (or `.env`), and DATABASE_URL normalisation."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import ssl
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from app.redact import ALL_KINDS, parse_kinds
from app.schemas import ISSUE_TYPE_PATTERN

PoolerMode = Literal["auto", "transaction", "direct"]

SUPABASE_POOLER_PORT = 6543
# libpq sslmode names that asyncpg's `ssl` argument understands as they are.
SSL_MODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
# Query parameters we translate; anything else is refused rather than passed to asyncpg,
# which would fail later with an obscure TypeError.
KNOWN_QUERY_PARAMETERS = {"sslmode", "ssl", "pgbouncer", "sslrootcert", "host"}
ISSUE_TYPE = re.compile(ISSUE_TYPE_PATTERN)


class ConfigError(ValueError):
    """A configuration value is wrong; the message is one line, safe to print."""


@dataclass(frozen=True)
class DatabaseTarget:
    """A DATABASE_URL translated for SQLAlchemy + asyncpg."""

    url: URL
    ssl: str | ssl.SSLContext | None = None
    pgbouncer: bool = False

    @property
    def looks_like_pooler(self) -> bool:
        """True for a transaction pooler URL (port 6543, Supavisor host, pgbouncer=true)."""
        host = self.url.host or ""
        return (
            self.pgbouncer
            or self.url.port == SUPABASE_POOLER_PORT
            or host.endswith("pooler.supabase.com")
        )

    def redacted(self) -> str:
        """The URL with its password hidden, for logs."""
        return self.url.render_as_string(hide_password=True)


def parse_database_url(raw: str, variable: str = "DATABASE_URL") -> DatabaseTarget:
    """Translate a Postgres URL as Supabase shows it into an asyncpg SQLAlchemy URL."""
    text = raw.strip()
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise ConfigError(f"{variable}: not a URL (expected postgresql://user:pass@host/db)")
    scheme = scheme.lower()
    if scheme not in {"postgres", "postgresql", "postgresql+asyncpg"}:
        raise ConfigError(
            f"{variable}: unsupported scheme {scheme!r} (use postgresql:// or postgres://)"
        )
    try:
        # make_url percent-decodes the password (`%25` included) exactly once.
        url = make_url(f"postgresql+asyncpg://{rest}")
    except (ArgumentError, ValueError):
        raise ConfigError(f"{variable}: cannot be parsed as a Postgres URL") from None
    if not url.host and not url.query.get("host"):
        raise ConfigError(f"{variable}: the URL names no host")
    if not url.database:
        raise ConfigError(f"{variable}: the URL names no database")

    query = dict(url.query)
    unknown = sorted(set(query) - KNOWN_QUERY_PARAMETERS)
    if unknown:
        raise ConfigError(f"{variable}: unsupported query parameter {unknown[0]!r}")

    def single(name: str) -> str | None:
        value = query.get(name)
        if isinstance(value, tuple):
            raise ConfigError(f"{variable}: query parameter {name!r} given more than once")
        return value

    ssl_value: str | ssl.SSLContext | None = None
    mode = single("sslmode") or single("ssl")
    if mode is not None:
        if mode not in SSL_MODES:
            raise ConfigError(f"{variable}: sslmode={mode!r} is not one of {sorted(SSL_MODES)}")
        ssl_value = mode
    root_cert = single("sslrootcert")
    if root_cert is not None:
        if mode not in {"verify-ca", "verify-full"}:
            raise ConfigError(f"{variable}: sslrootcert needs sslmode=verify-ca or verify-full")
        context = ssl.create_default_context(cafile=root_cert)
        context.check_hostname = mode == "verify-full"
        ssl_value = context

    pgbouncer_raw = single("pgbouncer")
    if pgbouncer_raw is not None and pgbouncer_raw.lower() not in {"true", "false", "1", "0"}:
        raise ConfigError(f"{variable}: pgbouncer must be true or false")
    pgbouncer = pgbouncer_raw is not None and pgbouncer_raw.lower() in {"true", "1"}

    # Only `host` (a Unix socket directory) stays: the asyncpg dialect understands it.
    clean = url.set(query={name: value for name, value in query.items() if name == "host"})
    return DatabaseTarget(url=clean, ssl=ssl_value, pgbouncer=pgbouncer)


DEFAULT_KEY_NAME = "service"
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def split_api_key(entry: str) -> tuple[str, str]:
    """`name:key` -> (name, key); a bare key is named `service`. ConfigError when malformed.

    The name is what logs and the audit trail show for requests made with the key; the
    key itself is never shown, so the message below never quotes it.
    """
    name, separator, key = entry.partition(":")
    if not separator:
        return DEFAULT_KEY_NAME, entry
    if not _KEY_NAME.fullmatch(name):
        raise ConfigError(
            "API_KEYS: a key name (before ':') must be 1-64 letters, digits, '_', '.' or '-'"
        )
    if not key:
        raise ConfigError(f"API_KEYS: the key named {name!r} is empty")
    return name, key


def is_loopback_host(host: str) -> bool:
    """Whether a URL's host is this machine: localhost, 127.0.0.0/8 or ::1."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the service (README: Configuration)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    database_url: SecretStr | None = None
    database_migration_url: SecretStr | None = None
    db_pooler: PoolerMode = "auto"
    # The hot-path layer (app.fastpath) for the three busiest member requests: on by
    # default; it stands aside behind a transaction pooler whatever this says.
    hot_paths: bool = Field(default=True, description="HOT_PATHS=on|off")
    # The whole budget kept open: SQLAlchemy closes an overflow connection whenever it is
    # returned to a full pool, so overflow under steady load is a reconnect per request.
    db_pool_size: int = Field(default=20, ge=1, le=1000)
    db_max_overflow: int = Field(default=0, ge=0, le=1000)
    db_pool_timeout_s: float = Field(default=5, gt=0, le=600)
    db_statement_timeout_ms: int = Field(default=5000, ge=0, le=3_600_000)
    db_pool_recycle_s: int = Field(default=1800, ge=-1)
    db_pool_pre_ping: bool = True
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    message_max_chars: int = Field(default=8000, ge=1, le=1_000_000)
    sla_first_response_minutes: int = Field(default=15, ge=1, le=10_080)
    # The key the credit union's app signs member emails with (identity verification);
    # unset: identity verification is off.
    identity_secret: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = "console"
    workers: int = Field(default=1, ge=1, le=256)
    # What one client may hold of a worker (README, "Deployment").
    http_max_header_bytes: int = Field(default=16_384, ge=1024, le=1_048_576)
    http_header_timeout_s: float = Field(default=10, gt=0, le=300)
    http_keep_alive_s: int = Field(default=5, ge=1, le=3600)
    # SSE_MAX_STREAMS (1,000) open streams and 512 requests beside them.
    http_limit_concurrency: int = Field(default=1536, ge=1, le=100_000)
    # Escalation notifications (README, "Escalation notifications"). The secret and the
    # http:// switch come first so the URL's validator can see them.
    webhook_allow_http: bool = False
    notify_webhook_secret: SecretStr | None = None
    notify_webhook_url: SecretStr | None = None
    notify_max_attempts: int = Field(default=12, ge=1, le=100)
    notify_backoff_base_s: float = Field(default=2, gt=0, le=3600)
    notify_backoff_cap_s: float = Field(default=900, gt=0, le=86_400)
    notify_poll_interval_s: float = Field(default=2, gt=0, le=3600)
    # Deliveries in flight per worker; a conversation's agent webhooks go one at a time,
    # so a burst over many conversations needs many slots.
    notify_batch_size: int = Field(default=100, ge=1, le=500)
    notify_timeout_s: float = Field(default=5, gt=0, le=60)
    # Validated even when left at its default, since NOTIFY_TIMEOUT_S may have moved.
    notify_lease_s: float = Field(default=60, gt=0, le=3600, validate_default=True)
    notify_worker: bool = False
    # The agent webhook (README, "The agent webhook"): one message.created per member
    # message, delivered by the same worker. The secret first, as above.
    agent_webhook_secret: SecretStr | None = None
    agent_webhook_url: SecretStr | None = None
    # Card numbers and SSNs replaced before any message or escalation text is stored.
    redact: Annotated[frozenset[str], NoDecode] = ALL_KINDS
    # Member abuse limits (README, Configuration; docs/API.md).
    escalations_open_max: int = Field(default=3, ge=1, le=100)
    escalation_issue_types: Annotated[list[str], NoDecode] = Field(default_factory=list)
    member_messages_per_minute: int = Field(default=30, ge=1, le=10_000)
    # Realtime streams (README, "Realtime events").
    database_listen_url: SecretStr | None = None
    sse_ping_s: float = Field(default=15, gt=0, le=3600)
    sse_poll_ms: int = Field(default=500, ge=10, le=60_000)
    sse_buffer_events: int = Field(default=256, ge=1, le=100_000)
    sse_max_streams: int = Field(default=1000, ge=1, le=1_000_000)
    events_retention_hours: float = Field(default=72, gt=0, le=24 * 3650)
    # The staff console (README, "Staff console"). The key signs session cookies; unset,
    # each process makes its own (sessions then end at a restart and need one worker).
    console_secret_key: SecretStr | None = None
    # Localhost over plain http only: browsers drop a Secure cookie sent over http.
    console_insecure_cookie: bool = False

    @field_validator("api_keys", "cors_origins", "escalation_issue_types", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("redact", mode="before")
    @classmethod
    def _redact_kinds(cls, value: Any) -> Any:
        try:
            return parse_kinds(value)
        except ValueError:
            raise ConfigError(
                "REDACT: must be a comma list of card, ssn (default both), or none"
            ) from None

    @field_validator("api_keys")
    @classmethod
    def _named_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        # A name may carry several keys (rotation: old and new side by side); a key may
        # not carry two names, or the actor of its requests would be ambiguous.
        keys: set[str] = set()
        for entry in value:
            _, key = split_api_key(entry.get_secret_value())
            if key in keys:
                raise ConfigError("API_KEYS: the same key is listed twice")
            keys.add(key)
        return value

    @field_validator("escalation_issue_types")
    @classmethod
    def _issue_types(cls, value: list[str]) -> list[str]:
        for issue_type in value:
            if not ISSUE_TYPE.fullmatch(issue_type):
                raise ConfigError(
                    f"ESCALATION_ISSUE_TYPES: {issue_type[:60]!r} is not a lower-case slug "
                    "(a letter, then up to 49 of a-z, 0-9, _)"
                )
        return list(dict.fromkeys(value))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url", "database_migration_url", "database_listen_url")
    @classmethod
    def _valid_url(cls, value: SecretStr | None, info: Any) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        parse_database_url(value.get_secret_value(), info.field_name.upper())
        return value

    @field_validator("identity_secret")
    @classmethod
    def _identity_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if len(value.get_secret_value().strip().encode()) < 32:
            # HMAC-SHA256 with a short key is only as strong as the key.
            raise ConfigError("IDENTITY_SECRET: must be at least 32 bytes (e.g. 64 hex digits)")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("console_secret_key")
    @classmethod
    def _console_secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if len(value.get_secret_value().strip().encode()) < 32:
            raise ConfigError("CONSOLE_SECRET_KEY: must be at least 32 bytes (e.g. 64 hex digits)")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("notify_webhook_secret", "agent_webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None, info: Any) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        name = info.field_name.upper()
        raw = value.get_secret_value().strip()
        if not raw.startswith("whsec_"):
            raise ConfigError(f"{name}: must start with whsec_ (Standard Webhooks)")
        try:
            encoded = raw.removeprefix("whsec_")
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{name}: whsec_ must be followed by base64") from None
        if len(key) < 16:
            raise ConfigError(f"{name}: the key must be at least 16 bytes")
        return SecretStr(raw)

    @field_validator("notify_webhook_url", "agent_webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None, info: Any) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        raw = value.get_secret_value().strip()
        import httpx  # only when a webhook is configured: it costs start-up ~60 ms

        try:
            url = httpx.URL(raw)
        except (httpx.InvalidURL, ValueError):
            url = None
        name = info.field_name.upper()
        if url is None or url.scheme not in {"http", "https"} or not url.host:
            raise ConfigError(f"{name}: must be an http:// or https:// URL")
        # Escalation payloads carry members' names, emails and phones, agent payloads
        # their messages: in clear text only to this machine, unless the operator says
        # otherwise.
        if (
            url.scheme == "http"
            and not is_loopback_host(url.host)
            and not info.data.get("webhook_allow_http")
        ):
            raise ConfigError(
                f"{name}: http:// is only accepted for a loopback host (payloads carry "
                "members' details); use https:// or set WEBHOOK_ALLOW_HTTP=true"
            )
        secret = name.removesuffix("_URL") + "_SECRET"
        if info.data.get(secret.lower()) is None:
            raise ConfigError(f"{name}: is set but {secret} is not")
        return SecretStr(raw)

    @property
    def hot_paths_active(self) -> bool:
        """Whether the hot-path layer serves requests: HOT_PATHS on and a direct connection."""
        return self.hot_paths and not self.transaction_pooler

    @property
    def agent_webhook_enabled(self) -> bool:
        """Whether member messages record agent webhook events."""
        return self.agent_webhook_url is not None

    @field_validator("notify_lease_s")
    @classmethod
    def _lease_outlasts_delivery(cls, value: float, info: Any) -> float:
        # A lease shorter than a POST would hand an in-flight event to a second worker.
        timeout = info.data.get("notify_timeout_s")
        if timeout is not None and value <= 2 * timeout:
            raise ConfigError("NOTIFY_LEASE_S: must be more than twice NOTIFY_TIMEOUT_S")
        return value

    @property
    def database(self) -> DatabaseTarget:
        """The service's database; requires DATABASE_URL to be set."""
        if self.database_url is None:
            raise ConfigError("DATABASE_URL is not set")
        return parse_database_url(self.database_url.get_secret_value())

    @property
    def migration_database(self) -> DatabaseTarget:
        """The URL Alembic uses: DATABASE_MIGRATION_URL, else DATABASE_URL."""
        if self.database_migration_url is not None:
            return parse_database_url(
                self.database_migration_url.get_secret_value(), "DATABASE_MIGRATION_URL"
            )
        return self.database

    @property
    def listen_database(self) -> DatabaseTarget | None:
        """Where LISTEN runs: DATABASE_LISTEN_URL, else DATABASE_MIGRATION_URL, else
        DATABASE_URL when it is direct; None behind a transaction pooler (streams poll)."""
        if self.database_listen_url is not None:
            return parse_database_url(
                self.database_listen_url.get_secret_value(), "DATABASE_LISTEN_URL"
            )
        if self.database_migration_url is not None:
            return self.migration_database
        if self.database_url is not None and not self.transaction_pooler:
            return self.database
        return None

    @property
    def transaction_pooler(self) -> bool:
        """Whether the pooler-safe connection mode applies."""
        if self.db_pooler == "transaction":
            return True
        if self.db_pooler == "direct":
            return False
        return self.database_url is not None and self.database.looks_like_pooler

    @property
    def api_key_values(self) -> list[tuple[str, bytes]]:
        """(name, key as bytes) per configured service key, for constant-time comparison."""
        named = (split_api_key(entry.get_secret_value()) for entry in self.api_keys)
        return [(name, key.encode()) for name, key in named]

    @property
    def connection_budget(self) -> int:
        """The most connections this deployment can open: workers * (pool size + overflow)."""
        return self.workers * (self.db_pool_size + self.db_max_overflow)


def load_settings(**overrides: Any) -> Settings:
    """Read Settings, turning any validation failure into one ConfigError line."""
    try:
        return Settings(**overrides)
    except ConfigError:
        raise
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        message = str(first["msg"])
        # Pydantic wraps our ConfigError as "Value error, <msg>"; keep only the msg.
        message = message.removeprefix("Value error, ")
        if message.startswith(name):
            raise ConfigError(message) from None
        raise ConfigError(f"{name}: {message}") from None
