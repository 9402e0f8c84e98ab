"""The webhook worker against a real receiver that verifies signatures with `standardwebhooks`.

The worker's clock is set by hand (the `clock` fixture), so days of retries run in milliseconds.
Workers claim across all tenants, as in production: each test starts with an empty outbox
(`empty_outbox`), so a test's workers find only its own deliveries in the shared database.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from standardwebhooks import Webhook
from starlette.testclient import TestClient

from app import worker as worker_process
from app.config.database import transaction
from app.config.settings import settings
from app.models.base import utcnow
from app.services.events import emit_event
from app.webhooks.delivery import (
    CLAIM_STATEMENTS,
    DISABLED_FAILING,
    DISABLED_GONE,
    LOST_SEND_ERROR,
    MAX_ATTEMPTS,
    RETRY_DELAYS,
    ClaimedDelivery,
    DeliveryOutcome,
    record_delivery_outcomes,
)
from app.webhooks.sender import DeliveryResult
from app.worker import WebhookWorker
from tests.fakes.receiver import Reply, SubprocessWebhookReceiver, WebhookReceiver
from tests.helpers import (
    TenantFixture,
    create_number_and_profile,
    random_e164,
    twilio_call_sid,
    twilio_post,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def empty_outbox(owner_engine: Engine) -> None:
    """No deliveries of earlier tests are left for this test's workers to claim."""
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        conn.execute(text("DELETE FROM webhook_events"))  # deliveries and attempts cascade


class Clock:
    """The worker's clock, set by hand."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(worker_process, "utcnow", fake)
    return fake


def _run_at(worker: WebhookWorker, clock: Clock, when: datetime) -> int:
    """One batch (`run_once`) with the worker's clock at `when`."""
    clock.now = when
    return worker.run_once()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def endpoint(
    client: TestClient, tenant: TenantFixture, receiver: WebhookReceiver
) -> dict[str, Any]:
    response = client.post(
        tenant.url("/webhooks"), json={"url": receiver.url()}, headers=tenant.headers
    )
    assert response.status_code == 201, response.text
    created = response.json()
    receiver.secret = created["secret"]
    return created


@pytest.fixture
def make_worker() -> Iterator[Callable[..., WebhookWorker]]:
    workers: list[WebhookWorker] = []

    def make(**kwargs: Any) -> WebhookWorker:
        worker = WebhookWorker(**kwargs)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.close()


def _emit(tenant: TenantFixture, event_type: str = "call.ended", count: int = 1) -> list[str]:
    call_ids = [str(uuid.uuid4()) for _ in range(count)]
    with transaction(tenant.id) as session:
        for call_id in call_ids:
            emit_event(session, tenant.id, event_type, {"call_id": call_id})
    return call_ids


def _delivery(owner_engine: Engine, tenant: TenantFixture) -> Any:
    rows = _deliveries(owner_engine, tenant)
    assert len(rows) == 1, rows
    return rows[0]


def _deliveries(owner_engine: Engine, tenant: TenantFixture) -> list[Any]:
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        return list(
            conn.execute(
                text("SELECT * FROM webhook_deliveries WHERE tenant_id = :t ORDER BY created_at"),
                {"t": tenant.id},
            ).all()
        )


def _attempts(owner_engine: Engine, delivery_id: uuid.UUID) -> list[Any]:
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        return list(
            conn.execute(
                text(
                    "SELECT * FROM webhook_delivery_attempts WHERE delivery_id = :d"
                    " ORDER BY created_at, id"
                ),
                {"d": delivery_id},
            ).all()
        )


def _endpoint_row(owner_engine: Engine, endpoint_id: str) -> Any:
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        return conn.execute(
            text("SELECT * FROM webhook_endpoints WHERE id = :e"), {"e": endpoint_id}
        ).one()


# --- delivery ---------------------------------------------------------------------------------


def test_a_call_ended_event_is_delivered_signed_exactly_once(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
) -> None:
    (call_id,) = _emit(tenant)
    worker = make_worker()
    assert worker.run_once() == 1
    assert worker.run_once() == 0

    (got,) = receiver.received
    assert got.verified, got.error
    assert got.path == "/hooks"
    assert got.payload["type"] == "call.ended"
    assert got.payload["data"] == {"call_id": call_id}
    assert got.headers["content-type"] == "application/json"
    delivery = _delivery(owner_engine, tenant)
    assert got.webhook_id == str(delivery.id)
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 5
    # A receiver holding another secret rejects it: the signature really depends on the secret.
    other_secret = Webhook("whsec_" + "A" * 44)
    with pytest.raises(Exception, match="signature"):
        other_secret.verify(got.body, got.headers)

    assert delivery.status == "succeeded"
    assert delivery.attempt_count == 1
    assert delivery.last_status_code == 204
    assert delivery.delivered_at is not None and delivery.next_attempt_at is None
    assert delivery.lease_expires_at is None
    (attempt,) = _attempts(owner_engine, delivery.id)
    assert attempt.status_code == 204 and attempt.error is None and attempt.duration_ms >= 0


