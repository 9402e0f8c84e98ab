from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from tests.helpers import TenantFixture, make_tenant, random_e164


def _profile(client: TestClient, tenant: TenantFixture, **extra: object) -> dict:  # type: ignore[type-arg]
    response = client.post(
        tenant.url("/ai-profiles"),
        json={"name": "Agent", "system_prompt": "Be kind.", **extra},
        headers=tenant.headers,
    )
    assert response.status_code == 201, response.text
    return response.json()


def _number(client: TestClient, tenant: TenantFixture, number: str | None = None, **extra: object):  # type: ignore[no-untyped-def]
    return client.post(
        tenant.url("/phone-numbers"),
        json={"number": number or random_e164(), **extra},
        headers=tenant.headers,
    )


@pytest.mark.parametrize(
    ("raw", "region", "expected_suffix"),
    [
        ("+1 (415) 555-0100", None, "+14155550100"),
        ("+14155550100", None, "+14155550100"),
        ("+1-415-555-0100", None, "+14155550100"),
        ("(415) 555-0100", "US", "+14155550100"),
        ("415.555.0100", "us", "+14155550100"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("+44 20 7946 0958", None, "+442079460958"),
        ("01 23 45 67 89", "FR", "+33123456789"),
    ],
)
def test_numbers_are_normalised_to_e164(
    client: TestClient,
    admin_headers: dict[str, str],
    raw: str,
    region: str | None,
    expected_suffix: str,
) -> None:
    tenant = make_tenant(client, admin_headers, plan="pro")
    body = {"number": raw, **({"region": region} if region else {})}
    response = client.post(tenant.url("/phone-numbers"), json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    assert response.json()["number"] == expected_suffix
    # The same number in another spelling is the same number.
    again = client.post(
        tenant.url("/phone-numbers"), json={"number": expected_suffix}, headers=tenant.headers
    )
    assert again.status_code == 409
    client.delete(tenant.url(), headers=admin_headers)  # frees the number for the next case


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("415-555-0100", None),
        ("+1 555", None),
        ("hello", None),
        ("+999 123 456", None),
        ("12", None),
        ("+1 (415) 555-01000000", None),
    ],
)
def test_invalid_numbers_are_422_with_a_code(
    client: TestClient, tenant: TenantFixture, raw: str, region: str | None
) -> None:
    response = _number(client, tenant, raw)
    assert response.status_code == 422
    assert response.json()["code"] in {"invalid_phone_number", "validation_error"}
    listed = client.get(tenant.url("/phone-numbers"), headers=tenant.headers).json()
    assert listed["items"] == []


