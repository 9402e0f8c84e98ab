"""Alembic runs as the owner role; afterwards the app role gets DML rights on every table."""

from __future__ import annotations

from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from alembic import context
from app.config.settings import settings
from app.models import Base

target_metadata = Base.metadata


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
