from __future__ import annotations

import threading

import pytest
from starlette.testclient import TestClient

from tests.helpers import TenantFixture, random_e164

BASE = {"name": "Receptionist", "system_prompt": "You answer the phone for Acme."}


def _create(client: TestClient, tenant: TenantFixture, **extra: object):  # type: ignore[no-untyped-def]
    return client.post(tenant.url("/ai-profiles"), json={**BASE, **extra}, headers=tenant.headers)


def test_create_with_defaults_and_get(client: TestClient, tenant: TenantFixture) -> None:
    created = _create(client, tenant, language="fr-fr", transfer_number="+1 (415) 555-0123")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["language"] == "fr-FR" and body["transfer_number"] == "+14155550123"
    assert body["temperature"] == 0.7 and body["max_call_duration_seconds"] == 1800
    assert body["is_default"] is False
    got = client.get(tenant.url(f"/ai-profiles/{body['id']}"), headers=tenant.headers)
    assert got.json() == body


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": 2.5},
        {"temperature": -0.1},
        {"max_call_duration_seconds": 29},
        {"max_call_duration_seconds": 14_401},
        {"system_prompt": "x" * 20_001},
        {"greeting": "x" * 1_001},
        {"language": "english"},
        {"language": "xx-YY"},
        {"max_tokens": 0},
        {"name": ""},
        {"unknown": True},
        {"transfer_number": "12345"},
    ],
)
def test_bounds_are_enforced(client: TestClient, tenant: TenantFixture, bad: dict) -> None:  # type: ignore[type-arg]
    response = _create(client, tenant, **bad)
    assert response.status_code == 422, response.text
    assert response.json()["code"] in {"validation_error", "invalid_phone_number"}
    assert client.get(tenant.url("/ai-profiles"), headers=tenant.headers).json()["items"] == []


def test_limits_of_the_spec_are_accepted(client: TestClient, tenant: TenantFixture) -> None:
    response = _create(
        client,
        tenant,
        system_prompt="x" * 20_000,
        greeting="y" * 1_000,
        temperature=2,
        max_call_duration_seconds=14_400,
    )
    assert response.status_code == 201


def test_at_most_one_default_and_switching_is_atomic(
    client: TestClient, tenant: TenantFixture
) -> None:
    first = _create(client, tenant, is_default=True).json()
    second = _create(client, tenant, is_default=True).json()

    def defaults() -> list[str]:
        items = client.get(tenant.url("/ai-profiles"), headers=tenant.headers).json()["items"]
        return [p["id"] for p in items if p["is_default"]]

    assert defaults() == [second["id"]]
    switched = client.patch(
        tenant.url(f"/ai-profiles/{first['id']}"), json={"is_default": True}, headers=tenant.headers
    )
    assert switched.status_code == 200 and switched.json()["is_default"] is True
    assert defaults() == [first["id"]]


def test_concurrent_default_switches_leave_exactly_one_default(
    client: TestClient, tenant: TenantFixture
) -> None:
    profiles = [_create(client, tenant).json()["id"] for _ in range(6)]
    barrier = threading.Barrier(len(profiles))
    codes: list[int] = []

    def make_default(profile_id: str) -> None:
        barrier.wait()
        codes.append(
            client.patch(
                tenant.url(f"/ai-profiles/{profile_id}"),
                json={"is_default": True},
                headers=tenant.headers,
            ).status_code
        )

    threads = [threading.Thread(target=make_default, args=(p,)) for p in profiles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [200] * len(profiles)
    items = client.get(tenant.url("/ai-profiles"), headers=tenant.headers).json()["items"]
    assert sum(p["is_default"] for p in items) == 1


def test_patch_is_partial_and_rejects_null_for_required_fields(
    client: TestClient, tenant: TenantFixture
) -> None:
    created = _create(client, tenant, greeting="Hello", voice="Polly.Joanna").json()
    url = tenant.url(f"/ai-profiles/{created['id']}")
    patched = client.patch(url, json={"temperature": 0.2}, headers=tenant.headers).json()
    assert (
        patched["temperature"] == 0.2
        and patched["greeting"] == "Hello"
        and patched["voice"] == "Polly.Joanna"
    )
    cleared = client.patch(url, json={"greeting": None}, headers=tenant.headers).json()
    assert cleared["greeting"] is None
    for bad in ({"name": None}, {"system_prompt": None}, {"temperature": 3}):
        assert client.patch(url, json=bad, headers=tenant.headers).status_code == 422
    assert client.get(url, headers=tenant.headers).json()["name"] == "Receptionist"


def test_delete_in_use_is_409_and_changes_nothing(
    client: TestClient, tenant: TenantFixture
) -> None:
    profile = _create(client, tenant).json()
    number = client.post(
        tenant.url("/phone-numbers"),
        json={"number": random_e164(), "ai_profile_id": profile["id"]},
        headers=tenant.headers,
    ).json()
    response = client.delete(tenant.url(f"/ai-profiles/{profile['id']}"), headers=tenant.headers)
    assert response.status_code == 409 and response.json()["code"] == "in_use"
    assert (
        client.get(tenant.url(f"/ai-profiles/{profile['id']}"), headers=tenant.headers).status_code
        == 200
    )
    client.patch(
        tenant.url(f"/phone-numbers/{number['id']}"),
        json={"ai_profile_id": None},
        headers=tenant.headers,
    )
    assert (
        client.delete(
            tenant.url(f"/ai-profiles/{profile['id']}"), headers=tenant.headers
        ).status_code
        == 204
    )
    assert (
        client.get(tenant.url(f"/ai-profiles/{profile['id']}"), headers=tenant.headers).status_code
        == 404
    )


def test_filter_by_name(client: TestClient, tenant: TenantFixture) -> None:
    _create(client, tenant, name="Night shift")
    _create(client, tenant, name="Day shift")
    _create(client, tenant, name="100%_literal")

    def names(query: str) -> set[str]:
        items = client.get(
            tenant.url("/ai-profiles"), params={"name": query}, headers=tenant.headers
        ).json()["items"]
        return {p["name"] for p in items}

    assert names("SHIFT") == {"Night shift", "Day shift"}
    assert names("night") == {"Night shift"}
    assert names("%_") == {"100%_literal"}


def test_plans_catalogue(client: TestClient, tenant: TenantFixture) -> None:
    plans = {p["name"]: p for p in client.get("/api/v1/plans", headers=tenant.read_headers).json()}
    assert set(plans) == {"free", "starter", "pro", "enterprise"}
    assert plans["free"]["rejects_when_minutes_run_out"] is True
    assert plans["starter"]["base_fee_cents"] == 4900 and plans["pro"]["max_concurrent_calls"] == 25
    assert client.get("/api/v1/plans").status_code == 401


def test_suspended_tenant_cannot_create_profiles(
    client: TestClient, admin_headers: dict[str, str], tenant: TenantFixture
) -> None:
    client.patch(tenant.url(), json={"status": "suspended"}, headers=admin_headers)
    response = _create(client, tenant)
    assert response.status_code == 403 and response.json()["code"] == "tenant_suspended"
    assert client.get(tenant.url("/ai-profiles"), headers=tenant.headers).status_code == 200
