"""SQL for the row-level security every tenant-owned table carries (used by the migrations).

The NULLIF matters: after a committed transaction `current_setting('app.tenant_id', true)` reads ''
rather than NULL, and `''::uuid` is an error. With no tenant set the predicate is NULL: no rows.
"""

from __future__ import annotations

POLICY_NAME = "tenant_isolation"

TENANT_PREDICATE = (
    "{column} = NULLIF(current_setting('app.tenant_id', true), '')::uuid"
    " OR current_setting('app.system', true) = 'on'"
)


def enable_rls(table: str, column: str = "tenant_id") -> list[str]:
    """Statements that enable and force RLS on `table` with the fail-closed tenant policy."""
    predicate = TENANT_PREDICATE.format(column=column)
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {POLICY_NAME} ON {table} FOR ALL USING ({predicate}) WITH CHECK ({predicate})",
    ]


def disable_rls(table: str) -> list[str]:
    return [
        f"DROP POLICY IF EXISTS {POLICY_NAME} ON {table}",
        f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
    ]
