"""No route answers bad input with a 500: walked from the app, so new routes are covered.

Every /api/v1 route gets malformed bodies (each must be refused with a 4xx carrying a `code`) and
malformed query strings (a route may ignore a parameter it does not take, but never answer 5xx).
"""

from __future__ import annotations

import re
import uuid

import pytest
from fastapi.routing import APIRoute
from starlette.testclient import TestClient

from main import app
from tests.helpers import TenantFixture, iter_routes

PARAM = re.compile(r"{(\w+)}")
ROUTES = [
    (method, path)
    for path, route in iter_routes(app)
    if isinstance(route, APIRoute) and path.startswith("/api/v1")
    for method in sorted(route.methods - {"HEAD", "OPTIONS"})
]
BAD_BODIES: list[object] = [
    b"{not json",
    b"\xff\xfe",
    [],
    "text",
    12,
    {"name": ["a"], "url": {"x": 1}, "number": 5, "to": None, "event_types": "call.ended"},
    {"unknown_field": True},
    {"name": "x" * 100_000},
]
BAD_QUERIES = [
    {"limit": "0"},
    {"limit": "abc"},
    {"limit": "101"},
    {"cursor": "%%%"},
    {"cursor": "eyJ4Ijp0cnVlfQ"},
    {"status": "nope"},
    {"started_after": "yesterday"},
    {"phone_number_id": "not-a-uuid"},
]


def _fill(path: str, tenant_id: uuid.UUID) -> str:
    return PARAM.sub(lambda m: str(tenant_id) if m.group(1) == "tenant_id" else "not-a-uuid", path)


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_malformed_input_is_a_4xx_with_a_code(
    client: TestClient, admin_headers: dict[str, str], tenant: TenantFixture, method: str, path: str
) -> None:
    url = _fill(path, tenant.id)
    attempts = []
    answers = []
    if method in {"POST", "PATCH"}:
        for body in BAD_BODIES:
            if isinstance(body, bytes):
                attempts.append(
                    client.request(
                        method,
                        url,
                        content=body,
                        headers={**admin_headers, "Content-Type": "application/json"},
                    )
                )
            else:
                attempts.append(client.request(method, url, json=body, headers=admin_headers))
    for query in BAD_QUERIES:
        answers.append(client.request(method, url, params=query, headers=admin_headers))
    for response in attempts:
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
        assert "code" in response.json()
    for response in answers:
        assert response.status_code < 500, (response.status_code, response.text[:300])
        if response.status_code >= 400:
            assert "code" in response.json()
