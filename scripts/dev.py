"""`make dev`: database, migrations, demo tenant, then the API (and the worker) on :8000.

Precedence of configuration: the environment, then `.env`, then the development defaults here.
Without DATABASE_URL the embedded PostgreSQL (pgserver, data in .data/) is started.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import warnings

from dotenv import dotenv_values

from scripts.devdb import DATA_DIR, ROOT, embedded_server_url, provision

warnings.filterwarnings("ignore", module="platformdirs")


def _dev_admin_key() -> str:
    path = DATA_DIR / "dev-admin-key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def build_environment() -> dict[str, str]:
    configured = {k: v for k, v in dotenv_values(ROOT / ".env").items() if v is not None}
    configured.update(os.environ)
    env = dict(configured)
    port = env.setdefault("PORT", "8000")
    if "DATABASE_URL" not in configured:
        urls = provision(embedded_server_url(), "vca")
        env["DATABASE_URL"] = urls.app
        env.setdefault("MIGRATION_DATABASE_URL", urls.owner)
        print("Using the embedded PostgreSQL in .data/pg", flush=True)
    defaults = {
        "APP_ENV": "development",
        "ADMIN_API_KEY": configured.get("ADMIN_API_KEY") or _dev_admin_key(),
        "PUBLIC_BASE_URL": f"http://localhost:{port}",
        "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
        "LOG_FORMAT": "console",
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env


def run(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True)


def serve(env: dict[str, str]) -> int:
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "main:app",
                "--host",
                env.get("HOST", "127.0.0.1"),
                "--port",
                env["PORT"],
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
        )
    ]
    if (ROOT / "app" / "worker.py").exists():
        processes.append(subprocess.Popen([sys.executable, "-m", "app.worker"], cwd=ROOT, env=env))

    def stop(*_: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.terminate()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"Admin key: {env['ADMIN_API_KEY'][:6]}… (full value in .data/dev-admin-key unless set)")
    print(f"Serving on http://{env.get('HOST', '127.0.0.1')}:{env['PORT']} (docs at /docs)")
    codes = [process.wait() for process in processes]
    return max(codes, default=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--migrate-only", action="store_true", help="stop after migrating")
    args = parser.parse_args()
    env = build_environment()
    run(env, "-m", "alembic", "upgrade", "head")
    if args.migrate_only:
        return 0
    run(env, "-m", "app.cli", "seed-demo", "--key-file", str(DATA_DIR / "demo-api-key"))
    return serve(env)


if __name__ == "__main__":
    sys.exit(main())
