"""Idempotency-Key on POSTs (SPEC 4): a retry is answered with the first response, never re-run."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.config.settings import settings
from app.models.base import utcnow
from app.services.idempotency import prune_expired
from tests.fakes.fake_twilio import FakeTwilio
from tests.helpers import TenantFixture, count_tenant_rows, create_number_and_profile, random_e164


@pytest.fixture
def fake_twilio(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTwilio]:
    with FakeTwilio(os.environ["TWILIO_ACCOUNT_SID"], os.environ["TWILIO_AUTH_TOKEN"]) as fake:
        monkeypatch.setattr(settings, "TWILIO_API_BASE_URL", fake.base_url)
        yield fake


def _post(
    client: TestClient, url: str, body: dict[str, Any], headers: dict[str, str], key: str
) -> Any:
    return client.post(url, json=body, headers={**headers, "Idempotency-Key": key})


def _profile(name: str = "Receptionist") -> dict[str, Any]:
    return {"name": name, "system_prompt": "Be brief."}


def test_a_retry_replays_the_first_response_exactly(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    key = str(uuid.uuid4())
    first = _post(client, tenant.url("/ai-profiles"), _profile(), tenant.headers, key)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = _post(client, tenant.url("/ai-profiles"), _profile(), tenant.headers, key)
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert count_tenant_rows(owner_engine, "ai_profiles", tenant.id) == 1
    # Another of the tenant's API keys shares the key space (one tenant, one set of keys).
    other_key = client.post(tenant.url("/api-keys"), json={"name": "b"}, headers=tenant.headers)
    headers = {"Authorization": f"Bearer {other_key.json()['key']}"}
    third = _post(client, tenant.url("/ai-profiles"), _profile(), headers, key)
    assert third.content == first.content and third.headers["idempotent-replayed"] == "true"
    # The key is stored only as its hash.
    with owner_engine.connect() as conn:
        assert (
            conn.scalar(
                text("SELECT count(*) FROM idempotency_keys WHERE key_hash = :k"), {"k": key}
            )
            == 0
        )


def test_the_same_key_with_another_body_or_route_is_422(
    client: TestClient, tenant: TenantFixture
) -> None:
    key = str(uuid.uuid4())
    assert (
        _post(client, tenant.url("/ai-profiles"), _profile(), tenant.headers, key).status_code
        == 201
    )
    for url, body in (
        (tenant.url("/ai-profiles"), _profile("Other")),
        (tenant.url("/webhooks"), {"url": "https://example.com/hook"}),
    ):
        response = _post(client, url, body, tenant.headers, key)
        assert response.status_code == 422
        assert response.json()["code"] == "idempotency_key_reused"


def test_keys_of_one_tenant_never_answer_another(
    client: TestClient,
    tenant: TenantFixture,
    other_tenant: TenantFixture,
    admin_headers: dict[str, str],
) -> None:
    key = str(uuid.uuid4())
    mine = _post(client, tenant.url("/ai-profiles"), _profile(), tenant.headers, key)
    theirs = _post(client, other_tenant.url("/ai-profiles"), _profile(), other_tenant.headers, key)
    assert theirs.status_code == 201 and "idempotent-replayed" not in theirs.headers
    assert theirs.json()["id"] != mine.json()["id"]
    # The platform admin has its own key space, even on the tenant's path.
    admin = _post(client, tenant.url("/ai-profiles"), _profile("Admin's"), admin_headers, key)
    assert admin.status_code == 201 and "idempotent-replayed" not in admin.headers


def test_an_invalid_key_is_422(client: TestClient, tenant: TenantFixture) -> None:
    for key in (b"", b"x" * 256, "clé".encode("latin-1"), b"a\x01b"):
        headers: dict[str, Any] = {**tenant.headers, "Idempotency-Key": key}
        response = client.post(tenant.url("/ai-profiles"), json=_profile(), headers=headers)
        assert response.status_code == 422, key
        assert response.json()["code"] == "invalid_idempotency_key"


def test_a_retried_outbound_call_reaches_twilio_once(
    client: TestClient, tenant: TenantFixture, fake_twilio: FakeTwilio, owner_engine: Engine
) -> None:
    setup = create_number_and_profile(tenant.id)
    body = {"to": random_e164(), "phone_number_id": str(setup.number_id)}
    key = str(uuid.uuid4())
    first = _post(client, tenant.url("/calls"), body, tenant.headers, key)
    assert first.status_code == 201, first.text
    for _ in range(3):
        retry = _post(client, tenant.url("/calls"), body, tenant.headers, key)
        assert retry.status_code == 201 and retry.content == first.content
    assert len(fake_twilio.requests) == 1
    assert count_tenant_rows(owner_engine, "calls", tenant.id) == 1


def test_a_retry_while_the_first_is_running_is_409_and_twilio_is_called_once(
    client: TestClient, tenant: TenantFixture, fake_twilio: FakeTwilio
) -> None:
    setup = create_number_and_profile(tenant.id)
    body = {"to": random_e164(), "phone_number_id": str(setup.number_id)}
    key = str(uuid.uuid4())
    released = fake_twilio.stall_calls()
    results: list[Any] = []
    first = threading.Thread(
        target=lambda: results.append(
            _post(client, tenant.url("/calls"), body, tenant.headers, key)
        )
    )
    first.start()
    try:
        deadline = time.monotonic() + 10
        while not fake_twilio.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        # The reservation has committed and Twilio is answering: the key is in flight.
        retry = _post(client, tenant.url("/calls"), body, tenant.headers, key)
        assert retry.status_code == 409
        assert retry.json()["code"] == "idempotency_key_in_use"
        assert retry.headers["retry-after"] == "1"
    finally:
        released.set()
        first.join(10)
    assert results[0].status_code == 201
    replay = _post(client, tenant.url("/calls"), body, tenant.headers, key)
    assert replay.content == results[0].content
    assert len(fake_twilio.requests) == 1


def test_a_5xx_is_not_stored_and_the_retry_runs_again(
    client: TestClient, tenant: TenantFixture, fake_twilio: FakeTwilio
) -> None:
    setup = create_number_and_profile(tenant.id)
    body = {"to": random_e164(), "phone_number_id": str(setup.number_id)}
    key = str(uuid.uuid4())
    fake_twilio.fail_next(500)
    assert _post(client, tenant.url("/calls"), body, tenant.headers, key).status_code == 502
    retry = _post(client, tenant.url("/calls"), body, tenant.headers, key)
    assert retry.status_code == 201 and "idempotent-replayed" not in retry.headers
    assert len(fake_twilio.requests) == 2


def test_a_4xx_is_stored_like_any_answer(client: TestClient, tenant: TenantFixture) -> None:
    key = str(uuid.uuid4())
    body = {"number": "not a number"}
    first = _post(client, tenant.url("/phone-numbers"), body, tenant.headers, key)
    assert first.status_code == 422
    again = _post(client, tenant.url("/phone-numbers"), body, tenant.headers, key)
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"


def test_two_identical_racing_requests_create_one_row(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    key = str(uuid.uuid4())
    body = {"number": random_e164()}
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda _: _post(client, tenant.url("/phone-numbers"), body, tenant.headers, key),
                range(6),
            )
        )
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {201, 409}, [a.text for a in answers]
    created = [a for a in answers if a.status_code == 201]
    assert len({a.json()["id"] for a in created}) == 1
    assert count_tenant_rows(owner_engine, "phone_numbers", tenant.id) == 1


def test_keys_expire_after_24_hours_and_the_worker_prunes_them(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine, admin_headers: dict[str, str]
) -> None:
    key = str(uuid.uuid4())
    first = _post(client, tenant.url("/ai-profiles"), _profile(), tenant.headers, key)
    admin = _post(
        client,
        "/api/v1/tenants",
        {"name": "A", "slug": f"s-{uuid.uuid4().hex[:8]}"},
        admin_headers,
        key,
    )
    assert first.status_code == admin.status_code == 201
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))  # RLS is forced
        for table in ("idempotency_keys", "admin_idempotency_keys"):
            conn.execute(text(f"UPDATE {table} SET created_at = created_at - interval '25 hours'"))  # noqa: S608 - constant table names
    # Past its lifetime a key is new again, pruned or not.
    again = _post(client, tenant.url("/ai-profiles"), _profile(), tenant.headers, key)
    assert again.status_code == 201 and again.json()["id"] != first.json()["id"], (
        again.headers,
        again.text,
    )
    assert prune_expired(utcnow() + timedelta(hours=25)) >= 2
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        for table in ("idempotency_keys", "admin_idempotency_keys"):
            stale = conn.scalar(
                text(f"SELECT count(*) FROM {table} WHERE created_at < now() - interval '24 hours'")  # noqa: S608
            )
            assert stale == 0
