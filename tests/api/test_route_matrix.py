"""Authorization as a matrix over every route, walked from the app (new routes are covered).

For each /api/v1 route: anonymous -> 401; another tenant's key on a tenant path -> 404 with the same
body as a tenant that does not exist; a read_only key writing -> 403; a tenant key on a platform-admin
route -> 403.
"""

from __future__ import annotations

import re
import uuid

import pytest
from fastapi.routing import APIRoute
from starlette.testclient import TestClient

from app.api.deps import require_platform_admin
from main import app
from tests.helpers import TenantFixture, iter_routes

PARAM = re.compile(r"{(\w+)}")


def _api_routes() -> list[tuple[str, str, APIRoute]]:
    routes = []
    for path, route in iter_routes(app):
        if isinstance(route, APIRoute) and path.startswith("/api/v1"):
            for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
                routes.append((method, path, route))
    return routes


def _needs_platform_admin(route: APIRoute) -> bool:
    stack = list(route.dependant.dependencies)
    while stack:
        dependency = stack.pop()
        if dependency.call is require_platform_admin:
            return True
        stack.extend(dependency.dependencies)
    return False


def _fill(path: str, tenant_id: uuid.UUID) -> str:
    return PARAM.sub(
        lambda m: str(tenant_id) if m.group(1) == "tenant_id" else str(uuid.uuid4()), path
    )


ROUTES = _api_routes()
# Each check runs on the routes it applies to (the lists are derived, so new routes join them).
TENANT_KEY_ROUTES = [r for r in ROUTES if "{tenant_id}" in r[1] and not _needs_platform_admin(r[2])]
TENANT_WRITES = [r for r in ROUTES if "{tenant_id}" in r[1] and r[0] != "GET"]
PLATFORM_ADMIN_ROUTES = [r for r in ROUTES if _needs_platform_admin(r[2])]


def _ids(routes: list[tuple[str, str, APIRoute]]) -> list[str]:
    return [f"{m} {p}" for m, p, _ in routes]


def _call(client: TestClient, method: str, url: str, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    body = {} if method in {"POST", "PATCH", "PUT"} else None
    return client.request(method, url, headers=headers, json=body)


def test_the_walk_sees_the_routes() -> None:
    assert len(ROUTES) >= 8
    assert len(TENANT_KEY_ROUTES) >= 20 and len(TENANT_WRITES) >= 10


@pytest.mark.parametrize(("method", "path", "route"), ROUTES, ids=_ids(ROUTES))
def test_anonymous_is_401(
    client: TestClient, tenant: TenantFixture, method: str, path: str, route: APIRoute
) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer vca_deadbeef_" + "x" * 43},
        {"Authorization": "Basic abc"},
    ):
        response = _call(client, method, _fill(path, tenant.id), headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("method", "path", "route"), TENANT_KEY_ROUTES, ids=_ids(TENANT_KEY_ROUTES)
)
def test_other_tenant_key_gets_the_same_404_as_a_missing_tenant(
    client: TestClient,
    admin_headers: dict[str, str],
    tenant: TenantFixture,
    other_tenant: TenantFixture,
    method: str,
    path: str,
    route: APIRoute,
) -> None:
    foreign = _call(client, method, _fill(path, tenant.id), other_tenant.headers)
    missing = _call(client, method, _fill(path, uuid.uuid4()), admin_headers)
    assert foreign.status_code == 404, foreign.text
    assert missing.status_code == 404, missing.text
    assert foreign.json() == missing.json()


@pytest.mark.parametrize(("method", "path", "route"), TENANT_WRITES, ids=_ids(TENANT_WRITES))
def test_read_only_key_cannot_write(
    client: TestClient, tenant: TenantFixture, method: str, path: str, route: APIRoute
) -> None:
    response = _call(client, method, _fill(path, tenant.id), tenant.read_headers)
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "forbidden"


@pytest.mark.parametrize(
    ("method", "path", "route"), PLATFORM_ADMIN_ROUTES, ids=_ids(PLATFORM_ADMIN_ROUTES)
)
def test_tenant_key_on_platform_admin_route_is_403(
    client: TestClient, tenant: TenantFixture, method: str, path: str, route: APIRoute
) -> None:
    response = _call(client, method, _fill(path, tenant.id), tenant.headers)
    assert response.status_code == 403, response.text


def test_platform_admin_routes_are_the_expected_ones() -> None:
    admin_only = {(m, p) for m, p, r in ROUTES if _needs_platform_admin(r)}
    assert {
        ("POST", "/api/v1/tenants"),
        ("GET", "/api/v1/tenants"),
        ("DELETE", "/api/v1/tenants/{tenant_id}"),
    } <= admin_only
