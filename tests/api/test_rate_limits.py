"""Rate limits per API key and per tenant (SPEC 4): RateLimit-* headers, 429 with Retry-After."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from app import ratelimit
from app.ratelimit import RateLimiter
from app.services.scope import Principal, Role
from tests.helpers import TenantFixture, create_number_and_profile, random_e164, twilio_post


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[RateLimiter]:
    # A storage of its own per test: counts never leak between tests.
    limiter = RateLimiter("memory://", per_key=3, per_tenant=5)
    monkeypatch.setattr(ratelimit, "get_rate_limiter", lambda: limiter)
    yield limiter


def test_a_key_past_its_limit_is_429_with_retry_after(
    client: TestClient, tenant: TenantFixture, small_limits: RateLimiter
) -> None:
    seen = []
    for _ in range(3):
        response = client.get(tenant.url("/calls"), headers=tenant.headers)
        assert response.status_code == 200
        seen.append(int(response.headers["ratelimit-remaining"]))
        assert response.headers["ratelimit-limit"] == "3"
        assert 1 <= int(response.headers["ratelimit-reset"]) <= 60
    assert seen == [2, 1, 0]
    refused = client.get(tenant.url("/calls"), headers=tenant.headers)
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-remaining"] == "0"
    # Errors count and carry the headers too (another key of the tenant: 4 of its 5 used).
    other = client.get(tenant.url(f"/calls/{uuid.uuid4()}"), headers=tenant.read_headers)
    assert (
        other.status_code == 404 and other.headers["ratelimit-limit"] == "5"
    )  # the tenant's, tighter


def test_a_tenant_is_limited_across_its_keys(
    client: TestClient,
    tenant: TenantFixture,
    other_tenant: TenantFixture,
    small_limits: RateLimiter,
) -> None:
    answers = [
        client.get(tenant.url("/calls"), headers=headers).status_code
        for headers in [tenant.headers] * 3 + [tenant.read_headers] * 3
    ]
    assert answers == [200] * 5 + [429]
    # Another tenant is not.
    assert client.get(other_tenant.url("/calls"), headers=other_tenant.headers).status_code == 200


def test_twilio_webhooks_are_not_limited_by_tenant_keys(
    client: TestClient, tenant: TenantFixture, small_limits: RateLimiter
) -> None:
    setup = create_number_and_profile(tenant.id)
    for _ in range(6):
        client.get(tenant.url("/calls"), headers=tenant.headers)
    voice = {"CallSid": "CA" + uuid.uuid4().hex, "From": random_e164(), "To": setup.number}
    response = twilio_post(client, "/telephony/twilio/voice", voice)
    assert response.status_code == 200 and "ratelimit-limit" not in response.headers


def test_the_redis_storage_is_shared_by_every_process() -> None:
    url = "redis://127.0.0.1:6379/15"
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except Exception as exc:  # no Redis here: the memory storage is what the rest tests
        pytest.skip(f"no Redis reachable at {url}: {exc}")
    principal = Principal(role=Role.admin, tenant_id=uuid.uuid4(), key_id=uuid.uuid4())
    one, two = (RateLimiter(url, per_key=2, per_tenant=10) for _ in range(2))  # two processes

    async def three_requests() -> None:
        assert (await one.check(principal)).remaining == 1  # type: ignore[union-attr]
        assert (await two.check(principal)).remaining == 0  # type: ignore[union-attr]
        with pytest.raises(ratelimit.RateLimited):
            await one.check(principal)

    asyncio.run(three_requests())


def test_a_redis_that_stops_answering_lets_requests_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A Redis that accepts the connection and never answers: the check gives up after its
    # timeout and the request goes on (the limits protect the platform; they are not what a
    # request's correctness rests on).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    port = silent.getsockname()[1]
    principal = Principal(role=Role.admin, tenant_id=uuid.uuid4(), key_id=uuid.uuid4())
    limiter = RateLimiter(f"redis://127.0.0.1:{port}/0", per_key=2, per_tenant=10)
    try:
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="vca.ratelimit"):
            bounded = asyncio.wait_for(
                limiter.check(principal), 10 * ratelimit.REDIS_TIMEOUT_SECONDS
            )
            assert asyncio.run(bounded) is None  # not a TimeoutError: it gave up on its own
        waited = time.monotonic() - started
    finally:
        silent.close()
    assert waited >= ratelimit.REDIS_TIMEOUT_SECONDS
    assert "rate limit storage failed" in caplog.text
