"""Idempotency-Key: the stored requests and responses of POSTs (SPEC 4).

A tenant's keys in `idempotency_keys` (tenant-owned: RLS like every tenant table); the platform
admin's in `admin_idempotency_keys` (the admin is one principal above the tenants). Rows expire
after 24 hours; the worker deletes them.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 00:13:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic_utils.pg_policy import PGPolicy
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# app/models/rls.py's policy, as autogenerate wrote it for the new tenant table.
_PREDICATE = (
    "tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid)"
    " OR (SELECT current_setting('app.system', true)) = 'on'"
)
TENANT_ISOLATION = PGPolicy(
    schema="public",
    signature="tenant_isolation",
    on_entity="public.idempotency_keys",
    definition=f"AS PERMISSIVE FOR ALL TO public USING ({_PREDICATE}) WITH CHECK ({_PREDICATE})",
)


def _stored_response_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=True),
        sa.Column("response_headers", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
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
    ]


def upgrade() -> None:
    op.create_table(
        "admin_idempotency_keys",
        *_stored_response_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_idempotency_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_admin_idempotency_keys_key_hash")),
    )
    op.create_index(
        "ix_admin_idempotency_keys_created_at", "admin_idempotency_keys", ["created_at"]
    )
    op.create_table(
        "idempotency_keys",
        *_stored_response_columns(),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_idempotency_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_idempotency_keys_tenant_id_id")),
        sa.UniqueConstraint(
            "tenant_id", "key_hash", name=op.f("uq_idempotency_keys_tenant_id_key_hash")
        ),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])
    op.execute("ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE idempotency_keys FORCE ROW LEVEL SECURITY")
    op.create_entity(TENANT_ISOLATION)  # type: ignore[attr-defined]


def downgrade() -> None:
    op.drop_entity(TENANT_ISOLATION)  # type: ignore[attr-defined]
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_admin_idempotency_keys_created_at", table_name="admin_idempotency_keys")
    op.drop_table("admin_idempotency_keys")
