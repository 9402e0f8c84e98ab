"""Engine, sessions and the tenant context every transaction runs in.

Row-level security in PostgreSQL is the last line of tenant isolation: every transaction states whose
rows it may see with `set_config('app.tenant_id', …, true)`. The setting is transaction-local, so a
pooled connection (or PgBouncer in transaction mode) never carries one tenant's context into another
request. A transaction that sets nothing sees no tenant rows at all.

Crossing tenants is possible only inside `system_scope()`, used by a short, pinned list of call sites
(see tests/db/test_system_scope.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import lru_cache

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.config.settings import settings

_SET_TENANT = text("SELECT set_config('app.tenant_id', :tenant_id, true)")
_SET_SYSTEM = text("SELECT set_config('app.system', 'on', true)")
_CLEAR_SYSTEM = text("SELECT set_config('app.system', '', true)")


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The process-wide engine for the app role (created on first use, not at import)."""
    return create_engine(
        settings.DATABASE_URL,
        pool_size=settings.DATABASE_POOL_SIZE,
        max_overflow=settings.DATABASE_POOL_SIZE,
        # No pre-ping: it costs a round trip per request; a connection found dead is discarded by
        # the pool (and that request answers 503), and recycling retires idle ones.
        pool_recycle=1800,
        pool_timeout=10,
        connect_args={"connect_timeout": 3, "application_name": settings.APP_NAME},
    )


@lru_cache(maxsize=1)
def get_session_factory() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), autoflush=False, expire_on_commit=False)


def set_tenant_context(session: Session, tenant_id: uuid.UUID) -> None:
    """Bind the current transaction to one tenant (bound parameter, transaction-local)."""
    session.execute(_SET_TENANT, {"tenant_id": str(tenant_id)})


@contextmanager
def tenant_session(tenant_id: uuid.UUID) -> Iterator[Session]:
    """One transaction that sees only `tenant_id`'s rows; commits on success, rolls back on error."""
    with get_session_factory()() as session, session.begin():
        set_tenant_context(session, tenant_id)
        yield session


@contextmanager
def system_scope(session: Session | None = None) -> Iterator[Session]:
    """A stretch of work allowed to cross tenants.

    Only for: resolving an API key, routing an inbound number, resolving a Twilio CallSid, the
    worker's claim loop, and the platform admin's tenant list/create. Anything else is tenant-scoped.
    Given a session, the scope covers only the `with` block inside that session's transaction;
    without one, it is a transaction of its own.
    """
    if session is None:
        with get_session_factory()() as own, own.begin():
            own.execute(_SET_SYSTEM)
            yield own
        return
    session.execute(_SET_SYSTEM)
    try:
        yield session
    finally:
        if session.in_transaction() and session.get_transaction() is not None:
            # An aborted transaction refuses the reset; its rollback clears the setting anyway.
            with suppress(Exception):
                session.execute(_CLEAR_SYSTEM)


@contextmanager
def unscoped_session() -> Iterator[Session]:
    """A transaction with no tenant context: it sees no tenant rows (used for health checks)."""
    with get_session_factory()() as session, session.begin():
        yield session
