"""Application settings, validated once at import.

A missing or malformed variable stops the process with one message that names the variable and says
how to fix it, instead of failing later on the first request that needs it.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from functools import cached_property
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from app.config.development import DEVELOPMENT_ACCOUNT_SID
from app.crypto import GENERATE_HINT, development_key, parse_keys

PLACEHOLDER_MARKERS = (
    "changeme",
    "change-me",
    "change_me",
    "replace-me",
    "your-",
    "example",
    "xxx",
)


class AppEnv(StrEnum):
    development = "development"
    test = "test"
    staging = "staging"
    production = "production"


class LogFormat(StrEnum):
    json = "json"
    console = "console"


# After a send's timeout, the time a worker keeps to record the outcome before its claim's lease
# runs out (app/webhooks/delivery.py: `can_send`); the lease must cover both.
WEBHOOK_LEASE_MARGIN_SECONDS = 5.0


def _looks_like_placeholder(value: str) -> bool:
    lowered = value.lower()
    return any(marker in lowered for marker in PLACEHOLDER_MARKERS) or len(set(value)) < 6


class Settings(BaseSettings):
    # VCA_ENV_FILE="" disables the .env file (the tests do, so a developer's .env cannot leak in).
    model_config = SettingsConfigDict(
        env_file=os.environ.get("VCA_ENV_FILE", ".env") or None,
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=True,
    )

    APP_ENV: AppEnv
    APP_NAME: str = "VCA"
    DEBUG: bool = False
    DATABASE_URL: str
    MIGRATION_DATABASE_URL: str | None = None
    DATABASE_POOL_SIZE: int = Field(default=10, ge=1, le=200)
    # Threads per API process for blocking work (sync endpoints and their transactions, the
    # relay's writes). Each one competes with the event loop for the GIL: with anyio's 40, live
    # calls' frames waited 50-100 ms behind them; 2 held more live calls than 4 at equal HTTP
    # rates in paired runs (docs/scaling.md).
    API_THREADS: int = Field(default=2, ge=1, le=200)
    # How long a request waits for a pooled connection before it answers 503 (a database that
    # holds every connection, e.g. behind a lock, fails fast instead of piling up requests).
    DATABASE_POOL_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0, le=300)
    # psycopg's server-side prepared statements (app/config/database.py); off behind a pooler
    # that hands one client's statements to several server connections (PgBouncer before 1.21).
    DATABASE_PREPARED_STATEMENTS: bool = True
    ADMIN_API_KEY: str = Field(min_length=32)
    PUBLIC_BASE_URL: str | None = None
    TWILIO_ACCOUNT_SID: str | None = None
    TWILIO_AUTH_TOKEN: str | None = None
    TWILIO_API_BASE_URL: str | None = None
    LLM_BASE_URL: str | None = None
    LLM_API_KEY: str | None = None
    LLM_MODEL: str | None = None
    LLM_TIMEOUT_SECONDS: float = Field(default=8.0, gt=0, le=120)
    # Live ConversationRelay calls one API process holds before its voice webhook refuses new
    # ones (503: Twilio's fallback URL answers); docs/scaling.md has the measured figure.
    MAX_LIVE_CALLS_PER_PROCESS: int = Field(default=1000, ge=1, le=100_000)
    # After the first text frame of an answer, tokens are held up to this long (or to the end of
    # a sentence) and sent as one frame: text runs far ahead of speech, and every frame costs a
    # write on the event loop that all calls share. 0 sends every token as it arrives.
    RELAY_COALESCE_MS: float = Field(default=60.0, ge=0, le=500)
    # On SIGTERM, how long live calls may go on before the process stops anyway.
    DRAIN_TIMEOUT_SECONDS: float = Field(default=300.0, ge=0, le=86_400)
    WEBHOOK_ALLOW_PRIVATE_URLS: bool = False
    # A receiver has this long to answer (SPEC 11: 15 s); an operator may shorten it, not stretch it.
    WEBHOOK_TIMEOUT_SECONDS: float = Field(default=15.0, gt=0, le=15)
    # How long a worker holds a claimed delivery: one killed mid-send has it sent again, by any
    # worker, this long after its claim. 2 minutes covers a batch queued behind slow endpoints (a
    # claim whose lease would run out mid-send is given back unsent: delivery.can_send).
    WEBHOOK_LEASE_SECONDS: float = Field(default=120.0, gt=0, le=3600)
    # Delivered events, finished deliveries and their attempts are deleted this long after.
    WEBHOOK_RETENTION_DAYS: int = Field(default=30, ge=1, le=3650)
    # Fernet keys, comma-separated: the first encrypts, all decrypt (app/crypto.py).
    ENCRYPTION_KEYS: str | None = None
    CORS_ORIGINS: str = ""
    # memory:// counts per process; redis://host:6379/0 shares the counts between processes.
    RATE_LIMIT_STORAGE_URL: str = "memory://"
    RATE_LIMIT_PER_MINUTE: int = Field(default=600, ge=1)  # per API key (and the admin key)
    RATE_LIMIT_TENANT_PER_MINUTE: int = Field(default=1200, ge=1)  # a tenant's keys together
    LOG_LEVEL: str = "INFO"
    LOG_FORMAT: LogFormat = LogFormat.json

    @field_validator("DATABASE_URL", "MIGRATION_DATABASE_URL")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = make_url(value)
        except Exception as exc:
            raise ValueError("is not a valid database URL") from exc
        if url.drivername.split("+")[0] not in ("postgresql", "postgres"):
            raise ValueError("must be a PostgreSQL URL (postgresql://user:pass@host/db)")
        # The app speaks psycopg 3 whatever driver the URL names (psycopg2's URLs keep working).
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)

    @field_validator("PUBLIC_BASE_URL", "TWILIO_API_BASE_URL", "LLM_BASE_URL")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("RATE_LIMIT_STORAGE_URL")
    @classmethod
    def _limits_storage(cls, value: str) -> str:
        if value.split("://", 1)[0] not in ("memory", "redis", "rediss", "redis+sentinel"):
            raise ValueError("must be memory:// or a redis://, rediss:// or redis+sentinel:// URL")
        return value

    @field_validator("ENCRYPTION_KEYS")
    @classmethod
    def _fernet_keys(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return ",".join(parse_keys(value))

    @field_validator("LOG_LEVEL")
    @classmethod
    def _log_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return upper

    @model_validator(mode="after")
    def _webhook_lease_covers_a_send(self) -> Settings:
        lease, needed = (
            self.WEBHOOK_LEASE_SECONDS,
            self.WEBHOOK_TIMEOUT_SECONDS + WEBHOOK_LEASE_MARGIN_SECONDS,
        )
        if lease <= needed:
            raise ValueError(
                f"WEBHOOK_LEASE_SECONDS: must exceed WEBHOOK_TIMEOUT_SECONDS + "
                f"{WEBHOOK_LEASE_MARGIN_SECONDS:g} s (here {needed:g} s), or no claim could be sent"
            )
        return self

    @model_validator(mode="after")
    def _environment_rules(self) -> Settings:
        deployed = self.APP_ENV in (AppEnv.staging, AppEnv.production)
        if self.APP_ENV is AppEnv.production and self.DEBUG:
            raise ValueError("DEBUG: must be false when APP_ENV=production")
        if deployed:
            for name in ("PUBLIC_BASE_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
                if not getattr(self, name):
                    raise ValueError(f"{name}: is required when APP_ENV={self.APP_ENV.value}")
            if not self.ENCRYPTION_KEYS:
                raise ValueError(
                    f"ENCRYPTION_KEYS: is required when APP_ENV={self.APP_ENV.value} (webhook "
                    f"secrets are encrypted with it); {GENERATE_HINT}"
                )
            for name in ("ADMIN_API_KEY", "TWILIO_AUTH_TOKEN"):
                if _looks_like_placeholder(getattr(self, name)):
                    raise ValueError(
                        f"{name}: looks like a placeholder; generate a real secret "
                        "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                    )
            if self.TWILIO_ACCOUNT_SID == DEVELOPMENT_ACCOUNT_SID:
                raise ValueError(
                    "TWILIO_ACCOUNT_SID: is `make dev`'s development account; set a real one"
                )
            if self.WEBHOOK_ALLOW_PRIVATE_URLS and self.APP_ENV is AppEnv.production:
                raise ValueError(
                    "WEBHOOK_ALLOW_PRIVATE_URLS: must be false when APP_ENV=production"
                )
        return self

    @property
    def migration_database_url(self) -> str:
        return self.MIGRATION_DATABASE_URL or self.DATABASE_URL

    @property
    def encryption_keys(self) -> list[str]:
        """ENCRYPTION_KEYS, first one first; unset (development and test only), a key derived
        from ADMIN_API_KEY, stable across restarts."""
        if self.ENCRYPTION_KEYS:
            return self.ENCRYPTION_KEYS.split(",")
        return [development_key(self.ADMIN_API_KEY)]

    @property
    def is_production(self) -> bool:
        return self.APP_ENV is AppEnv.production

    @property
    def telephony_configured(self) -> bool:
        return bool(self.TWILIO_ACCOUNT_SID and self.TWILIO_AUTH_TOKEN and self.PUBLIC_BASE_URL)

    @property
    def telephony_mode(self) -> str:
        """`development` when `make dev` plays the Twilio account (calls come from
        `python -m app.cli talk`), else `configured` or `not_configured`."""
        if not self.telephony_configured:
            return "not_configured"
        if self.TWILIO_ACCOUNT_SID == DEVELOPMENT_ACCOUNT_SID:
            return "development"
        return "configured"

    @property
    def llm_configured(self) -> bool:
        return bool(self.LLM_BASE_URL and self.LLM_MODEL)

    @property
    def webhook_require_https(self) -> bool:
        return self.APP_ENV is AppEnv.production

    @cached_property
    def cors_origins(self) -> list[str]:
        return [origin.strip() for origin in self.CORS_ORIGINS.split(",") if origin.strip()]


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ())) or None
    message = str(error.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ")
    if error.get("type") == "missing":
        return f"{location}: is required; set it in the environment or in .env (see .env.example)"
    if location:
        return f"{location}: {message}"
    return message


def load_settings() -> Settings:
    """Read and validate the settings, or stop the process with one readable message per problem."""
    try:
        return Settings()  # values come from the environment
    except ValidationError as exc:
        problems = "\n".join(f"  - {_describe(error)}" for error in exc.errors())  # type: ignore[arg-type]
        sys.stderr.write(f"Configuration error, the process cannot start:\n{problems}\n")
        raise SystemExit(2) from None


settings = load_settings()
