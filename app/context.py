"""What is known about the request (or relay session) being served, for its log lines and its
response: one object per request, shared by the event loop and the threadpool.

The middleware sets it at the start of a request; dependencies running in worker threads see the
same object (a thread gets a copy of the context, whose value is this object) and fill in what
they learn, such as the tenant.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

# A caller's X-Request-ID is kept when it is sane: what a log line and a header can carry as is.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


@dataclass
class RateLimitState:
    """The tightest limit this request counted against: its RateLimit-* headers."""

    limit: int
    remaining: int
    reset_seconds: int


@dataclass
class RequestContext:
    request_id: str
    tenant_id: uuid.UUID | None = None
    call_id: uuid.UUID | None = None
    rate_limit: RateLimitState | None = None
    # An Idempotency-Key claimed by this request: its response is stored before it is sent.
    idempotency: Any = None

    def log_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"request_id": self.request_id}
        if self.tenant_id is not None:
            fields["tenant_id"] = str(self.tenant_id)
        if self.call_id is not None:
            fields["call_id"] = str(self.call_id)
        return fields


_current: ContextVar[RequestContext | None] = ContextVar("vca_request_context", default=None)


def current_context() -> RequestContext | None:
    return _current.get()


def start_context(
    request_id: str | bytes | None = None,
) -> tuple[RequestContext, Token[RequestContext | None]]:
    """A new context for the current task (a request, a relay session): the caller's request id
    when it is sane, else a new one. `end_context(token)` when the task is done."""
    if isinstance(request_id, bytes):
        request_id = request_id.decode("latin-1")
    if not request_id or not _SANE_REQUEST_ID.fullmatch(request_id):
        request_id = uuid.uuid4().hex
    context = RequestContext(request_id=request_id)
    return context, _current.set(context)


def end_context(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def set_tenant(tenant_id: uuid.UUID | None, call_id: uuid.UUID | None = None) -> None:
    """Record who the current request acts for (no-op outside a request)."""
    context = _current.get()
    if context is not None:
        context.tenant_id = tenant_id
        if call_id is not None:
            context.call_id = call_id
