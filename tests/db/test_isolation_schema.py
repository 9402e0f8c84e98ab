"""Every tenant-owned table, found from the catalog, carries the isolation the SPEC requires.

A new table that forgets tenant_id, RLS, the policy or composite FKs fails here without anyone
having to remember to add it to a list.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.models import Base
from app.models.rls import POLICY_NAME

# The only unique keys of tenant tables without tenant_id: platform-wide by definition (SPEC §2),
# each resolved before any tenant is known. On Citus each moves to a table of its own that maps
# the key to its tenant (docs/scaling.md, "Citus"); a new entry needs a reason here and there.
GLOBAL_UNIQUE = {
    ("phone_numbers", ("number",)): "an E.164 number routes an inbound call to one tenant",
    ("api_keys", ("prefix",)): "a presented key is found by its prefix before its tenant",
    ("calls", ("provider_call_sid",)): "Twilio's callbacks carry only the CallSid",
    ("invoices", ("number",)): "one gapless sequence per year: the platform is the issuer",
}
# invoice_counters: the platform's invoice numbers (the platform is the issuer), one row per year.
# admin_idempotency_keys: the platform admin key's Idempotency-Keys (the admin is no tenant).
PLATFORM_TABLES = {
    "alembic_version",
    "tenants",
    "plans",
    "invoice_counters",
    "admin_idempotency_keys",
}


def _tables(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.scalars(
                text(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1"
                )
            )
        )


def _tenant_tables(engine: Engine) -> list[str]:
    return [t for t in _tables(engine) if t not in PLATFORM_TABLES]


def test_catalog_has_the_expected_core_tables(owner_engine: Engine) -> None:
    assert {"tenants", "api_keys", "phone_numbers", "ai_profiles", "calls"} <= set(
        _tables(owner_engine)
    )


def test_every_tenant_table_has_a_non_null_tenant_id_cascading_from_tenants(
    owner_engine: Engine,
) -> None:
    with owner_engine.connect() as conn:
        for table in _tenant_tables(owner_engine):
            nullable = conn.scalar(
                text(
                    "SELECT is_nullable FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND table_name = :t AND column_name = 'tenant_id'"
                ),
                {"t": table},
            )
            assert nullable == "NO", f"{table}.tenant_id missing or nullable"
            cascade = conn.scalar(
                text(
                    "SELECT confdeltype FROM pg_constraint WHERE contype = 'f'"
                    " AND conrelid = CAST(:t AS regclass)"
                    " AND confrelid = CAST('tenants' AS regclass)"
                    " AND conkey = ARRAY[(SELECT attnum FROM pg_attribute"
                    "   WHERE attrelid = CAST(:t AS regclass) AND attname = 'tenant_id')]::int2[]"
                ),
                {"t": table},
            )
            assert cascade == "c", f"{table}.tenant_id must reference tenants ON DELETE CASCADE"


def test_every_tenant_table_has_rls_enabled_forced_and_the_policy(owner_engine: Engine) -> None:
    with owner_engine.connect() as conn:
        for table in [*_tenant_tables(owner_engine), "tenants"]:
            enabled, forced = conn.execute(
                text(
                    "SELECT relrowsecurity, relforcerowsecurity FROM pg_class"
                    " WHERE oid = CAST(:t AS regclass)"
                ),
                {"t": table},
            ).one()
            assert enabled and forced, f"{table}: RLS must be enabled and forced"
            policy = conn.execute(
                text(
                    "SELECT cmd, qual, with_check FROM pg_policies"
                    " WHERE schemaname = 'public' AND tablename = :t AND policyname = :p"
                ),
                {"t": table, "p": POLICY_NAME},
            ).one_or_none()
            assert policy is not None, f"{table}: missing policy {POLICY_NAME}"
            assert policy.cmd == "ALL"
            for clause in (policy.qual, policy.with_check):
                assert "app.tenant_id" in clause and "NULLIF" in clause.upper(), clause


def test_references_between_tenant_tables_are_composite(owner_engine: Engine) -> None:
    tenant_tables = set(_tenant_tables(owner_engine))
    with owner_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT conrelid::regclass::text AS src, confrelid::regclass::text AS dst,"
                " ARRAY(SELECT attname FROM pg_attribute WHERE attrelid = conrelid"
                "       AND attnum = ANY(conkey)) AS cols"
                " FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
            )
        ).all()
    checked = 0
    for row in rows:
        if row.src in tenant_tables and row.dst in tenant_tables:
            checked += 1
            assert "tenant_id" in row.cols, f"{row.src} -> {row.dst} must be composite: {row.cols}"
        if row.src in tenant_tables and row.dst == "tenants":
            assert list(row.cols) == ["tenant_id"], f"{row.src} references tenants via {row.cols}"
    assert checked >= 3  # phone_numbers->ai_profiles, calls->phone_numbers, calls->ai_profiles


def test_unique_constraints_include_tenant_id(owner_engine: Engine) -> None:
    with owner_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT i.indrelid::regclass::text AS tbl,"
                " ARRAY(SELECT attname FROM pg_attribute WHERE attrelid = i.indrelid"
                "       AND attnum = ANY(i.indkey)) AS cols"
                " FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
                " WHERE i.indisunique AND NOT i.indisprimary"
                " AND c.relnamespace = 'public'::regnamespace"
            )
        ).all()
    excepted = set()
    for row in rows:
        if row.tbl in PLATFORM_TABLES:
            continue
        if (row.tbl, tuple(row.cols)) in GLOBAL_UNIQUE:
            excepted.add((row.tbl, tuple(row.cols)))
            continue
        assert "tenant_id" in row.cols, f"unique index on {row.tbl}{row.cols} lacks tenant_id"
    # No stale exception: each one still names a unique key of the database.
    assert excepted == set(GLOBAL_UNIQUE)


def test_app_role_cannot_bypass_rls(app_engine: Engine) -> None:
    with app_engine.connect() as conn:
        row = conn.execute(
            text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        ).one()
        assert not row.rolsuper and not row.rolbypassrls
        owned = conn.scalar(
            text(
                "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                " AND pg_get_userbyid(relowner) = current_user"
            )
        )
        assert owned == 0
        with pytest.raises(DBAPIError):
            conn.execute(text("CREATE TABLE sneaky (id int)"))


# --- behaviour, as the app role ------------------------------------------------------------


def _seed_two_tenants(app_engine: Engine) -> tuple[uuid.UUID, uuid.UUID]:
    a, b = uuid.uuid4(), uuid.uuid4()
    with app_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        for tid in (a, b):
            conn.execute(
                text(
                    "INSERT INTO tenants (id, name, slug, plan, status, timezone)"
                    " VALUES (:id, 'x', :slug, 'pro', 'active', 'UTC')"
                ),
                {"id": tid, "slug": f"rls-{tid.hex[:12]}"},
            )
            conn.execute(
                text(
                    "INSERT INTO ai_profiles (id, tenant_id, name, system_prompt, temperature,"
                    " max_tokens, language, max_call_duration_seconds, is_default)"
                    " VALUES (:id, :tid, 'p', 's', 0.5, 100, 'en-US', 60, false)"
                ),
                {"id": uuid.uuid4(), "tid": tid},
            )
    return a, b


def _count_profiles(conn, tenant: uuid.UUID | None, owner: uuid.UUID) -> int:  # type: ignore[no-untyped-def]
    if tenant is not None:
        conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(tenant)})
    return conn.scalar(text("SELECT count(*) FROM ai_profiles WHERE tenant_id = :o"), {"o": owner})


def test_no_tenant_context_sees_nothing(app_engine: Engine) -> None:
    a, _ = _seed_two_tenants(app_engine)
    with app_engine.begin() as conn:
        assert _count_profiles(conn, None, a) == 0
        assert conn.scalar(text("SELECT count(*) FROM tenants")) == 0


def test_setting_survives_only_its_transaction(app_engine: Engine) -> None:
    a, _ = _seed_two_tenants(app_engine)
    with app_engine.connect() as conn:
        with conn.begin():
            assert _count_profiles(conn, a, a) == 1
        # Same pooled connection, next transaction: the '' left behind must fail closed, not error.
        with conn.begin():
            assert _count_profiles(conn, None, a) == 0


def test_other_tenant_rows_are_invisible(app_engine: Engine) -> None:
    a, b = _seed_two_tenants(app_engine)
    with app_engine.begin() as conn:
        assert _count_profiles(conn, b, a) == 0
        assert _count_profiles(conn, b, b) == 1


def test_cannot_insert_or_move_rows_into_another_tenant(app_engine: Engine) -> None:
    a, b = _seed_two_tenants(app_engine)
    with pytest.raises(DBAPIError, match="row-level security"), app_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(b)})
        conn.execute(
            text(
                "INSERT INTO ai_profiles (id, tenant_id, name, system_prompt, temperature,"
                " max_tokens, language, max_call_duration_seconds, is_default)"
                " VALUES (:id, :tid, 'p', 's', 0.5, 100, 'en-US', 60, false)"
            ),
            {"id": uuid.uuid4(), "tid": a},
        )
    with pytest.raises(DBAPIError, match="row-level security"), app_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(b)})
        conn.execute(
            text("UPDATE ai_profiles SET tenant_id = :a WHERE tenant_id = :b"), {"a": a, "b": b}
        )


def test_composite_fk_rejects_cross_tenant_reference(app_engine: Engine) -> None:
    a, b = _seed_two_tenants(app_engine)
    # Even in system scope (RLS out of the way), the database refuses B's number -> A's profile.
    with pytest.raises(IntegrityError), app_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        profile_a = conn.scalar(text("SELECT id FROM ai_profiles WHERE tenant_id = :a"), {"a": a})
        conn.execute(
            text(
                "INSERT INTO phone_numbers (id, tenant_id, number, status, ai_profile_id)"
                " VALUES (:id, :b, :n, 'active', :p)"
            ),
            {
                "id": uuid.uuid4(),
                "b": b,
                "n": f"+1999{uuid.uuid4().int % 10**7:07d}",
                "p": profile_a,
            },
        )


def test_primary_keys_include_tenant_id(owner_engine: Engine) -> None:
    """Citus distributes a table by tenant_id only if its primary key includes tenant_id."""
    with owner_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname AS tbl, array_agg(a.attname::text) AS cols"
                " FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid"
                " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(con.conkey)"
                " WHERE con.contype = 'p' AND c.relnamespace = 'public'::regnamespace"
                " GROUP BY c.relname"
            )
        ).all()
    missing = sorted(
        row.tbl for row in rows if row.tbl not in PLATFORM_TABLES and "tenant_id" not in row.cols
    )
    assert not missing, f"primary keys without tenant_id: {missing}"


def test_the_models_declare_the_primary_keys_of_the_database(owner_engine: Engine) -> None:
    """`alembic check` does not compare primary keys; the ORM identity is the model's key."""
    with owner_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname AS tbl,"
                " ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY AS k(n, i)"
                "       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.n"
                "       ORDER BY k.i) AS cols"
                " FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid"
                " WHERE con.contype = 'p' AND c.relnamespace = 'public'::regnamespace"
            )
        ).all()
    in_database = {row.tbl: list(row.cols) for row in rows if row.tbl != "alembic_version"}
    in_models = {
        table.name: [column.name for column in table.primary_key.columns]
        for table in Base.metadata.sorted_tables
    }
    assert in_models == in_database
