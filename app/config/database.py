"""Engine, sessions and the tenant context every transaction runs in.

Row-level security in PostgreSQL is the last line of tenant isolation: every transaction states whose
rows it may see with `set_config('app.tenant_id', …, true)`. The setting is transaction-local, so a
pooled connection (or PgBouncer in transaction mode) never carries one tenant's context into another
request. A transaction that sets nothing sees no tenant rows at all.

Two ways to open a transaction, one for each kind of caller:
- an HTTP request: the session of `app/api/deps.py` (`DbSession`), committed by the route;
- everything else (the relay socket, the worker, the CLI): `transaction()`.
Crossing tenants is possible only inside `system_scope()`, used by a short, pinned list of call sites
(see tests/db/test_system_scope.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from app.config.settings import settings
from app.metrics import DB_POOL_IN_USE

# psycopg prepares a statement on the server once it has run this many times on a connection, and
# then executes it on its cached plan (no parse, no RLS rewrite, no planning per request).
PREPARE_THRESHOLD = 5

_SET_TENANT = text("SELECT set_config('app.tenant_id', :tenant_id, true)")
_SET_SYSTEM = text("SELECT set_config('app.system', 'on', true)")
_CLEAR_SYSTEM = text("SELECT set_config('app.system', '', true)")
# Where a session remembers its tenant, so every transaction of it is bound (see `bind_tenant`).
_TENANT_KEY = "vca.tenant_id"
# How many transactions of the session began, so `bind_tenant` sets the tenant once per transaction.
_BEGINS = "vca.begins"


def build_engine(url: str, *, pool_size: int, prepared_statements: bool) -> Engine:
    """An engine as the app uses it: pool sizing, no pre-ping, server-side prepared statements."""
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it costs a round trip per request; a connection found dead is discarded by
        # the pool (and that request answers 503), and recycling retires idle ones.
        pool_recycle=1800,
        pool_timeout=settings.DATABASE_POOL_TIMEOUT_SECONDS,
        connect_args={
            "connect_timeout": 3,
            "application_name": settings.APP_NAME,
            # None: never prepare (PgBouncer in transaction mode before 1.21).
            "prepare_threshold": PREPARE_THRESHOLD if prepared_statements else None,
        },
    )


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The process-wide engine for the app role (created on first use, not at import)."""
    engine = build_engine(
        settings.DATABASE_URL,
        pool_size=settings.DATABASE_POOL_SIZE,
        prepared_statements=settings.DATABASE_PREPARED_STATEMENTS,
    )
    event.listen(engine, "checkout", lambda *_: DB_POOL_IN_USE.inc())
    event.listen(engine, "checkin", lambda *_: DB_POOL_IN_USE.dec())
    return engine


@lru_cache(maxsize=1)
def get_session_factory() -> sessionmaker[Session]:
    factory = sessionmaker(bind=get_engine(), autoflush=False, expire_on_commit=False)
    event.listen(factory, "after_begin", _bind_new_transaction)
    return factory


@lru_cache(maxsize=1)
def get_single_statement_session_factory() -> sessionmaker[Session]:
    """Sessions whose every statement commits on its own (no BEGIN, no COMMIT round trips).

    For work that is one statement (a SQL function doing all of it): the voice webhook. The
    connection goes back to the pool in its usual transactional mode.
    """
    engine = get_engine().execution_options(isolation_level="AUTOCOMMIT")
    return sessionmaker(bind=engine, autoflush=False, expire_on_commit=False)


def bind_tenant(session: Session, tenant_id: uuid.UUID, *, bound_by_sql: bool = False) -> None:
    """Bind `session` to one tenant: its current transaction and every later one.

    `bound_by_sql`: a SQL function of the current statement already set `app.tenant_id` (the
    cross-tenant lookups do, to save a round trip); only later transactions need it set.
    """
    session.info[_TENANT_KEY] = tenant_id
    if bound_by_sql:
        return
    begins = session.info.get(_BEGINS, 0)
    session.connection()  # a transaction that begins here is bound by `after_begin`
    if session.info.get(_BEGINS, 0) == begins:  # it had begun unbound: bind it now
        session.execute(_SET_TENANT, {"tenant_id": str(tenant_id)})


def _bind_new_transaction(session: Session, _: SessionTransaction, connection: Connection) -> None:
    """`after_begin`: a session bound to a tenant stays bound after a commit (outbound calls
    commit their reservation before they call Twilio)."""
    session.info[_BEGINS] = session.info.get(_BEGINS, 0) + 1
    tenant_id = session.info.get(_TENANT_KEY)
    if tenant_id is not None:
        connection.execute(_SET_TENANT, {"tenant_id": str(tenant_id)})


@contextmanager
def transaction(tenant_id: uuid.UUID | None = None) -> Iterator[Session]:
    """One transaction outside an HTTP request: committed on success, rolled back on error.

    Bound to `tenant_id` when given; without it, it sees no tenant rows until `bind_tenant` or a
    `system_scope` says otherwise.
    """
    with get_session_factory()() as session, session.begin():
        if tenant_id is not None:
            bind_tenant(session, tenant_id)
        yield session


@contextmanager
def system_scope(session: Session) -> Iterator[Session]:
    """A stretch of `session`'s transaction allowed to cross tenants.

    Only for: resolving an API key, routing an inbound number, resolving a Twilio CallSid, the
    worker's claim loop, and the platform admin's tenant list/create. Anything else is tenant-scoped.
    """
    session.execute(_SET_SYSTEM)
    try:
        yield session
    finally:
        if session.in_transaction() and session.get_transaction() is not None:
            # An aborted transaction refuses the reset; its rollback clears the setting anyway.
            with suppress(Exception):
                session.execute(_CLEAR_SYSTEM)
