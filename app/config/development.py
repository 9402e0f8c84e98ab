"""The settings `make dev` resolves, kept in .data/dev.env so other tools find the running stack.

`make dev` writes the file; the operator CLI (`python -m app.cli`) reads it, under the environment
and `.env` (the same precedence as `make dev` itself), so `python -m app.cli talk` in a second
terminal reaches the same database and server, and signs as the same development Twilio account.
Nothing here imports the settings: the CLI loads this file before the settings are read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

# Not resolved: a checkout laid out with symlinks (tests/cli/test_first_ten_minutes.py) keeps its
# own .data/.
ROOT = Path(__file__).absolute().parents[2]
DEV_SETTINGS_FILE = ROOT / ".data" / "dev.env"

# The Twilio account `make dev` plays when no real one is configured: no such account exists at
# Twilio (so nothing can be placed with it); the auth token is generated per clone, in .data/.
DEVELOPMENT_ACCOUNT_SID = "AC" + "de7" + "0" * 29

# What the CLI needs to reach the stack; the LLM's settings are the API's business only (and a
# provider's key is not copied to disk).
KEPT = (
    "APP_ENV",
    "DATABASE_URL",
    "MIGRATION_DATABASE_URL",
    "ADMIN_API_KEY",
    "PUBLIC_BASE_URL",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_API_BASE_URL",
    "WEBHOOK_ALLOW_PRIVATE_URLS",
    # The CLI's rotate-encryption-key reads and writes webhook secrets.
    "ENCRYPTION_KEYS",
)


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def write_development_settings(env: Mapping[str, str], path: Path = DEV_SETTINGS_FILE) -> None:
    """Keep what `make dev` gave the API (readable by the owner only: it holds keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Written by `make dev`; read by `python -m app.cli`. Do not edit: it is rewritten.\n"
    ]
    lines += [f'{key}="{_quoted(env[key])}"\n' for key in KEPT if env.get(key)]
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text("".join(lines))


def load_development_settings(path: Path = DEV_SETTINGS_FILE, dotenv: Path | None = None) -> bool:
    """Fill the environment from `make dev`'s settings, under what the environment and `.env`
    already say; nothing when they choose another environment than development.

    Returns whether the file was used.
    """
    if not path.exists():
        return False
    configured = {k: v for k, v in dotenv_values(dotenv or ROOT / ".env").items() if v is not None}
    configured.update(os.environ)
    if configured.get("APP_ENV", "development") != "development":
        return False
    for key, value in dotenv_values(path).items():
        if value is not None and key not in configured:
            os.environ[key] = value
    return True
