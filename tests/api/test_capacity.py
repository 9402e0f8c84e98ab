"""The per-process cap on live calls: a full or draining process refuses at the voice webhook.

Load belongs in the bench (`make bench`, the live calls phase); here, the rules.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import uuid
from collections import OrderedDict
from collections.abc import Iterator

import anyio.to_thread
import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.app import COLLECTOR_THRESHOLDS
from app.config.settings import settings
from app.llm import agent
from app.telephony import capacity
from app.telephony.capacity import LiveCalls, install_drain, live_calls
from tests.helpers import (
    TenantFixture,
    create_number_and_profile,
    random_e164,
    twilio_call_sid,
    twilio_post,
)

VOICE = "/telephony/twilio/voice"


def _inbound(to: str) -> dict[str, str]:
    return {
        "CallSid": twilio_call_sid(),
        "AccountSid": os.environ["TWILIO_ACCOUNT_SID"],
        "From": random_e164(),
        "To": to,
        "Direction": "inbound",
        "CallStatus": "ringing",
    }


@pytest.fixture
def cap_of_two(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(settings, "MAX_LIVE_CALLS_PER_PROCESS", 2)
    monkeypatch.setattr(capacity, "live_calls", live_calls)
    saved = (dict(live_calls._reserved), set(live_calls._sessions), live_calls.draining)
    live_calls._reserved.clear()
    live_calls._sessions.clear()
    yield
    live_calls._reserved.clear()
    live_calls._reserved.update(saved[0])
    live_calls._sessions.clear()
    live_calls._sessions.update(saved[1])
    live_calls.draining = saved[2]


def _stored(engine: Engine, call_sid: str) -> int:
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        return int(
            conn.scalar(
                text("SELECT count(*) FROM calls WHERE provider_call_sid = :s"), {"s": call_sid}
            )
            or 0
        )


def test_a_full_process_refuses_with_503_and_stores_nothing(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine, cap_of_two: None
) -> None:
    setup = create_number_and_profile(tenant.id)
    # Two admitted calls hold the two slots while Twilio connects them.
    for _ in range(2):
        assert twilio_post(client, VOICE, _inbound(setup.number)).status_code == 200
    assert live_calls.reserved() == 2

    refused = _inbound(setup.number)
    response = twilio_post(client, VOICE, refused)
    assert response.status_code == 503
    assert response.json()["code"] == "capacity"
    assert response.headers["Retry-After"]
    # The CallSid stays free: Twilio's fallback URL may answer it on another server.
    assert _stored(owner_engine, refused["CallSid"]) == 0

    health = client.get("/healthz").json()["relay"]
    assert health["max_live_calls"] == 2
    assert health["reserved"] == 2
    assert health["refused_capacity"] >= 1


def test_a_bound_session_takes_its_reserved_slot_and_frees_it_on_close(cap_of_two: None) -> None:
    calls = LiveCalls()
    first, second = uuid.uuid4(), uuid.uuid4()
    calls.reserve(first)
    session = object()
    calls.add(session, first)  # the socket bound on this process: one slot, not two
    assert (calls.count(), calls.reserved()) == (1, 0)
    calls.reserve(second)
    assert not calls.has_room()
    calls.discard(session)
    assert calls.has_room()


def test_reservations_of_calls_that_never_connect_expire(
    cap_of_two: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = LiveCalls()
    calls.reserve(uuid.uuid4())
    calls.reserve(uuid.uuid4())
    assert not calls.has_room()
    monkeypatch.setattr(capacity, "RESERVATION_SECONDS", 0.0)
    calls.reserve(uuid.uuid4())
    calls._reserved = OrderedDict.fromkeys(calls._reserved, 0.0)  # all past their deadline
    assert calls.has_room()


def test_reservations_expire_in_order_and_a_retry_moves_to_the_end() -> None:
    calls = LiveCalls()
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for call_id in (first, second, third, first):  # Twilio retried the first call's webhook
        calls.reserve(call_id)
    assert list(calls._reserved) == [second, third, first]
    calls._expire(calls._reserved[third])
    assert list(calls._reserved) == [first]


def test_sigterm_drains_live_sessions_then_stops_the_server(
    cap_of_two: None, client: TestClient, tenant: TenantFixture
) -> None:
    stopped: list[int] = []
    previous = signal.getsignal(signal.SIGTERM)

    async def scenario() -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
        install_drain(asyncio.get_running_loop(), timeout=5)
        session = object()
        live_calls.add(session, uuid.uuid4())
        signal.raise_signal(signal.SIGTERM)
        await asyncio.sleep(0.05)
        # Draining: no new calls, the live one goes on, the server is not told to stop yet.
        assert live_calls.draining and not live_calls.has_room()
        assert stopped == []
        setup = create_number_and_profile(tenant.id)
        response = await asyncio.to_thread(twilio_post, client, VOICE, _inbound(setup.number))
        assert response.status_code == 503
        health = await asyncio.to_thread(client.get, "/healthz")
        assert health.status_code == 503 and health.json()["status"] == "draining"
        live_calls.discard(session)  # the call ends
        await asyncio.sleep(0.05)
        assert stopped == [signal.SIGTERM]

    try:
        asyncio.run(scenario())
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_stops_after_the_drain_timeout(cap_of_two: None) -> None:
    stopped: list[int] = []
    previous = signal.getsignal(signal.SIGTERM)

    async def scenario() -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
        install_drain(asyncio.get_running_loop(), timeout=0.1)
        live_calls.add(object(), uuid.uuid4())  # a call that never ends
        signal.raise_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert stopped == [signal.SIGTERM]

    try:
        asyncio.run(scenario())
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_startup_puts_what_the_app_built_out_of_the_collectors_reach(client: TestClient) -> None:
    """A full collection walks only what requests made since: walking the imported app too, it
    stalled every live call's loop for 100-150 ms (bench: live calls)."""
    assert client.get("/healthz").status_code == 200  # the app has started
    assert gc.get_freeze_count() > 0


def test_startup_makes_collector_pauses_short_and_full_collections_rare(
    client: TestClient,
) -> None:
    """A middle collection pauses every live call for the young survivors it walks (6-9 ms after
    CPython's 10 young collections at 500 calls), so it comes sooner; a full one for the whole
    heap (40 ms at 250 calls), whose garbage reference counting already freed
    (test_a_call_leaves_no_garbage_for_the_cycle_collector), so it stays a tenth as frequent as
    CPython's default (bench: live calls)."""
    assert client.get("/healthz").status_code == 200
    young, middle, full = gc.get_threshold()
    assert (young, middle, full) == COLLECTOR_THRESHOLDS
    assert middle < 10 and middle * full > 9 * (10 * 10)  # CPython: after 10 x 10


def test_startup_builds_the_llm_client(client: TestClient) -> None:
    """Building it takes 20-25 ms (TLS setup): at startup, not on the loop while the process's
    first caller waits for an answer and every live call's frames wait behind it."""
    assert client.get("/healthz").status_code == 200  # the app has started
    built = agent._client
    assert built is not None and client.portal.call(agent.get_llm_client) is built


def test_the_threadpool_is_as_wide_as_the_setting(client: TestClient) -> None:
    """Blocking work runs on API_THREADS threads: with anyio's 40, live calls' frames waited
    50-100 ms for the GIL behind them (bench: live calls)."""
    portal = client.portal
    assert portal is not None
    limiter = portal.call(anyio.to_thread.current_default_thread_limiter)
    assert limiter.total_tokens == settings.API_THREADS != 40
