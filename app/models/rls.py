"""The row-level security policy every tenant-owned table carries, declared once.

The NULLIF matters: after a committed transaction `current_setting('app.tenant_id', true)` reads ''
rather than NULL, and `''::uuid` is an error. With no tenant set the predicate is NULL: no rows.
The policies are alembic_utils entities (like the SQL functions), so `alembic check` fails while a
table's policy differs from this one, and autogenerate writes a new tenant table's policy.
Enabling and forcing RLS on a new table stays a line of its migration (tests/db checks it).
"""

from __future__ import annotations

from alembic_utils.pg_policy import PGPolicy

from app.models.base import Base

POLICY_NAME = "tenant_isolation"

# The tenant is compared per row: the planner can estimate that, and not a sub-SELECT's value (it
# then sorted a whole tenant for a 21-row page, migration 0019). The system flag is a sub-SELECT,
# read once per query (an InitPlan) instead of once per row.
TENANT_PREDICATE = (
    "{column} = NULLIF(current_setting('app.tenant_id', true), '')::uuid"
    " OR (SELECT current_setting('app.system', true)) = 'on'"
)


def tenant_policy(table: str, column: str = "tenant_id") -> PGPolicy:
    predicate = TENANT_PREDICATE.format(column=column)
    return PGPolicy(
        schema="public",
        signature=POLICY_NAME,
        on_entity=f"public.{table}",
        definition=f"AS PERMISSIVE FOR ALL TO public USING ({predicate}) WITH CHECK ({predicate})",
    )


def tenant_policies() -> list[PGPolicy]:
    """One policy per table of the models with a tenant_id, and the tenants table's own (a tenant
    row is visible only in its tenant's context, or in system scope)."""
    policies = [tenant_policy("tenants", column="id")]
    for table in Base.metadata.sorted_tables:
        if "tenant_id" in table.c:
            policies.append(tenant_policy(table.name))
    return policies
