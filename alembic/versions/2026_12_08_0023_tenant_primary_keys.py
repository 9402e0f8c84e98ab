"""Tenant tables keyed by (tenant_id, id): Citus readiness (SPEC 14, issue 19 point 4).

Citus distributes every tenant table by tenant_id, and a distributed table's primary key and
unique constraints must include it. Each tenant table's primary key moves from (id) to
(tenant_id, id); the UNIQUE (tenant_id, id) the composite foreign keys pointed at becomes that
primary key, so the foreign keys are dropped and re-created against it (same names, same ON
DELETE). Every other unique key already includes tenant_id, except the four platform-wide ones
kept on purpose (phone_numbers.number, api_keys.prefix, calls.provider_call_sid,
invoices.number; docs/scaling.md says how each lives on Citus).

Cost: each table's key index is rebuilt under an ACCESS EXCLUSIVE lock (3.7 s for the whole
upgrade on the bench data set of 1,000,000 calls and 200,000 webhook deliveries). On a large
database, build it first with `CREATE UNIQUE INDEX CONCURRENTLY` and swap it in with `ADD
CONSTRAINT … PRIMARY KEY USING INDEX`. Downgrade restores (id) and fails, as it must, if two tenants have come to share
an id, which the new keys allow.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-08 00:19:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_TABLES = (
    "ai_profiles",
    "api_keys",
    "billing_periods",
    "call_turns",
    "calls",
    "idempotency_keys",
    "invoices",
    "phone_numbers",
    "plan_changes",
    "usage_records",
    "webhook_deliveries",
    "webhook_delivery_attempts",
    "webhook_endpoints",
    "webhook_events",
)
# (name, table, columns, referred table, ON DELETE): every composite foreign key to (tenant_id, id).
COMPOSITE_FKS = (
    ("fk_phone_numbers_tenant_id_ai_profile_id_ai_profiles", "phone_numbers", "ai_profile_id",
     "ai_profiles", None),
    ("fk_calls_tenant_id_ai_profile_id_ai_profiles", "calls", "ai_profile_id", "ai_profiles",
     None),
    ("fk_calls_tenant_id_phone_number_id_phone_numbers", "calls", "phone_number_id",
     "phone_numbers", None),
    ("fk_call_turns_tenant_id_call_id_calls", "call_turns", "call_id", "calls", "CASCADE"),
    ("fk_usage_records_tenant_id_call_id_calls", "usage_records", "call_id", "calls", "CASCADE"),
    ("fk_webhook_deliveries_tenant_id_endpoint_id_webhook_endpoints", "webhook_deliveries",
     "endpoint_id", "webhook_endpoints", "CASCADE"),
    ("fk_webhook_deliveries_tenant_id_event_id_webhook_events", "webhook_deliveries", "event_id",
     "webhook_events", "CASCADE"),
    # The naming convention's name is longer than PostgreSQL's 63 bytes: SQLAlchemy's hash suffix.
    ("fk_webhook_delivery_attempts_tenant_id_delivery_id_webh_1640", "webhook_delivery_attempts",
     "delivery_id", "webhook_deliveries", "CASCADE"),
)  # fmt: skip


def _drop_foreign_keys() -> None:
    for name, table, _, _, _ in COMPOSITE_FKS:
        op.drop_constraint(name, table, type_="foreignkey")


def _create_foreign_keys() -> None:
    for name, table, column, referred, ondelete in COMPOSITE_FKS:
        op.create_foreign_key(
            name, table, referred, ["tenant_id", column], ["tenant_id", "id"], ondelete=ondelete
        )


def upgrade() -> None:
    _drop_foreign_keys()
    for table in TENANT_TABLES:
        op.drop_constraint(f"uq_{table}_tenant_id_id", table, type_="unique")
        op.drop_constraint(f"pk_{table}", table, type_="primary")
        op.create_primary_key(f"pk_{table}", table, ["tenant_id", "id"])
    _create_foreign_keys()


def downgrade() -> None:
    _drop_foreign_keys()
    for table in TENANT_TABLES:
        op.drop_constraint(f"pk_{table}", table, type_="primary")
        op.create_primary_key(f"pk_{table}", table, ["id"])
        op.create_unique_constraint(f"uq_{table}_tenant_id_id", table, ["tenant_id", "id"])
    _create_foreign_keys()
