"""Reusable dependencies: the request's transaction, the caller, and the tenant it acts in."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar, get_args, get_origin, get_type_hints

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar
from fastapi import Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app import ratelimit
from app.config.database import (
    get_session_factory,
    get_single_statement_session_factory,
)
from app.config.settings import settings
from app.context import current_context, set_tenant
from app.errors import DatabaseUnavailable, Forbidden, NotFound, TenantSuspended, Unauthorized
from app.services import idempotency
from app.services.auth import authenticate
from app.services.scope import Principal, Role, TenantScope, enter_tenant
from app.telephony.urls import TwilioUrls

logger = logging.getLogger("vca")

T = TypeVar("T")


async def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(*args, **kwargs)` on one of the API_THREADS threads, the request's one way there.

    The wait for a free thread is bounded like the wait for a pooled connection: when every
    thread waits on a stuck database, a request answers 503 after DATABASE_POOL_TIMEOUT_SECONDS
    instead of queueing without end (with fewer threads than connections, the pool's own timeout
    is never reached).
    """
    limiter = anyio.to_thread.current_default_thread_limiter()
    try:
        limiter.acquire_nowait()  # a thread is free: no deadline to arm (most trips)
    except anyio.WouldBlock:
        with anyio.move_on_after(settings.DATABASE_POOL_TIMEOUT_SECONDS) as waiting:
            await limiter.acquire()
        if waiting.cancelled_caught:
            logger.error("database unavailable", extra={"error": "no thread free"})
            raise DatabaseUnavailable() from None
    try:
        # The thread is this request's token of the shared limiter, held above.
        return await anyio.to_thread.run_sync(
            functools.partial(function, *args, **kwargs), limiter=_token_held()
        )
    finally:
        limiter.release()


_TOKEN_HELD: RunVar[anyio.CapacityLimiter] = RunVar("in_thread_token_held")


def _token_held() -> anyio.CapacityLimiter:
    """A limiter that never waits, per event loop: `run_sync` needs one, and the caller already
    holds the shared limiter's token."""
    try:
        return _TOKEN_HELD.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(math.inf)
        _TOKEN_HELD.set(limiter)
        return limiter


async def get_db_session() -> AsyncIterator[Session]:
    """The request's session; its one transaction is committed by `TransactionalRoute`.

    Async on purpose: opening a session does no I/O (the connection is taken on first use), so it
    needs no trip through the threadpool. A transaction still open here means the endpoint never
    ran (a later dependency refused the request): it is rolled back in the threadpool, shielded
    from cancellation so the connection always goes back to the pool.
    """
    session = get_session_factory()()
    try:
        yield session
    finally:
        if session.in_transaction():
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(session.close)
        else:
            session.close()


async def get_single_statement_session() -> AsyncIterator[Session]:
    """`get_db_session` for an endpoint that is one statement: no BEGIN/COMMIT round trips."""
    session = get_single_statement_session_factory()()
    try:
        yield session
    finally:
        session.close()  # nothing is open: each statement committed on its own


def _uses_session(dependant: Dependant) -> bool:
    return any(
        sub.call in (get_db_session, get_single_statement_session) or _uses_session(sub)
        for sub in dependant.dependencies
    )


def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(sub.call is call or _depends_on(sub, call) for sub in dependant.dependencies)


def _session_parameters(endpoint: Callable[..., Any]) -> list[str]:
    hints = get_type_hints(endpoint, include_extras=True)
    return [
        name
        for name, hint in hints.items()
        if get_origin(hint) is Annotated and get_args(hint)[0] is Session
    ]


def _in_worker_thread(endpoint: Callable[..., Any], names: list[str]) -> Callable[..., Any]:
    """`endpoint` as a coroutine that runs it, and commits its session, in one worker thread."""

    def run_and_commit(kwargs: dict[str, Any]) -> Any:
        sessions: list[Session] = [kwargs[name] for name in names]
        try:
            result = endpoint(**kwargs)
            for session in sessions:
                session.commit()
        except BaseException:
            for session in sessions:
                session.rollback()
            raise
        return result

    @functools.wraps(endpoint)
    async def run_in_worker_thread(**kwargs: Any) -> Any:
        # Not cancellable once running, like FastAPI's own hop: the session is never closed
        # under the thread.
        return await in_thread(run_and_commit, kwargs)

    return run_in_worker_thread


