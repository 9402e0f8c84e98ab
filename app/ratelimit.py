"""Rate limits per API key and per tenant across its keys (SPEC 4), with the `limits` library.

Counters live where RATE_LIMIT_STORAGE_URL says: `memory://` (one process: development) or
`redis://…` (shared by every process and host). A sliding window of one minute; the tightest
limit a request counted against is what its RateLimit-* headers show. Twilio's webhooks and the
relay are signed, not keyed: they never pass here.

Counted on the event loop with `limits`' async storages: the check reads no database, so it holds
none of the API_THREADS threads (a Redis round trip would), and the memory storage expires its
counters with a task instead of starting a timer thread every 10 ms under load.
"""

from __future__ import annotations

import logging
import math
import time
from functools import lru_cache

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from app.config.settings import settings
from app.context import RateLimitState, current_context
from app.errors import TooManyRequests
from app.services.scope import Principal

logger = logging.getLogger("vca.ratelimit")


class RateLimited(TooManyRequests):
    code = "rate_limited"
    default_detail = "Too many requests for this API key or tenant; retry after Retry-After."


# A Redis that stops answering costs a request this much, then lets it through (logged).
REDIS_TIMEOUT_SECONDS = 0.5


class RateLimiter:
    def __init__(self, storage_url: str, *, per_key: int, per_tenant: int) -> None:
        options: dict[str, float | str] = {}
        if not storage_url.startswith("memory:"):
            options = {  # redis-py's client (the one installed), not coredis
                "implementation": "redispy",
                "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
                "socket_timeout": REDIS_TIMEOUT_SECONDS,
            }
        storage = storage_from_string(f"async+{storage_url}", **options)
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self.per_key = RateLimitItemPerMinute(per_key)
        self.per_tenant = RateLimitItemPerMinute(per_tenant)

    async def _count(self, item: RateLimitItem, *identifiers: str) -> tuple[bool, RateLimitState]:
        allowed = await self._limiter.hit(item, *identifiers)
        stats = await self._limiter.get_window_stats(item, *identifiers)
        reset = max(1, math.ceil(stats.reset_time - time.time()))
        return allowed, RateLimitState(item.amount, stats.remaining, reset)

    async def check(self, principal: Principal) -> RateLimitState | None:
        """Count one request of `principal`; the tightest state (also the current request's, for
        its headers), or RateLimited (429).

        A storage that fails lets the request through (logged): the limits protect the
        platform, they are not what a request's correctness rests on.
        """
        key = str(principal.key_id) if principal.key_id else principal.role.value
        limits = [(self.per_key, "key", key)]
        if principal.tenant_id is not None:
            limits.append((self.per_tenant, "tenant", str(principal.tenant_id)))
        tightest: RateLimitState | None = None
        try:
            for item, *identifiers in limits:
                allowed, state = await self._count(item, *identifiers)
                if tightest is None or state.remaining < tightest.remaining:
                    tightest = state
                    if (context := current_context()) is not None:
                        context.rate_limit = state
                if not allowed:
                    raise RateLimited(headers={"Retry-After": str(state.reset_seconds)})
        except RateLimited:
            raise
        except Exception:
            logger.exception("rate limit storage failed; request let through")
        return tightest


@lru_cache(maxsize=1)
def get_rate_limiter() -> RateLimiter:
    return RateLimiter(
        settings.RATE_LIMIT_STORAGE_URL,
        per_key=settings.RATE_LIMIT_PER_MINUTE,
        per_tenant=settings.RATE_LIMIT_TENANT_PER_MINUTE,
    )
