"""Webhook secrets encrypted at rest, their key rotation, and the worker's webhook retention
(SPEC §11, issue 18 points 5 and 6)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import Engine, text
from standardwebhooks import Webhook
from starlette.testclient import TestClient

from app import crypto
from app.cli import main as cli
from app.config.database import transaction
from app.config.settings import settings
from app.models.base import utcnow
from app.webhooks import retention
from app.webhooks.delivery import DeliveryOutcome, record_delivery_outcomes
from app.webhooks.sender import DeliveryResult
from app.worker import WebhookWorker
from tests.fakes.receiver import Reply, WebhookReceiver
from tests.helpers import TenantFixture
from tests.services import test_webhook_worker as worker_tests

# The webhook worker tests' fixtures and helpers (an empty outbox per test, a verifying receiver).
empty_outbox = worker_tests.empty_outbox
endpoint = worker_tests.endpoint
make_worker = worker_tests.make_worker
receiver = worker_tests.receiver
_attempts = worker_tests._attempts
_deliveries = worker_tests._deliveries
_delivery = worker_tests._delivery
_emit = worker_tests._emit


# The owner role is under RLS too (FORCE): the raw tables, every tenant's rows.
SYSTEM = text("SELECT set_config('app.system', 'on', true)")


def _endpoint_secrets(owner_engine: Engine, endpoint_id: str) -> tuple[str, str | None]:
    with owner_engine.begin() as conn:
        conn.execute(SYSTEM)
        row = conn.execute(
            text("SELECT secret, previous_secret FROM webhook_endpoints WHERE id = :e"),
            {"e": endpoint_id},
        ).one()
    return row.secret, row.previous_secret


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set ENCRYPTION_KEYS for the test; afterwards the suite's key encrypts again and every key
    the test used still decrypts (rows it rewrote stay readable for later tests)."""
    original = settings.ENCRYPTION_KEYS
    used: list[str] = []

    def use(value: str) -> None:
        used.extend(k for k in value.split(",") if k not in used)
        monkeypatch.setattr(settings, "ENCRYPTION_KEYS", value)
        crypto.reset_keys()

    yield use
    monkeypatch.setattr(settings, "ENCRYPTION_KEYS", ",".join([original or "", *used]).strip(","))
    crypto.reset_keys()


# --- secrets at rest --------------------------------------------------------------------------


def test_no_secret_is_stored_in_plaintext(
    client: TestClient, tenant: TenantFixture, receiver: WebhookReceiver, owner_engine: Engine
) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "create-" + secrets.token_hex(8)}
    created = client.post(tenant.url("/webhooks"), json={"url": receiver.url()}, headers=headers)
    assert created.status_code == 201, created.text
    first = created.json()["secret"]
    rotated = client.post(
        tenant.url(f"/webhooks/{created.json()['id']}/rotate-secret"), headers=tenant.headers
    )
    second = rotated.json()["secret"]

    with owner_engine.begin() as conn:
        conn.execute(SYSTEM)
        dump = conn.execute(
            text("SELECT row_to_json(e)::text FROM webhook_endpoints e WHERE id = :e"),
            {"e": created.json()["id"]},
        ).scalar_one()
        stored_responses = conn.execute(
            text("SELECT response_body FROM idempotency_keys WHERE tenant_id = :t"),
            {"t": tenant.id},
        ).scalars()
        stored = b"".join(bytes(body) for body in stored_responses if body)
    for plaintext in (first, second):
        assert plaintext not in dump
        # Not even the key inside it (base64 after `whsec_`).
        assert plaintext.removeprefix("whsec_") not in dump
        assert plaintext.encode() not in stored
    stored_secret, stored_previous = _endpoint_secrets(owner_engine, created.json()["id"])
    assert stored_secret.startswith("gAAAAA") and stored_previous
    assert stored_previous.startswith("gAAAAA")
    # The idempotent replay still answers with the secret (decrypted for it).
    replay = client.post(tenant.url("/webhooks"), json={"url": receiver.url()}, headers=headers)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["secret"] == first

    # The database refuses plaintext written after migration 0017 (legacy rows are grandfathered).
    with (
        pytest.raises(Exception, match="ck_webhook_endpoints_secret_encrypted"),
        owner_engine.begin() as conn,
    ):
        conn.execute(SYSTEM)
        conn.execute(
            text("UPDATE webhook_endpoints SET secret = :s WHERE id = :e"),
            {"s": first, "e": created.json()["id"]},
        )


def test_legacy_plaintext_is_read_and_then_encrypted() -> None:
    assert crypto.decrypt("whsec_legacy") == "whsec_legacy"
    token = crypto.reencrypt("whsec_legacy")
    assert token.startswith("gAAAAA") and crypto.decrypt(token) == "whsec_legacy"


