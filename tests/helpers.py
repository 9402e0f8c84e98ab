"""Small factories: every test makes its own tenants, so tests never see each other's rows."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.testclient import TestClient


@dataclass
class TenantFixture:
    id: uuid.UUID
    slug: str
    admin_key: str
    read_key: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    @property
    def read_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.read_key}"}

    def url(self, path: str = "") -> str:
        return f"/api/v1/tenants/{self.id}{path}"


def unique_slug(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def make_tenant(
    client: TestClient, admin_headers: dict[str, str], *, plan: str = "pro", name: str = "Test"
) -> TenantFixture:
    slug = unique_slug()
    response = client.post(
        "/api/v1/tenants", json={"name": name, "slug": slug, "plan": plan}, headers=admin_headers
    )
    assert response.status_code == 201, response.text
    tenant_id = response.json()["id"]
    keys = {}
    for role in ("admin", "read_only"):
        created = client.post(
            f"/api/v1/tenants/{tenant_id}/api-keys",
            json={"name": f"{role} key", "role": role},
            headers=admin_headers,
        )
        assert created.status_code == 201, created.text
        keys[role] = created.json()["key"]
    return TenantFixture(
        id=uuid.UUID(tenant_id),
        slug=slug,
        admin_key=keys["admin"],
        read_key=keys["read_only"],
        data=response.json(),
    )


def random_e164(country: str = "+1") -> str:
    """A valid, unused-looking North American number (555-01xx range is reserved for fiction)."""
    area = secrets.choice(["212", "415", "617", "312", "206", "303", "512", "646"])
    return f"{country}{area}{secrets.choice('23456789')}{secrets.randbelow(10**6):06d}"


def iter_routes(app: Any) -> list[tuple[str, Any]]:
    """(full path, route) for every route of the app, including those of included routers.

    FastAPI 0.16x keeps included routers nested (`_IncludedRouter`) instead of copying their routes
    into `app.routes`; this flattens both shapes.
    """
    found: list[tuple[str, Any]] = []

    def walk(routes: list[Any]) -> None:
        for route in routes:
            if hasattr(route, "effective_candidates"):
                walk(route.effective_candidates())
            elif hasattr(route, "original_route"):
                found.append((route.path, route.original_route))
            else:
                found.append((getattr(route, "path", ""), route))

    walk(list(app.routes))
    return found
