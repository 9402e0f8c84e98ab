"""Provision a PostgreSQL database for development and tests, the way production runs.

Two roles: the owner (runs migrations, owns the tables) and the app role (DML only; not superuser,
not BYPASSRLS, not the owner), so row-level security applies to the app exactly as in production.
Without an explicit server URL the embedded PostgreSQL of the `pgserver` package is started, with its
data under `.data/`, so a fresh clone needs no system database.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

ROOT = Path(__file__).absolute().parent.parent  # unresolved: see app/config/development.py
DATA_DIR = ROOT / ".data"
OWNER_ROLE = "vca_owner"
APP_ROLE = "vca_app"
# Development-only passwords: local trust/socket auth ignores them; production roles are the operator's.
DEV_PASSWORD = "vca-dev-only"  # noqa: S105


@dataclass(frozen=True)
class DatabaseUrls:
    owner: str
    app: str


def embedded_server(data_dir: Path = DATA_DIR / "pg", *, stop_at_exit: bool = False) -> Any:
    """Start (or reuse) the embedded PostgreSQL; its handle (a `pgserver.PostgresServer`).

    With `stop_at_exit`, `cleanup()` (or this process's exit) stops the server unless another
    process still holds a handle on it (pgserver counts them in the data directory).
    """
    import pgserver  # imported lazily: only needed when no server URL is given

    warnings.filterwarnings("ignore", module="platformdirs")
    data_dir.mkdir(parents=True, exist_ok=True)
    return pgserver.get_server(str(data_dir), cleanup_mode="stop" if stop_at_exit else None)


def embedded_server_url(data_dir: Path = DATA_DIR / "pg") -> str:
    """Start (or reuse) the embedded PostgreSQL and return its superuser URL (left running)."""
    return str(embedded_server(data_dir).get_uri())


def _connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    parsed = make_url(url)
    host = parsed.query.get("host") or parsed.host
    return psycopg.connect(
        host=host if isinstance(host, str) else None,
        port=parsed.port,
        user=parsed.username,
        password=parsed.password or None,
        dbname=parsed.database,
        autocommit=True,
    )


def _with(url: str, *, user: str, database: str) -> str:
    parsed = make_url(url).set(
        drivername="postgresql+psycopg", username=user, password=DEV_PASSWORD, database=database
    )
    return parsed.render_as_string(hide_password=False)


def provision(server_url: str, database: str, *, reset: bool = False) -> DatabaseUrls:
    """Create the two roles and the database (dropping it first when `reset`), idempotently."""
    conn = _connect(server_url)
    with conn.cursor() as cur:
        for role in (OWNER_ROLE, APP_ROLE):
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            verb = sql.SQL("ALTER") if cur.fetchone() else sql.SQL("CREATE")
            cur.execute(
                sql.SQL(
                    "{} ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB PASSWORD {}"
                ).format(verb, sql.Identifier(role), sql.Literal(DEV_PASSWORD))
            )
        if reset:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if not cur.fetchone():
            cur.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(OWNER_ROLE)
                )
            )
    conn.close()
    return DatabaseUrls(
        owner=_with(server_url, user=OWNER_ROLE, database=database),
        app=_with(server_url, user=APP_ROLE, database=database),
    )


def server_url_from_env(variable: str) -> str:
    """The server to provision on: `variable` if set (a role allowed to create roles/databases)."""
    return os.environ.get(variable) or embedded_server_url()
