"""Migrations are revertable and agree with the models (`alembic check`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scripts.devdb import provision
from tests.conftest import SERVER_URL, TEST_DB

ROOT = Path(__file__).resolve().parents[2]


def _alembic(*args: str, env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_upgrade_downgrade_upgrade_and_check_on_an_empty_database() -> None:
    # Named after the run's database, so runs sharing a server never migrate each other's.
    urls = provision(SERVER_URL, f"{TEST_DB}_migrations", reset=True)
    env = {**os.environ, "DATABASE_URL": urls.app, "MIGRATION_DATABASE_URL": urls.owner}
    _alembic("upgrade", "head", env=env)
    _alembic("downgrade", "base", env=env)
    _alembic("upgrade", "head", env=env)
    _alembic("check", env=env)
