from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.security import hash_key
from tests.helpers import TenantFixture


def _create(client: TestClient, tenant: TenantFixture, **body: object) -> dict:  # type: ignore[type-arg]
    response = client.post(
        tenant.url("/api-keys"), json={"name": "k", **body}, headers=tenant.headers
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_key_is_shown_once_and_stored_only_as_a_hash(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    created = _create(client, tenant, role="read_only")
    key = created["key"]
    assert key.startswith(f"vca_{created['prefix']}_") and len(key.split("_", 2)[2]) >= 32
    listed = client.get(tenant.url("/api-keys"), headers=tenant.headers).json()["items"]
    assert all("key" not in item and "key_hash" not in item for item in listed)
    assert created["id"] in {item["id"] for item in listed}
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        stored = conn.execute(
            text("SELECT key_hash FROM api_keys WHERE id = :id"), {"id": created["id"]}
        ).scalar_one()
    assert stored == hash_key(key) and key not in stored


def test_read_only_key_reads_but_cannot_write(client: TestClient, tenant: TenantFixture) -> None:
    key = _create(client, tenant, role="read_only")["key"]
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get(tenant.url(), headers=headers).status_code == 200
    assert (
        client.post(tenant.url("/api-keys"), json={"name": "x"}, headers=headers).status_code == 403
    )


def test_revocation_takes_effect_on_the_next_request(
    client: TestClient, tenant: TenantFixture
) -> None:
    created = _create(client, tenant)
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert client.get(tenant.url(), headers=headers).status_code == 200
    assert (
        client.delete(tenant.url(f"/api-keys/{created['id']}"), headers=tenant.headers).status_code
        == 204
    )
    response = client.get(tenant.url(), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    # Revoking twice is harmless; an unknown key id is 404.
    assert (
        client.delete(tenant.url(f"/api-keys/{created['id']}"), headers=tenant.headers).status_code
        == 204
    )


def test_expired_key_is_rejected(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    created = _create(client, tenant, expires_at=soon)
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert client.get(tenant.url(), headers=headers).status_code == 200
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        conn.execute(
            text("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = :id"),
            {"id": created["id"]},
        )
    assert client.get(tenant.url(), headers=headers).status_code == 401
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    response = client.post(
        tenant.url("/api-keys"), json={"name": "x", "expires_at": past}, headers=tenant.headers
    )
    assert response.status_code == 422


def test_tampered_key_with_a_real_prefix_is_401(client: TestClient, tenant: TenantFixture) -> None:
    prefix = tenant.admin_key.split("_")[1]
    forged = f"vca_{prefix}_" + "A" * 43
    assert (
        client.get(tenant.url(), headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    )


def test_last_used_at_is_recorded_but_throttled(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    created = _create(client, tenant)
    headers = {"Authorization": f"Bearer {created['key']}"}

    def last_used() -> datetime | None:
        with owner_engine.begin() as conn:
            conn.execute(text("SELECT set_config('app.system', 'on', true)"))
            return conn.scalar(
                text("SELECT last_used_at FROM api_keys WHERE id = :id"), {"id": created["id"]}
            )

    assert last_used() is None
    client.get(tenant.url(), headers=headers)
    first = last_used()
    assert first is not None
    client.get(tenant.url(), headers=headers)
    assert last_used() == first  # within the resolution: no write
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        conn.execute(
            text("UPDATE api_keys SET last_used_at = now() - interval '5 minutes' WHERE id = :id"),
            {"id": created["id"]},
        )
    client.get(tenant.url(), headers=headers)
    latest = last_used()
    assert latest is not None and latest > first


def test_unknown_key_id_is_404(client: TestClient, tenant: TenantFixture) -> None:
    response = client.delete(
        tenant.url("/api-keys/00000000-0000-0000-0000-000000000000"), headers=tenant.headers
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_a_request_does_not_wait_for_another_ones_last_used_at_write(
    client: TestClient, tenant: TenantFixture, app_engine: Engine
) -> None:
    """Once a minute one request of a key records last_used_at and holds the row until its
    transaction ends; the key's other requests must not queue behind it."""
    created = _create(client, tenant)
    headers = {"Authorization": f"Bearer {created['key']}"}
    result: list[int] = []
    with app_engine.connect() as holder:
        # Another request, in the middle of writing last_used_at: the row is locked.
        holder.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(tenant.id)})
        holder.execute(
            text("SELECT id FROM api_keys WHERE id = :id FOR UPDATE"), {"id": created["id"]}
        )
        worker = threading.Thread(
            target=lambda: result.append(client.get(tenant.url(), headers=headers).status_code)
        )
        worker.start()
        worker.join(timeout=5)
        waited = worker.is_alive()
        holder.rollback()
    worker.join(timeout=10)
    assert not waited, "the request waited for the lock on its key's row"
    assert result == [200]