def test_the_bytes_sent_are_the_stored_body_and_verify_against_it(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    # Non-ASCII text, and a float and key order that a jsonb round trip would have respelt.
    with transaction(tenant.id) as session:
        emit_event(session, tenant.id, "call.ended", {"z": 1.0, "a": "Zoë", "big": 10**20})
    receiver.respond(Reply(500))
    worker = make_worker()
    now = utcnow()
    assert _run_at(worker, clock, now) == 1
    assert _run_at(worker, clock, now + timedelta(seconds=5)) == 1  # the retry

    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        stored = conn.execute(
            text("SELECT body FROM webhook_events WHERE tenant_id = :t"), {"t": tenant.id}
        ).scalar_one()
    assert '"data":{"z":1.0,"a":"Zoë","big":100000000000000000000}' in stored
    assert [got.body for got in receiver.received] == [stored.encode("utf-8")] * 2
    for got in receiver.received:
        assert Webhook(endpoint["secret"]).verify(stored, got.headers) == json.loads(stored)


def test_retry_schedule_then_dead_with_the_same_webhook_id(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    receiver.default = Reply(500, body=b"database down")
    _emit(tenant)
    worker = make_worker()
    now = utcnow()
    schedule: list[timedelta] = []
    assert _run_at(worker, clock, now) == 1
    for attempt in range(2, MAX_ATTEMPTS + 1):
        delivery = _delivery(owner_engine, tenant)
        assert delivery.status == "failed"
        assert delivery.attempt_count == attempt - 1
        schedule.append(delivery.next_attempt_at - now)
        # Not due a microsecond early...
        assert _run_at(worker, clock, delivery.next_attempt_at - timedelta(microseconds=1)) == 0
        # ...and due on time.
        now = delivery.next_attempt_at
        assert _run_at(worker, clock, now) == 1

    assert schedule == [
        timedelta(seconds=5),
        timedelta(minutes=5),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=5),
        timedelta(hours=10),
        timedelta(hours=10),
    ]
    assert tuple(schedule) == RETRY_DELAYS
    delivery = _delivery(owner_engine, tenant)
    assert delivery.status == "dead" and delivery.next_attempt_at is None
    assert delivery.attempt_count == MAX_ATTEMPTS == 8
    assert delivery.last_status_code == 500 and delivery.last_error == "HTTP 500"
    assert _run_at(worker, clock, now + timedelta(days=30)) == 0
    assert receiver.counts_by_id() == {str(delivery.id): 8}
    attempts = _attempts(owner_engine, delivery.id)
    assert [a.attempt_number for a in attempts] == list(range(1, 9))
    assert attempts[0].response_excerpt == "database down"


def test_retry_after_wins_only_when_longer(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    receiver.respond(Reply(503, retry_after="3600"), Reply(429, retry_after="1"), Reply(200))
    _emit(tenant)
    worker = make_worker()
    now = utcnow()
    assert _run_at(worker, clock, now) == 1
    first = _delivery(owner_engine, tenant)
    assert first.next_attempt_at - now == timedelta(hours=1)  # Retry-After 3600 > 5 s
    assert _run_at(worker, clock, now + timedelta(seconds=5)) == 0

    now = first.next_attempt_at
    assert _run_at(worker, clock, now) == 1
    second = _delivery(owner_engine, tenant)
    assert second.last_status_code == 429
    assert second.next_attempt_at - now == timedelta(minutes=5)  # Retry-After 1 < 5 min

    assert _run_at(worker, clock, second.next_attempt_at) == 1
    third = _delivery(owner_engine, tenant)
    assert third.status == "succeeded" and third.attempt_count == 3
    assert len(receiver.counts_by_id()) == 1


def test_redirects_and_timeouts_are_failures(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    receiver.respond(Reply(302), Reply(200, delay=1.5))
    _emit(tenant)
    worker = make_worker(timeout_seconds=0.5)
    now = utcnow()
    _run_at(worker, clock, now)
    delivery = _delivery(owner_engine, tenant)
    assert delivery.status == "failed" and delivery.last_status_code == 302
    assert "redirect" in delivery.last_error

    _run_at(worker, clock, delivery.next_attempt_at)
    delivery = _delivery(owner_engine, tenant)
    assert delivery.status == "failed" and delivery.last_status_code is None
    assert "timed out" in delivery.last_error
    assert delivery.attempt_count == 2


def test_410_disables_the_endpoint(
    client: TestClient,
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
) -> None:
    receiver.respond(Reply(410))
    _emit(tenant, count=2)
    worker = make_worker(batch_size=1)
    assert worker.run_once() == 1
    row = _endpoint_row(owner_engine, endpoint["id"])
    assert row.enabled is False and row.disabled_reason == DISABLED_GONE
    shown = client.get(tenant.url(f"/webhooks/{endpoint['id']}"), headers=tenant.headers).json()
    assert shown["enabled"] is False and shown["disabled_reason"] == DISABLED_GONE

    # The one already queued is not sent; new events create nothing for a disabled endpoint.
    assert worker.run_once() == 1
    assert len(receiver.received) == 1
    statuses = sorted(d.status for d in _deliveries(owner_engine, tenant))
    assert statuses == ["dead", "dead"]
    _emit(tenant)
    assert len(_deliveries(owner_engine, tenant)) == 2

    # Enabling it again clears the reason; the dead ones can be redelivered by hand.
    response = client.patch(
        tenant.url(f"/webhooks/{endpoint['id']}"), json={"enabled": True}, headers=tenant.headers
    )
    assert response.json()["enabled"] is True and response.json()["disabled_reason"] is None


def test_an_endpoint_failing_for_five_days_is_disabled_and_success_resets_the_streak(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    worker = make_worker()
    receiver.respond(Reply(500), Reply(204))
    _emit(tenant)
    start = utcnow()
    _run_at(worker, clock, start)
    assert _endpoint_row(owner_engine, endpoint["id"]).failing_since == start
    _run_at(worker, clock, start + timedelta(seconds=5))
    assert _endpoint_row(owner_engine, endpoint["id"]).failing_since is None

    # A new streak: failing for just under 5 days keeps it enabled, 5 days disables it.
    receiver.default = Reply(503)
    _emit(tenant)
    t0 = utcnow()
    _run_at(worker, clock, t0)
    assert _endpoint_row(owner_engine, endpoint["id"]).failing_since == t0
    _emit(tenant)
    _run_at(worker, clock, t0 + timedelta(days=5) - timedelta(seconds=1))
    assert _endpoint_row(owner_engine, endpoint["id"]).enabled is True
    _emit(tenant)
    _run_at(worker, clock, t0 + timedelta(days=5))
    row = _endpoint_row(owner_engine, endpoint["id"])
    assert row.enabled is False and row.disabled_reason == DISABLED_FAILING
    assert _deliveries(owner_engine, tenant)[-1].status == "dead"


def test_ssrf_is_checked_again_at_delivery(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Registered while private URLs were allowed; refused at delivery once they are not.
    monkeypatch.setattr(settings, "WEBHOOK_ALLOW_PRIVATE_URLS", False)
    _emit(tenant)
    make_worker().run_once()
    delivery = _delivery(owner_engine, tenant)
    assert delivery.status == "failed" and delivery.last_status_code is None
    assert delivery.last_error.startswith("unsafe URL: ")
    assert receiver.received == []


def test_rotated_secret_and_previous_one_both_verify_during_the_grace_period(
    client: TestClient,
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
) -> None:
    old_secret = endpoint["secret"]
    rotated = client.post(
        tenant.url(f"/webhooks/{endpoint['id']}/rotate-secret"), headers=tenant.headers
    ).json()
    new_secret = rotated["secret"]
    assert new_secret != old_secret
    receiver.secret = new_secret
    _emit(tenant)
    make_worker().run_once()
    (got,) = receiver.received
    assert got.verified
    Webhook(old_secret).verify(got.body, got.headers)
    assert len(got.headers["webhook-signature"].split(" ")) == 2


# --- manual redelivery ----------------------------------------------------------------------


def test_dead_delivery_redelivered_by_hand_keeps_its_webhook_id(
    client: TestClient,
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    receiver.default = Reply(500)
    _emit(tenant)
    worker = make_worker()
    now = utcnow()
    for _ in range(MAX_ATTEMPTS):
        assert _run_at(worker, clock, now) == 1
        now += timedelta(hours=10)
    delivery = _delivery(owner_engine, tenant)
    assert delivery.status == "dead"

    receiver.default = Reply(200)
    url = tenant.url(f"/webhooks/{endpoint['id']}/deliveries/{delivery.id}/redeliver")
    response = client.post(url, headers=tenant.headers)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending" and response.json()["attempt_count"] == 0
    assert worker.run_once() == 1

    redelivered = _delivery(owner_engine, tenant)
    assert redelivered.id == delivery.id and redelivered.status == "succeeded"
    assert redelivered.attempt_count == 1
    assert receiver.counts_by_id() == {str(delivery.id): MAX_ATTEMPTS + 1}
    # The log keeps both cycles.
    numbers = [a.attempt_number for a in _attempts(owner_engine, delivery.id)]
    assert numbers == [*range(1, MAX_ATTEMPTS + 1), 1]
    detail = client.get(
        tenant.url(f"/webhooks/{endpoint['id']}/deliveries/{delivery.id}"), headers=tenant.headers
    ).json()
    assert len(detail["attempts"]) == MAX_ATTEMPTS + 1
    assert detail["attempts"][-1]["status_code"] == 200


# --- concurrency, leases, wake-up, shutdown -------------------------------------------------


def test_two_workers_racing_over_1000_deliveries_send_each_exactly_once(
    client: TestClient,
    tenant: TenantFixture,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
) -> None:
    total = 1000
    # The receiver runs in its own process, so the figure printed is the workers' throughput.
    with SubprocessWebhookReceiver() as receiver:
        created = client.post(
            tenant.url("/webhooks"), json={"url": receiver.url()}, headers=tenant.headers
        ).json()
        receiver.secret = created["secret"]
        _emit(tenant, count=total)
        workers = [make_worker(), make_worker()]
        sent = [0, 0]
        errors: list[BaseException] = []
        start = threading.Barrier(len(workers))

        def drain(index: int) -> None:
            try:
                start.wait()
                while (claimed := workers[index].run_once()) > 0:
                    sent[index] += claimed
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(workers))]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        elapsed = time.perf_counter() - began
        assert receiver.wait_for(total, timeout=5.0)
        time.sleep(0.2)  # room for a duplicate to arrive, if there were one
    assert not errors, errors
    assert sum(sent) == total
    assert all(n > 0 for n in sent), sent  # both really took part
    counts = receiver.counts_by_id()
    assert len(counts) == total and set(counts.values()) == {1}
    assert len(receiver.received) == total
    deliveries = _deliveries(owner_engine, tenant)
    assert {d.status for d in deliveries} == {"succeeded"}
    assert set(counts) == {str(d.id) for d in deliveries}
    print(f"\n2 workers, {total} deliveries in {elapsed:.2f} s: {total / elapsed:.0f}/s ({sent})")


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def test_a_claim_probes_indexes_even_when_the_planner_would_rather_hash(
    tenant: TenantFixture,
    endpoint: dict[str, Any],
    owner_engine: Engine,
    app_engine: Engine,
    make_worker: Callable[..., WebhookWorker],
) -> None:
    # 5,000 due deliveries, and planner settings standing in for statistics that make hash joins
    # look cheaper (in the benchmark, stale estimates did this in about half of the runs): a
    # claim must still touch only the rows it takes, never read whole tables.
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        conn.execute(
            text(
                "WITH events AS ("
                " INSERT INTO webhook_events (id, tenant_id, event_type, body)"
                " SELECT gen_random_uuid(), :t, 'webhook.test', '{}'"
                " FROM generate_series(1, 5000) RETURNING id)"
                " INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_id, event_type,"
                " status, attempt_count, next_attempt_at)"
                " SELECT gen_random_uuid(), :t, :e, id, 'webhook.test', 'pending', 0,"
                " now() - interval '1 minute' FROM events"
            ),
            {"t": tenant.id, "e": uuid.UUID(endpoint["id"])},
        )
    now = utcnow()
    params = {
        "now": now,
        "lease_expires_at": now + timedelta(minutes=2),
        "limit": 100,
        "lost_send_error": LOST_SEND_ERROR,
    }
    with app_engine.connect() as conn:
        conn.execute(text("SET LOCAL enable_nestloop = off"))
        conn.execute(text("SET LOCAL enable_mergejoin = off"))
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        for statement in CLAIM_STATEMENTS:
            explained = conn.execute(text("EXPLAIN (FORMAT JSON) " + statement.text), params)
            nodes = list(_plan_nodes(explained.scalar_one()[0]["Plan"]))
            joins = {n["Node Type"] for n in nodes if "Join" in n["Node Type"]}
            scanned = {n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"}
            assert not joins, joins
            assert not scanned & {"webhook_deliveries", "webhook_events"}, scanned
        conn.rollback()
    # And the statement claims what is due, with what a send needs.
    claimed = make_worker().claim(limit=100)
    assert len(claimed) == 100
    assert {c.endpoint_id for c in claimed} == {uuid.UUID(endpoint["id"])}
    assert all(c.body == "{}" and c.url == endpoint["url"] for c in claimed)


def test_a_killed_workers_claim_is_taken_over_after_its_lease_with_the_same_id(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    _emit(tenant)
    killed, survivor = make_worker(), make_worker()
    now = utcnow()
    clock.now = now
    (claim,) = killed.claim()  # ... and it dies before sending
    assert _delivery(owner_engine, tenant).status == "delivering"

    assert _run_at(survivor, clock, now + killed.lease - timedelta(seconds=1)) == 0
    assert _run_at(survivor, clock, now + killed.lease) == 1
    (got,) = receiver.received
    assert got.verified and got.webhook_id == str(claim.id)
    assert _delivery(owner_engine, tenant).status == "succeeded"

    # Had the first worker come back with a result, it could not overwrite the takeover's.
    late = DeliveryResult(
        status_code=500,
        error=None,
        duration_ms=1,
        retry_after_seconds=None,
        response_body_excerpt="",
    )
    with transaction(tenant.id) as session:
        stored = record_delivery_outcomes(
            session, tenant.id, [DeliveryOutcome(claim, late, now + timedelta(seconds=1))]
        )
    assert stored == {}
    assert _delivery(owner_engine, tenant).status == "succeeded"
    # The lost send (attempt 1, outcome unknown) and the takeover's; nothing of the late result.
    lost, taken_over = _attempts(owner_engine, claim.id)
    assert (lost.attempt_number, lost.status_code, lost.error) == (1, None, LOST_SEND_ERROR)
    assert (taken_over.attempt_number, taken_over.status_code) == (2, 204)


def test_a_send_lost_with_its_worker_counts_as_an_attempt_with_its_outcome_unknown(
    client: TestClient,
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    receiver.respond(Reply(500))
    _emit(tenant)
    lost_with, survivor = make_worker(), make_worker()
    now = utcnow()
    clock.now = now
    (lost,) = lost_with.claim()  # ... and its worker dies mid-send: no outcome is ever recorded
    assert lost.attempt_number == 1

    clock.now = lost.lease_expires_at
    (again,) = survivor.claim()
    assert again.id == lost.id and again.attempt_number == 2
    held = _delivery(owner_engine, tenant)
    assert (held.status, held.attempt_count, held.last_status_code) == ("delivering", 1, None)
    assert held.last_error == LOST_SEND_ERROR and held.last_attempt_at == lost.lease_expires_at
    (logged,) = _attempts(owner_engine, lost.id)
    assert (logged.attempt_number, logged.status_code, logged.duration_ms) == (1, None, None)
    assert logged.error == LOST_SEND_ERROR and "outcome unknown" in logged.error
    assert logged.attempted_at == lost.lease_expires_at

    # Attempt 2 fails: it is retried on attempt 2's delay, as any second failed attempt is.
    assert survivor.deliver(again) == "failed"
    failed = _delivery(owner_engine, tenant)
    assert failed.attempt_count == 2 and failed.last_status_code == 500
    assert failed.next_attempt_at - clock.now == RETRY_DELAYS[1]
    assert [a.attempt_number for a in _attempts(owner_engine, lost.id)] == [1, 2]
    assert receiver.counts_by_id() == {str(lost.id): 1}
    # The tenant's delivery log shows the lost attempt too, its duration unknown.
    detail = client.get(
        tenant.url(f"/webhooks/{endpoint['id']}/deliveries/{lost.id}"), headers=tenant.headers
    ).json()
    shown = detail["attempts"][0]
    assert (shown["attempt_number"], shown["status_code"], shown["duration_ms"]) == (1, None, None)
    assert shown["error"] == LOST_SEND_ERROR


def test_a_delivery_that_kills_every_worker_is_dead_after_max_attempts(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    # A "poison" delivery: every worker that takes it is lost before recording an outcome.
    _emit(tenant)
    now = utcnow()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        clock.now = now
        (claim,) = make_worker().claim()
        assert claim.attempt_number == attempt
        now = claim.lease_expires_at

    # The last lease expires: out of attempts, it is dead instead of being claimed again.
    survivor = make_worker()
    assert _run_at(survivor, clock, now) == 0
    dead = _delivery(owner_engine, tenant)
    assert (dead.status, dead.attempt_count) == ("dead", MAX_ATTEMPTS)
    assert dead.last_error == LOST_SEND_ERROR and dead.last_status_code is None
    assert dead.lease_expires_at is None and dead.next_attempt_at is None
    attempts = _attempts(owner_engine, dead.id)
    assert [a.attempt_number for a in attempts] == list(range(1, MAX_ATTEMPTS + 1))
    assert {(a.status_code, a.error) for a in attempts} == {(None, LOST_SEND_ERROR)}
    assert _run_at(survivor, clock, now + timedelta(days=30)) == 0
    assert receiver.received == []


def _given_back(worker: WebhookWorker, clock: Clock) -> tuple[datetime, ClaimedDelivery]:
    """Claim the one due delivery, then deliver it with too little lease left: it is given back
    unsent. Returns the claim's time and the claim."""
    now = utcnow()
    clock.now = now
    (claim,) = worker.claim()
    clock.now = now + worker.lease - timedelta(seconds=10)
    assert worker.deliver(claim) is None
    return now, claim


def test_a_claim_given_back_unsent_is_not_counted_but_a_lost_one_is(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    _emit(tenant)
    worker = make_worker()
    now, claim = _given_back(worker, clock)
    given_back = _delivery(owner_engine, tenant)
    assert (given_back.status, given_back.attempt_count) == ("pending", 0)
    assert _attempts(owner_engine, claim.id) == []

    # Claimed again as attempt 1 (the release did not count); this worker is lost mid-send.
    clock.now = now
    (lost,) = worker.claim()
    assert lost.attempt_number == 1
    clock.now = lost.lease_expires_at
    (again,) = worker.claim()
    assert again.attempt_number == 2  # the lost send counted, the release before it did not
    assert worker.deliver(again) == "succeeded"
    numbers = [(a.attempt_number, a.status_code) for a in _attempts(owner_engine, claim.id)]
    assert numbers == [(1, None), (2, 204)]
    assert receiver.counts_by_id() == {str(claim.id): 1}


def _crash(worker: WebhookWorker, clock: Clock, now: datetime) -> list[ClaimedDelivery]:
    """The worker claims at `now` and dies before recording any outcome; the clock moves on to
    when its claims' lease expires."""
    clock.now = now
    claimed = worker.claim()
    if claimed:
        clock.now = claimed[0].lease_expires_at
    return claimed


def test_a_lease_taken_back_is_claimed_alone_and_nothing_more_until_its_outcome_is_stored(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    _emit(tenant, count=3)
    lost = _crash(make_worker(), clock, utcnow())
    assert len(lost) == 3
    _emit(tenant, count=2)  # due, never claimed
    first_lease = lost[0].lease_expires_at

    (alone,) = make_worker().claim()  # one of the lost batch, and nothing else
    assert alone.taken_over and alone.id in {c.id for c in lost} and alone.attempt_number == 2
    rows = _deliveries(owner_engine, tenant)
    held = [r for r in rows if r.lease_expires_at == alone.lease_expires_at]
    assert [r.id for r in held] == [alone.id]
    untouched = [r for r in rows if r.id != alone.id]
    assert sorted((r.status, r.attempt_count) for r in untouched) == [
        ("delivering", 0),
        ("delivering", 0),
        ("pending", 0),
        ("pending", 0),
    ]
    assert all(r.lease_expires_at == first_lease for r in untouched if r.status == "delivering")

    # A running worker sends the other two lost ones one at a time, each outcome stored before
    # it claims anything else; then the due ones, as one batch, concurrently.
    delay = 0.4
    receiver.default = Reply(204, delay=delay)
    worker = make_worker(poll_interval=60.0)
    thread = threading.Thread(target=worker.run_forever)
    thread.start()
    try:
        assert receiver.wait_for(4, timeout=10.0)
        time.sleep(2 * delay)
    finally:
        worker.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    arrivals = sorted(receiver.received, key=lambda r: r.monotonic)
    lost_ids = {str(c.id) for c in lost} - {str(alone.id)}
    assert {r.webhook_id for r in arrivals[:2]} == lost_ids
    gaps = [b.monotonic - a.monotonic for a, b in itertools.pairwise(arrivals)]
    assert gaps[0] >= delay and gaps[1] >= delay, gaps  # each waited for the one before
    assert gaps[2] < delay, gaps  # the due ones: sent together
    (still_held,) = [r for r in _deliveries(owner_engine, tenant) if r.status == "delivering"]
    assert still_held.id == alone.id  # claimed above and never sent: its lease runs
    assert len(receiver.received) == 4


def test_a_poison_delivery_ends_dead_alone_and_its_batch_mates_are_delivered(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    # One delivery kills every worker that sends it; four innocent ones were claimed with it.
    _emit(tenant, count=5)
    first = _crash(make_worker(), clock, utcnow())
    assert len(first) == 5
    poison = first[0].id
    for _ in range(50):
        worker = make_worker()
        claimed = worker.claim()
        if not claimed:
            break
        if poison in {c.id for c in claimed}:
            # This worker dies sending it: all it holds is lost with it.
            assert [c.id for c in claimed] == [poison]
            clock.now = claimed[0].lease_expires_at
            continue
        for item in claimed:
            assert worker.deliver(item) == "succeeded"
    else:
        pytest.fail("the deliveries never settled")

    rows = {r.id: r for r in _deliveries(owner_engine, tenant)}
    dead = rows.pop(poison)
    assert (dead.status, dead.attempt_count) == ("dead", MAX_ATTEMPTS)
    assert {(a.status_code, a.error) for a in _attempts(owner_engine, poison)} == {
        (None, LOST_SEND_ERROR)
    }
    assert len(rows) == 4
    for innocent in rows.values():
        # Only the first crash, which it shared, cost it an attempt.
        assert (innocent.status, innocent.attempt_count) == ("succeeded", 2)
        attempts = [(a.attempt_number, a.status_code) for a in _attempts(owner_engine, innocent.id)]
        assert attempts == [(1, None), (2, 204)]
    assert receiver.counts_by_id() == {str(i): 1 for i in rows}


def test_with_no_lease_to_take_back_a_claim_batches_the_due_deliveries(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    _emit(tenant)
    (lost,) = _crash(make_worker(), clock, utcnow())
    _emit(tenant, count=5)
    worker = make_worker(batch_size=4)
    (alone,) = worker.claim()  # the expired lease first, alone
    assert alone.id == lost.id and alone.taken_over
    assert worker.deliver(alone) == "succeeded"

    # None left to take back: due deliveries come in batches again, up to the batch size.
    batch = worker.claim()
    assert len(batch) == 4 and not any(c.taken_over for c in batch)
    assert len({c.lease_expires_at for c in batch}) == 1
    (rest,) = worker.claim()
    assert not rest.taken_over
    assert worker.claim() == []


def test_redelivery_is_refused_while_a_worker_holds_the_delivery(
    client: TestClient,
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    make_worker: Callable[..., WebhookWorker],
) -> None:
    _emit(tenant)
    (claim,) = make_worker().claim()
    url = tenant.url(f"/webhooks/{endpoint['id']}/deliveries/{claim.id}/redeliver")
    response = client.post(url, headers=tenant.headers)
    assert response.status_code == 409
    assert response.json()["code"] == "delivery_in_progress"


def test_a_claim_near_the_end_of_its_lease_is_given_back_not_sent(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    _emit(tenant)
    worker = make_worker()
    now, claim = _given_back(worker, clock)
    assert receiver.received == []
    delivery = _delivery(owner_engine, tenant)
    assert delivery.status == "pending" and delivery.lease_expires_at is None
    assert _run_at(worker, clock, now) == 1
    assert receiver.counts_by_id() == {str(delivery.id): 1}


def test_notify_wakes_a_waiting_worker_well_under_a_second(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
) -> None:
    # A 60 s poll interval: only the NOTIFY can explain a prompt delivery.
    worker = make_worker(poll_interval=60.0)
    thread = threading.Thread(target=worker.run_forever)
    thread.start()
    try:
        time.sleep(0.5)  # let it claim nothing and start waiting
        latencies = []
        for expected in (1, 2, 3):
            began = time.monotonic()
            _emit(tenant)
            assert receiver.wait_for(expected, timeout=5.0)
            latencies.append(receiver.received[-1].monotonic - began)
            time.sleep(0.1)
        assert max(latencies) < 0.5, latencies
        print(f"\nNOTIFY -> received: {', '.join(f'{s * 1000:.0f} ms' for s in latencies)}")
    finally:
        stopped = time.monotonic()
        worker.stop()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - stopped < 1.0
    assert all(r.verified for r in receiver.received)


def test_stopping_finishes_the_send_in_progress_and_gives_back_the_rest(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
) -> None:
    receiver.respond(Reply(200, delay=0.5))
    _emit(tenant, count=5)
    worker = make_worker(concurrency=1, poll_interval=60.0)
    thread = threading.Thread(target=worker.run_forever)
    thread.start()
    assert receiver.wait_for(1, timeout=5.0)
    worker.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    statuses = sorted(d.status for d in _deliveries(owner_engine, tenant))
    assert statuses == ["pending"] * 4 + ["succeeded"]
    assert len(receiver.received) == 1


def test_sigterm_stops_the_worker_process_cleanly(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    owner_engine: Engine,
) -> None:
    receiver.respond(Reply(200, delay=1.0))
    process = subprocess.Popen(
        [sys.executable, "-m", "app.worker"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _emit(tenant)
        assert receiver.wait_for(1, timeout=15.0, verified=True), "the worker never delivered"
        process.send_signal(signal.SIGTERM)
        sent_at = time.monotonic()
        output, _ = process.communicate(timeout=15)
        elapsed = time.monotonic() - sent_at
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output.decode(errors="replace")
    # It finished the send it held (the receiver answered after 1 s) and recorded it.
    delivery = _delivery(owner_engine, tenant)
    assert delivery.status == "succeeded", delivery
    assert elapsed < 5.0, elapsed


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "app.worker"], cwd=ROOT, env=env, stdout=out, stderr=out
        )


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_drill_worker_killed_mid_delivery_sends_it_again_once_after_the_lease(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    owner_engine: Engine,
    tmp_path: Path,
) -> None:
    """Fault drill: a worker process is SIGKILLed while the receiver holds its request open; two
    fresh workers find the claim, and once its lease has run out one of them sends it again."""
    # A short lease through the settings, as an operator would set it (2 s to answer + 5 s margin).
    env = {**os.environ, "WEBHOOK_TIMEOUT_SECONDS": "2", "WEBHOOK_LEASE_SECONDS": "8"}
    # Held past the worker's timeout: the worker cannot have an answer before it is killed.
    receiver.respond(Reply(200, delay=5.0))
    processes = [_start_worker(env, tmp_path / "killed.log")]
    try:
        (call_id,) = _emit(tenant)
        assert receiver.wait_for(1, timeout=30.0, verified=True), "the worker never sent it"
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(timeout=5)
        held = _delivery(owner_engine, tenant)
        lease_ends = time.monotonic() + (held.lease_expires_at - utcnow()).total_seconds()
        assert held.status == "delivering" and held.attempt_count == 0, held
        processes += [_start_worker(env, tmp_path / f"fresh-{n}.log") for n in (1, 2)]

        assert receiver.wait_for(2, timeout=30.0, verified=True), "never sent again"
        deadline = time.monotonic() + 5.0
        while _delivery(owner_engine, tenant).status == "delivering":
            assert time.monotonic() < deadline, "the second send was never recorded"
            time.sleep(0.05)
        time.sleep(1.5)  # more than a poll of both workers: room for a third send, were there one
        assert all(process.poll() is None for process in processes[1:])
    finally:
        _stop_all(processes)
    first, again = receiver.received[:2]
    assert len(receiver.received) == 2, [r.webhook_id for r in receiver.received]
    # The same delivery, same id and bytes, sent again only after the lease (wall and monotonic
    # clocks read a moment apart: a tenth of a second of slack).
    assert first.webhook_id == again.webhook_id == str(held.id)
    assert first.body == again.body and again.payload["data"] == {"call_id": call_id}
    assert again.monotonic >= lease_ends - 0.1, again.monotonic - lease_ends
    delivered = _delivery(owner_engine, tenant)
    assert (delivered.status, delivered.attempt_count, delivered.last_status_code) == (
        "succeeded",
        2,
        204,
    )
    assert delivered.lease_expires_at is None and delivered.delivered_at is not None
    # The killed send counts as attempt 1, its outcome unknown, given up when its lease expired;
    # the takeover's is attempt 2.
    lost, attempt = _attempts(owner_engine, held.id)
    assert (lost.attempt_number, lost.status_code, lost.error) == (1, None, LOST_SEND_ERROR)
    assert lost.duration_ms is None and lost.attempted_at == held.lease_expires_at
    assert (attempt.attempt_number, attempt.status_code, attempt.error) == (2, 204, None)
    print(f"\nkilled -> sent again: {again.monotonic - first.monotonic:.1f} s (lease 8 s)")


def test_end_to_end_latency_is_measured_from_commit_to_receipt(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
) -> None:
    # The "within a second" promise for a run_forever worker with the default 1 s poll interval.
    worker = make_worker()
    thread = threading.Thread(target=worker.run_forever)
    thread.start()
    try:
        time.sleep(0.3)
        began = time.monotonic()
        _emit(tenant)
        assert receiver.wait_for(1, timeout=5.0)
        assert receiver.received[0].monotonic - began < 1.0
    finally:
        worker.stop()
        thread.join(timeout=5)


# --- end to end -----------------------------------------------------------------------------


def test_a_receiver_that_is_down_for_a_while_still_gets_the_event_later(
    client: TestClient,
    tenant: TenantFixture,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    clock: Clock,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on (yet)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    created = client.post(
        tenant.url("/webhooks"),
        json={"url": f"http://127.0.0.1:{port}/hooks"},
        headers=tenant.headers,
    ).json()
    (call_id,) = _emit(tenant)
    worker = make_worker()
    now = utcnow()
    _run_at(worker, clock, now)
    _run_at(worker, clock, now + timedelta(seconds=5))
    down = _delivery(owner_engine, tenant)
    assert down.status == "failed" and down.attempt_count == 2
    assert down.last_status_code is None and "connect" in down.last_error.lower()

    with WebhookReceiver(created["secret"], port=port) as receiver:
        assert _run_at(worker, clock, down.next_attempt_at) == 1
        (got,) = receiver.received
    assert got.verified and got.webhook_id == str(down.id)
    assert got.payload["data"] == {"call_id": call_id}
    assert _delivery(owner_engine, tenant).status == "succeeded"
    assert _endpoint_row(owner_engine, created["id"]).failing_since is None


def test_a_call_ended_by_twilio_reaches_the_receiver_once_within_a_second(
    client: TestClient,
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
) -> None:
    setup = create_number_and_profile(tenant.id)
    sid = twilio_call_sid()
    answered = twilio_post(
        client,
        "/telephony/twilio/voice",
        {"CallSid": sid, "From": random_e164(), "To": setup.number},
    )
    assert answered.status_code == 200, answered.text
    worker = make_worker()
    thread = threading.Thread(target=worker.run_forever)
    thread.start()
    try:
        time.sleep(0.3)
        began = time.monotonic()
        completed = {
            "CallSid": sid,
            "CallStatus": "completed",
            "CallDuration": "42",
            "AccountSid": os.environ["TWILIO_ACCOUNT_SID"],
        }
        for _ in range(2):  # Twilio retries: the call ends, and is announced, once
            assert twilio_post(client, "/telephony/twilio/status", completed).status_code == 200
        assert receiver.wait_for(1, timeout=5.0)
        latency = receiver.received[0].monotonic - began
        time.sleep(0.3)  # room for a duplicate to show up, if there were one
    finally:
        worker.stop()
        thread.join(timeout=5)
    ended = [r for r in receiver.received if r.payload and r.payload["type"] == "call.ended"]
    assert len(ended) == 1 and ended[0].verified
    assert ended[0].payload["data"]["call"]["provider_call_sid"] == sid
    assert ended[0].payload["data"]["call"]["duration_seconds"] == 42
    assert latency < 1.0, latency
