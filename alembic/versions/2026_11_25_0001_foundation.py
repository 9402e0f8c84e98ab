"""Foundation: tenants, API keys, AI profiles, phone numbers and calls, each under RLS.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 18:23:09.623975
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0001"
down_revision: str | None = None
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
        "tenants",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("slug", sa.String(length=63), nullable=False),
        sa.Column("plan", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
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
        sa.CheckConstraint(
            "plan IN ('free', 'starter', 'pro', 'enterprise')", name=op.f("ck_tenants_plan")
        ),
        sa.CheckConstraint("status IN ('active', 'suspended')", name=op.f("ck_tenants_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("slug", name=op.f("uq_tenants_slug")),
    )
    op.create_table(
        "ai_profiles",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=False),
        sa.Column("greeting", sa.String(length=1000), nullable=True),
        sa.Column("llm_model", sa.String(length=200), nullable=True),
        sa.Column("temperature", sa.Numeric(precision=3, scale=2, asdecimal=False), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("voice", sa.String(length=200), nullable=True),
        sa.Column("language", sa.String(length=35), nullable=False),
        sa.Column("max_call_duration_seconds", sa.Integer(), nullable=False),
        sa.Column("transfer_number", sa.String(length=20), nullable=True),
        sa.Column("is_default", sa.Boolean(), nullable=False),
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
        sa.CheckConstraint(
            "max_call_duration_seconds BETWEEN 30 AND 14400",
            name=op.f("ck_ai_profiles_max_call_duration_seconds"),
        ),
        sa.CheckConstraint(
            "temperature >= 0 AND temperature <= 2", name=op.f("ck_ai_profiles_temperature")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ai_profiles_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_profiles")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_ai_profiles_tenant_id_id")),
    )
    op.create_index(
        "ix_ai_profiles_tenant_id_created_at_id",
        "ai_profiles",
        ["tenant_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "uq_ai_profiles_one_default_per_tenant",
        "ai_profiles",
        ["tenant_id"],
        unique=True,
        postgresql_where=sa.text("is_default"),
    )
    op.create_table(
        "api_keys",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
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
        sa.CheckConstraint("role IN ('admin', 'read_only')", name=op.f("ck_api_keys_role")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_api_keys_tenant_id_id")),
    )
    op.create_index(
        "ix_api_keys_tenant_id_created_at_id",
        "api_keys",
        ["tenant_id", "created_at", "id"],
        unique=False,
    )
    op.create_table(
        "phone_numbers",
        sa.Column("number", sa.String(length=20), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("ai_profile_id", sa.UUID(), nullable=True),
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
        sa.CheckConstraint(
            "status IN ('active', 'inactive')", name=op.f("ck_phone_numbers_status")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "ai_profile_id"],
            ["ai_profiles.tenant_id", "ai_profiles.id"],
            name=op.f("fk_phone_numbers_tenant_id_ai_profile_id_ai_profiles"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_phone_numbers_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_phone_numbers")),
        sa.UniqueConstraint("number", name=op.f("uq_phone_numbers_number")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_phone_numbers_tenant_id_id")),
    )
    op.create_index(
        "ix_phone_numbers_tenant_id_ai_profile_id",
        "phone_numbers",
        ["tenant_id", "ai_profile_id"],
        unique=False,
    )
    op.create_index(
        "ix_phone_numbers_tenant_id_created_at_id",
        "phone_numbers",
        ["tenant_id", "created_at", "id"],
        unique=False,
    )
    op.create_table(
        "calls",
        sa.Column("phone_number_id", sa.UUID(), nullable=True),
        sa.Column("ai_profile_id", sa.UUID(), nullable=True),
        sa.Column("direction", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("from_number", sa.String(length=32), nullable=False),
        sa.Column("to_number", sa.String(length=32), nullable=False),
        sa.Column("provider_call_sid", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_seconds", sa.Integer(), nullable=True),
        sa.Column("billable_minutes", sa.Integer(), nullable=False),
        sa.Column("end_reason", sa.String(length=64), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
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
        sa.CheckConstraint("direction IN ('inbound', 'outbound')", name=op.f("ck_calls_direction")),
        sa.CheckConstraint(
            "status IN ('queued', 'ringing', 'in_progress', 'completed', 'busy', 'no_answer', 'failed', 'canceled', 'rejected')",
            name=op.f("ck_calls_status"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "ai_profile_id"],
            ["ai_profiles.tenant_id", "ai_profiles.id"],
            name=op.f("fk_calls_tenant_id_ai_profile_id_ai_profiles"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "phone_number_id"],
            ["phone_numbers.tenant_id", "phone_numbers.id"],
            name=op.f("fk_calls_tenant_id_phone_number_id_phone_numbers"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_calls_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calls")),
        sa.UniqueConstraint("provider_call_sid", name=op.f("uq_calls_provider_call_sid")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_calls_tenant_id_id")),
    )
    op.create_index(
        "ix_calls_tenant_id_ai_profile_id", "calls", ["tenant_id", "ai_profile_id"], unique=False
    )
    op.create_index(
        "ix_calls_tenant_id_created_at_id", "calls", ["tenant_id", "created_at", "id"], unique=False
    )
    op.create_index(
        "ix_calls_tenant_id_phone_number_id",
        "calls",
        ["tenant_id", "phone_number_id"],
        unique=False,
    )
    op.create_index(
        "ix_calls_tenant_id_started_at", "calls", ["tenant_id", "started_at"], unique=False
    )
    op.create_index("ix_calls_tenant_id_status", "calls", ["tenant_id", "status"], unique=False)

    # The tenant row itself is visible only in its own tenant's context (or in system scope).
    _enable_rls("tenants", column="id")
    for table in ("api_keys", "ai_profiles", "phone_numbers", "calls"):
        _enable_rls(table)


def downgrade() -> None:
    op.drop_index("ix_calls_tenant_id_status", table_name="calls")
    op.drop_index("ix_calls_tenant_id_started_at", table_name="calls")
    op.drop_index("ix_calls_tenant_id_phone_number_id", table_name="calls")
    op.drop_index("ix_calls_tenant_id_created_at_id", table_name="calls")
    op.drop_index("ix_calls_tenant_id_ai_profile_id", table_name="calls")
    op.drop_table("calls")
    op.drop_index("ix_phone_numbers_tenant_id_created_at_id", table_name="phone_numbers")
    op.drop_index("ix_phone_numbers_tenant_id_ai_profile_id", table_name="phone_numbers")
    op.drop_table("phone_numbers")
    op.drop_index("ix_api_keys_tenant_id_created_at_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_index(
        "uq_ai_profiles_one_default_per_tenant",
        table_name="ai_profiles",
        postgresql_where=sa.text("is_default"),
    )
    op.drop_index("ix_ai_profiles_tenant_id_created_at_id", table_name="ai_profiles")
    op.drop_table("ai_profiles")
    op.drop_table("tenants")
