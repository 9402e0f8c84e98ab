"""A voided invoice's period may be invoiced again: one issued invoice per tenant and period.

The unique (tenant_id, period) of invoices becomes a partial unique index of the issued ones,
so that the operator's correction (void, then `close-period --reissue`) can issue a new invoice,
with a new number, beside the void one, which keeps its own.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(op.f("uq_invoices_tenant_id_period"), "invoices", type_="unique")
    op.create_index(
        "uq_invoices_tenant_id_period_issued",
        "invoices",
        ["tenant_id", "period"],
        unique=True,
        postgresql_where=sa.text("status = 'issued'"),
    )


def downgrade() -> None:
    # Fails while a period has a reissued invoice beside its void one: void or delete one first.
    op.drop_index(
        "uq_invoices_tenant_id_period_issued",
        table_name="invoices",
        postgresql_where=sa.text("status = 'issued'"),
    )
    op.create_unique_constraint(
        op.f("uq_invoices_tenant_id_period"), "invoices", ["tenant_id", "period"]
    )
