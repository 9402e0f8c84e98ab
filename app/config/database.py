"""Engine, sessions and the tenant context every transaction runs in.

Row-level security in PostgreSQL is the last line of tenant isolation: every transaction states whose
rows it may see with `set_config('app.tenant_id', …, true)`. The setting is transaction-local, so a
pooled connection (or PgBouncer in transaction mode) never carries one tenant's context into another
request. A transaction that sets nothing sees no tenant rows at all.

Crossing tenants is possible only inside `system_scope()`, used by a short, pinned list of call sites
(see tests/db/test_system_scope.py).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, ExecutionContext
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.base import Executable

from app.config.settings import settings

# -- server-side prepared statements ------------------------------------------------------------

_PREPARED_OPTION = "vca_prepared"
_PREPARED_ON_CONNECTION = "vca.prepared"
# A bound on the plans one connection keeps: only statements with a fixed text are marked, so the
# set is small, but a statement whose text varied per call must not grow it without end.
MAX_PREPARED_PER_CONNECTION = 256
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")

E = TypeVar("E", bound=Executable)


def prepared(statement: E) -> E:
    """Mark a statement of a hot path to run as a server-side prepared statement.

    psycopg2 sends every statement as text, so PostgreSQL parses it, applies row-level security
    and plans it again on every execution: on the voice webhook's path that was half of the
    database's time. A marked statement is PREPAREd once per connection and then EXECUTEd on its
    cached plan. Mark only statements built once whose SQL text does not change from call to
    call (no IN lists of varying length). DATABASE_PREPARED_STATEMENTS=false turns it off.
    """
    return statement.execution_options(**{_PREPARED_OPTION: True})


@dataclass(frozen=True)
class _Prepared:
    name: str
    definition: str
    parameters: tuple[str, ...]

    def execute(self, values: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
        arguments = tuple(values[name] for name in self.parameters)
        if not arguments:
            return f"EXECUTE {self.name}", arguments
        return f"EXECUTE {self.name}({', '.join(['%s'] * len(arguments))})", arguments


@lru_cache(maxsize=1024)
def _translate(sql: str) -> _Prepared:
    """psycopg2's `%(name)s` placeholders become `$1`, `$2`… (a name used twice is one)."""
    order: dict[str, int] = {}

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return "%"  # `%%` was psycopg2's escape of a literal percent sign
        return f"${order.setdefault(match.group(1), len(order) + 1)}"

    body = _PLACEHOLDER.sub(placeholder, sql)
    name = "vca_" + hashlib.sha1(sql.encode()).hexdigest()[:24]  # noqa: S324 - a name, not a MAC
    return _Prepared(name, f"PREPARE {name} AS {body}", tuple(order))


def _run_prepared(
    conn: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: ExecutionContext | None,
    executemany: bool,
) -> tuple[str, Any]:
    """`before_cursor_execute`: swap a marked statement for EXECUTE of its prepared form.

    PREPARE outlives the transaction it ran in (even one rolled back), so each connection
    prepares a statement once; the record is dropped with the connection.
    """
    if (
        executemany
        or context is None
        or not context.execution_options.get(_PREPARED_OPTION)
        or not isinstance(parameters, dict)
        or getattr(cursor, "name", None)  # a server-side cursor: DECLARE cannot take EXECUTE
    ):
        return statement, parameters
    plan = _translate(statement)
    done: set[str] = conn.connection.info.setdefault(_PREPARED_ON_CONNECTION, set())
    if plan.name not in done:
        if len(done) >= MAX_PREPARED_PER_CONNECTION:
            return statement, parameters
        cursor.execute(plan.definition)
        done.add(plan.name)
    return plan.execute(parameters)


_SET_TENANT = prepared(text("SELECT set_config('app.tenant_id', :tenant_id, true)"))
_SET_SYSTEM = text("SELECT set_config('app.system', 'on', true)")
_CLEAR_SYSTEM = text("SELECT set_config('app.system', '', true)")


def build_engine(url: str, *, pool_size: int, prepared_statements: bool) -> Engine:
    """An engine as the app uses it: pool sizing, no pre-ping, prepared hot statements."""
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it costs a round trip per request; a connection found dead is discarded by
        # the pool (and that request answers 503), and recycling retires idle ones.
        pool_recycle=1800,
        pool_timeout=10,
        connect_args={"connect_timeout": 3, "application_name": settings.APP_NAME},
    )
    if prepared_statements:
        event.listen(engine, "before_cursor_execute", _run_prepared, retval=True)
    return engine


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The process-wide engine for the app role (created on first use, not at import)."""
    return build_engine(
        settings.DATABASE_URL,
        pool_size=settings.DATABASE_POOL_SIZE,
        prepared_statements=settings.DATABASE_PREPARED_STATEMENTS,
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
def single_statement_session() -> Iterator[Session]:
    """A session without a surrounding transaction: each statement commits on its own.

    For work that is one statement (a SQL function doing all of it), BEGIN and COMMIT would be
    two more round trips than the work itself. The connection goes back to the pool in its
    usual transactional mode.
    """
    with (
        get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection,
        Session(bind=connection, autoflush=False, expire_on_commit=False) as session,
    ):
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
