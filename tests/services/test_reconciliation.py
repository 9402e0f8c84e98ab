"""Reconciliation: calls whose final status callback was lost are ended from Twilio's REST API
(tests/fakes/fake_twilio.py serves GET Calls/{sid}), once, whatever the number of workers."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from app.config.database import transaction
from app.models import Call
from app.models.base import utcnow
from app.services.reconciliation import (
    STILL_LIVE_RECHECK,
    StaleCall,
    backoff,
    claim_stale_calls,
    reconcile_call,
)
from app.services.scope import get_scoped
from app.telephony.rest import TwilioRest
from tests.fakes.fake_twilio import FakeTwilio
from tests.helpers import TenantFixture, count_tenant_rows, insert_call, twilio_call_sid


@pytest.fixture
def twilio() -> Iterator[tuple[FakeTwilio, TwilioRest]]:
    with FakeTwilio(os.environ["TWILIO_ACCOUNT_SID"], os.environ["TWILIO_AUTH_TOKEN"]) as fake:
        rest = TwilioRest(
            account_sid=fake.account_sid, auth_token=fake.auth_token, api_base_url=fake.base_url
        )
        yield fake, rest


def _stale_call(tenant_id: uuid.UUID, status: str, age: timedelta) -> tuple[uuid.UUID, str]:
    sid = twilio_call_sid()
    then = utcnow() - age
    fields = {"created_at": then, "started_at": then}
    if status == "in_progress":
        fields["answered_at"] = then
    return insert_call(tenant_id, status=status, provider_call_sid=sid, **fields), sid


def _mine(claimed: list[StaleCall], *call_ids: uuid.UUID) -> list[StaleCall]:
    return [stale for stale in claimed if stale.call_id in call_ids]


def _call(tenant_id: uuid.UUID, call_id: uuid.UUID) -> Call:
    with transaction(tenant_id) as session:
        return get_scoped(session, Call, tenant_id, call_id, what="Call")


def test_only_calls_past_their_limits_are_claimed(tenant: TenantFixture) -> None:
    rang_long, _ = _stale_call(tenant.id, "ringing", timedelta(minutes=4))
    ringing, _ = _stale_call(tenant.id, "ringing", timedelta(minutes=2))
    talked_long, _ = _stale_call(tenant.id, "in_progress", timedelta(hours=4, minutes=6))
    talking, _ = _stale_call(tenant.id, "in_progress", timedelta(hours=4))
    ended, _ = _stale_call(tenant.id, "completed", timedelta(hours=5))
    claimed = _mine(claim_stale_calls(), rang_long, ringing, talked_long, talking, ended)
    assert {stale.call_id for stale in claimed} == {rang_long, talked_long}
    # Leased: not claimed again until the lease is over.
    assert _mine(claim_stale_calls(), rang_long, talked_long) == []
    later = utcnow() + timedelta(minutes=3)
    assert len(_mine(claim_stale_calls(later), rang_long, talked_long)) == 2


def test_a_lost_callback_is_ended_metered_and_announced_once(
    tenant: TenantFixture, twilio: tuple[FakeTwilio, TwilioRest], owner_engine: Engine
) -> None:
    fake, rest = twilio
    call_id, sid = _stale_call(tenant.id, "in_progress", timedelta(hours=5))
    fake.put_call(sid, "completed", duration=125)
    [stale] = _mine(claim_stale_calls(), call_id)
    assert reconcile_call(stale, rest) == "ended"
    call = _call(tenant.id, call_id)
    assert (call.status, call.end_reason) == ("completed", "reconciled")
    assert (call.duration_seconds, call.billable_minutes) == (125, 3)
    # A second worker holding the same claim (its lease expired) changes nothing.
    assert reconcile_call(stale, rest) == "already_ended"
    assert count_tenant_rows(owner_engine, "usage_records", tenant.id) == 1
    where = "event_type = 'call.ended'"
    assert count_tenant_rows(owner_engine, "webhook_events", tenant.id, where) == 1
    assert [r.method for r in fake.requests] == ["GET", "GET"]


@pytest.mark.parametrize(
    ("twilio_status", "status"),
    [("no-answer", "no_answer"), ("busy", "busy"), ("canceled", "canceled"), ("failed", "failed")],
)
def test_a_call_that_never_connected_gets_twilios_status(
    tenant: TenantFixture, twilio: tuple[FakeTwilio, TwilioRest], twilio_status: str, status: str
) -> None:
    fake, rest = twilio
    call_id, sid = _stale_call(tenant.id, "ringing", timedelta(minutes=10))
    fake.put_call(sid, twilio_status, duration=0)
    [stale] = _mine(claim_stale_calls(), call_id)
    assert reconcile_call(stale, rest) == "ended"
    call = _call(tenant.id, call_id)
    assert (call.status, call.end_reason, call.billable_minutes) == (status, "reconciled", 0)


def test_twilio_failing_backs_off_and_a_later_pass_ends_the_call(
    tenant: TenantFixture, twilio: tuple[FakeTwilio, TwilioRest]
) -> None:
    fake, rest = twilio
    call_id, sid = _stale_call(tenant.id, "ringing", timedelta(minutes=10))
    fake.put_call(sid, "no-answer")
    now = utcnow()
    for attempt in (1, 2):
        fake.fail_next(503)
        [stale] = _mine(claim_stale_calls(now), call_id)
        assert stale.attempts == attempt - 1
        assert reconcile_call(stale, rest, now) == "retry"
        call = _call(tenant.id, call_id)
        assert call.status == "ringing" and call.reconcile_attempts == attempt
        assert call.reconcile_after == now + backoff(attempt)
        assert _mine(claim_stale_calls(now + backoff(attempt) / 2), call_id) == []
        now += backoff(attempt)
    assert backoff(2) == 2 * backoff(1) and backoff(40) == timedelta(hours=1)
    [stale] = _mine(claim_stale_calls(now), call_id)
    assert reconcile_call(stale, rest, now) == "ended"
    assert _call(tenant.id, call_id).status == "no_answer"


def test_a_call_twilio_still_has_live_is_asked_about_later(
    tenant: TenantFixture, twilio: tuple[FakeTwilio, TwilioRest]
) -> None:
    fake, rest = twilio
    call_id, sid = _stale_call(tenant.id, "ringing", timedelta(minutes=10))
    fake.put_call(sid, "in-progress")
    now = utcnow()
    [stale] = _mine(claim_stale_calls(now), call_id)
    assert reconcile_call(stale, rest, now) == "still_live"
    call = _call(tenant.id, call_id)
    assert call.status == "ringing" and call.reconcile_after == now + STILL_LIVE_RECHECK


def test_a_call_twilio_does_not_know_ends_as_failed(
    tenant: TenantFixture, twilio: tuple[FakeTwilio, TwilioRest]
) -> None:
    _, rest = twilio
    call_id, _ = _stale_call(tenant.id, "ringing", timedelta(minutes=10))
    [stale] = _mine(claim_stale_calls(), call_id)
    assert reconcile_call(stale, rest) == "ended"
    call = _call(tenant.id, call_id)
    assert (call.status, call.end_reason) == ("failed", "reconciled")


def test_several_workers_never_claim_one_call_twice(tenant: TenantFixture) -> None:
    call_ids = {_stale_call(tenant.id, "ringing", timedelta(minutes=5))[0] for _ in range(20)}
    claims: list[list[StaleCall]] = []
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait()
        claims.append(_mine(claim_stale_calls(limit=8), *call_ids))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [stale.call_id for batch in claims for stale in batch]
    assert len(claimed) == len(set(claimed))
