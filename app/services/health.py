"""Readiness: database reachable, migrations at head, row-level security really enforced."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.config.database import get_engine
from app.config.settings import settings

ROOT = Path(__file__).resolve().parents[2]

# One round trip: the schema version, and whether RLS applies to the role the app connects as.
_PROBE = text(
    """
    SELECT
      (SELECT version_num FROM alembic_version LIMIT 1) AS version,
      r.rolsuper OR r.rolbypassrls AS bypasses_rls,
      (SELECT coalesce(bool_and(c.relrowsecurity AND c.relforcerowsecurity
                                AND pg_get_userbyid(c.relowner) <> current_user), false)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind = 'r'
          AND (c.relname = 'tenants' OR EXISTS (
                SELECT 1 FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped))
      ) AS tables_protected
    FROM pg_roles r WHERE r.rolname = current_user
    """
)


@lru_cache(maxsize=1)
def migration_head() -> str | None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config(str(ROOT / "alembic.ini"))
    return ScriptDirectory.from_config(config).get_current_head()


@dataclass(frozen=True)
class HealthReport:
    ok: bool
    checks: dict[str, str]


@dataclass(frozen=True)
class RoleSafety:
    bypasses_rls: bool
    tables_protected: bool


def probe_database() -> tuple[str | None, RoleSafety]:
    with get_engine().connect() as conn:
        row = conn.execute(_PROBE).one()
    return row.version, RoleSafety(bool(row.bypasses_rls), bool(row.tables_protected))


def _configuration() -> dict[str, str]:
    return {
        "config": "ok",
        "telephony": settings.telephony_mode,
        "llm": "configured" if settings.llm_configured else "not_configured",
    }


def database_unavailable() -> HealthReport:
    """The report when the database cannot be asked: down, or every connection or thread held."""
    checks = _configuration()
    checks.update(database="unavailable", migrations="unknown", rls="unknown")
    return HealthReport(ok=False, checks=checks)


def check_health() -> HealthReport:
    try:
        version, safety = probe_database()
    except SQLAlchemyError:
        return database_unavailable()
    checks = _configuration()
    checks["database"] = "ok"
    checks["migrations"] = "ok" if version == migration_head() else "pending"
    enforced = not safety.bypasses_rls and safety.tables_protected
    checks["rls"] = "enforced" if enforced else "not_enforced"
    return HealthReport(ok=True, checks=checks)
