"""Call transcript turns and per-call usage records, under RLS.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 18:29:24.598735
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Row-level security as this revision created it (the policy of today: app/models/rls.py).
def _enable_rls(table: str, column: str = "tenant_id") -> None:
    predicate = (
        f"{column} = NULLIF(current_setting('app.tenant_id', true), '')::uuid"
        " OR current_setting('app.system', true) = 'on'"
    )
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON {table} FOR ALL"
        f" USING ({predicate}) WITH CHECK ({predicate})"
    )


def upgrade() -> None:
    op.create_table(
        "call_turns",
        sa.Column("call_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("interrupted", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("role IN ('agent', 'caller')", name=op.f("ck_call_turns_role")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "call_id"],
            ["calls.tenant_id", "calls.id"],
            name=op.f("fk_call_turns_tenant_id_call_id_calls"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_call_turns_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call_turns")),
        sa.UniqueConstraint(
            "tenant_id", "call_id", "seq", name=op.f("uq_call_turns_tenant_id_call_id_seq")
        ),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_call_turns_tenant_id_id")),
    )
    op.create_table(
        "usage_records",
        sa.Column("call_id", sa.UUID(), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("minutes", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "call_id"],
            ["calls.tenant_id", "calls.id"],
            name=op.f("fk_usage_records_tenant_id_call_id_calls"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_usage_records_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
        sa.UniqueConstraint(
            "tenant_id", "call_id", name=op.f("uq_usage_records_tenant_id_call_id")
        ),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_usage_records_tenant_id_id")),
    )
    op.create_index(
        "ix_usage_records_tenant_id_period", "usage_records", ["tenant_id", "period"], unique=False
    )

    for table in ("call_turns", "usage_records"):
        _enable_rls(table)


def downgrade() -> None:
    op.drop_index("ix_usage_records_tenant_id_period", table_name="usage_records")
    op.drop_table("usage_records")
    op.drop_table("call_turns")
