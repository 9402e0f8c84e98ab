"""Alembic runs as the owner role; afterwards the app role gets DML rights on every table."""

from __future__ import annotations

from alembic_utils.pg_function import PGFunction
from alembic_utils.pg_policy import PGPolicy
from alembic_utils.replaceable_entity import register_entities
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from alembic import context
from app.config.settings import settings
from app.models import Base
from app.models.functions import FUNCTIONS
from app.models.rls import tenant_policies

target_metadata = Base.metadata
# The SQL functions and RLS policies are compared by autogenerate and `alembic check` too.
register_entities([*FUNCTIONS, *tenant_policies()], entity_types=[PGFunction, PGPolicy])


def _grant_app_role(connection) -> None:  # type: ignore[no-untyped-def]
    """DML only, and only when the app connects as a different role than the migrations."""
    app_role = make_url(settings.DATABASE_URL).username
    owner_role = make_url(settings.migration_database_url).username
    if not app_role or app_role == owner_role:
        return
    role = connection.dialect.identifier_preparer.quote(app_role)
    for statement in (
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
        f"REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {role}",
    ):
        connection.execute(text(statement))
    if connection.scalar(text("SELECT to_regclass('public.plans') IS NOT NULL")):
        # The plan catalogue changes only by migration.
        connection.execute(text(f"REVOKE INSERT, UPDATE, DELETE ON plans FROM {role}"))
    if connection.scalar(text("SELECT to_regclass('public.invoices') IS NOT NULL")):
        # An issued invoice never changes and is never deleted (SPEC 9); it may only be voided.
        # (A tenant's deletion still cascades: the cascade runs as the tables' owner.)
        connection.execute(text(f"REVOKE UPDATE, DELETE ON invoices FROM {role}"))
        connection.execute(
            text(f"GRANT UPDATE (status, voided_at, void_reason, updated_at) ON invoices TO {role}")
        )


def run_migrations_offline() -> None:
    context.configure(
        url=settings.migration_database_url,
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(settings.migration_database_url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
            _grant_app_role(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
