"""Calls: count a tenant's active calls from partial indexes; list by status in keyset order.

The concurrent-call limit counts a tenant's calls ringing for less than the ring timeout and those
talking for less than the longest allowed call. Through `(tenant_id, status)` that count visited
every call ever left ringing or talking, stale ones included (a call whose final status callback
never arrived stays so forever), and each admission paid for all of them. The partial indexes hold
only calls in those states, ordered by the moment the timeout runs from, so the count reads only
the calls that still hold a line. They are on plain columns: under row-level security a
`coalesce()` condition is not leakproof and cannot be an index condition. A talking call therefore
must have `answered_at` (every code path sets it; now a CHECK says so).

`(tenant_id, status)` had no other use than the status filter of the call list, which wants its
rows in keyset order: it becomes `(tenant_id, status, created_at, id)`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 00:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE calls SET answered_at = coalesce(started_at, created_at)"
        " WHERE status = 'in_progress' AND answered_at IS NULL"
    )
    op.create_check_constraint(
        op.f("ck_calls_talking_answered"),
        "calls",
        "status <> 'in_progress' OR answered_at IS NOT NULL",
    )
    op.create_index(
        "ix_calls_tenant_id_ringing_since",
        "calls",
        ["tenant_id", "created_at"],
        postgresql_where=sa.text("status IN ('queued', 'ringing')"),
    )
    op.create_index(
        "ix_calls_tenant_id_talking_since",
        "calls",
        ["tenant_id", "answered_at"],
        postgresql_where=sa.text("status = 'in_progress'"),
    )
    op.create_index(
        "ix_calls_tenant_id_status_created_at_id",
        "calls",
        ["tenant_id", "status", "created_at", "id"],
    )
    op.drop_index("ix_calls_tenant_id_status", table_name="calls")


def downgrade() -> None:
    op.create_index("ix_calls_tenant_id_status", "calls", ["tenant_id", "status"])
    op.drop_index("ix_calls_tenant_id_status_created_at_id", table_name="calls")
    op.drop_index("ix_calls_tenant_id_talking_since", table_name="calls")
    op.drop_index("ix_calls_tenant_id_ringing_since", table_name="calls")
    op.drop_constraint(op.f("ck_calls_talking_answered"), "calls", type_="check")