def test_rotation_with_two_keys(
    client: TestClient,
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    keys: Callable[[str], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    old = settings.encryption_keys[0]
    new = Fernet.generate_key().decode()
    # The endpoint's secret was encrypted with `old`; the new key goes first.
    keys(f"{new},{old}")
    _emit(tenant)
    assert make_worker().run_once() == 1
    assert receiver.received[-1].verified  # old rows readable

    assert cli(["rotate-encryption-key", "--batch-size", "2"]) == 0
    assert "re-encrypted" in capsys.readouterr().out
    stored, _ = _endpoint_secrets(owner_engine, endpoint["id"])
    assert Fernet(new).decrypt(stored.encode()).decode() == endpoint["secret"]
    with pytest.raises(InvalidToken):
        Fernet(old).decrypt(stored.encode())

    keys(new)  # the old key removed
    _emit(tenant)
    assert make_worker().run_once() == 1
    got = receiver.received[-1]
    assert got.verified
    assert Webhook(endpoint["secret"]).verify(got.body, got.headers)


def test_a_secret_no_key_decrypts_fails_its_delivery_only(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
    keys: Callable[[str], None],
) -> None:
    keys(Fernet.generate_key().decode())  # the key of the stored secret removed too early
    _emit(tenant)
    assert make_worker().run_once() == 1
    assert receiver.received == []
    delivery = _delivery(owner_engine, tenant)
    assert delivery.status == "failed" and "ENCRYPTION_KEYS" in delivery.last_error
    # The CLI says what to do, in one line.
    assert cli(["rotate-encryption-key"]) == 2


def test_the_development_key_is_a_fernet_key() -> None:
    Fernet(crypto.development_key("x" * 40))
    assert crypto.development_key("a") != crypto.development_key("b")
    assert len(base64.urlsafe_b64decode(crypto.development_key("a"))) == len(
        hashlib.sha256().digest()
    )


# --- retention --------------------------------------------------------------------------------


def _counts(owner_engine: Engine) -> tuple[int, int, int]:
    with owner_engine.begin() as conn:
        conn.execute(SYSTEM)
        conn.execute(SYSTEM)
        return tuple(  # type: ignore[return-value]
            conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608
            for table in ("webhook_events", "webhook_deliveries", "webhook_delivery_attempts")
        )


def test_retention_deletes_only_what_was_delivered_long_ago(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
) -> None:
    _emit(tenant, count=3)
    worker = make_worker()
    assert worker.run_once() == 3  # succeeded
    receiver.default = Reply(500)
    _emit(tenant)
    assert worker.run_once() == 1  # failed, retried later: not finished
    _emit(tenant)  # pending, never tried
    assert _counts(owner_engine) == (5, 5, 4)

    now = utcnow()
    assert retention.purge_expired(now + timedelta(days=29), batch_size=2) == (0, 0)
    assert _counts(owner_engine) == (5, 5, 4)
    assert retention.purge_expired(now + timedelta(days=31), batch_size=2) == (3, 3)
    assert _counts(owner_engine) == (2, 2, 1)
    assert {d.status for d in _deliveries(owner_engine, tenant)} == {"failed", "pending"}


def test_retention_skips_a_locked_delivery_instead_of_waiting(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
) -> None:
    _emit(tenant, count=2)
    assert make_worker().run_once() == 2
    held, free = _deliveries(owner_engine, tenant)
    with owner_engine.connect() as conn, conn.begin():
        conn.execute(text("SET LOCAL app.system = 'on'"))
        conn.execute(
            text("SELECT 1 FROM webhook_deliveries WHERE id = :d FOR UPDATE"), {"d": held.id}
        )
        started = time.monotonic()
        result: list[tuple[int, int]] = []
        purge = threading.Thread(
            target=lambda: result.append(retention.purge_expired(utcnow() + timedelta(days=31)))
        )
        purge.start()
        purge.join(10)
        assert result == [(1, 1)] and time.monotonic() - started < 5
    assert [d.id for d in _deliveries(owner_engine, tenant)] == [held.id]
    assert free.id != held.id


# --- a receiver's bytes ---------------------------------------------------------------------


def test_nul_and_invalid_utf8_in_a_response_are_stored(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    receiver: WebhookReceiver,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
) -> None:
    receiver.respond(Reply(500, body=b"bad\x00body\xff\xfe\xc3"), Reply(200, body=b"ok"))
    _emit(tenant, count=2)  # both outcomes are recorded in one batch
    assert make_worker().run_once() == 2
    deliveries = _deliveries(owner_engine, tenant)
    assert sorted(d.status for d in deliveries) == ["failed", "succeeded"]
    excerpts = [a.response_excerpt for d in deliveries for a in _attempts(owner_engine, d.id)]
    assert "bad\ufffdbody\ufffd\ufffd\ufffd" in excerpts and "ok" in excerpts


def test_a_result_holding_nul_does_not_fail_its_batch(
    endpoint: dict[str, Any],
    tenant: TenantFixture,
    make_worker: Callable[..., WebhookWorker],
    owner_engine: Engine,
) -> None:
    _emit(tenant, count=2)
    worker = make_worker()
    first, second = worker.claim()
    bad = DeliveryResult(500, "reset\x00by peer \udcff", 3, None, "x\x00y")
    good = DeliveryResult(204, None, 3, None, "")
    with transaction(tenant.id) as session:
        stored = record_delivery_outcomes(
            session,
            tenant.id,
            [DeliveryOutcome(first, bad, utcnow()), DeliveryOutcome(second, good, utcnow())],
        )
    assert stored == {first.id: "failed", second.id: "succeeded"}
    (attempt,) = _attempts(owner_engine, first.id)
    assert attempt.response_excerpt == "x\ufffdy" and "\x00" not in attempt.error
