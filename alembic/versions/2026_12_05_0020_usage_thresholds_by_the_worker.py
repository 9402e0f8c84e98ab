"""Usage thresholds announced by the worker: usage_records.thresholds_checked.

Metering serialised a tenant's call ends on its billing period's row while a usage threshold was
ahead: it locked the row FOR NO KEY UPDATE, summed the period's usage and went on to announce
the call under the lock, until the commit. Metering now only appends its record; the worker
looks at the records not yet checked (a partial index holds just them) and announces the
thresholds. The records already there were looked at when they were metered: checked.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows take the default they are added with (no rewrite); new rows are unchecked.
    op.add_column(
        "usage_records",
        sa.Column(
            "thresholds_checked", sa.Boolean(), server_default=sa.text("true"), nullable=False
        ),
    )
    op.alter_column("usage_records", "thresholds_checked", server_default=sa.text("false"))
    op.create_index(
        "ix_usage_records_tenant_id_thresholds_unchecked",
        "usage_records",
        ["tenant_id"],
        unique=False,
        postgresql_where=sa.text("NOT thresholds_checked"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_usage_records_tenant_id_thresholds_unchecked",
        table_name="usage_records",
        postgresql_where=sa.text("NOT thresholds_checked"),
    )
    op.drop_column("usage_records", "thresholds_checked")
