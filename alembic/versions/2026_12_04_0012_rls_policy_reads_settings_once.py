"""RLS policy: each setting is read once per query, not once per row.

`current_setting()` in a policy is evaluated for every row a query reads; in a sub-SELECT it
becomes an InitPlan, read once. A 100,000-call aggregate took half the time (80 -> 40 ms), as
fast as a role that bypasses RLS. The policy's meaning is unchanged.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 21:25:01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = {
    "tenants": "id",
    "ai_profiles": "tenant_id",
    "api_keys": "tenant_id",
    "phone_numbers": "tenant_id",
    "calls": "tenant_id",
    "call_turns": "tenant_id",
    "usage_records": "tenant_id",
    "webhook_endpoints": "tenant_id",
    "webhook_events": "tenant_id",
    "webhook_deliveries": "tenant_id",
    "webhook_delivery_attempts": "tenant_id",
    "billing_periods": "tenant_id",
    "invoices": "tenant_id",
    "plan_changes": "tenant_id",
}
ONCE_PER_QUERY = (
    "{column} = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid)"
    " OR (SELECT current_setting('app.system', true)) = 'on'"
)
ONCE_PER_ROW = (
    "{column} = NULLIF(current_setting('app.tenant_id', true), '')::uuid"
    " OR current_setting('app.system', true) = 'on'"
)


def _alter(predicate: str) -> None:
    for table, column in TABLES.items():
        condition = predicate.format(column=column)
        op.execute(
            f"ALTER POLICY tenant_isolation ON {table} USING ({condition}) WITH CHECK ({condition})"
        )


def upgrade() -> None:
    _alter(ONCE_PER_QUERY)


def downgrade() -> None:
    _alter(ONCE_PER_ROW)
