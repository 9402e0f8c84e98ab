"""Settings fail fast at import, naming the variable and how to fix it (run in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOOD = {
    "APP_ENV": "development",
    "DATABASE_URL": "postgresql+psycopg2://u:p@127.0.0.1:1/db",
    "ADMIN_API_KEY": "k" * 8 + "Q7p2Zr9xLm4Wv8Ns3Jt6Yb1Hc5Dg0Fa",
}
PRODUCTION = {
    **GOOD,
    "APP_ENV": "production",
    "PUBLIC_BASE_URL": "https://voice.example.org",
    "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
    "TWILIO_AUTH_TOKEN": "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    "ADMIN_API_KEY": "Q7p2Zr9xLm4Wv8Ns3Jt6Yb1Hc5Dg0Fa-xK",
    # Two Fernet keys (the first encrypts).
    "ENCRYPTION_KEYS": "pUu0E1ivXTYq1lNvYBTlNeWCi4b5H9s6yDVuQm0rM3c=,"
    "Xb3gIYyMSmhx8VfUcZ7Pq2jWK1eRt5nAoDLs9H4vGkE=",
}


def _import_settings(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}}
    return subprocess.run(
        [sys.executable, "-c", "import app.config.settings"],
        cwd=ROOT,
        env={**clean, "VCA_ENV_FILE": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_valid_environment_imports() -> None:
    result = _import_settings(GOOD)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", ["APP_ENV", "DATABASE_URL", "ADMIN_API_KEY"])
def test_missing_required_variable_stops_with_its_name(missing: str) -> None:
    env = {k: v for k, v in GOOD.items() if k != missing}
    result = _import_settings(env)
    assert result.returncode != 0
    assert missing in result.stderr
    assert "is required" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("override", "name"),
    [
        ({"ADMIN_API_KEY": "short"}, "ADMIN_API_KEY"),
        ({"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL"),
        ({"APP_ENV": "prod"}, "APP_ENV"),
        ({"LLM_TIMEOUT_SECONDS": "-1"}, "LLM_TIMEOUT_SECONDS"),
        ({"PUBLIC_BASE_URL": "voice.example.org"}, "PUBLIC_BASE_URL"),
        ({"ENCRYPTION_KEYS": "not-a-fernet-key"}, "ENCRYPTION_KEYS"),
        ({"DATABASE_POOL_TIMEOUT_SECONDS": "0"}, "DATABASE_POOL_TIMEOUT_SECONDS"),
        # SPEC 11 gives receivers 15 s; a lease must cover a send and recording its outcome.
        ({"WEBHOOK_TIMEOUT_SECONDS": "30"}, "WEBHOOK_TIMEOUT_SECONDS"),
        ({"WEBHOOK_LEASE_SECONDS": "20"}, "WEBHOOK_LEASE_SECONDS"),
        ({"WEBHOOK_TIMEOUT_SECONDS": "2", "WEBHOOK_LEASE_SECONDS": "7"}, "WEBHOOK_LEASE_SECONDS"),
    ],
)
def test_bad_value_stops_with_its_name(override: dict[str, str], name: str) -> None:
    result = _import_settings({**GOOD, **override})
    assert result.returncode != 0
    assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_a_short_webhook_timeout_allows_a_short_lease() -> None:
    result = _import_settings(
        {**GOOD, "WEBHOOK_TIMEOUT_SECONDS": "2", "WEBHOOK_LEASE_SECONDS": "8"}
    )
    assert result.returncode == 0, result.stderr


def test_production_accepts_a_complete_safe_configuration() -> None:
    result = _import_settings(PRODUCTION)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"DEBUG": "true"}, "DEBUG"),
        ({"PUBLIC_BASE_URL": ""}, "PUBLIC_BASE_URL"),
        ({"TWILIO_AUTH_TOKEN": ""}, "TWILIO_AUTH_TOKEN"),
        ({"ADMIN_API_KEY": "changeme-changeme-changeme-changeme"}, "ADMIN_API_KEY"),
        ({"WEBHOOK_ALLOW_PRIVATE_URLS": "true"}, "WEBHOOK_ALLOW_PRIVATE_URLS"),
        # Without keys webhook secrets could not be stored: production refuses to start.
        ({"ENCRYPTION_KEYS": ""}, "ENCRYPTION_KEYS"),
    ],
)
def test_production_refuses_unsafe_settings(change: dict[str, str], name: str) -> None:
    env = {k: v for k, v in {**PRODUCTION, **change}.items() if v != ""}
    result = _import_settings(env)
    assert result.returncode != 0
    assert name in result.stderr
