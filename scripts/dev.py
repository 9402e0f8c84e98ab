"""`make dev`: database, migrations, demo tenant, then the API (and the worker) on :8000.

Precedence of configuration: the environment, then `.env`, then the development defaults here.
Without DATABASE_URL the embedded PostgreSQL (pgserver, data in .data/) is started.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import signal
import subprocess
import sys
import time
import warnings

from dotenv import dotenv_values

from app.config.development import DEVELOPMENT_ACCOUNT_SID, write_development_settings
from scripts.devdb import DATA_DIR, ROOT, DatabaseUrls, embedded_server, provision

warnings.filterwarnings("ignore", module="platformdirs")


STOP_TIMEOUT_SECONDS = 20.0


def _dev_secret(name: str) -> str:
    """A secret generated once per clone and kept in .data/ (owner-readable only)."""
    path = DATA_DIR / name
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _dev_encryption_key() -> str:
    """A Fernet key generated once per clone and kept in .data/ (owner-readable only)."""
    path = DATA_DIR / "dev-encryption-key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def configured_environment() -> dict[str, str]:
    """What the user chose: `.env`, overridden by the environment."""
    configured = {k: v for k, v in dotenv_values(ROOT / ".env").items() if v is not None}
    configured.update(os.environ)
    return configured


def build_environment(configured: dict[str, str], database: DatabaseUrls | None) -> dict[str, str]:
    """The API's and the worker's environment: what the user chose, then development defaults."""
    env = dict(configured)
    port = env.setdefault("PORT", "8000")
    if database is not None:
        env["DATABASE_URL"] = database.app
        env.setdefault("MIGRATION_DATABASE_URL", database.owner)
    defaults = {
        "APP_ENV": "development",
        "ADMIN_API_KEY": configured.get("ADMIN_API_KEY") or _dev_secret("dev-admin-key"),
        "PUBLIC_BASE_URL": f"http://localhost:{port}",
        "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
        "ENCRYPTION_KEYS": configured.get("ENCRYPTION_KEYS") or _dev_encryption_key(),
        "LOG_FORMAT": "console",
    }
    if not configured.get("TWILIO_ACCOUNT_SID") and not configured.get("TWILIO_AUTH_TOKEN"):
        # No Twilio account: play one, so `python -m app.cli talk` can call the agent.
        defaults["TWILIO_ACCOUNT_SID"] = DEVELOPMENT_ACCOUNT_SID
        defaults["TWILIO_AUTH_TOKEN"] = _dev_secret("dev-twilio-auth-token")
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env


def run(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True)


class _Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def _raise_stop(*_: object) -> None:
    raise _Stop


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each (one signal only: a second one makes uvicorn skip its graceful
    shutdown), then wait; whatever is still running after the timeout is killed."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve(env: dict[str, str]) -> int:
    """The API and the worker until a signal (exit 0) or until one of them exits (its code)."""
    host = env.get("HOST", "127.0.0.1")
    api = [sys.executable, "-m", "uvicorn", "main:app", "--host", host, "--port", env["PORT"]]
    commands = {
        "the API": [*api, "--no-access-log"],
        "the worker": [sys.executable, "-m", "app.worker"],
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for command in commands.values():
            processes.append(subprocess.Popen(command, cwd=ROOT, env=env))
        print(
            f"Admin key: {env['ADMIN_API_KEY'][:6]}… (full value in .data/dev-admin-key unless set)"
        )
        print(f"Serving on http://{host}:{env['PORT']} (docs at /docs); Ctrl-C stops everything")
        while True:
            for name, process in zip(commands, processes, strict=True):
                if process.poll() is not None:
                    print(f"{name} exited (code {process.returncode}); stopping everything")
                    return process.returncode or 1
            time.sleep(0.2)
    except _Stop:
        return 0
    finally:
        # Signals now only hurry nothing: the stop below runs to its end.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop(processes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--migrate-only", action="store_true", help="stop after migrating")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    configured = configured_environment()
    server = None
    try:
        database = None
        if "DATABASE_URL" not in configured:
            server = embedded_server(stop_at_exit=True)
            database = provision(str(server.get_uri()), "vca")
            print("Using the embedded PostgreSQL in .data/pg", flush=True)
        env = build_environment(configured, database)
        write_development_settings(env)
        run(env, "-m", "alembic", "upgrade", "head")
        if args.migrate_only:
            return 0
        run(env, "-m", "app.cli", "seed-demo", "--key-file", str(DATA_DIR / "demo-api-key"))
        return serve(env)
    except _Stop:
        return 0
    finally:
        if server is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            # Stopped unless another process (a test run) still uses it.
            server.cleanup()
            print("Stopped the API, the worker and the embedded PostgreSQL.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
