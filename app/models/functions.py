"""The SQL functions, declared once: each one's current definition is its file in `sql/`.

They are alembic_utils entities, so `alembic check` fails while a migration has not brought the
database to these definitions, and autogenerate writes that migration. Keep PL/pgSQL for what must
be one round trip under a held lock (admission) or a cross-tenant lookup that binds the tenant.
"""

from __future__ import annotations

from pathlib import Path

from alembic_utils.pg_function import PGFunction

SQL_DIR = Path(__file__).parent / "sql"

# In dependency order (a function is created after those it calls).
FUNCTION_NAMES = (
    "authenticate_api_key",
    "bind_call_sid",
    "route_inbound_call",
    "billing_period_bounds",
    "billing_period_at",
    "open_billing_period",
    "call_line_cutoffs",
    "call_limit_violation",
    "answering_profile",
    "answer_inbound_call",
)

FUNCTIONS = [PGFunction.from_sql((SQL_DIR / f"{name}.sql").read_text()) for name in FUNCTION_NAMES]
