from __future__ import annotations

import uuid

from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from tests.helpers import TenantFixture, make_tenant, unique_slug


def test_admin_creates_gets_and_lists_tenants(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    slug = unique_slug()
    created = client.post(
        "/api/v1/tenants",
        json={"name": "Acme", "slug": slug, "plan": "starter", "timezone": "Europe/Paris"},
        headers=admin_headers,
    )
    assert created.status_code == 201
    body = created.json()
    assert body["slug"] == slug and body["plan"] == "starter" and body["status"] == "active"
    assert body["timezone"] == "Europe/Paris"
    got = client.get(f"/api/v1/tenants/{body['id']}", headers=admin_headers)
    assert got.json() == body
    ids = set()
    cursor = None
    while True:
        page = client.get(
            "/api/v1/tenants",
            params={"limit": 100, **({"cursor": cursor} if cursor else {})},
            headers=admin_headers,
        ).json()
        ids |= {t["id"] for t in page["items"]}
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert body["id"] in ids


def test_duplicate_slug_is_409_and_changes_nothing(
    client: TestClient, admin_headers: dict[str, str], tenant: TenantFixture
) -> None:
    response = client.post(
        "/api/v1/tenants", json={"name": "Other", "slug": tenant.slug}, headers=admin_headers
    )
    assert response.status_code == 409
    assert response.json()["code"] == "slug_taken"
    assert client.get(tenant.url(), headers=admin_headers).json()["name"] == "Test"


def test_bad_tenant_input_is_422_with_a_code(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    for body in (
        {"name": "x", "slug": "UPPER"},
        {"name": "x", "slug": "-bad-"},
        {"name": "x", "slug": unique_slug(), "timezone": "Mars/Olympus"},
        {"name": "x", "slug": unique_slug(), "unknown": 1},
        {"name": "", "slug": unique_slug()},
    ):
        response = client.post("/api/v1/tenants", json=body, headers=admin_headers)
        assert response.status_code == 422, body
        assert response.json()["code"] == "validation_error"
    # Which plans exist is the catalogue's to say (the plans table), checked by the service.
    unknown_plan = client.post(
        "/api/v1/tenants",
        json={"name": "x", "slug": unique_slug(), "plan": "gold"},
        headers=admin_headers,
    )
    assert unknown_plan.status_code == 422
    assert unknown_plan.json()["code"] == "unknown_plan"
    malformed = client.post(
        "/api/v1/tenants",
        content=b"{not json",
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    assert malformed.status_code == 422


def test_tenant_admin_may_rename_but_not_change_plan_or_status(
    client: TestClient, tenant: TenantFixture
) -> None:
    renamed = client.patch(
        tenant.url(), json={"name": "Renamed", "timezone": "Asia/Tokyo"}, headers=tenant.headers
    )
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "Renamed" and renamed.json()["timezone"] == "Asia/Tokyo"
    for change in ({"plan": "enterprise"}, {"status": "suspended"}):
        response = client.patch(tenant.url(), json=change, headers=tenant.headers)
        assert response.status_code == 403
    assert client.get(tenant.url(), headers=tenant.headers).json()["plan"] == "pro"


def test_suspended_tenant_reads_but_cannot_write(
    client: TestClient, admin_headers: dict[str, str], tenant: TenantFixture
) -> None:
    assert (
        client.patch(tenant.url(), json={"status": "suspended"}, headers=admin_headers).status_code
        == 200
    )
    assert client.get(tenant.url(), headers=tenant.headers).status_code == 200
    response = client.post(tenant.url("/api-keys"), json={"name": "x"}, headers=tenant.headers)
    assert response.status_code == 403
    assert response.json()["code"] == "tenant_suspended"
    client.patch(tenant.url(), json={"status": "active"}, headers=admin_headers)
    assert (
        client.post(tenant.url("/api-keys"), json={"name": "x"}, headers=tenant.headers).status_code
        == 201
    )


def test_delete_tenant_removes_all_its_data(
    client: TestClient, admin_headers: dict[str, str], owner_engine: Engine
) -> None:
    doomed = make_tenant(client, admin_headers)
    assert client.delete(doomed.url(), headers=admin_headers).status_code == 204
    assert client.get(doomed.url(), headers=admin_headers).status_code == 404
    assert client.get(doomed.url(), headers=doomed.headers).status_code == 401
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        left = conn.scalar(
            text("SELECT count(*) FROM api_keys WHERE tenant_id = :t"), {"t": doomed.id}
        )
    assert left == 0


def test_unknown_tenant_is_404_for_admin(client: TestClient, admin_headers: dict[str, str]) -> None:
    response = client.get(f"/api/v1/tenants/{uuid.uuid4()}", headers=admin_headers)
    assert response.status_code == 404
    assert response.json() == {"detail": "Tenant not found.", "code": "not_found"}
    assert client.get("/api/v1/tenants/not-a-uuid", headers=admin_headers).status_code == 422