def test_duplicate_across_tenants_is_409_without_revealing_the_owner(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    number = random_e164()
    assert _number(client, tenant, number).status_code == 201
    response = _number(client, other_tenant, number)
    assert response.status_code == 409
    assert response.json()["code"] == "phone_number_taken"
    assert str(tenant.id) not in response.text and tenant.slug not in response.text


def test_profile_must_belong_to_the_same_tenant(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    foreign = _profile(client, other_tenant)
    response = _number(client, tenant, ai_profile_id=foreign["id"])
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_ai_profile"
    own = _profile(client, tenant)
    created = _number(client, tenant, ai_profile_id=own["id"])
    assert created.status_code == 201
    patched = client.patch(
        tenant.url(f"/phone-numbers/{created.json()['id']}"),
        json={"ai_profile_id": foreign["id"]},
        headers=tenant.headers,
    )
    assert patched.status_code == 422
    stored = client.get(
        tenant.url(f"/phone-numbers/{created.json()['id']}"), headers=tenant.headers
    )
    assert stored.json()["ai_profile_id"] == own["id"]


def test_patch_is_partial_and_null_detaches_the_profile(
    client: TestClient, tenant: TenantFixture
) -> None:
    profile = _profile(client, tenant)
    created = _number(client, tenant, label="Front desk", ai_profile_id=profile["id"]).json()
    url = tenant.url(f"/phone-numbers/{created['id']}")
    patched = client.patch(url, json={"status": "inactive"}, headers=tenant.headers).json()
    assert patched["status"] == "inactive" and patched["label"] == "Front desk"
    assert patched["ai_profile_id"] == profile["id"]
    detached = client.patch(url, json={"ai_profile_id": None}, headers=tenant.headers).json()
    assert detached["ai_profile_id"] is None and detached["label"] == "Front desk"
    for bad in (
        {"number": "+14155550199"},
        {"status": "gone"},
        {"status": None},
        {"colour": "red"},
    ):
        response = client.patch(url, json=bad, headers=tenant.headers)
        assert response.status_code == 422, bad
    assert client.get(url, headers=tenant.headers).json() == detached


def test_plan_limit_at_the_boundary(client: TestClient, admin_headers: dict[str, str]) -> None:
    starter = make_tenant(client, admin_headers, plan="starter")  # 5 numbers
    for _ in range(5):
        assert _number(client, starter).status_code == 201
    response = _number(client, starter)
    assert response.status_code == 403
    assert response.json()["code"] == "plan_limit_reached"
    # Upgrading the plan lifts the limit.
    client.patch(starter.url(), json={"plan": "pro"}, headers=admin_headers)
    assert _number(client, starter).status_code == 201


def test_plan_limit_is_exact_under_concurrent_creates(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    starter = make_tenant(client, admin_headers, plan="starter")
    barrier = threading.Barrier(12)
    codes: list[int] = []
    lock = threading.Lock()

    def create() -> None:
        barrier.wait()
        code = _number(client, starter).status_code
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=create) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [201] * 5 + [403] * 7
    listed = client.get(
        starter.url("/phone-numbers"), params={"limit": 100}, headers=starter.headers
    )
    assert len(listed.json()["items"]) == 5


def test_same_number_created_concurrently_by_two_tenants_once(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    number = random_e164()
    barrier = threading.Barrier(8)
    codes: list[int] = []

    def create(owner: TenantFixture) -> None:
        barrier.wait()
        codes.append(_number(client, owner, number).status_code)

    threads = [threading.Thread(target=create, args=(t,)) for t in [tenant, other_tenant] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [201] + [409] * 7


def test_filters_by_status_and_profile(client: TestClient, tenant: TenantFixture) -> None:
    profile = _profile(client, tenant)
    a = _number(client, tenant, ai_profile_id=profile["id"]).json()
    b = _number(client, tenant, status="inactive").json()

    def ids(**params: str) -> set[str]:
        page = client.get(
            tenant.url("/phone-numbers"), params=params, headers=tenant.headers
        ).json()
        return {item["id"] for item in page["items"]}

    assert ids() == {a["id"], b["id"]}
    assert ids(status="inactive") == {b["id"]}
    assert ids(ai_profile_id=profile["id"]) == {a["id"]}
    bad = client.get(
        tenant.url("/phone-numbers"), params={"status": "nope"}, headers=tenant.headers
    )
    assert bad.status_code == 422


def test_delete_keeps_call_history(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    created = _number(client, tenant).json()
    call_id = uuid.uuid4()
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        conn.execute(
            text(
                "INSERT INTO calls (id, tenant_id, phone_number_id, direction, status, from_number,"
                " to_number, billable_minutes) VALUES (:id, :t, :n, 'inbound', 'completed', '+1', :to, 1)"
            ),
            {"id": call_id, "t": tenant.id, "n": created["id"], "to": created["number"]},
        )
    assert (
        client.delete(
            tenant.url(f"/phone-numbers/{created['id']}"), headers=tenant.headers
        ).status_code
        == 204
    )
    assert (
        client.get(
            tenant.url(f"/phone-numbers/{created['id']}"), headers=tenant.headers
        ).status_code
        == 404
    )
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        row = conn.execute(
            text("SELECT phone_number_id, to_number FROM calls WHERE id = :id"), {"id": call_id}
        ).one()
    assert row.phone_number_id is None and row.to_number == created["number"]
    # The released number can be registered again.
    assert _number(client, tenant, created["number"]).status_code == 201


def test_pages_have_no_duplicates_or_gaps_while_rows_are_inserted(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    busy = make_tenant(client, admin_headers, plan="enterprise")
    original = {_number(client, busy).json()["id"] for _ in range(25)}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = client.get(busy.url("/phone-numbers"), params=params, headers=busy.headers).json()
        seen += [item["id"] for item in page["items"]]
        _number(client, busy)  # a newer row arrives between pages
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen))
    assert original <= set(seen)
    assert set(seen) - original == set()  # rows newer than page 1 are on page 1 of a new listing
    for bad in ("garbage", "eyJhIjoxfQ", "W10"):
        response = client.get(
            busy.url("/phone-numbers"), params={"cursor": bad}, headers=busy.headers
        )
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_cursor"