class TransactionalRoute(APIRoute):
    """Every route: a sync endpoint runs, and the request's transaction commits (or rolls back),
    in one worker thread; the one place a request's work is committed.

    The commit comes before the response is sent (a 201 means stored; a failing commit is the
    request's error). FastAPI would run a sync endpoint in the threadpool and then validate its
    return value in the threadpool again; handed over as a coroutine, a request makes one trip
    (a trip costs 60-150 µs of CPU). An endpoint whose dependencies use the request's session must
    take it as a parameter (`DbSession`), so that it is committed: checked here, at import.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        names = _session_parameters(endpoint)
        dependant = get_dependant(path=path, call=endpoint)
        if "POST" in (kwargs.get("methods") or ()) and _depends_on(dependant, get_principal):
            # Every POST an API key may send honours Idempotency-Key (SPEC 4).
            kwargs["dependencies"] = [
                *(kwargs.get("dependencies") or ()),
                Depends(claim_idempotency_key, scope="function"),
            ]
        if _uses_session(dependant):
            if not names or inspect.iscoroutinefunction(endpoint):
                raise TypeError(
                    f"{endpoint.__qualname__}: a route using the database must be a sync "
                    "function taking the request's session (DbSession), which it commits"
                )
            endpoint = _in_worker_thread(endpoint, names)
        elif not inspect.iscoroutinefunction(endpoint):
            endpoint = _in_worker_thread(endpoint, [])
        super().__init__(path, endpoint, **kwargs)


# scope="function": the session is closed before the response is sent.
DbSession = Annotated[Session, Depends(get_db_session, scope="function")]
SingleStatementSession = Annotated[Session, Depends(get_single_statement_session, scope="function")]


bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="The platform admin key or a tenant API key (vca_…).",
)


async def get_principal(
    session: DbSession,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    if credentials is None or not credentials.credentials.strip():
        raise Unauthorized()
    principal = await in_thread(authenticate, session, credentials.credentials.strip())
    if principal is None:
        raise Unauthorized("The API key is invalid, expired or revoked.")
    await ratelimit.get_rate_limiter().check(principal)  # no database: on the event loop
    set_tenant(principal.tenant_id)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal, scope="function")]


async def claim_idempotency_key(
    request: Request, principal: CurrentPrincipal, session: DbSession
) -> None:
    """A POST's Idempotency-Key, claimed in the request's transaction (app/services/idempotency.py);
    its response is stored by the edge middleware before it is sent. Without the header: nothing."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return
    request_fingerprint = idempotency.fingerprint(
        request.method, request.scope["path"], request.scope["query_string"], await request.body()
    )
    claim = await in_thread(
        idempotency.claim,
        session,
        tenant_id=None if principal.is_platform_admin else principal.tenant_id,
        key=key,
        request_fingerprint=request_fingerprint,
    )
    context = current_context()
    if context is not None:
        context.idempotency = claim


async def require_platform_admin(principal: CurrentPrincipal) -> Principal:
    if not principal.is_platform_admin:
        raise Forbidden("This operation needs the platform admin key.")
    return principal


AdminOnly = Annotated[Principal, Depends(require_platform_admin, scope="function")]

TenantIdPath = Annotated[uuid.UUID, Path(description="The tenant's id.")]


async def get_tenant_scope(
    tenant_id: TenantIdPath, principal: CurrentPrincipal, session: DbSession
) -> TenantScope:
    """Bind the request's transaction to `tenant_id`, if the caller may act in it.

    Another tenant's id answers exactly like an id that does not exist (404), so a key cannot
    learn which tenants exist. A tenant key's transaction was bound to its tenant, and the
    tenant read, when the key was resolved (`authenticate`): nothing is left to do here.
    """
    if not principal.may_access(tenant_id):
        raise NotFound("Tenant not found.")
    if principal.tenant_id == tenant_id and principal.tenant_status and principal.tenant_plan:
        return TenantScope(
            tenant_id=tenant_id,
            principal=principal,
            tenant_status=principal.tenant_status,
            plan=principal.tenant_plan,
        )
    return await in_thread(enter_tenant, session, principal, tenant_id)


TenantContext = Annotated[TenantScope, Depends(get_tenant_scope, scope="function")]


async def require_writer(scope: TenantContext) -> TenantScope:
    """Writes need an admin key (or the platform admin) and, for tenant keys, an active tenant."""
    if scope.principal.role is Role.read_only:
        raise Forbidden("This API key is read-only.")
    if not scope.principal.is_platform_admin and scope.tenant_status == "suspended":
        raise TenantSuspended()
    return scope


Writer = Annotated[TenantScope, Depends(require_writer, scope="function")]


async def get_twilio_urls(request: Request) -> TwilioUrls:
    """The public URLs of our Twilio endpoints, from the app's routes (built once per app)."""
    return _twilio_urls(request.app)


@functools.cache
def _twilio_urls(app: Any) -> TwilioUrls:
    return TwilioUrls.from_paths(
        settings.PUBLIC_BASE_URL or "",
        voice=app.url_path_for("voice_webhook"),
        status=app.url_path_for("status_callback"),
        relay=app.url_path_for("conversation_relay"),
        relay_action=app.url_path_for("relay_action"),
    )


Callbacks = Annotated[TwilioUrls, Depends(get_twilio_urls)]

Limit = Annotated[int, Query(ge=1, le=100, description="Page size (1-100).")]
Cursor = Annotated[str | None, Query(max_length=512, description="next_cursor of the last page.")]
