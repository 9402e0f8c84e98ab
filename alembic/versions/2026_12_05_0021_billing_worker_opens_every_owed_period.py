"""The billing worker's list of periods due: a partial index of the unclosed periods.

The worker now opens every tenant's periods from its creation to the current one, so a month
without usage, or missed while the worker was down, is a row; the periods due are then the
opened, ended, unclosed ones, which this index holds alone.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05 00:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_billing_periods_unclosed_ends_at",
        "billing_periods",
        ["ends_at"],
        unique=False,
        postgresql_where=sa.text("closed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_billing_periods_unclosed_ends_at",
        table_name="billing_periods",
        postgresql_where=sa.text("closed_at IS NULL"),
    )
